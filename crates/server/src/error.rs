//! Error responses: the spec's JSON body `{"errors":[{"code","message","detail"}]}` with
//! the status each code calls for.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use registry::RegistryError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra headers (e.g. `Range` on a 416 for an upload).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The `detail` member of the error body.
    pub detail: serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
            detail: serde_json::Value::Null,
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    pub fn unsupported(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        use RegistryError::*;
        let status = match &e {
            BlobUnknown | BlobUploadUnknown | ManifestUnknown | NameUnknown => {
                StatusCode::NOT_FOUND
            }
            RangeInvalid { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ManifestTooLarge { .. } | BlobTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyInterrupted(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                StatusCode::REQUEST_TIMEOUT
            }
            Storage(s) if s.is_storage_full() => StatusCode::INSUFFICIENT_STORAGE,
            Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "storage failure");
        }
        if status == StatusCode::INSUFFICIENT_STORAGE {
            tracing::error!(error = %e, "storage is full");
            return ApiError::new(
                status,
                "UNKNOWN",
                "insufficient storage: the registry's storage is full; nothing of this request was kept",
            );
        }
        let mut err = ApiError::new(status, e.code(), e.to_string());
        if let Some(d) = e.digest() {
            err.detail = serde_json::json!({ "digest": d.to_string() });
        }
        if let RangeInvalid { current } = e {
            err = err.with_header(header::RANGE, crate::headers::range_header(current));
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": self.detail }]
        });
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
            .into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}
