//! Handlers of cached repositories: manifests and blobs through the pull-through cache
//! (a hit served from the store, a miss streamed as it is stored), tags and referrers
//! from the store. Cached repositories are read-only; targeting is `dispatch`'s.

use crate::App;
use crate::error::ApiError;
use crate::listing;
use crate::respond::{blob_head, get_blob, manifest_response, serve_blob};
use crate::route::Route;
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use cache::{BlobSize, BlobSource, CacheError, CachedUpstream};
use oci::{Digest, RepoName};
use std::sync::Arc;

pub(crate) type Result<T, E = ApiError> = std::result::Result<T, E>;

pub(crate) fn cache_error(e: CacheError, not_found_code: &'static str) -> ApiError {
    match e {
        CacheError::NotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            not_found_code,
            "not found in the cache nor upstream",
        ),
        CacheError::Unavailable { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "UNKNOWN", e.to_string())
        }
        CacheError::Denied { .. } => ApiError::new(StatusCode::FORBIDDEN, "DENIED", e.to_string()),
        CacheError::Refused { ref refused, .. } => {
            let (status, code) = match refused {
                cache::Refused::RateLimited { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS")
                }
                cache::Refused::Busy { .. } | cache::Refused::Down { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
                }
            };
            let wait = refused.retry_after();
            ApiError::new(status, code, e.to_string())
                .with_header(header::RETRY_AFTER, retry_after(wait))
        }
        CacheError::RateLimited {
            retry_after: wait, ..
        } => {
            let wait = wait.unwrap_or(cache::gate::DEFAULT_RATE_LIMIT_BACKOFF);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                e.to_string(),
            )
            .with_header(header::RETRY_AFTER, retry_after(wait))
        }
        CacheError::Registry(e) => e.into(),
    }
}

/// A `Retry-After` of whole seconds, at least one (a client told 0 would retry at once).
fn retry_after(wait: std::time::Duration) -> axum::http::HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    axum::http::HeaderValue::from(secs.max(1))
}

/// The error of a blob download that failed before its first byte: the upstream's 429
/// as a 429 (the client may retry later), anything else as 502.
fn fill_error(up: &CachedUpstream, e: &cache::FillError) -> ApiError {
    if let Some(wait) = e.rate_limited() {
        return cache_error(
            CacheError::RateLimited {
                upstream: up.name.clone(),
                retry_after: wait,
            },
            "BLOB_UNKNOWN",
        );
    }
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "UNKNOWN",
        format!("upstream {}: {e}", up.name),
    )
}

/// The upstream's allow-list, for the routes the cache does not check itself (listings
/// from the store).
fn allowed(up: &CachedUpstream, repo: &RepoName) -> Result<()> {
    up.check_allowed(repo)
        .map_err(|e| cache_error(e, "NAME_UNKNOWN"))
}

pub(crate) fn local(up: &CachedUpstream, repo: &RepoName) -> Result<RepoName> {
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
            Ok(manifest_response(&found, m == Method::HEAD))
        }
        (Route::Blob(repo, digest), m @ (Method::GET | Method::HEAD)) => {
            blob(app, up, &repo, &digest, headers, m == Method::HEAD).await
        }
        (Route::Tags(repo), Method::GET) => {
            allowed(up, &repo)?;
            listing::tags(app, &local(up, &repo)?, uri).await
        }
        (Route::Referrers(repo, d), Method::GET) => {
            allowed(up, &repo)?;
            listing::referrers(app, &local(up, &repo)?, &d, uri).await
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

pub(crate) async fn blob(
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
            BlobSize::Local(blob) => serve_blob(app, &blob, digest, headers, true).await,
            BlobSize::Upstream(size) => Ok(blob_head(digest, Some(size))),
        };
    }
    let source = app
        .cache
        .blob(up, repo, digest)
        .await
        .map_err(|e| cache_error(e, "BLOB_UNKNOWN"))?;
    let mut reader = match source {
        BlobSource::Local(blob) => {
            if !headers.contains_key(header::RANGE) {
                up.stats.served_bytes.add(blob.size);
            }
            return serve_blob(app, &blob, digest, headers, false).await;
        }
        BlobSource::Filling(reader) => reader,
    };
    let total = match reader.started().await {
        cache::Started::Streaming(total) => total,
        cache::Started::NotFound => return Err(cache_error(CacheError::NotFound, "BLOB_UNKNOWN")),
        cache::Started::Failed(e) => return Err(fill_error(up, &e)),
    };
    // A range waits for the whole blob; a plain GET streams it as it arrives.
    if headers.contains_key(header::RANGE) {
        reader.finished().await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                format!("upstream {}: {e}", up.name),
            )
        })?;
        return get_blob(app, &local, digest, headers, false).await;
    }
    let mut resp = blob_head(digest, total);
    *resp.body_mut() = Body::from_stream(reader.stream());
    Ok(resp)
}
