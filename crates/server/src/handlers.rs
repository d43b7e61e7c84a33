//! Request handlers: one dispatch function that parses the route and calls the handler
//! for the route and method. Handlers translate between HTTP (headers, bodies, status
//! codes) and registry calls; they make no content decisions of their own.

use crate::access::Caller;
use crate::error::ApiError;
use crate::range::{self, RangeRequest};
use crate::route::{Route, RouteError};
use crate::{App, Ctx, cached};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use oci::{Digest, Reference, RepoName, media};
use registry::{Page, PutManifest};
use std::collections::HashMap;
use std::time::Instant;
use store::{ByteStream, UploadId};

const API_VERSION: &str = "registry/2.0";
pub(crate) const DIGEST_HEADER: &str = "docker-content-digest";
const UPLOAD_UUID_HEADER: &str = "docker-upload-uuid";

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The `Range` header value for an upload holding `size` bytes: `0-<last byte>`
/// (`0-0` when empty, as distribution does).
pub fn range_header(size: u64) -> HeaderValue {
    hv(&format!("0-{}", size.saturating_sub(1)))
}

pub(crate) fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

fn body_stream(body: Body) -> ByteStream {
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

/// Is there a body to read? (A Content-Length above zero, or a chunked body.)
fn has_body(headers: &HeaderMap) -> bool {
    match content_length(headers) {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

fn parse_digest(s: &str) -> Result<Digest> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::from(registry::RegistryError::from(e)))
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
            cached::stored_name(&ctx, name)
        })
        .await;
    // Logged and counted like every `/v2` request (the scopes asked for are logged
    // separately; never the credentials or the token).
    tracing::debug!(scopes = ?scopes, "token requested");
    record(&ctx.app, "token", &Method::GET, &uri, &resp, started);
    resp
}

/// Count a finished request in the metrics and log it (at debug level).
fn record(
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
    let target = cached::target(&ctx, &uri);
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
                cached::Target {
                    route: Route::Catalog,
                    upstream,
                } if method == Method::GET => catalog(app, &who, &uri, upstream.as_deref())
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                cached::Target {
                    route,
                    upstream: Some(up),
                } => cached::handle(app, &up, route, &method, &uri, &headers)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                cached::Target {
                    route,
                    upstream: None,
                } => handle(app, &who, route, &method, &uri, &headers, body)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
            },
        },
        Err(cached::TargetError::UnknownUpstream(ns)) => ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("no upstream named {ns:?} is configured; berth only caches the upstreams in its configuration"),
        )
        .into_response(),
        Err(cached::TargetError::Route(e)) => route_error(e, &method),
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

fn route_error(e: RouteError, method: &Method) -> Response {
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
async fn authorize(
    ctx: &Ctx,
    t: &cached::Target,
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

async fn handle(
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
        (Route::Tags(repo), Method::GET) => tags(app, &repo, uri).await,
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
        (Route::Referrers(repo, d), Method::GET) => referrers(app, &repo, &d, uri).await,
        (_, m) => Err(ApiError::unsupported(format!(
            "method {m} is not supported on this endpoint"
        ))),
    }
}

fn page_of(uri: &Uri) -> Result<Page> {
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

fn link_next(path: &str, n: Option<usize>, last: &str) -> HeaderValue {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    if let Some(n) = n {
        ser.append_pair("n", &n.to_string());
    }
    ser.append_pair("last", last);
    hv(&format!("<{path}?{}>; rel=\"next\"", ser.finish()))
}

fn json_response(
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

/// `GET /v2/_catalog`: the hosted and cached repositories the caller may pull, or with
/// `within` only that upstream's, named as its clients name them.
async fn catalog(
    app: &App,
    who: &Caller,
    uri: &Uri,
    within: Option<&cache::CachedUpstream>,
) -> Result<Response> {
    let page = page_of(uri)?;
    let prefix = within.map(|up| format!("{}/", up.key));
    // Only what the caller may pull, filtered before the page is cut. A token holder
    // (its token grants the catalog, names no repository) sees what its subject may pull.
    let access = app.access();
    let subject = who.subject();
    let visible: Vec<String> = app
        .registry
        .all_repositories()
        .await?
        .into_iter()
        .filter(|r| {
            access
                .rules
                .allowed(&subject, r)
                .contains(auth::Action::Pull)
        })
        .filter_map(|r| match &prefix {
            Some(p) => r.as_str().strip_prefix(p.as_str()).map(str::to_owned),
            None => Some(r.to_string()),
        })
        .collect();
    let (repos, more) = page.apply(visible);
    let link = more
        .then(|| repos.last().map(|l| link_next("/v2/_catalog", page.n, l)))
        .flatten();
    Ok(json_response(
        &serde_json::json!({ "repositories": repos }),
        "application/json",
        link,
    ))
}

pub(crate) async fn tags(app: &App, repo: &RepoName, uri: &Uri) -> Result<Response> {
    let page = page_of(uri)?;
    let (tags, more) = app.registry.list_tags(repo, &page).await?;
    let link = more
        .then(|| {
            tags.last()
                .map(|l| link_next(&format!("/v2/{repo}/tags/list"), page.n, l))
        })
        .flatten();
    Ok(json_response(
        &serde_json::json!({ "name": repo.as_str(), "tags": tags }),
        "application/json",
        link,
    ))
}

async fn get_manifest(
    app: &App,
    repo: &RepoName,
    reference: &Reference,
    head: bool,
) -> Result<Response> {
    let m = app.registry.get_manifest(repo, reference).await?;
    Ok(manifest_response(&m, head))
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

async fn put_manifest(
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

pub(crate) async fn get_blob(
    app: &App,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    // Bytes straight from object storage: a 307 to a short-lived presigned URL.
    if !head
        && let Some(ttl) = app.blob_redirect
        && let Some(url) = app.registry.blob_url(repo, digest, ttl).await?
    {
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        resp.headers_mut().insert(header::LOCATION, hv(&url));
        resp.headers_mut()
            .insert(DIGEST_HEADER, hv(&digest.to_string()));
        return Ok(resp);
    }
    let size = app.registry.stat_blob(repo, digest).await?;
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
        let read = app
            .registry
            .read_blob(repo, digest, Some(range.clone()))
            .await?;
        Body::from_stream(read.body)
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

fn upload_location(repo: &RepoName, id: &UploadId) -> HeaderValue {
    hv(&format!("/v2/{repo}/blobs/uploads/{id}"))
}

fn upload_response(status: StatusCode, repo: &RepoName, id: &UploadId, size: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, upload_location(repo, id));
    h.insert(header::RANGE, range_header(size));
    h.insert(UPLOAD_UUID_HEADER, hv(id.as_str()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{repo}/blobs/{digest}")));
    h.insert(DIGEST_HEADER, hv(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

async fn start_upload(
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
        let may_read = |r: &RepoName| access.allowed(who, r).contains(auth::Action::Pull);
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
fn chunk_bounds(headers: &HeaderMap) -> Result<(Option<u64>, Option<u64>)> {
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

async fn patch_upload(
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

async fn finish_upload(
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

pub(crate) async fn referrers(
    app: &App,
    repo: &RepoName,
    subject: &Digest,
    uri: &Uri,
) -> Result<Response> {
    let q = query(uri);
    let filter = q.get("artifactType").filter(|t| !t.is_empty());
    let list = app
        .registry
        .referrers(repo, subject, filter.map(String::as_str))
        .await?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": list,
    });
    let mut resp = json_response(&index, media::OCI_INDEX, None);
    if filter.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
