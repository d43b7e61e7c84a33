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
        CacheError::Registry(e) => e.into(),
    }
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
        (Route::Tags(repo), Method::GET) => listing::tags(app, &local(up, &repo)?, uri).await,
        (Route::Referrers(repo, d), Method::GET) => {
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
        cache::Started::Failed(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                format!("upstream {}: {e}", up.name),
            ));
        }
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
