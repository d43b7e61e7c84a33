//! The `berth` binary's library half: the configuration ([`config`]) and the wiring that
//! turns a [`config::Config`] into a running server — the store, the application state
//! and the background jobs here, listeners and serving in `serve` (re-exported here) —
//! plus reload ([`reload`]), break-glass exports ([`exports`]), `hosts.toml`
//! ([`hosts`]) and the store-care commands ([`tools`]). Protocol, storage, upkeep and
//! client logic live in their own crates and are only assembled here; it never handles
//! a request itself.

pub mod config;
pub mod exports;
pub mod health;
pub mod hosts;
mod notify;
pub mod probes;
pub mod reload;
mod serve;
pub mod tools;

pub use serve::{
    BindError, Listeners, RunOptions, Running, SHUTDOWN_GRACE, open_registry_warning, run_server,
    run_server_on, serve_options, shutdown_signal, watch_certificates,
};

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
            let options = config.storage.s3()?;
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
        direct_io: config.storage.direct_io,
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
        distribution::FallbackResolver::new(&distribution::DnsOptions {
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
                options: distribution::ClientOptions {
                    credentials: u.credentials()?,
                    dns: dns.clone(),
                    ..distribution::ClientOptions::new(u.url.clone())
                },
                tag_ttl: u.tag_ttl,
                repositories: u.repository_patterns()?,
                limits: u.limits(),
                prefetch: u.prefetch_rules()?,
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
        probes: Arc::default(),
        access: server::SharedAccess::from_pointee(access),
        metrics: Arc::default(),
        history: Arc::new(
            server::history::HistoryBook::new(&server::history::writer_name(
                config.server.listen.port(),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        names: server::NameIndex::default(),
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
        hex::decode_to_slice(t, &mut key)
            .map_err(|_| anyhow::anyhow!("token key {} is not hex", path.display()))?;
        Ok(key)
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && config.auth.token_key.is_none() => {
            let key = auth::TokenSigner::generate_key();
            std::fs::create_dir_all(&config.storage.path)?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            match opts.open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(format!("{}\n", hex::encode(key)).as_bytes())?;
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
        lease_ttl: config.gc.lease_ttl,
        ..upkeep::gc::GcOptions::default()
    }
}

/// The compiled retention rules (the configuration was validated, so they compile).
pub fn retention_rules(config: &Config) -> anyhow::Result<Vec<upkeep::retention::RetentionRule>> {
    config
        .retention
        .rules
        .iter()
        .map(|r| Ok(r.compile()?))
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
                    // Validated with the configuration.
                    pinned: u
                        .pinned
                        .iter()
                        .filter_map(|p| cache::Pin::new(p).ok())
                        .collect(),
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
        .collect::<Result<Vec<_>, _>>()?;
    let retention = retention_rules(config)?;
    let probes = probes::targets(config)?;
    let mut tasks = Vec::new();
    let limits = eviction_limits(config);
    if !limits.is_empty() {
        tasks.push(cache::spawn_eviction(app.cache.clone(), limits));
    }
    tasks.extend(cache::spawn_prefetch(app.cache.clone()));
    tasks.push(server::history::spawn(app.clone(), app.history.clone()));
    tasks.extend(probes::spawn_probes(probes, app.probes.clone()));
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

/// Send `tracing` output to stderr, filtered by `BERTH_LOG` (`info` when unset), as text
/// or JSON lines.
pub fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: `docker logs`, journald and files get
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
}
