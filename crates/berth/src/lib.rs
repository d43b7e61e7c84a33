//! The `berth` binary's library half: configuration and the wiring that turns a
//! [`config::Config`] into a running server. Commands live in `main.rs`; protocol and
//! storage logic live in their own crates and are only assembled here.

pub mod config;

use anyhow::Context;
use config::{Config, StorageKind};
use registry::{Registry, RegistryOptions};
use std::sync::Arc;
use store::Store;

/// Open the store a configuration names.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.storage.kind {
        StorageKind::Fs => {
            let store = store::fs::FsStore::open(store::fs::FsOptions {
                root: config.storage.path.clone(),
                fsync: config.storage.fsync,
            })
            .await
            .with_context(|| format!("cannot open storage at {}", config.storage.path.display()))?;
            Ok(Arc::new(store))
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
    let registry = Registry::new(store, RegistryOptions::default());
    let cache = cache::Cache::new(registry.clone(), upstream_specs(config)?)
        .map_err(|e| anyhow::anyhow!("cannot set up upstream clients: {e}"))?;
    Ok(Arc::new(server::AppState {
        registry,
        cache: Arc::new(cache),
    }))
}

/// How long in-flight requests may run on after a shutdown signal. Long enough for a
/// layer download in progress on a LAN to finish; short enough that a stuck client does
/// not hold a restart hostage.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Bind the configured listener and serve until `shutdown` completes (then at most
/// [`SHUTDOWN_GRACE`] longer for in-flight requests).
pub async fn run_server(
    config: &Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = build_app(config).await?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        storage = %config.storage.path.display(),
        upstreams = config.upstreams.len(),
        "berth is serving"
    );
    // Dedicated upstream listeners stop with the main one.
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    for u in &config.upstreams {
        let Some(addr) = u.listen else { continue };
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for upstream {}", u.name))?;
        let router = server::upstream_router(app.clone(), &u.name)
            .ok_or_else(|| anyhow::anyhow!("upstream {} vanished", u.name))?;
        let mut stop = stop_tx.subscribe();
        tracing::info!(listen = %addr, upstream = %u.name, "dedicated upstream listener");
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.recv().await;
            };
            if let Err(e) = server::serve_router(l, router, stopped).await {
                tracing::error!(error = %e, "upstream listener failed");
            }
        });
    }
    let limits: std::collections::HashMap<String, cache::EvictionLimits> = config
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
        .collect();
    let eviction = (!limits.is_empty()).then(|| cache::spawn_eviction(app.cache.clone(), limits));
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(());
        if let Some(e) = eviction {
            e.abort();
        }
    };
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let serving = server::serve(listener, app, signal);
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
