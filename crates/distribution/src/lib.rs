//! A client of the OCI distribution API for one remote registry: anonymous, Basic and
//! Bearer-token access (following `WWW-Authenticate` challenges, caching tokens until they
//! expire), manifest HEAD, GET (with digest verification) and PUT, streaming blob GET that
//! follows redirects to blob storage, blob upload and cross-repository mount. The cache
//! uses it to read its upstreams and the client tools to read and push; it owns nothing of
//! berth's store and never decides what to cache.

mod challenge;
mod dns;
mod listing;

pub use challenge::Challenge;
pub use challenge::parse as parse_challenge;
pub use dns::{DNS_TIMEOUT, DnsOptions, FallbackResolver};

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use oci::{Digest, media};
use parking_lot::Mutex;
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a pooled connection may sit idle before it is closed. A kept-alive connection
/// pins the address it was opened to, so this bounds how long berth keeps talking to an
/// upstream's old address after its DNS name moves.
pub const POOL_IDLE: Duration = Duration::from_secs(30);
/// Time allowed to open a connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence allowed while reading a response, so a stalled upstream is noticed
/// (and a cached tag served instead) rather than hanging the client.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Tokens are renewed this long before the expiry the token server announced, so a
/// request never leaves with a token that expires in flight.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Lifetime assumed for a token whose response names none (the Docker token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Every manifest media type berth accepts, for `Accept` headers.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Username and password for an upstream.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to reach one upstream.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Base URL, e.g. `https://registry-1.docker.io` or `http://127.0.0.1:5000`.
    pub url: String,
    pub credentials: Option<Credentials>,
    /// Resolve names with these servers instead of the system resolver.
    pub dns: Option<std::sync::Arc<FallbackResolver>>,
    /// How long an idle pooled connection is kept ([`POOL_IDLE`] unless a test needs
    /// otherwise).
    pub pool_idle: Duration,
}

impl ClientOptions {
    /// Options for `url`: anonymous, system DNS, default pooling.
    pub fn new(url: impl Into<String>) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            credentials: None,
            dns: None,
            pool_idle: POOL_IDLE,
        }
    }
}

/// What can go wrong talking to an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("not found upstream")]
    NotFound,
    #[error("upstream refused the credentials: {0}")]
    Unauthorized(String),
    #[error("upstream answered {status}: {message}")]
    Status { status: u16, message: String },
    /// `429 Too Many Requests`, with the wait its `Retry-After` asks for (seconds or an
    /// HTTP date), when it had one.
    #[error("upstream rate limit: 429 Too Many Requests{}", retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// The request did not get an answer (connection, TLS, timeout); the source error
    /// is kept, and the message shows its whole chain of causes.
    #[error("upstream unreachable: {}", causes(.0))]
    Transport(#[source] reqwest::Error),
    #[error("upstream sent invalid content: {0}")]
    Invalid(String),
}

impl ClientError {
    /// What went wrong, for a page anyone may read: no URL, no repository name and no
    /// text the upstream wrote (`answered HTTP 503`, `no answer: Connection refused (os
    /// error 111)`). The log has the whole message.
    pub fn summary(&self) -> String {
        match self {
            ClientError::NotFound => "not found".to_owned(),
            ClientError::Unauthorized(_) => "refused the credentials".to_owned(),
            ClientError::Status { status, .. } => format!("answered HTTP {status}"),
            ClientError::RateLimited { .. } => "rate limit: 429 Too Many Requests".to_owned(),
            ClientError::Transport(e) if e.is_timeout() => "no answer: timed out".to_owned(),
            ClientError::Transport(e) => {
                // The innermost cause (an OS or TLS error) names no URL.
                let mut inner: &dyn std::error::Error = e;
                while let Some(c) = inner.source() {
                    inner = c;
                }
                if std::ptr::addr_eq(inner, e as &dyn std::error::Error) {
                    "no answer".to_owned()
                } else {
                    format!("no answer: {inner}")
                }
            }
            ClientError::Invalid(_) => "sent invalid content".to_owned(),
        }
    }

    /// Is this a failure of the upstream (down, erroring, unreachable), as opposed to
    /// an answer about the content? Such failures let a cache serve what it has.
    pub fn is_outage(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Status { status, .. } => *status >= 500,
            ClientError::RateLimited { .. } => true,
            _ => false,
        }
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        ClientError::Transport(e)
    }
}

/// An error and its sources, `outer: inner: innermost` (reqwest's own message names
/// only the URL; the reason is in the sources).
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A manifest's identity as a HEAD reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
}

/// A manifest fetched and verified.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// A blob download in progress.
pub struct BlobFetch {
    /// The length the upstream announced, if it did.
    pub size: Option<u64>,
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

struct CachedToken {
    value: String,
    renew_at: Instant,
}

/// A client for one upstream registry. Cheap to share; tokens are cached per scope.
pub struct Client {
    base: String,
    credentials: Option<Credentials>,
    http: reqwest::Client,
    tokens: Mutex<HashMap<String, CachedToken>>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Client {
    /// A client for `options.url`.
    pub fn new(options: ClientOptions) -> Result<Client> {
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(options.pool_idle)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT);
        if let Some(dns) = options.dns {
            http = http.dns_resolver(dns);
        }
        let http = http.build()?;
        Ok(Client {
            base: options.url.trim_end_matches('/').to_owned(),
            credentials: options.credentials,
            http,
            tokens: Mutex::default(),
        })
    }

    fn basic(&self) -> Option<HeaderValue> {
        self.credentials.as_ref().and_then(|c| {
            let raw = format!("{}:{}", c.username, c.password);
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ))
            .ok()
        })
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock();
        tokens
            .get(scope)
            .filter(|t| Instant::now() < t.renew_at)
            .map(|t| t.value.clone())
    }

    async fn fetch_token(&self, challenge: &Challenge, scope: &str) -> Result<String> {
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| ClientError::Invalid("Bearer challenge without realm".into()))?;
        let mut req = self.http.get(realm);
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(service) = challenge.params.get("service") {
            query.push(("service", service));
        }
        req = req.query(&query);
        if let Some(b) = self.basic() {
            req = req.header(AUTHORIZATION, b);
        }
        let resp = req.send().await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(ClientError::Unauthorized(format!(
                    "token server answered {}",
                    resp.status()
                )));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                return Err(ClientError::RateLimited {
                    retry_after: retry_after(&resp),
                });
            }
            s => {
                return Err(ClientError::Status {
                    status: s.as_u16(),
                    message: "token server error".into(),
                });
            }
        }
        let body: TokenResponse = resp
            .json()
            .await
            .map_err(|e| ClientError::Invalid(format!("token response: {e}")))?;
        let value = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ClientError::Invalid("token response without a token".into()))?;
        let lifetime = body
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let renew_at = Instant::now() + lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN);
        self.tokens.lock().insert(
            scope.to_owned(),
            CachedToken {
                value: value.clone(),
                renew_at,
            },
        );
        Ok(value)
    }

    /// Send a request built by `build`, authenticating as the upstream asks: a cached
    /// token first, and on a 401 one fresh token (or Basic credentials) and one retry.
    async fn send(
        &self,
        scope: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let first = match self.cached_token(scope) {
            Some(t) => build().bearer_auth(t),
            None => build(),
        };
        let resp = first.send().await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(challenge::parse);
        let retry = match challenge {
            Some(c) if c.scheme == "bearer" => {
                self.tokens.lock().remove(scope);
                let token = self.fetch_token(&c, scope).await?;
                build().bearer_auth(token)
            }
            Some(c) if c.scheme == "basic" => match self.basic() {
                Some(b) => build().header(AUTHORIZATION, b),
                None => {
                    return Err(ClientError::Unauthorized(
                        "upstream wants Basic credentials; none configured".into(),
                    ));
                }
            },
            _ => {
                return Err(ClientError::Unauthorized(
                    "401 without a usable challenge".into(),
                ));
            }
        };
        let resp = retry.send().await?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(ClientError::Unauthorized(format!(
                "upstream answered {} after authenticating",
                resp.status()
            )));
        }
        Ok(resp)
    }

    fn url(&self, repo: &str, kind: &str, reference: &str) -> String {
        format!("{}/v2/{repo}/{kind}/{reference}", self.base)
    }

    fn scope(repo: &str) -> String {
        format!("repository:{repo}:pull")
    }

    /// HEAD a manifest: its digest and media type, without the body (Docker Hub does not
    /// count HEADs against its pull rate limit).
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<ManifestHead> {
        let url = self.url(repo, "manifests", reference);
        let resp = self
            .send(&Self::scope(repo), || {
                self.http.head(&url).header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let resp = check(resp).await?;
        let digest = header_str(&resp, "docker-content-digest")
            .ok_or_else(|| ClientError::Invalid("HEAD without Docker-Content-Digest".into()))?
            .parse::<Digest>()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let media_type = header_str(&resp, CONTENT_TYPE.as_str())
            .unwrap_or(media::OCI_MANIFEST)
            .to_owned();
        Ok(ManifestHead { digest, media_type })
    }

    /// GET a manifest and verify it: by digest, the bytes must hash to it; by tag, they
    /// must hash to the `Docker-Content-Digest` the upstream sent, if it sent one.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        max_bytes: u64,
    ) -> Result<FetchedManifest> {
        let url = self.url(repo, "manifests", reference);
        let resp = self
            .send(&Self::scope(repo), || {
                self.http.get(&url).header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let resp = check(resp).await?;
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(ClientError::Invalid(format!(
                "manifest larger than {max_bytes} bytes"
            )));
        }
        let media_type = header_str(&resp, CONTENT_TYPE.as_str()).map(str::to_owned);
        let announced = header_str(&resp, "docker-content-digest").map(str::to_owned);
        let mut body = resp.bytes_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() as u64 > max_bytes {
                return Err(ClientError::Invalid(format!(
                    "manifest larger than {max_bytes} bytes"
                )));
            }
        }
        let expected: Option<Digest> = match reference.parse::<Digest>() {
            Ok(d) => Some(d),
            Err(_) => announced.as_deref().and_then(|a| a.parse().ok()),
        };
        let digest = match expected {
            Some(d) => {
                if d.same_algorithm_of(&bytes) != d {
                    return Err(ClientError::Invalid(format!(
                        "manifest bytes do not match {d}"
                    )));
                }
                d
            }
            None => Digest::sha256_of(&bytes),
        };
        let parsed = oci::ParsedManifest::parse(&bytes, media_type.as_deref())
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        Ok(FetchedManifest {
            digest,
            media_type: parsed.media_type,
            bytes: Bytes::from(bytes),
        })
    }

    /// HEAD a blob: its size, or [`ClientError::NotFound`].
    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<u64> {
        let url = self.url(repo, "blobs", &digest.to_string());
        let resp = self
            .send(&Self::scope(repo), || self.http.head(&url))
            .await?;
        let resp = check(resp).await?;
        resp.headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Invalid("blob HEAD without Content-Length".into()))
    }

    /// The referrers of manifest `digest` (OCI 1.1 referrers API). A registry without
    /// the API (404) has none to offer.
    pub async fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<oci::Descriptor>> {
        let url = self.url(repo, "referrers", &digest.to_string());
        let resp = self
            .send(&Self::scope(repo), || {
                self.http.get(&url).header(ACCEPT, media::OCI_INDEX)
            })
            .await?;
        let resp = match check(resp).await {
            Ok(r) => r,
            Err(ClientError::NotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let bytes = resp.bytes().await?;
        let parsed = oci::ParsedManifest::parse(&bytes, Some(media::OCI_INDEX))
            .map_err(|e| ClientError::Invalid(format!("referrers index: {e}")))?;
        Ok(parsed.manifests)
    }

    fn push_scope(repo: &str) -> String {
        format!("repository:{repo}:pull,push")
    }

    /// An absolute URL for a `Location` header, which registries may send relative.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}/{}", self.base, location.trim_start_matches('/'))
        }
    }

    /// Mount blob `digest` from `from` (same registry) into `repo`: `true` when the
    /// registry mounted it, `false` when it could not (the blob must then be uploaded).
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let mount = digest.to_string();
        let scope = format!("{} repository:{from}:pull", Self::push_scope(repo));
        let resp = self
            .send(&scope, || {
                self.http
                    .post(&url)
                    .query(&[("mount", mount.as_str()), ("from", from)])
                    .header(CONTENT_LENGTH, 0)
            })
            .await?;
        let resp = check(resp).await?;
        if resp.status() == StatusCode::CREATED {
            return Ok(true);
        }
        // A 202 opened an upload instead; drop it.
        if let Some(loc) = header_str(&resp, "location") {
            let loc = self.absolute(loc);
            let _ = self
                .send(&Self::push_scope(repo), || self.http.delete(&loc))
                .await;
        }
        Ok(false)
    }

    /// Upload blob `digest` of `size` bytes from `body` in one request (POST, then a
    /// streamed PUT). The registry checks the digest.
    pub async fn put_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<()> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let scope = Self::push_scope(repo);
        let resp = self
            .send(&scope, || self.http.post(&url).header(CONTENT_LENGTH, 0))
            .await?;
        let resp = check(resp).await?;
        let location = header_str(&resp, "location")
            .ok_or_else(|| ClientError::Invalid("upload started without a Location".into()))?;
        let location = self.absolute(location);
        // A streamed body can be sent only once: use the token the POST just earned.
        let mut put = self
            .http
            .put(&location)
            .query(&[("digest", digest.to_string())])
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(t) = self.cached_token(&scope) {
            put = put.bearer_auth(t);
        } else if let Some(b) = self.basic() {
            put = put.header(AUTHORIZATION, b);
        }
        check(put.send().await?).await?;
        Ok(())
    }

    /// PUT a manifest's exact bytes under `reference` (a tag or its digest).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<()> {
        let url = self.url(repo, "manifests", reference);
        let resp = self
            .send(&Self::push_scope(repo), || {
                self.http
                    .put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        check(resp).await?;
        Ok(())
    }

    /// Start downloading a blob. The caller verifies the digest as the bytes stream.
    pub async fn get_blob(&self, repo: &str, digest: &Digest) -> Result<BlobFetch> {
        let url = self.url(repo, "blobs", &digest.to_string());
        let resp = self
            .send(&Self::scope(repo), || self.http.get(&url))
            .await?;
        let resp = check(resp).await?;
        let size = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp
            .bytes_stream()
            .map(|r| r.map_err(|e| std::io::Error::other(format!("upstream body: {e:#}"))))
            .boxed();
        Ok(BlobFetch { size, body })
    }
}

fn header_str<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A response's `Retry-After`: delay-seconds, or an HTTP date (RFC 9110 §10.2.3) turned
/// into the time from now; `None` when absent or unreadable.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = header_str(resp, "retry-after")?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::NOT_FOUND {
        return Err(ClientError::NotFound);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(ClientError::RateLimited {
            retry_after: retry_after(&resp),
        });
    }
    let message = resp.text().await.unwrap_or_default();
    let message: String = message.chars().take(200).collect();
    Err(ClientError::Status {
        status: status.as_u16(),
        message,
    })
}

#[cfg(test)]
mod tests;
