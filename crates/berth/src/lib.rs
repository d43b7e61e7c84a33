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

/// Build the application state for a configuration.
pub async fn build_app(config: &Config) -> anyhow::Result<server::App> {
    let store = open_store(config).await?;
    let registry = Registry::new(store, RegistryOptions::default());
    Ok(Arc::new(server::AppState { registry }))
}

/// Bind the configured listener and serve until `shutdown` completes.
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
        "berth is serving"
    );
    server::serve(listener, app, shutdown).await?;
    Ok(())
}
