//! Configuration reload while serving: on SIGHUP and when the file changes, the new file
//! is parsed and validated whole, then upstreams (URLs, credentials, TTLs, DNS), users
//! and access rules, retention rules, GC and scrub schedules and eviction limits take
//! effect without a restart. A file that fails is refused with a log line and a metric,
//! and the running configuration keeps serving. It never rebinds listeners or reopens
//! the store: changes there are logged as needing a restart.

use crate::config::Config;
use crate::{Background, build_access, start_background, upstream_specs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the configuration file is checked for changes: edits show within seconds,
/// and one `stat` every few seconds costs nothing.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// The configuration in force and what depends on it.
pub struct Live {
    app: server::App,
    path: PathBuf,
    state: tokio::sync::Mutex<LiveState>,
}

struct LiveState {
    config: Config,
    background: Background,
    stamp: Option<(SystemTime, u64)>,
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// What the background jobs are built from: when this is unchanged they keep running
/// undisturbed (a GC in progress is not cut short by an unrelated edit).
fn background_inputs(c: &Config) -> impl PartialEq + use<> {
    let eviction: Vec<_> = c
        .upstreams
        .iter()
        .map(|u| {
            (
                u.name.clone(),
                u.max_size,
                u.max_idle,
                u.pinned.clone(),
                u.prefetch.clone(),
            )
        })
        .collect();
    (
        c.gc.clone(),
        c.retention.clone(),
        c.scrub.clone(),
        eviction,
        c.exports.clone(),
        c.probes.clone(),
    )
}

/// Settings that only a restart applies, by the key a user would look for.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.server.listen != new.server.listen {
        keys.push("[server] listen");
    }
    if old.server.tls_cert != new.server.tls_cert || old.server.tls_key != new.server.tls_key {
        keys.push("[server] tls_cert/tls_key (the files themselves reload on change)");
    }
    if old.server.client_timeout != new.server.client_timeout {
        keys.push("[server] client_timeout");
    }
    if old.server.max_blob_size != new.server.max_blob_size {
        keys.push("[server] max_blob_size");
    }
    if old.server.min_body_rate != new.server.min_body_rate {
        keys.push("[server] min_body_rate");
    }
    if old.server.trusted_proxies != new.server.trusted_proxies
        || old.server.external_url != new.server.external_url
    {
        keys.push("[server] trusted_proxies/external_url");
    }
    if old.storage != new.storage {
        keys.push("[storage]");
    }
    if old.log != new.log {
        keys.push("[log]");
    }
    if old.metrics != new.metrics {
        keys.push("[metrics] listen");
    }
    let listeners = |c: &Config| -> Vec<_> {
        c.upstreams
            .iter()
            .map(|u| (u.name.clone(), u.listen))
            .filter(|(_, l)| l.is_some())
            .collect()
    };
    if listeners(old) != listeners(new) {
        keys.push("[[upstream]] listen");
    }
    if old.gc.grace != new.gc.grace {
        keys.push("[gc] grace (GC uses it now; reads renew on the old schedule until a restart)");
    }
    if old.auth.token_key != new.auth.token_key {
        keys.push("[auth] token_key");
    }
    keys
}

impl Live {
    /// Take charge of `app`, started from `config` read at `path`, with its background
    /// jobs.
    pub fn new(app: server::App, path: PathBuf, config: Config, background: Background) -> Live {
        let stamp = stamp(&path);
        Live {
            app,
            path,
            state: tokio::sync::Mutex::new(LiveState {
                config,
                background,
                stamp,
            }),
        }
    }

    /// Read the file and apply it. On error nothing changes.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        state.stamp = stamp(&self.path);
        crate::notify::reloading();
        let result = self.apply(&mut state).await;
        crate::notify::reloaded(if result.is_ok() {
            "configuration reloaded"
        } else {
            "configuration refused; the running one stays"
        });
        self.app.metrics.reloads.record(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(config = %self.path.display(), "configuration reloaded"),
            Err(e) => tracing::error!(
                config = %self.path.display(),
                error = %format!("{e:#}"),
                "configuration refused; the running one stays"
            ),
        }
        result
    }

    async fn apply(&self, state: &mut LiveState) -> anyhow::Result<()> {
        let new = Config::load(Some(&self.path))?;
        // Everything that can fail is built before anything changes.
        let specs = upstream_specs(&new)?;
        let access = build_access(&new, self.app.access().failed.clone())?;
        let rebuild_background = background_inputs(&state.config) != background_inputs(&new);
        let restart = needs_restart(&state.config, &new);
        self.app
            .cache
            .reconfigure(specs)
            .map_err(|e| anyhow::anyhow!("cannot set up upstream clients: {e}"))?;
        self.app.set_access(access);
        if rebuild_background {
            // Dropping the old jobs stops them (a run in progress stops where it is: every
            // job is safe to interrupt, like a crash); the new ones start their schedules.
            state.background = start_background(&new, &self.app)?;
        }
        if !restart.is_empty() {
            tracing::warn!(
                keys = %restart.join(", "),
                "these settings changed but apply only after a restart"
            );
        }
        state.config = new;
        Ok(())
    }

    /// Reload when the file changed since it was last read.
    pub async fn reload_if_changed(&self) {
        let changed = {
            let state = self.state.lock().await;
            state.stamp != stamp(&self.path)
        };
        if changed {
            let _ = self.reload().await;
        }
    }

    /// Watch the file and SIGHUP until dropped; `on_hangup` also runs on each SIGHUP
    /// (TLS certificates reload there).
    pub async fn watch(self: Arc<Self>, on_hangup: impl Fn() + Send + 'static) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch for SIGHUP; reloading on file change only");
                None
            }
        };
        let mut tick = tokio::time::interval(RELOAD_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hup = async {
                match &mut hangup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => self.reload_if_changed().await,
                _ = hup => {
                    on_hangup();
                    let _ = self.reload().await;
                }
            }
        }
    }
}
