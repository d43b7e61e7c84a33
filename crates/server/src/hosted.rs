//! Handlers of hosted repositories: manifests and blobs read and written, uploads in
//! every style, deletes. They translate between HTTP and registry calls and make no
//! content decisions of their own; authorisation happened before (`dispatch`).

use crate::App;
use crate::access::Caller;
use crate::error::ApiError;
use crate::headers::{
    DIGEST_HEADER, UPLOAD_UUID_HEADER, content_length, has_body, header_str, hv, query,
    range_header,
};
use crate::range;
use crate::respond::{get_blob, manifest_response};
use crate::route::Route;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use oci::{Digest, Reference, RepoName};
use registry::PutManifest;
use store::{ByteStream, UploadId};

pub(crate) type Result<T, E = ApiError> = std::result::Result<T, E>;

pub(crate) fn body_stream(body: Body) -> ByteStream {
    body.into_data_stream()
        .map_err(|e| {
            // The timeout may be wrapped by the body layers above the transport.
            let mut timed_out = false;
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                timed_out |= c.is::<crate::transport::BodyTimedOut>();
                cause = c.source();
            }
            let kind = if timed_out {
                std::io::ErrorKind::TimedOut
            } else {
                std::io::ErrorKind::ConnectionAborted
            };
            std::io::Error::new(kind, e.to_string())
        })
        .boxed()
}

pub(crate) fn parse_digest(s: &str) -> Result<Digest> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::from(registry::RegistryError::from(e)))
}

pub(crate) async fn handle(
    app: &App,
    who: &Caller,
    route: Route,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let m = method.clone();
    match (route, m) {
        (Route::Base, Method::GET | Method::HEAD) => Ok((
            [(header::CONTENT_TYPE, "application/json")],
            if *method == Method::HEAD { "" } else { "{}" },
        )
            .into_response()),
        (Route::Tags(repo), Method::GET) => crate::listing::tags(app, &repo, uri).await,
        (Route::Manifest(repo, r), Method::GET) => get_manifest(app, &repo, &r, false).await,
        (Route::Manifest(repo, r), Method::HEAD) => get_manifest(app, &repo, &r, true).await,
        (Route::Manifest(repo, r), Method::PUT) => {
            put_manifest(app, &repo, &r, headers, body).await
        }
        (Route::Manifest(repo, r), Method::DELETE) => {
            app.registry.delete_manifest(&repo, &r).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Route::Blob(repo, d), Method::GET) => get_blob(app, &repo, &d, headers, false).await,
        (Route::Blob(repo, d), Method::HEAD) => get_blob(app, &repo, &d, headers, true).await,
        (Route::Blob(repo, d), Method::DELETE) => {
            app.registry.delete_blob(&repo, &d).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Route::UploadStart(repo), Method::POST) => {
            start_upload(app, who, &repo, uri, headers, body).await
        }
        (Route::Upload(repo, id), Method::GET) => {
            let state = app.registry.upload_status(&repo, &id).await?;
            Ok(upload_response(
                StatusCode::NO_CONTENT,
                &repo,
                &id,
                state.size,
            ))
        }
        (Route::Upload(repo, id), Method::PATCH) => {
            patch_upload(app, &repo, &id, headers, body).await
        }
        (Route::Upload(repo, id), Method::PUT) => {
            finish_upload(app, &repo, &id, uri, headers, body).await
        }
        (Route::Upload(repo, id), Method::DELETE) => {
            app.registry.cancel_upload(&repo, &id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Route::Referrers(repo, d), Method::GET) => {
            crate::listing::referrers(app, &repo, &d, uri).await
        }
        (_, m) => Err(ApiError::unsupported(format!(
            "method {m} is not supported on this endpoint"
        ))),
    }
}

pub(crate) async fn get_manifest(
    app: &App,
    repo: &RepoName,
    reference: &Reference,
    head: bool,
) -> Result<Response> {
    let m = app.registry.get_manifest(repo, reference).await?;
    Ok(manifest_response(&m, head))
}

pub(crate) async fn put_manifest(
    app: &App,
    repo: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let limit = app.registry.options().max_manifest_bytes;
    if let Some(len) = content_length(headers)
        && len > limit
    {
        return Err(registry::RegistryError::ManifestTooLarge { size: len, limit }.into());
    }
    let bytes = axum::body::to_bytes(body, limit as usize)
        .await
        .map_err(|_| {
            ApiError::from(registry::RegistryError::ManifestTooLarge {
                size: limit + 1,
                limit,
            })
        })?;
    let outcome = app
        .registry
        .put_manifest(PutManifest {
            repo,
            reference,
            content_type: header_str(headers, header::CONTENT_TYPE),
            bytes,
        })
        .await?;
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&format!("/v2/{repo}/manifests/{}", outcome.digest)),
    );
    h.insert(DIGEST_HEADER, hv(&outcome.digest.to_string()));
    if let Some(subject) = outcome.subject {
        h.insert("oci-subject", hv(&subject.to_string()));
    }
    Ok(resp)
}

pub(crate) fn upload_location(repo: &RepoName, id: &UploadId) -> HeaderValue {
    hv(&format!("/v2/{repo}/blobs/uploads/{id}"))
}

pub(crate) fn upload_response(
    status: StatusCode,
    repo: &RepoName,
    id: &UploadId,
    size: u64,
) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, upload_location(repo, id));
    h.insert(header::RANGE, range_header(size));
    h.insert(UPLOAD_UUID_HEADER, hv(id.as_str()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

pub(crate) fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{repo}/blobs/{digest}")));
    h.insert(DIGEST_HEADER, hv(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

pub(crate) async fn start_upload(
    app: &App,
    who: &Caller,
    repo: &RepoName,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let q = query(uri);
    if let Some(mount) = q.get("mount") {
        let digest = parse_digest(mount)?;
        let from = match q.get("from") {
            Some(f) => Some(
                f.parse::<RepoName>()
                    .map_err(|e| ApiError::from(registry::RegistryError::from(e)))?,
            ),
            None => None,
        };
        // Mounting reads the source: only from repositories the caller may pull.
        let access = app.access();
        // A cached repository is read only while its upstream's allow-list names it.
        let may_read = |r: &RepoName| {
            access.allowed(who, r).contains(auth::Action::Pull) && cache_allows(app, r)
        };
        if app
            .registry
            .mount_blob(repo, &digest, from.as_ref(), &may_read)
            .await?
        {
            return Ok(blob_created(repo, &digest));
        }
        // Not mountable: fall through to an ordinary upload session, as the spec says.
    } else if let Some(d) = q.get("digest") {
        // Monolithic upload: POST with the whole blob and its digest.
        let digest = parse_digest(d)?;
        app.registry
            .put_blob(repo, &digest, content_length(headers), body_stream(body))
            .await?;
        return Ok(blob_created(repo, &digest));
    }
    let id = app.registry.start_upload(repo).await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &id, 0))
}

/// (start, length) announced for a chunk: from Content-Range when present, else the
/// length from Content-Length alone.
pub(crate) fn chunk_bounds(headers: &HeaderMap) -> Result<(Option<u64>, Option<u64>)> {
    let len = content_length(headers);
    match header_str(headers, header::CONTENT_RANGE) {
        Some(cr) => {
            let (start, range_len) = range::content_range(cr).ok_or_else(|| {
                ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UPLOAD_INVALID",
                    format!("malformed Content-Range {cr:?}"),
                )
            })?;
            if let Some(len) = len
                && len != range_len
            {
                return Err(ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UPLOAD_INVALID",
                    format!("Content-Range covers {range_len} bytes but Content-Length is {len}"),
                ));
            }
            Ok((Some(start), Some(range_len)))
        }
        None => Ok((None, len)),
    }
}

pub(crate) async fn patch_upload(
    app: &App,
    repo: &RepoName,
    id: &UploadId,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let (start, len) = match chunk_bounds(headers) {
        Ok(b) => b,
        Err(e) => {
            // Tell the client where the upload stands so it can resume.
            let state = app.registry.upload_status(repo, id).await?;
            return Err(e
                .with_header(header::RANGE, range_header(state.size))
                .with_header(header::LOCATION, upload_location(repo, id)));
        }
    };
    let state = app
        .registry
        .append_upload(repo, id, start, len, body_stream(body))
        .await
        .map_err(|e| {
            let is_range = matches!(e, registry::RegistryError::RangeInvalid { .. });
            let err = ApiError::from(e);
            if is_range {
                err.with_header(header::LOCATION, upload_location(repo, id))
            } else {
                err
            }
        })?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, id, state.size))
}

pub(crate) async fn finish_upload(
    app: &App,
    repo: &RepoName,
    id: &UploadId,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let q = query(uri);
    let digest = q.get("digest").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "the digest query parameter is required",
        )
    })?;
    let digest = parse_digest(digest)?;
    let last_chunk = if has_body(headers) {
        let (start, len) = chunk_bounds(headers)?;
        Some((start, len, body_stream(body)))
    } else {
        None
    };
    app.registry
        .finish_upload(repo, id, &digest, last_chunk)
        .await?;
    Ok(blob_created(repo, &digest))
}

/// Whether `r`, when it is a cached repository (`<upstream key>/<name>`), is one its
/// upstream's allow-list names; hosted repositories always are.
fn cache_allows(app: &App, r: &RepoName) -> bool {
    let Some((first, rest)) = r.as_str().split_once('/') else {
        return true;
    };
    match app.cache.for_prefix(first) {
        Some(up) if up.key == first => rest.parse::<RepoName>().is_ok_and(|n| up.allows(&n)),
        _ => true,
    }
}
