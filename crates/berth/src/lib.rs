//! The `berth` binary's library half: configuration and the wiring that turns a
//! [`config::Config`] into a running server. Commands live in `main.rs`; protocol and
//! storage logic live in their own crates and are only assembled here.

pub mod config;
pub mod exports;
pub mod hosts;
pub mod reload;
pub mod tools;

use anyhow::Context;
use config::{Config, StorageKind};
use registry::{Registry, RegistryOptions};
use std::collections::HashMap;
use std::sync::Arc;
use store::Store;

/// Open the store a configuration names. An S3 bucket is checked with one request
/// first, so a wrong bucket, key or endpoint is reported by name instead of by the
/// first push.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match config.storage.kind {
        StorageKind::Fs => Arc::new(open_fs(config).await?),
        StorageKind::S3 => {
            let options = config.storage.s3().map_err(anyhow::Error::msg)?;
            store::s3::S3Store::check(&options)
                .await
                .with_context(|| format!("cannot use {}", describe_store(config)))?;
            let store = store::s3::S3Store::open(&options)
                .with_context(|| format!("cannot open {}", describe_store(config)))?;
            Arc::new(store)
        }
    })
}

async fn open_fs(config: &Config) -> anyhow::Result<store::fs::FsStore> {
    store::fs::FsStore::open(store::fs::FsOptions {
        root: config.storage.path.clone(),
        fsync: config.storage.fsync,
    })
    .await
    .with_context(|| format!("cannot open storage at {}", config.storage.path.display()))
}

/// The least free space `berth serve` starts with on a filesystem store. Below it the
/// first push would fail with 507 anyway; the operator learns it at start, by path.
/// (Maintenance commands still run on a full disk: `berth gc` is how it is freed.)
pub const MIN_FREE_TO_SERVE: u64 = 1024 * 1024;

/// The store `berth serve` runs on: [`open_store`], and for a filesystem store proof
/// that its directory is writable and not full.
pub async fn open_store_to_serve(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if config.storage.kind != StorageKind::Fs {
        return open_store(config).await;
    }
    let path = config.storage.path.display();
    let fs = open_fs(config).await?;
    fs.check_writable()
        .await
        .with_context(|| format!("storage at {path} is not writable"))?;
    if let Some(space) = store::Store::space(&fs)
        && space.available < MIN_FREE_TO_SERVE
    {
        anyhow::bail!(
            "storage at {path} is full ({} bytes free); free space or point [storage] path elsewhere",
            space.available
        );
    }
    Ok(Arc::new(fs))
}

/// The store a configuration names, for logs: a directory, or
/// `s3://bucket/prefix at endpoint`.
pub fn describe_store(config: &Config) -> String {
    let s = &config.storage;
    match s.kind {
        StorageKind::Fs => format!("fs:{}", s.path.display()),
        StorageKind::S3 => {
            let prefix = s
                .prefix
                .as_deref()
                .map(|p| p.trim_matches('/'))
                .filter(|p| !p.is_empty())
                .map(|p| format!("/{p}"))
                .unwrap_or_default();
            let at = match &s.endpoint {
                Some(e) => e.clone(),
                None => format!("AWS {}", s.region.as_deref().unwrap_or("us-east-1")),
            };
            format!(
                "s3://{}{prefix} at {at}",
                s.bucket.as_deref().unwrap_or_default()
            )
        }
    }
}

/// The cache's view of the configured upstreams (reading password files now).
pub fn upstream_specs(config: &Config) -> anyhow::Result<Vec<cache::UpstreamSpec>> {
    let dns = (!config.dns.servers.is_empty()).then(|| {
        upstream::FallbackResolver::new(&upstream::DnsOptions {
            servers: config.dns.servers.clone(),
            fallback: config.dns.fallback.clone(),
        })
    });
    config
        .upstreams
        .iter()
        .map(|u| {
            Ok(cache::UpstreamSpec {
                name: u.name.clone(),
                options: upstream::UpstreamOptions {
                    credentials: u.credentials()?,
                    dns: dns.clone(),
                    ..upstream::UpstreamOptions::new(u.url.clone())
                },
                tag_ttl: u.tag_ttl,
            })
        })
        .collect()
}

/// Build the application state for a configuration.
pub async fn build_app(config: &Config) -> anyhow::Result<server::App> {
    let store = open_store(config).await?;
    build_app_on(config, store)
}

/// Build the application state for a configuration on a store opened elsewhere (tests
/// wrap the configured one, e.g. in [`store::faults::FaultyStore`]).
pub fn build_app_on(config: &Config, store: Arc<dyn store::Store>) -> anyhow::Result<server::App> {
    let registry = Registry::new(
        store,
        RegistryOptions {
            touch_after: config.gc.touch_after(),
            max_blob_bytes: config.server.max_blob_size,
            ..RegistryOptions::default()
        },
    );
    let cache = cache::Cache::new(registry.clone(), upstream_specs(config)?)
        .map_err(|e| anyhow::anyhow!("cannot set up upstream clients: {e}"))?;
    let access = build_access(config, Arc::default())?;
    Ok(Arc::new(server::AppState {
        registry,
        cache: Arc::new(cache),
        upkeep: Arc::default(),
        access: server::SharedAccess::from_pointee(access),
        metrics: Arc::default(),
        blob_redirect: (config.storage.kind == StorageKind::S3 && config.storage.redirect)
            .then_some(server::BLOB_REDIRECT_TTL),
        metrics_at: match config.metrics.listen {
            Some(_) => server::MetricsAt::OwnListener,
            None => server::MetricsAt::Api,
        },
    }))
}

/// Users, rules and the token signer of a configuration; `failed` carries the failed-login
/// counts over from the access it replaces.
pub fn build_access(
    config: &Config,
    failed: Arc<server::access::FailedLogins>,
) -> anyhow::Result<server::Access> {
    let users = match &config.auth.htpasswd {
        Some(path) => {
            Some(auth::Users::load(path).map_err(|e| anyhow::anyhow!("[auth] htpasswd: {e}"))?)
        }
        None => None,
    };
    let rules = config
        .access_rules()
        .map_err(|e| anyhow::anyhow!("invalid access rules: {e}"))?;
    Ok(server::Access {
        tokens: match &users {
            Some(_) => Some(auth::TokenSigner::new(token_key(config)?)),
            None => None,
        },
        users,
        rules,
        failed,
    })
}

/// The bearer-token signing key: `[auth] token_key`, or `token.key` in the data directory,
/// created (readable by the owner only) on first start. Replicas sharing a store must
/// share the key, so it lives with the data.
fn token_key(config: &Config) -> anyhow::Result<[u8; auth::token::KEY_BYTES]> {
    let path = config
        .auth
        .token_key
        .clone()
        .unwrap_or_else(|| config.storage.path.join("token.key"));
    let parse = |text: &str| -> anyhow::Result<[u8; auth::token::KEY_BYTES]> {
        let mut key = [0u8; auth::token::KEY_BYTES];
        let t = text.trim();
        if t.len() != key.len() * 2 {
            anyhow::bail!(
                "token key {} must hold {} hex digits",
                path.display(),
                key.len() * 2
            );
        }
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
                .map_err(|_| anyhow::anyhow!("token key {} is not hex", path.display()))?;
        }
        Ok(key)
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && config.auth.token_key.is_none() => {
            let key = auth::TokenSigner::generate_key();
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::create_dir_all(&config.storage.path)?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            match opts.open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(format!("{hex}\n").as_bytes())?;
                    f.sync_all()?;
                    tracing::info!(path = %path.display(), "created the token signing key");
                    Ok(key)
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    parse(&std::fs::read_to_string(&path)?)
                }
                Err(e) => Err(anyhow::anyhow!(
                    "cannot create token key {}: {e}",
                    path.display()
                )),
            }
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot read token key {}: {e}",
            path.display()
        )),
    }
}

/// The first path components of cached repositories, one per upstream.
pub fn cached_keys(config: &Config) -> Vec<String> {
    config
        .upstreams
        .iter()
        .map(|u| cache::key_for(&u.name))
        .collect()
}

/// Garbage-collection options from the configuration.
pub fn gc_options(config: &Config, dry_run: bool) -> upkeep::gc::GcOptions {
    upkeep::gc::GcOptions {
        grace: config.gc.grace,
        renewal_slack: config.gc.touch_after(),
        delete_untagged: config.gc.delete_untagged,
        dry_run,
        cached: cached_keys(config),
        ..upkeep::gc::GcOptions::default()
    }
}

/// The compiled retention rules (the configuration was validated, so they compile).
pub fn retention_rules(config: &Config) -> anyhow::Result<Vec<upkeep::retention::RetentionRule>> {
    config
        .retention
        .rules
        .iter()
        .map(|r| r.compile().map_err(|e| anyhow::anyhow!(e)))
        .collect()
}

/// The background jobs of `serve`: cache eviction, garbage collection, retention and
/// scrub, each on its own schedule. Dropping it stops them.
pub struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Scrub options from the configuration: report only, at the configured rate.
pub fn scrub_options(config: &Config) -> upkeep::fsck::FsckOptions {
    upkeep::fsck::FsckOptions {
        deep: config.scrub.deep,
        repair: false,
        cache: None,
        cached: cached_keys(config),
        rate: Some(config.scrub.rate),
    }
}

/// Eviction limits per upstream, for the upstreams that have any.
fn eviction_limits(config: &Config) -> HashMap<String, cache::EvictionLimits> {
    config
        .upstreams
        .iter()
        .filter(|u| u.max_size.is_some() || u.max_idle.is_some())
        .map(|u| {
            (
                u.name.clone(),
                cache::EvictionLimits {
                    max_size: u.max_size,
                    max_idle: u.max_idle,
                    pinned: u.pinned.clone(),
                },
            )
        })
        .collect()
}

/// Start the background jobs a configuration asks for, each on its own schedule: the
/// loops live with the jobs (`cache::spawn_eviction`, `upkeep::spawn_*`,
/// [`exports::spawn_exports`]); this only wires them.
pub fn start_background(config: &Config, app: &server::App) -> anyhow::Result<Background> {
    // What can fail is built before anything starts.
    let exports = config
        .exports
        .iter()
        .map(exports::ExportRule::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let retention = retention_rules(config)?;
    let mut tasks = Vec::new();
    let limits = eviction_limits(config);
    if !limits.is_empty() {
        tasks.push(cache::spawn_eviction(app.cache.clone(), limits));
    }
    let jobs = upkeep::JobContext {
        registry: app.registry.clone(),
        status: app.upkeep.clone(),
    };
    tasks.extend(upkeep::spawn_gc(
        &jobs,
        config.gc.interval,
        gc_options(config, false),
    ));
    if !exports.is_empty() {
        tasks.push(exports::spawn_exports(app.registry.clone(), exports));
    }
    tasks.extend(upkeep::spawn_retention(
        &jobs,
        config.retention.interval,
        retention,
    ));
    tasks.extend(upkeep::spawn_scrub(
        &jobs,
        config.scrub.interval,
        scrub_options(config),
    ));
    Ok(Background { tasks })
}

/// Bind a listener besides the main one (an upstream's, or the metrics one) and serve
/// `router` on it until `stop` fires.
async fn side_listener(
    addr: std::net::SocketAddr,
    router: server::Router,
    options: server::ServeOptions,
    stop: &tokio::sync::broadcast::Sender<()>,
    what: &str,
) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))?;
    tracing::info!(listen = %addr, "listener for {what}");
    let mut stop = stop.subscribe();
    let what = what.to_owned();
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.recv().await;
        };
        if let Err(e) = server::transport::serve(l, router, stopped, options).await {
            tracing::error!(error = %e, "listener for {what} failed");
        }
    });
    Ok(())
}

/// Send `tracing` output to stderr, filtered by `BERTH_LOG` (`info` when unset), as text
/// or JSON lines.
pub fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
}

/// Completes on Ctrl-C or SIGTERM: the shutdown future `berth serve` runs with.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

/// How long in-flight requests may run on after a shutdown signal. Long enough for a
/// layer download in progress on a LAN to finish; short enough that a stuck client does
/// not hold a restart hostage.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// How listeners serve connections under `config`: its client timeout and, when
/// configured, its TLS certificates (loaded now, so a bad file fails the start).
pub fn serve_options(config: &Config) -> anyhow::Result<server::ServeOptions> {
    let tls = match config.server.tls_files().map_err(anyhow::Error::msg)? {
        Some(files) => {
            Some(server::TlsCerts::load(files).map_err(|e| anyhow::anyhow!("[server] tls: {e}"))?)
        }
        None => None,
    };
    Ok(server::ServeOptions {
        tls,
        client_timeout: config.server.client_timeout,
        min_body_rate: config.server.min_body_rate,
        trusted_proxies: config.server.trusted_proxies.clone(),
        external_url: config.server.external_url.clone(),
    })
}

/// Start watching the TLS certificate files of `options` for changes (when TLS is on);
/// the watch ends when the handle is aborted.
pub fn watch_certificates(options: &server::ServeOptions) -> Option<tokio::task::JoinHandle<()>> {
    options
        .tls
        .as_ref()
        .map(|tls| tokio::spawn(tls.clone().watch()))
}

/// What SIGHUP reloads besides the configuration file (which [`reload::Live`] re-reads):
/// the TLS certificates.
fn on_hangup(options: &server::ServeOptions) {
    if let Some(tls) = &options.tls {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: new TLS certificate refused; the old one stays")
            }
        }
    }
}

/// Bind the configured listener and serve until `shutdown` completes (then at most
/// [`SHUTDOWN_GRACE`] longer for in-flight requests).
/// What to tell the operator when anyone who can reach a listener may push: no users
/// and no `[[access]]` rules (the first-run default), on an address other hosts reach.
pub fn open_registry_warning(config: &Config) -> Option<String> {
    let open = config.access.is_empty() && config.auth.htpasswd.is_none();
    let mut exposed: Vec<std::net::SocketAddr> = vec![config.server.listen];
    exposed.extend(config.upstreams.iter().filter_map(|u| u.listen));
    let exposed: Vec<String> = exposed
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(|a| a.to_string())
        .collect();
    (open && !exposed.is_empty()).then(|| {
        format!(
            "no users are configured, so anyone who can reach {} may pull and push; add users \
             with [auth] htpasswd = \"FILE\" (htpasswd -B -c FILE NAME) and, if needed, \
             [[access]] rules (docs/config.md)",
            exposed.join(", ")
        )
    })
}

pub async fn run_server(
    config: &Config,
    path: Option<&std::path::Path>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = build_app_on(config, open_store_to_serve(config).await?)?;
    let options = serve_options(config)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = options.tls.is_some(),
        storage = %describe_store(config),
        upstreams = config.upstreams.len(),
        "berth is serving"
    );
    if let Some(warning) = open_registry_warning(config) {
        tracing::warn!("{warning}");
    }
    let mut helpers: Vec<_> = watch_certificates(&options).into_iter().collect();
    // Dedicated upstream listeners and the metrics listener stop with the main one.
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    for u in &config.upstreams {
        let Some(addr) = u.listen else { continue };
        let router = server::upstream_router(app.clone(), &u.name)
            .ok_or_else(|| anyhow::anyhow!("upstream {} vanished", u.name))?;
        let what = format!("upstream {}", u.name);
        // The external URL names the main listener; a dedicated one is reached by its
        // own address.
        let own = server::ServeOptions {
            external_url: None,
            ..options.clone()
        };
        side_listener(addr, router, own, &stop_tx, &what).await?;
    }
    if let Some(addr) = config.metrics.listen {
        // Plain HTTP: scrapers on a management network rarely carry the registry's CA.
        let plain = server::ServeOptions {
            tls: None,
            ..options.clone()
        };
        let router = server::metrics_router(app.clone());
        side_listener(addr, router, plain, &stop_tx, "[metrics]").await?;
    }
    let background = start_background(config, &app)?;
    let on_hup = options.clone();
    let reloads = match path {
        // The file is watched and re-read on SIGHUP; the background jobs live with it.
        Some(path) => {
            let live = Arc::new(reload::Live::new(
                app.clone(),
                path.to_owned(),
                config.clone(),
                background,
            ));
            tokio::spawn(live.watch(move || on_hangup(&on_hup)))
        }
        None => {
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot watch for SIGHUP")?;
            tokio::spawn(async move {
                let _background = background;
                while hangup.recv().await.is_some() {
                    tracing::info!(
                        "SIGHUP: running on the embedded configuration; nothing to re-read"
                    );
                    on_hangup(&on_hup);
                }
            })
        }
    };
    helpers.push(reloads);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(());
        // Stops the background jobs with the watcher that owns them.
        for h in helpers {
            h.abort();
        }
    };
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let serving = server::serve(listener, app, signal, options);
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => r?,
        () = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("in-flight requests still running after {SHUTDOWN_GRACE:?}; exiting anyway"),
    }
    Ok(())
}
