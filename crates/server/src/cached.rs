//! Routing to upstream caches and the handlers of cached repositories. A request is for
//! an upstream when its listener is dedicated to one, when it carries containerd's
//! `?ns=<upstream>`, or when its repository path starts with an upstream's name (or its
//! store key); everything else is a hosted repository. Cached repositories are read-only.

use crate::error::ApiError;
use crate::handlers::{self, DIGEST_HEADER, hv};
use crate::route::{self, Route, RouteError};
use crate::{App, Ctx};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use cache::{BlobSize, BlobSource, CacheError, CachedUpstream};
use oci::{Digest, RepoName};
use std::sync::Arc;

type Result<T, E = ApiError> = std::result::Result<T, E>;

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

fn ns_of(uri: &Uri) -> Option<String> {
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
fn normalize(route: Route, up: &CachedUpstream) -> Route {
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

fn cache_error(e: CacheError, not_found_code: &'static str) -> ApiError {
    match e {
        CacheError::NotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            not_found_code,
            "not found in the cache nor upstream",
        ),
        CacheError::Unavailable { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "UNKNOWN", e.to_string())
        }
        CacheError::Registry(e) => e.into(),
    }
}

fn local(up: &CachedUpstream, repo: &RepoName) -> Result<RepoName> {
    up.local(repo).map_err(|e| cache_error(e, "NAME_INVALID"))
}

/// Handle a request for a cached repository.
pub(crate) async fn handle(
    app: &App,
    up: &Arc<CachedUpstream>,
    route: Route,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response> {
    match (route, method.clone()) {
        (Route::Base, Method::GET | Method::HEAD) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response())
        }
        (Route::Manifest(repo, reference), m @ (Method::GET | Method::HEAD)) => {
            let found = app
                .cache
                .get_manifest(up, &repo, &reference)
                .await
                .map_err(|e| cache_error(e, "MANIFEST_UNKNOWN"))?;
            Ok(handlers::manifest_response(&found, m == Method::HEAD))
        }
        (Route::Blob(repo, digest), m @ (Method::GET | Method::HEAD)) => {
            blob(app, up, &repo, &digest, headers, m == Method::HEAD).await
        }
        (Route::Tags(repo), Method::GET) => handlers::tags(app, &local(up, &repo)?, uri).await,
        (Route::Referrers(repo, d), Method::GET) => {
            handlers::referrers(app, &local(up, &repo)?, &d, uri).await
        }
        (_, m) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!(
                "{m} is not allowed here: repositories of upstream {} are a read-only cache",
                up.name
            ),
        )),
    }
}

async fn blob(
    app: &App,
    up: &Arc<CachedUpstream>,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    let local = local(up, repo)?;
    if head {
        return match app
            .cache
            .blob_size(up, repo, digest)
            .await
            .map_err(|e| cache_error(e, "BLOB_UNKNOWN"))?
        {
            BlobSize::Local(_) => handlers::get_blob(app, &local, digest, headers, true).await,
            BlobSize::Upstream(size) => Ok(blob_head(digest, Some(size))),
        };
    }
    let source = app
        .cache
        .blob(up, repo, digest)
        .await
        .map_err(|e| cache_error(e, "BLOB_UNKNOWN"))?;
    let mut reader = match source {
        BlobSource::Local(size) => {
            if !headers.contains_key(header::RANGE) {
                up.stats
                    .served_bytes
                    .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
            }
            return handlers::get_blob(app, &local, digest, headers, false).await;
        }
        BlobSource::Filling(reader) => reader,
    };
    let total = match reader.started().await {
        cache::Started::Streaming(total) => total,
        cache::Started::NotFound => return Err(cache_error(CacheError::NotFound, "BLOB_UNKNOWN")),
        cache::Started::Failed(message) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                format!("upstream {}: {message}", up.name),
            ));
        }
    };
    // A range waits for the whole blob; a plain GET streams it as it arrives.
    if headers.contains_key(header::RANGE) {
        reader.finished().await.map_err(|m| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                format!("upstream {}: {m}", up.name),
            )
        })?;
        return handlers::get_blob(app, &local, digest, headers, false).await;
    }
    let mut resp = blob_head(digest, total);
    *resp.body_mut() = Body::from_stream(reader.stream());
    Ok(resp)
}

/// The headers of a blob response, with an empty body.
fn blob_head(digest: &Digest, size: Option<u64>) -> Response {
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(t) = size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(t));
    }
    h.insert(DIGEST_HEADER, hv(&digest.to_string()));
    resp
}
