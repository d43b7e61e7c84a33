//! Building responses that hosted and cached repositories share: a blob (opened once, then
//! its size, range and body), a manifest, JSON with pagination links. It never decides
//! who may ask or where a request goes.

use crate::App;
use crate::error::ApiError;
use crate::headers::{DIGEST_HEADER, header_str, hv, query};
use crate::range::{self, RangeRequest};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use oci::{Digest, RepoName};
use registry::Page;

pub(crate) type Result<T, E = ApiError> = std::result::Result<T, E>;

pub(crate) fn page_of(uri: &Uri) -> Result<Page> {
    let q = query(uri);
    let n = match q.get("n") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
                "n must be a non-negative integer",
            )
        })?),
        None => None,
    };
    Ok(Page {
        n,
        last: q.get("last").cloned(),
    })
}

pub(crate) fn link_next(path: &str, n: Option<usize>, last: &str) -> HeaderValue {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    if let Some(n) = n {
        ser.append_pair("n", &n.to_string());
    }
    ser.append_pair("last", last);
    hv(&format!("<{path}?{}>; rel=\"next\"", ser.finish()))
}

pub(crate) fn json_response(
    value: &serde_json::Value,
    content_type: &'static str,
    link: Option<HeaderValue>,
) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if let Some(l) = link {
        resp.headers_mut().insert(header::LINK, l);
    }
    resp
}

/// The response for a manifest GET or HEAD.
pub(crate) fn manifest_response(m: &registry::Manifest, head: bool) -> Response {
    let mut headers = HeaderMap::with_capacity(5);
    headers.insert(header::CONTENT_TYPE, hv(&m.stored.media_type));
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(m.stored.bytes.len()),
    );
    let digest = hv(&m.digest.to_string());
    headers.insert(header::ETAG, hv(&format!("\"{}\"", m.digest)));
    headers.insert(DIGEST_HEADER, digest);
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.stored.bytes.clone())
    };
    let mut resp = Response::new(body);
    *resp.headers_mut() = headers;
    resp
}

pub(crate) async fn get_blob(
    app: &App,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    let blob = app.registry.open_blob(repo, digest).await?;
    serve_blob(app, &blob, digest, headers, head).await
}

/// Answer a GET or HEAD of a blob already looked up (hosted, or a cache hit): its size,
/// range and body all come from `blob`, so the store is not asked again.
pub(crate) async fn serve_blob(
    app: &App,
    blob: &registry::OpenBlob,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    // Bytes straight from object storage: a 307 to a short-lived presigned URL.
    if !head
        && let Some(ttl) = app.blob_redirect
        && let Some(url) = blob.presigned(ttl).await?
    {
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        resp.headers_mut().insert(header::LOCATION, hv(&url));
        resp.headers_mut()
            .insert(DIGEST_HEADER, hv(&digest.to_string()));
        return Ok(resp);
    }
    let size = blob.size;
    let requested = range::resolve(header_str(headers, header::RANGE), size);
    let (status, range) = match requested {
        RangeRequest::Whole => (StatusCode::OK, 0..size),
        RangeRequest::Part(r) => (StatusCode::PARTIAL_CONTENT, r),
        RangeRequest::Unsatisfiable => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "UNSUPPORTED",
                format!("requested range is not satisfiable for a blob of {size} bytes"),
            )
            .with_header(header::CONTENT_RANGE, hv(&format!("bytes */{size}"))));
        }
    };
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(blob.read(Some(range.clone())).await?)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(range.end - range.start),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(DIGEST_HEADER, hv(&digest.to_string()));
    h.insert(header::ETAG, hv(&format!("\"{digest}\"")));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {}-{}/{size}", range.start, range.end - 1)),
        );
    }
    Ok(resp)
}

/// The headers of a blob response, with an empty body.
pub(crate) fn blob_head(digest: &Digest, size: Option<u64>) -> Response {
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
