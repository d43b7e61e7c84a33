//! The client against an in-process fake registry with a token server: the challenge
//! flow, token caching and renewal, Basic auth, redirects, digest verification.

use super::*;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode as S, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
const BLOB: &[u8] = b"blob bytes behind a redirect";

#[derive(Default)]
struct Fake {
    manifest_requests: AtomicUsize,
    tokens_issued: AtomicUsize,
    /// Tokens older than this many issues are rejected (simulates expiry upstream).
    valid_from: AtomicUsize,
    basic_required: bool,
    corrupt_manifest: bool,
}

async fn token(
    State(f): State<Arc<Fake>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if f.basic_required {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:secret")
        );
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(want.as_str())
        {
            return S::UNAUTHORIZED.into_response();
        }
    }
    assert_eq!(q.get("service").map(String::as_str), Some("fake"));
    assert!(q["scope"].starts_with("repository:"));
    let n = f.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
    axum::Json(serde_json::json!({"token": format!("tok-{n}"), "expires_in": 300})).into_response()
}

fn authorized(f: &Fake, headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(n) = v
        .strip_prefix("Bearer tok-")
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return false;
    };
    n > f.valid_from.load(Ordering::SeqCst)
}

fn challenge(base: &str) -> Response {
    (
        S::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            format!(
                "Bearer realm=\"{base}/token\",service=\"fake\",scope=\"repository:lib/x:pull\""
            ),
        )],
    )
        .into_response()
}

#[derive(Clone)]
struct Ctx {
    fake: Arc<Fake>,
    base: Arc<String>,
}

async fn manifest(
    State(c): State<Ctx>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> Response {
    c.fake.manifest_requests.fetch_add(1, Ordering::SeqCst);
    if !authorized(&c.fake, &headers) {
        return challenge(&c.base);
    }
    if reference != "latest" && reference != Digest::sha256_of(MANIFEST).to_string() {
        return S::NOT_FOUND.into_response();
    }
    let body: Vec<u8> = if c.fake.corrupt_manifest {
        MANIFEST[..MANIFEST.len() - 1].to_vec()
    } else {
        MANIFEST.to_vec()
    };
    (
        [
            (header::CONTENT_TYPE, media::OCI_MANIFEST.to_owned()),
            (
                header::HeaderName::from_static("docker-content-digest"),
                Digest::sha256_of(MANIFEST).to_string(),
            ),
        ],
        body,
    )
        .into_response()
}

async fn blob(State(c): State<Ctx>, headers: HeaderMap) -> Response {
    if !authorized(&c.fake, &headers) {
        return challenge(&c.base);
    }
    (
        S::TEMPORARY_REDIRECT,
        [(header::LOCATION, "/storage/object")],
    )
        .into_response()
}

async fn storage() -> Response {
    BLOB.into_response()
}

async fn start(fake: Fake) -> (Arc<Fake>, String) {
    start_on("127.0.0.1:0", fake).await
}

async fn start_on(addr: &str, fake: Fake) -> (Arc<Fake>, String) {
    let fake = Arc::new(fake);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let ctx = Ctx {
        fake: fake.clone(),
        base: Arc::new(base.clone()),
    };
    let app = axum::Router::new()
        .route("/token", get(token).with_state(fake.clone()))
        .route(
            "/v2/lib/x/manifests/{reference}",
            get(manifest).head(manifest),
        )
        .route("/v2/lib/x/blobs/{digest}", get(blob))
        .route("/storage/object", get(storage))
        .with_state(ctx);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, base)
}

fn client(base: &str, credentials: Option<Credentials>) -> Client {
    Client::new(ClientOptions {
        credentials,
        ..ClientOptions::new(base)
    })
    .unwrap()
}

#[tokio::test]
async fn bearer_flow_caches_the_token_and_renews_it_on_401() {
    let (fake, base) = start(Fake::default()).await;
    let up = client(&base, None);
    let m = up.get_manifest("lib/x", "latest", 1 << 20).await.unwrap();
    assert_eq!(m.digest, Digest::sha256_of(MANIFEST));
    assert_eq!(m.bytes, MANIFEST);
    assert_eq!(m.media_type, media::OCI_MANIFEST);
    let h = up.head_manifest("lib/x", "latest").await.unwrap();
    assert_eq!(h.digest, m.digest);
    assert_eq!(
        fake.tokens_issued.load(Ordering::SeqCst),
        1,
        "the token was cached"
    );
    // the upstream now considers every issued token expired
    fake.valid_from.store(1, Ordering::SeqCst);
    up.head_manifest("lib/x", "latest").await.unwrap();
    assert_eq!(
        fake.tokens_issued.load(Ordering::SeqCst),
        2,
        "a 401 renews the token"
    );
    assert!(matches!(
        up.get_manifest("lib/x", "nope", 1 << 20).await,
        Err(ClientError::NotFound)
    ));
}

#[tokio::test]
async fn token_server_with_basic_credentials() {
    let (_fake, base) = start(Fake {
        basic_required: true,
        ..Fake::default()
    })
    .await;
    let anonymous = client(&base, None);
    assert!(matches!(
        anonymous.head_manifest("lib/x", "latest").await,
        Err(ClientError::Unauthorized(_))
    ));
    let wrong = client(
        &base,
        Some(Credentials {
            username: "alice".into(),
            password: "nope".into(),
        }),
    );
    assert!(matches!(
        wrong.head_manifest("lib/x", "latest").await,
        Err(ClientError::Unauthorized(_))
    ));
    let alice = client(
        &base,
        Some(Credentials {
            username: "alice".into(),
            password: "secret".into(),
        }),
    );
    alice.head_manifest("lib/x", "latest").await.unwrap();
}

#[tokio::test]
async fn blobs_follow_redirects_to_storage() {
    let (_fake, base) = start(Fake::default()).await;
    let up = client(&base, None);
    let mut fetch = up
        .get_blob("lib/x", &Digest::sha256_of(BLOB))
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(c) = fetch.body.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got, BLOB);
}

#[tokio::test]
async fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let (_fake, base) = start(Fake {
        corrupt_manifest: true,
        ..Fake::default()
    })
    .await;
    let up = client(&base, None);
    assert!(matches!(
        up.get_manifest("lib/x", "latest", 1 << 20).await,
        Err(ClientError::Invalid(_))
    ));
    let by_digest = Digest::sha256_of(MANIFEST).to_string();
    assert!(matches!(
        up.get_manifest("lib/x", &by_digest, 1 << 20).await,
        Err(ClientError::Invalid(_))
    ));
    assert!(matches!(
        up.get_manifest("lib/x", "latest", 10).await,
        Err(ClientError::Invalid(_))
    ));
}

#[tokio::test]
async fn an_unreachable_upstream_is_an_outage() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = client(&base, None)
        .head_manifest("lib/x", "latest")
        .await
        .unwrap_err();
    assert!(err.is_outage(), "{err}");
}

#[tokio::test]
async fn an_upstream_that_moves_is_found_at_its_new_address() {
    use crate::dns::tests::{Behaviour, TestDns};
    use std::net::Ipv4Addr;
    let (old, old_base) = start(Fake::default()).await;
    let port = old_base.rsplit(':').next().unwrap().to_owned();
    let (new, _) = start_on(&format!("127.0.0.2:{port}"), Fake::default()).await;
    let primary = TestDns::start(Behaviour::Answer(Ipv4Addr::new(127, 0, 0, 1))).await;
    let silent = TestDns::start(Behaviour::Silent).await;
    let dns = crate::FallbackResolver::new(&crate::DnsOptions {
        servers: vec![silent.addr],
        fallback: vec![primary.addr],
    });
    let up = Client::new(ClientOptions {
        dns: Some(dns),
        pool_idle: Duration::from_millis(100),
        ..ClientOptions::new(format!("http://registry.test:{port}"))
    })
    .unwrap();
    up.head_manifest("lib/x", "latest").await.unwrap();
    assert!(old.manifest_requests.load(Ordering::SeqCst) > 0);
    assert_eq!(new.manifest_requests.load(Ordering::SeqCst), 0);
    // the name now points elsewhere; once the TTL (1 s) and the idle connection are gone,
    // requests reach the new address
    *primary.behaviour.lock().unwrap() = Behaviour::Answer(Ipv4Addr::new(127, 0, 0, 2));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    up.head_manifest("lib/x", "latest").await.unwrap();
    assert!(
        new.manifest_requests.load(Ordering::SeqCst) > 0,
        "still talking to the old address"
    );
}
