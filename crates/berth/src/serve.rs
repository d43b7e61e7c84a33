//! `berth serve`: the listeners a configuration names, bound first ([`Listeners`]), and
//! one running server wired around them ([`run_server_on`]): the application state, the
//! dedicated upstream and metrics listeners, the background jobs, configuration reload
//! and certificate watching, and a shutdown that gives in-flight requests
//! [`SHUTDOWN_GRACE`]. It assembles; the HTTP itself is `server`'s, and it never parses
//! a request.

use crate::config::Config;
use crate::{build_app_on, describe_store, open_store_to_serve, reload, start_background};
use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

/// How long in-flight requests may run on after a shutdown signal. Long enough for a
/// layer download in progress on a LAN to finish; short enough that a stuck client does
/// not hold a restart hostage.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// A listener that could not be bound, by address and (for a side listener) purpose.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}{}", for_what(.what))]
pub struct BindError {
    pub addr: SocketAddr,
    /// `upstream docker.io` or `[metrics]`; `None` for the main listener.
    pub what: Option<String>,
    #[source]
    pub source: std::io::Error,
}

fn for_what(what: &Option<String>) -> String {
    what.as_deref()
        .map(|w| format!(" for {w}"))
        .unwrap_or_default()
}

/// The sockets a server answers on, bound before anything else starts.
pub struct Listeners {
    /// The registry API (`[server] listen`; `/metrics` too without `[metrics] listen`).
    pub main: TcpListener,
    /// Dedicated listeners by upstream name (`[[upstream]] listen`): every repository
    /// on one belongs to that upstream.
    pub upstreams: HashMap<String, TcpListener>,
    /// `/metrics` alone, in plain HTTP (`[metrics] listen`).
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Only the main listener: no dedicated upstream listener, no metrics listener.
    pub fn main_only(main: TcpListener) -> Listeners {
        Listeners {
            main,
            upstreams: HashMap::new(),
            metrics: None,
        }
    }

    /// Bind every listener `config` names.
    pub async fn bind(config: &Config) -> Result<Listeners, BindError> {
        let main = bind(config.server.listen, None).await?;
        let mut upstreams = HashMap::new();
        for u in &config.upstreams {
            if let Some(addr) = u.listen {
                let l = bind(addr, Some(format!("upstream {}", u.name))).await?;
                upstreams.insert(u.name.clone(), l);
            }
        }
        let metrics = match config.metrics.listen {
            Some(addr) => Some(bind(addr, Some("[metrics]".to_owned())).await?),
            None => None,
        };
        Ok(Listeners {
            main,
            upstreams,
            metrics,
        })
    }
}

async fn bind(addr: SocketAddr, what: Option<String>) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, what, source })
}

/// How [`run_server_on`] runs, besides its configuration, listeners and shutdown.
#[derive(Default)]
pub struct RunOptions {
    /// The configuration file, watched for changes and re-read on SIGHUP; `None` for the
    /// embedded default (SIGHUP then reloads the TLS certificates only).
    pub config_path: Option<PathBuf>,
    /// A store the caller opened (tests wrap the configured one, e.g. in
    /// `store::faults::FaultyStore`); `None` opens the configured one with
    /// [`open_store_to_serve`].
    pub store: Option<Arc<dyn store::Store>>,
}

/// A server [`run_server_on`] started: its application state while it runs, and its end.
pub struct Running {
    app: server::App,
    addr: SocketAddr,
    tls: bool,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// The application state it serves (registry, cache, access, meters).
    pub fn app(&self) -> &server::App {
        &self.app
    }

    /// The main listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether its listeners speak TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Wait until it has stopped: after the shutdown future completed and in-flight
    /// requests finished, or [`SHUTDOWN_GRACE`] later.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// How listeners serve connections under `config`: its client timeout and, when
/// configured, its TLS certificates (loaded now, so a bad file fails the start).
pub fn serve_options(config: &Config) -> anyhow::Result<server::ServeOptions> {
    let tls = match config.server.tls_files()? {
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

/// Serve `router` on a listener besides the main one (an upstream's, or the metrics
/// one) until `stop` fires or is dropped.
fn spawn_side_listener(
    listener: TcpListener,
    router: server::Router,
    options: server::ServeOptions,
    stop: &tokio::sync::broadcast::Sender<()>,
    what: String,
) -> anyhow::Result<()> {
    tracing::info!(listen = %listener.local_addr()?, "listener for {what}");
    let mut stop = stop.subscribe();
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.recv().await;
        };
        if let Err(e) = server::transport::serve(listener, router, stopped, options).await {
            tracing::error!(error = %e, "listener for {what} failed");
        }
    });
    Ok(())
}

/// Open the configured store, bind the configured listeners and serve until `shutdown`
/// completes (then at most [`SHUTDOWN_GRACE`] longer for in-flight requests). `path` is
/// the configuration file, watched and re-read on SIGHUP.
pub async fn run_server(
    config: &Config,
    path: Option<&Path>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store_to_serve(config).await?;
    let listeners = Listeners::bind(config).await?;
    let options = RunOptions {
        config_path: path.map(Path::to_owned),
        store: Some(store),
    };
    let shutdown = async move {
        shutdown.await;
        crate::notify::stopping();
    };
    let running = run_server_on(config, listeners, options, shutdown).await?;
    crate::notify::ready(&format!("serving on {}", running.addr));
    running.wait().await
}

/// Start serving `config` on `listeners` until `shutdown` completes: build the
/// application state, serve every listener, start the background jobs and the reload
/// and certificate watchers. Returns once it is serving; [`Running::wait`] waits for the
/// end (in-flight requests get [`SHUTDOWN_GRACE`] after `shutdown`).
pub async fn run_server_on(
    config: &Config,
    listeners: Listeners,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let store = match options.store {
        Some(store) => store,
        None => open_store_to_serve(config).await?,
    };
    let app = build_app_on(config, store)?;
    let serve = serve_options(config)?;
    let Listeners {
        main,
        mut upstreams,
        metrics,
    } = listeners;
    let addr = main.local_addr()?;
    tracing::info!(
        listen = %addr,
        tls = serve.tls.is_some(),
        storage = %describe_store(config),
        upstreams = config.upstreams.len(),
        "berth is serving"
    );
    if let Some(warning) = open_registry_warning(config) {
        tracing::warn!("{warning}");
    }
    let mut helpers: Vec<_> = watch_certificates(&serve).into_iter().collect();
    // Dedicated upstream listeners and the metrics listener stop with the main one.
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    for u in &config.upstreams {
        let Some(listener) = upstreams.remove(&u.name) else {
            continue;
        };
        let router = server::upstream_router(app.clone(), &u.name)
            .ok_or_else(|| anyhow::anyhow!("upstream {} vanished", u.name))?;
        // The external URL names the main listener; a dedicated one is reached by its
        // own address.
        let own = server::ServeOptions {
            external_url: None,
            ..serve.clone()
        };
        spawn_side_listener(
            listener,
            router,
            own,
            &stop_tx,
            format!("upstream {}", u.name),
        )?;
    }
    if let Some(name) = upstreams.keys().next() {
        anyhow::bail!("a listener was given for upstream {name}, which is not configured");
    }
    if let Some(listener) = metrics {
        // Plain HTTP: scrapers on a management network rarely carry the registry's CA.
        let plain = server::ServeOptions {
            tls: None,
            ..serve.clone()
        };
        let router = server::metrics_router(app.clone());
        spawn_side_listener(listener, router, plain, &stop_tx, "[metrics]".to_owned())?;
    }
    let background = start_background(config, &app)?;
    let on_hup = serve.clone();
    let reloads = match options.config_path {
        // The file is watched and re-read on SIGHUP; the background jobs live with it.
        Some(path) => {
            let live = Arc::new(reload::Live::new(
                app.clone(),
                path,
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
    let tls = serve.tls.is_some();
    let serving = server::serve(main, app.clone(), signal, serve);
    let task = tokio::spawn(async move {
        tokio::pin!(serving);
        tokio::select! {
            r = &mut serving => r?,
            () = async {
                let _ = stopping_rx.await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => tracing::warn!("in-flight requests still running after {SHUTDOWN_GRACE:?}; exiting anyway"),
        }
        Ok::<(), anyhow::Error>(())
    });
    Ok(Running {
        app,
        addr,
        tls,
        task,
    })
}

/// The shutdown future `berth serve` runs with: it completes on SIGINT (Ctrl-C) or
/// SIGTERM. Both are caught from this call on, before the store is opened or anything
/// is bound, so a stop that comes early still drains instead of killing the process
/// (call it inside the runtime).
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down: finishing in-flight requests");
    })
}
