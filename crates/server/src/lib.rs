//! berth's HTTP layer: the OCI Distribution API on axum. It owns routing, headers, status
//! codes, error bodies and the translation of request bodies into byte streams; every
//! decision about content is the registry core's. It is the only crate that sees axum.
//!
//! [`serve`] takes an already-bound listener, a shutdown future and [`ServeOptions`]
//! (TLS, client timeouts), so tests bind port 0 and run the server in-process.
//!
//! Inside, imports run one way ([`LAYERS`], checked by a test): `headers` and `error`
//! at the bottom; `respond` (responses both kinds of repository share) and `listing`
//! above them; `hosted` and `cached` (the two kinds of handler) above those; `dispatch`
//! (targeting, authorisation, the entry points) on top.

pub mod access;
mod cached;
mod dispatch;
mod error;
mod headers;
pub mod history;
mod hosted;
mod listing;
pub mod metrics;
pub mod probes;
pub mod range;
mod respond;
pub mod route;
pub mod tls;
pub mod transport;
mod ui;

use axum::routing::any;
use cache::Cache;
use registry::Registry;
use std::future::Future;
use std::sync::Arc;

pub use access::Access;
/// The router type the constructors below return, for callers that only pass it on.
pub use axum::Router;
pub use error::ApiError;
pub use tls::{TlsCerts, TlsFiles};
pub use transport::{CLIENT_TIMEOUT, ServeOptions};
pub use ui::{NameIndex, human_bytes};

/// Everything a request handler can reach.
pub struct AppState {
    pub registry: Registry,
    /// The pull-through cache (with no upstreams when none are configured).
    pub cache: Arc<Cache>,
    /// Results of the background jobs (gc, retention, scrub).
    pub upkeep: Arc<upkeep::Status>,
    /// The latest results of the `[[probe]]`s of other registries.
    pub probes: Arc<probes::ProbeBoard>,
    /// Users and access rules; swapped whole on a configuration reload (see
    /// [`AppState::access`]).
    pub access: SharedAccess,
    /// The HTTP layer's meters (requests, bytes, reloads).
    pub metrics: Arc<metrics::Metrics>,
    /// The web page's history of this replica's numbers (and its view of the others').
    pub history: Arc<history::HistoryBook>,
    /// Every repository name, for the web page's filter (see `ui::names`).
    pub names: ui::NameIndex,
    /// Where `/metrics` is served.
    pub metrics_at: MetricsAt,
    /// Answer blob GETs with a redirect to a presigned URL valid this long, where the
    /// store can make one (S3 with `redirect = true`).
    pub blob_redirect: Option<std::time::Duration>,
}

/// How long a presigned blob URL stays valid: long enough for a client to start the
/// download after the redirect (it only has to begin within this time), short enough
/// that a leaked URL soon stops working.
pub const BLOB_REDIRECT_TTL: std::time::Duration = std::time::Duration::from_secs(5 * 60);

impl AppState {
    /// The users and access rules in force now.
    pub fn access(&self) -> Arc<Access> {
        self.access.load_full()
    }

    /// Put new users and rules in force for the next request.
    pub fn set_access(&self, access: Access) {
        self.access.store(Arc::new(access));
    }
}

/// Users and rules, swapped whole on a reload while requests read them without a lock
/// (`SharedAccess::from_pointee(access)`).
pub type SharedAccess = arc_swap::ArcSwap<Access>;

/// Where `/metrics` is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAt {
    /// On the registry's listeners, beside the API.
    Api,
    /// Only on its own listener ([`metrics_router`]).
    OwnListener,
}

/// Shared state handed to every handler.
pub type App = Arc<AppState>;

/// What one listener serves: the whole registry, or (a dedicated upstream listener)
/// only the cache of one upstream, with repository names as that upstream knows them.
pub(crate) struct ListenerState {
    pub app: App,
    /// The upstream a dedicated listener serves, by name.
    pub fixed: Option<String>,
}

pub(crate) type Ctx = Arc<ListenerState>;

fn router_with(state: ListenerState) -> Router {
    let mut r = Router::new()
        .route("/v2", any(dispatch::dispatch))
        .route("/v2/", any(dispatch::dispatch))
        .route("/v2/{*rest}", any(dispatch::dispatch))
        .route("/token", axum::routing::get(dispatch::token))
        .route("/ui", axum::routing::get(dispatch::ui))
        .route("/ui/{page}", axum::routing::get(dispatch::ui));
    if state.app.metrics_at == MetricsAt::Api {
        r = r.route("/metrics", axum::routing::get(dispatch::metrics));
    }
    r.fallback(dispatch::not_found).with_state(Arc::new(state))
}

/// The axum router for the whole API.
pub fn router(app: App) -> Router {
    router_with(ListenerState { app, fixed: None })
}

/// The router of a dedicated metrics listener (`[metrics] listen`): `/metrics` only.
pub fn metrics_router(app: App) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(dispatch::metrics))
        .fallback(dispatch::not_found)
        .with_state(Arc::new(ListenerState { app, fixed: None }))
}

/// The router of a dedicated listener for upstream `name`: every repository on it
/// belongs to that upstream (the drop-in layout of one port per upstream). `None` when
/// no such upstream is configured.
pub fn upstream_router(app: App, name: &str) -> Option<Router> {
    app.cache.upstream(name)?;
    Some(router_with(ListenerState {
        app,
        fixed: Some(name.to_owned()),
    }))
}

/// Serve the API on `listener` until `shutdown` completes, then finish in-flight
/// requests and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    transport::serve(listener, router(app), shutdown, options).await
}

/// The modules of this crate in the order their imports run: each uses only modules
/// before it (and the crate root's types).
pub const LAYERS: &[&str] = &[
    "probes",
    "headers",
    "error",
    "range",
    "route",
    "tls",
    "transport",
    "metrics",
    "history",
    "access",
    "respond",
    "listing",
    "hosted",
    "cached",
    "ui",
    "dispatch",
];

#[cfg(test)]
mod layering {
    /// Architecture Invariant: imports inside the server run one way, so no two modules
    /// need each other.
    #[test]
    fn imports_inside_the_crate_run_one_way() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        // A module is a file, or a folder with its `mod.rs` (read as all its files).
        let mut modules: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("mod.rs").is_file() || p.extension().is_some_and(|x| x == "rs"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .filter(|m| m != "lib")
            .collect();
        modules.sort();
        let text_of = |module: &str| -> String {
            let folder = dir.join(module);
            if folder.is_dir() {
                let mut parts: Vec<_> = std::fs::read_dir(&folder)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                parts.sort();
                parts
                    .iter()
                    .map(|p| std::fs::read_to_string(p).unwrap())
                    .collect()
            } else {
                std::fs::read_to_string(dir.join(format!("{module}.rs"))).unwrap()
            }
        };
        assert_eq!(
            {
                let mut m = super::LAYERS.to_vec();
                m.sort();
                m
            },
            modules,
            "LAYERS names every module"
        );
        let at = |m: &str| super::LAYERS.iter().position(|l| *l == m);
        for module in super::LAYERS {
            let text = text_of(module);
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let used: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let names: Vec<String> = if used.is_empty() && rest.starts_with('{') {
                    rest[1..rest.find('}').unwrap()]
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap().to_owned())
                        .collect()
                } else {
                    vec![used]
                };
                for name in names {
                    if let (Some(user), Some(used)) = (at(module), at(&name)) {
                        assert!(
                            used < user,
                            "{module} imports {name}, which comes after it in LAYERS"
                        );
                    }
                }
            }
        }
    }
}
