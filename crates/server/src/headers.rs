//! Header names, values and readers shared by every handler: the API version, the digest
//! and upload headers, reading `Content-Length` and the query. It builds no responses.

use axum::http::{HeaderMap, HeaderValue, Uri, header};
use std::collections::HashMap;

pub(crate) const API_VERSION: &str = "registry/2.0";

pub(crate) const DIGEST_HEADER: &str = "docker-content-digest";

pub(crate) const UPLOAD_UUID_HEADER: &str = "docker-upload-uuid";

/// The `Range` header value for an upload holding `size` bytes: `0-<last byte>`
/// (`0-0` when empty, as distribution does).
pub fn range_header(size: u64) -> HeaderValue {
    hv(&format!("0-{}", size.saturating_sub(1)))
}

pub(crate) fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(crate) fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub(crate) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

/// Is there a body to read? (A Content-Length above zero, or a chunked body.)
pub(crate) fn has_body(headers: &HeaderMap) -> bool {
    match content_length(headers) {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}
