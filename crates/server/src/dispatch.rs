//! Where every request goes and whether it may: the `/v2` entry point parses the route,
//! targets a hosted or a cached repository (dedicated listener, `?ns=`, path prefix),
//! authorises the caller, hands the request to `hosted` or `cached`, and records it;
//! beside it the `/token`, `/metrics` and `/ui` entry points.

use crate::access::Caller;
use crate::error::ApiError;
use crate::headers::{API_VERSION, has_body, hv};

use crate::route::{self, Route, RouteError};
use crate::{App, Ctx};
use crate::{cached, hosted, listing};
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use cache::CachedUpstream;
use oci::RepoName;
use std::sync::Arc;
use std::time::Instant;

/// Where a request goes.
pub(crate) struct Target {
    /// The route, with repository names as the upstream knows them when cached.
    pub route: Route,
    pub upstream: Option<Arc<CachedUpstream>>,
}

pub(crate) enum TargetError {
    UnknownUpstream(String),
    Route(RouteError),
}

pub(crate) fn ns_of(uri: &Uri) -> Option<String> {
    let q = uri.query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned())
}

/// Decide where a request goes.
pub(crate) fn target(ctx: &Ctx, uri: &Uri) -> Result<Target, TargetError> {
    let path = uri.path();
    let cache = &ctx.app.cache;
    let (upstream, path) = if let Some(fixed) = &ctx.fixed {
        // Looked up per request: a reload may have changed (or removed) the upstream.
        match cache.upstream(fixed) {
            Some(up) => (Some(up), path.to_owned()),
            None => return Err(TargetError::UnknownUpstream(fixed.clone())),
        }
    } else if let Some(ns) = ns_of(uri).filter(|ns| !ns.is_empty()) {
        match cache.upstream(&ns) {
            Some(up) => (Some(up), path.to_owned()),
            None => {
                // The base endpoint and the catalog do not name a repository.
                match route::parse(path) {
                    Ok(Route::Base | Route::Catalog) => (None, path.to_owned()),
                    _ => return Err(TargetError::UnknownUpstream(ns)),
                }
            }
        }
    } else {
        let rest = path.strip_prefix("/v2/").unwrap_or("");
        let prefixed = rest
            .split_once('/')
            .and_then(|(first, tail)| cache.for_prefix(first).map(|u| (u, format!("/v2/{tail}"))));
        match prefixed {
            Some((up, tail)) => (Some(up), tail),
            None => (None, path.to_owned()),
        }
    };
    let route = route::parse(&path).map_err(TargetError::Route)?;
    let route = match &upstream {
        Some(up) => normalize(route, up),
        None => route,
    };
    Ok(Target { route, upstream })
}

/// The store name of repository `name` as this listener's clients write it, the one name
/// rules and tokens know: on a dedicated listener every name is its upstream's; elsewhere
/// a name whose first component is an upstream's name or key is that upstream's, and any
/// other is hosted. `None` for a name no repository can have (too long once prefixed).
pub(crate) fn stored_name(ctx: &Ctx, name: &RepoName) -> Option<RepoName> {
    let cache = &ctx.app.cache;
    let (up, repo) = match &ctx.fixed {
        Some(fixed) => (cache.upstream(fixed)?, name.clone()),
        None => {
            let Some((first, tail)) = name.as_str().split_once('/') else {
                return Some(name.clone());
            };
            match cache.for_prefix(first) {
                Some(up) => (up, tail.parse().ok()?),
                None => return Some(name.clone()),
            }
        }
    };
    up.local(&up.normalize(repo)).ok()
}

/// Apply the upstream's name normalisation (Docker Hub's `library/`) to a route.
pub(crate) fn normalize(route: Route, up: &CachedUpstream) -> Route {
    match route {
        Route::Tags(r) => Route::Tags(up.normalize(r)),
        Route::Manifest(r, x) => Route::Manifest(up.normalize(r), x),
        Route::Blob(r, d) => Route::Blob(up.normalize(r), d),
        Route::UploadStart(r) => Route::UploadStart(up.normalize(r)),
        Route::Upload(r, id) => Route::Upload(up.normalize(r), id),
        Route::Referrers(r, d) => Route::Referrers(up.normalize(r), d),
        other => other,
    }
}

/// Fallback for paths outside `/v2`.
/// `GET /token`: the token endpoint of the Docker token flow.
pub(crate) async fn token(
    State(ctx): State<Ctx>,
    ConnectInfo(client): ConnectInfo<std::net::SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let scopes: Vec<String> = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    let resp = ctx
        .app
        .access()
        .token(&headers, Some(client.ip()), &scopes, |name| {
            stored_name(&ctx, name)
        })
        .await;
    // Logged and counted like every `/v2` request (the scopes asked for are logged
    // separately; never the credentials or the token).
    tracing::debug!(scopes = ?scopes, "token requested");
    record(&ctx.app, "token", &Method::GET, &uri, &resp, started);
    resp
}

/// Count a finished request in the metrics and log it (at debug level).
pub(crate) fn record(
    app: &App,
    class: &'static str,
    method: &Method,
    uri: &Uri,
    resp: &Response,
    started: Instant,
) {
    let took = started.elapsed();
    app.metrics
        .request(class, method, resp.status().as_u16(), took);
    tracing::debug!(
        method = %method,
        path = uri.path(),
        route = class,
        status = resp.status().as_u16(),
        micros = took.as_micros() as u64,
        "request"
    );
}

/// `GET /metrics`: every meter in the Prometheus text format.
pub(crate) async fn metrics(State(ctx): State<Ctx>) -> Response {
    let text = crate::metrics::render(&ctx.app);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// `GET /ui`: the read-only web page.
pub(crate) async fn ui(
    State(ctx): State<Ctx>,
    ConnectInfo(client): ConnectInfo<std::net::SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    crate::ui::page(&ctx.app, &uri, &headers, client.ip()).await
}

pub async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "UNSUPPORTED", "no such endpoint").into_response()
}

/// Entry point for every `/v2` request.
pub(crate) async fn dispatch(
    State(ctx): State<Ctx>,
    ConnectInfo(client): ConnectInfo<std::net::SocketAddr>,
    external: Option<axum::Extension<crate::transport::ExternalUrl>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let app = &ctx.app;
    let target = target(&ctx, &uri);
    let class = match &target {
        Ok(t) => t.route.class(),
        Err(_) => "invalid",
    };
    let body = app.metrics.count_received(class, body);
    // The repository a manifest GET reads, by its name in the store (for the web page).
    let pulled = match &target {
        Ok(t) if method == Method::GET => match &t.route {
            Route::Manifest(repo, _) => Some(match &t.upstream {
                Some(up) => format!("{}/{repo}", up.key),
                None => repo.to_string(),
            }),
            _ => None,
        },
        _ => None,
    };
    // The registry-proxying section of the distribution spec: a cached repository's
    // responses name the upstream they stand for.
    let namespace = match &target {
        Ok(t) => t.upstream.as_ref().map(|u| hv(&u.name)),
        Err(_) => None,
    };
    let mut resp = match target {
        Ok(t) => match authorize(&ctx, &t, &method, &headers, client.ip()).await {
            Err(refusal) => refusal,
            Ok(who) => match t {
                // A dedicated listener's catalog lists its upstream's cached repositories.
                Target {
                    route: Route::Catalog,
                    upstream,
                } if method == Method::GET => listing::catalog(app, &who, &uri, upstream.as_deref())
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                Target {
                    route,
                    upstream: Some(up),
                } => cached::handle(app, &up, route, &method, &uri, &headers)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                Target {
                    route,
                    upstream: None,
                } => hosted::handle(app, &who, route, &method, &uri, &headers, body)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
            },
        },
        Err(TargetError::UnknownUpstream(ns)) => ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("no upstream named {ns:?} is configured; berth only caches the upstreams in its configuration"),
        )
        .into_response(),
        Err(TargetError::Route(e)) => route_error(e, &method),
    };
    // An error answered before the request body was read leaves unread bytes on the
    // connection; tell the client not to reuse it rather than dropping it silently.
    if resp.status().as_u16() >= 400 && has_body(&headers) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    if let Some(ns) = namespace {
        resp.headers_mut().insert("oci-namespace", ns);
    }
    // Behind a proxy, locations name the URL clients use (`[server] external_url`).
    if let Some(axum::Extension(url)) = external
        && let Some(loc) = resp.headers().get(header::LOCATION)
        && let Ok(path) = loc.to_str()
        && path.starts_with('/')
    {
        let absolute = hv(&format!("{}://{}{path}", url.scheme, url.authority));
        resp.headers_mut().insert(header::LOCATION, absolute);
    }
    if let Some(repo) = pulled
        && resp.status() == StatusCode::OK
    {
        app.metrics.pulled(repo);
    }
    record(app, class, &method, &uri, &resp, started);
    resp.map(|b| app.metrics.count_sent(class, b))
}

pub(crate) fn route_error(e: RouteError, method: &Method) -> Response {
    match e {
        RouteError::NotFound => {
            ApiError::new(StatusCode::NOT_FOUND, "UNSUPPORTED", "no such endpoint").into_response()
        }
        RouteError::BadUploadId => ApiError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "blob upload unknown to registry",
        )
        .into_response(),
        // A reference that cannot be a tag names no manifest: reads and deletes of it
        // are 404 like any other unknown manifest; a PUT of it is refused as invalid.
        RouteError::Invalid(oci::NameError::Tag(_)) if *method != Method::PUT => {
            ApiError::from(registry::RegistryError::ManifestUnknown).into_response()
        }
        RouteError::Invalid(e) => ApiError::from(registry::RegistryError::from(e)).into_response(),
    }
}

/// The caller, if it may make this request; else the refusal. Cached repositories are
/// checked under their name in the store (`docker.io/library/nginx`).
pub(crate) async fn authorize(
    ctx: &Ctx,
    t: &Target,
    method: &Method,
    headers: &HeaderMap,
    client: std::net::IpAddr,
) -> std::result::Result<Caller, Response> {
    let access = ctx.app.access();
    let who = access.caller(headers, Some(client)).await?;
    let repo = match &t.route {
        Route::Base => {
            if access.login_required(&who) {
                return Err(access.challenge(headers, None, "log in to use this registry", false));
            }
            return Ok(who);
        }
        // Filtered to what the caller may pull; a token must carry the catalog scope.
        Route::Catalog => {
            if let Caller::Token(c) = &who
                && !c.catalog()
            {
                let scope: auth::Scope = "registry:catalog:*"
                    .parse()
                    .unwrap_or_else(|_| unreachable!("a fixed valid scope"));
                return Err(access.challenge(
                    headers,
                    Some(&scope),
                    "the token does not grant the catalog",
                    true,
                ));
            }
            return Ok(who);
        }
        Route::Tags(r)
        | Route::Manifest(r, _)
        | Route::Blob(r, _)
        | Route::UploadStart(r)
        | Route::Upload(r, _)
        | Route::Referrers(r, _) => r,
    };
    let local = match &t.upstream {
        // The route is already normalised (`library/` added) by `cached::target`.
        Some(up) => up.local(repo).unwrap_or_else(|_| repo.clone()),
        None => repo.clone(),
    };
    // A dedicated listener's clients name its repositories without the upstream; a
    // token they ask for on it names them so (and `/token` there maps them back).
    let asked = if ctx.fixed.is_some() { repo } else { &local };
    let content_delete = matches!(t.route, Route::Manifest(..) | Route::Blob(..));
    access.check(
        headers,
        &who,
        crate::access::Named {
            stored: &local,
            asked,
        },
        crate::access::action_for(method, content_delete),
    )?;
    Ok(who)
}
