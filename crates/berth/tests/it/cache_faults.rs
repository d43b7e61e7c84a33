//! The pull-through cache when its upstream misbehaves: one upstream fetch for many
//! concurrent clients, streaming before the download ends, truncated and corrupt
//! bodies that are never stored nor delivered whole, stale tags while the upstream is
//! down, HEAD-only tag revalidation, and upstream 404s and unknown upstreams mapped to
//! the right OCI errors. The upstream is a fake registry in this file: a hand-written
//! HTTP/1.1 responder (axum is not a dependency of this crate) whose behaviour is
//! switched at run time and which counts every request it receives.

use crate::common::*;
use bytes::Bytes;
use oci::Digest;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The one repository the fake upstream serves.
pub(crate) const REPO: &str = "lib/x";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Longest any single client operation may take before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);
/// A tag TTL long enough that no test revalidates by accident.
pub(crate) const LONG_TTL: Duration = Duration::from_secs(300);

/// How the fake upstream answers.
#[derive(Clone, Debug)]
pub(crate) enum Mode {
    /// Everything served whole and at once.
    Normal,
    /// Every request answered `500 Internal Server Error`.
    Error500,
    /// Blob bodies sent `chunk` bytes at a time with `pause` between chunks.
    Slow { chunk: usize, pause: Duration },
    /// Blob bodies announce their full length, send half of it and close.
    Truncated,
    /// Blob bodies of the right length whose last byte is wrong.
    WrongBytes,
    /// Blob bodies send `first` bytes, then wait for [`Fake::release`].
    Gated { first: usize },
    /// Every request answered `429 Too Many Requests` with this `Retry-After`.
    TooMany { retry_after: String },
    /// Manifest GETs answered 429 (HEADs are not: Docker Hub's pull limit counts GETs).
    TooManyGets,
}

/// A manifest the fake serves: its digest and bytes.
type ManifestEntry = (Digest, Bytes);

struct FakeState {
    mode: Mutex<Mode>,
    /// Requests received, by method and path (without the query).
    requests: Mutex<HashMap<(String, String), u64>>,
    /// Blobs by digest string.
    blobs: Mutex<HashMap<String, Bytes>>,
    /// Manifests by tag and by digest string.
    manifests: Mutex<HashMap<String, ManifestEntry>>,
    release: watch::Sender<bool>,
}

/// A fake upstream registry on a free local port.
pub(crate) struct Fake {
    addr: SocketAddr,
    state: Arc<FakeState>,
    task: Option<JoinHandle<()>>,
}

impl Fake {
    pub(crate) async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeState {
            mode: Mutex::new(Mode::Normal),
            requests: Mutex::default(),
            blobs: Mutex::default(),
            manifests: Mutex::default(),
            release: watch::channel(false).0,
        });
        let served = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_connection(sock, served.clone()));
            }
        });
        Fake {
            addr,
            state,
            task: Some(task),
        }
    }

    /// The upstream's name as berth is configured with it (and as `ns=` names it).
    pub(crate) fn name(&self) -> String {
        self.addr.to_string()
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Let gated blob bodies continue.
    pub(crate) fn release(&self) {
        self.state.release.send_replace(true);
    }

    pub(crate) fn add_blob(&self, bytes: &[u8]) -> Digest {
        let d = digest_of(bytes);
        self.state
            .blobs
            .lock()
            .unwrap()
            .insert(d.to_string(), Bytes::copy_from_slice(bytes));
        d
    }

    /// Serve `bytes` as a manifest under `tag` and under its digest.
    pub(crate) fn add_manifest(&self, tag: &str, bytes: &[u8]) -> Digest {
        let d = digest_of(bytes);
        let entry = (d.clone(), Bytes::copy_from_slice(bytes));
        let mut m = self.state.manifests.lock().unwrap();
        m.insert(tag.to_owned(), entry.clone());
        m.insert(d.to_string(), entry);
        d
    }

    /// Requests received with `method` for `path`.
    pub(crate) fn count(&self, method: &str, path: &str) -> u64 {
        let key = (method.to_owned(), path.to_owned());
        *self.state.requests.lock().unwrap().get(&key).unwrap_or(&0)
    }

    /// Requests received with `method` for any path starting with `prefix`.
    pub(crate) fn count_under(&self, method: &str, prefix: &str) -> u64 {
        let requests = self.state.requests.lock().unwrap();
        requests
            .iter()
            .filter(|((m, p), _)| m == method && p.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// All requests received.
    pub(crate) fn total(&self) -> u64 {
        self.state.requests.lock().unwrap().values().sum()
    }

    /// Stop listening: from now on connections to its port are refused.
    async fn shutdown(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await; // the listener is dropped with the task
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Answer one request and close the connection.
async fn serve_connection(mut sock: TcpStream, st: Arc<FakeState>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    *st.requests
        .lock()
        .unwrap()
        .entry((method.clone(), path.clone()))
        .or_default() += 1;
    let _ = respond(&mut sock, &st, &method, &path).await;
    let _ = sock.shutdown().await;
}

async fn write_head(
    sock: &mut TcpStream,
    status: &str,
    len: usize,
    headers: &[(&str, String)],
) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    sock.write_all(h.as_bytes()).await
}

async fn error_answer(
    sock: &mut TcpStream,
    status: &str,
    code: &str,
    head: bool,
) -> std::io::Result<()> {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"fake upstream"}}]}}"#);
    let ct = [("Content-Type", "application/json".to_owned())];
    write_head(sock, status, body.len(), &ct).await?;
    if !head {
        sock.write_all(body.as_bytes()).await?;
    }
    Ok(())
}

async fn respond(
    sock: &mut TcpStream,
    st: &FakeState,
    method: &str,
    path: &str,
) -> std::io::Result<()> {
    let head = method == "HEAD";
    let mode = st.mode.lock().unwrap().clone();
    if matches!(mode, Mode::Error500) {
        return error_answer(sock, "500 Internal Server Error", "UNKNOWN", head).await;
    }
    let limited = match &mode {
        Mode::TooMany { retry_after } => Some(retry_after.clone()),
        Mode::TooManyGets if !head && path.contains("/manifests/") => Some("1".to_owned()),
        _ => None,
    };
    if let Some(retry_after) = limited {
        let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"fake upstream"}]}"#;
        let headers = [
            ("Content-Type", "application/json".to_owned()),
            ("Retry-After", retry_after),
        ];
        write_head(sock, "429 Too Many Requests", body.len(), &headers).await?;
        if !head {
            sock.write_all(body.as_bytes()).await?;
        }
        return Ok(());
    }
    if path == "/v2/" {
        write_head(sock, "200 OK", 2, &[]).await?;
        if !head {
            sock.write_all(b"{}").await?;
        }
        return Ok(());
    }
    let manifests = format!("/v2/{REPO}/manifests/");
    let blobs = format!("/v2/{REPO}/blobs/");
    if let Some(reference) = path.strip_prefix(&manifests) {
        let found = st.manifests.lock().unwrap().get(reference).cloned();
        let Some((digest, bytes)) = found else {
            return error_answer(sock, "404 Not Found", "MANIFEST_UNKNOWN", head).await;
        };
        let headers = [
            ("Content-Type", MANIFEST_TYPE.to_owned()),
            ("Docker-Content-Digest", digest.to_string()),
        ];
        write_head(sock, "200 OK", bytes.len(), &headers).await?;
        if !head {
            sock.write_all(&bytes).await?;
        }
        return Ok(());
    }
    let Some(digest) = path.strip_prefix(&blobs) else {
        return error_answer(sock, "404 Not Found", "NAME_UNKNOWN", head).await;
    };
    let found = st.blobs.lock().unwrap().get(digest).cloned();
    let Some(bytes) = found else {
        return error_answer(sock, "404 Not Found", "BLOB_UNKNOWN", head).await;
    };
    let headers = [
        ("Content-Type", "application/octet-stream".to_owned()),
        ("Docker-Content-Digest", digest.to_owned()),
    ];
    write_head(sock, "200 OK", bytes.len(), &headers).await?;
    if head {
        return Ok(());
    }
    match mode {
        Mode::Normal | Mode::Error500 | Mode::TooMany { .. } | Mode::TooManyGets => {
            sock.write_all(&bytes).await?
        }
        Mode::Slow { chunk, pause } => {
            for c in bytes.chunks(chunk) {
                sock.write_all(c).await?;
                tokio::time::sleep(pause).await;
            }
        }
        Mode::Truncated => sock.write_all(&bytes[..bytes.len() / 2]).await?,
        Mode::WrongBytes => {
            let mut wrong = bytes.to_vec();
            *wrong.last_mut().unwrap() ^= 0xff;
            sock.write_all(&wrong).await?;
        }
        Mode::Gated { first } => {
            sock.write_all(&bytes[..first]).await?;
            sock.flush().await?;
            let mut released = st.release.subscribe();
            let _ = released.wait_for(|r| *r).await;
            sock.write_all(&bytes[first..]).await?;
        }
    }
    sock.flush().await
}

/// Berth caching the fake upstream, with tag TTL `ttl`.
pub(crate) async fn berth_for(fake: &Fake, ttl: Duration) -> TestServer {
    let (name, url) = (fake.name(), fake.url());
    TestServer::start_with(|c| c.upstreams.push(upstream_config(&name, &url, ttl))).await
}

/// Berth's path for `kind/reference` of the fake's repository, routed by `ns=`.
pub(crate) fn via_ns(fake: &Fake, kind: &str, reference: &str) -> String {
    format!("/v2/{REPO}/{kind}/{reference}?ns={}", fake.name())
}

/// Berth's path for `kind/reference` of the fake's repository, routed by path prefix.
fn via_prefix(fake: &Fake, kind: &str, reference: &str) -> String {
    let key = fake.name().replace(':', "-");
    format!("/v2/{key}/{REPO}/{kind}/{reference}")
}

/// The fake's own path for a blob.
pub(crate) fn upstream_blob(d: &Digest) -> String {
    format!("/v2/{REPO}/blobs/{d}")
}

pub(crate) fn upstream_manifest(reference: &str) -> String {
    format!("/v2/{REPO}/manifests/{reference}")
}

/// What a client got from a blob download.
#[derive(Debug)]
struct Download {
    status: u16,
    content_length: Option<u64>,
    /// Body bytes received before the body ended or failed.
    received: u64,
    /// Did every byte received equal the expected byte at its offset?
    matches: bool,
    /// Why the body failed, if it did.
    error: Option<String>,
}

impl Download {
    /// A clean 200 carrying exactly `expected`.
    fn intact(&self, expected: &[u8]) -> bool {
        self.status == 200
            && self.error.is_none()
            && self.matches
            && self.received == expected.len() as u64
    }
}

/// GET `url`, comparing the body with `expected` as it streams (nothing is kept).
async fn download(c: &reqwest::Client, url: &str, expected: &[u8]) -> Download {
    let fetch = async {
        let mut r = c.get(url).send().await.unwrap();
        let mut d = Download {
            status: r.status().as_u16(),
            content_length: r.content_length(),
            received: 0,
            matches: true,
            error: None,
        };
        if d.status != 200 {
            return d;
        }
        loop {
            match r.chunk().await {
                Ok(Some(chunk)) => {
                    let at = d.received as usize;
                    d.matches &= expected.get(at..at + chunk.len()) == Some(&chunk[..]);
                    d.received += chunk.len() as u64;
                }
                Ok(None) => break,
                Err(e) => {
                    d.error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        d
    };
    tokio::time::timeout(PATIENCE, fetch)
        .await
        .unwrap_or_else(|_| panic!("GET {url} took longer than {PATIENCE:?}"))
}

/// Files anywhere under `dir` named `name`.
fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if e.file_name() == name {
                found.push(p);
            }
        }
    }
    found
}

/// Blob files in berth's store named after `d`.
fn stored_blob_files(s: &TestServer, d: &Digest) -> Vec<PathBuf> {
    files_named(&s.dir.path().join("data").join("blobs"), d.hex())
}

/// Wait until `cond` holds, failing the test after a few seconds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Give the fake a small image (config + layer) tagged `tag`; the manifest's digest and
/// bytes.
pub(crate) fn add_image(fake: &Fake, tag: &str, seed: u64) -> (Digest, Vec<u8>) {
    let config = format!("{{\"seed\":{seed}}}").into_bytes();
    let layer = pseudo_random(seed, 4096);
    let c = fake.add_blob(&config);
    let l = fake.add_blob(&layer);
    let m = image_manifest((&c, config.len()), &[(&l, layer.len())]);
    (fake.add_manifest(tag, &m), m)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_pulls_share_one_upstream_fetch() {
    const CLIENTS: usize = 50;
    let fake = Fake::start().await;
    let blob: Arc<[u8]> = pseudo_random(1, 6 * 1024 * 1024).into();
    let d = fake.add_blob(&blob);
    // ~1 s of body, so every client arrives while the fetch is under way.
    fake.set_mode(Mode::Slow {
        chunk: 64 * 1024,
        pause: Duration::from_millis(10),
    });
    let s = berth_for(&fake, LONG_TTL).await;
    let url = s.url(&via_ns(&fake, "blobs", &d.to_string()));
    let c = client();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (c, url, blob) = (c.clone(), url.clone(), blob.clone());
            tokio::spawn(async move { download(&c, &url, &blob).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        assert!(got.intact(&blob), "client {i}: {got:?}");
        assert_eq!(got.content_length, Some(blob.len() as u64), "client {i}");
    }
    assert_eq!(
        fake.count("GET", &upstream_blob(&d)),
        1,
        "upstream blob GETs"
    );
    assert_eq!(fake.total(), 1, "no other upstream request");
    let up = stats(&s, &fake.name());
    assert_eq!(up.stats.upstream_blob_gets.get(), 1);
    assert_eq!(up.stats.misses.get(), 1);
    let joins = up.stats.joins.get();
    let hits = up.stats.hits.get();
    assert!(joins >= 1, "no client joined the fetch (hits {hits})");
    assert_eq!(
        joins + hits,
        CLIENTS as u64 - 1,
        "joins {joins} + hits {hits}"
    );
    // Clients finish once the body verified; the commit may follow a moment later.
    eventually("the blob stored", || stored_blob_files(&s, &d).len() == 1).await;
    assert_eq!(stored_blob_files(&s, &d).len(), 1, "blob stored once");
}

#[tokio::test(flavor = "multi_thread")]
async fn first_bytes_reach_the_client_before_the_upstream_finishes() {
    const FIRST: usize = 64 * 1024;
    let fake = Fake::start().await;
    let blob = pseudo_random(2, 2 * 1024 * 1024);
    let d = fake.add_blob(&blob);
    fake.set_mode(Mode::Gated { first: FIRST });
    let s = berth_for(&fake, LONG_TTL).await;
    let url = s.url(&via_ns(&fake, "blobs", &d.to_string()));
    let mut r = tokio::time::timeout(PATIENCE, client().get(&url).send())
        .await
        .expect("response headers while the upstream body is held")
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(blob.len() as u64));
    let first = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("first bytes arrive before the upstream body is released")
        .unwrap()
        .expect("a chunk, not the end of the body");
    let mut got = first.to_vec();
    // Take whatever else is already there: it can only be the first upstream chunk.
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(300), r.chunk()).await {
        got.extend_from_slice(&next.unwrap().expect("the body cannot end yet"));
    }
    assert!(!got.is_empty() && got.len() <= FIRST, "{} bytes", got.len());
    assert_eq!(got[..], blob[..got.len()], "streamed bytes are the blob's");
    fake.release();
    let rest = tokio::time::timeout(PATIENCE, r.bytes())
        .await
        .expect("the rest after release")
        .unwrap();
    got.extend_from_slice(&rest);
    assert_eq!(got.len(), blob.len());
    assert!(got == blob, "the whole blob, byte for byte");
    assert_eq!(fake.count("GET", &upstream_blob(&d)), 1);
    // Clients finish once the body verified; the commit may follow a moment later.
    eventually("the blob stored", || stored_blob_files(&s, &d).len() == 1).await;
    assert_eq!(stored_blob_files(&s, &d).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_far_behind_the_download_reads_the_rest_from_the_store() {
    // The fill keeps only the latest few MiB in memory for its clients; this one stalls
    // near the start while 40 MiB are downloaded and stored, then reads everything.
    const FIRST: usize = 40 * 1024 * 1024;
    let fake = Fake::start().await;
    let blob = pseudo_random(7, FIRST + 8 * 1024 * 1024);
    let d = fake.add_blob(&blob);
    fake.set_mode(Mode::Gated { first: FIRST });
    let s = berth_for(&fake, LONG_TTL).await;
    let url = s.url(&via_ns(&fake, "blobs", &d.to_string()));
    let mut slow = client().get(&url).send().await.unwrap();
    assert_eq!(slow.status(), 200);
    let mut got = slow.chunk().await.unwrap().expect("first bytes").to_vec();
    let uploads = s.dir.path().join("data").join(".uploads");
    let stored = || {
        std::fs::read_dir(&uploads)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + PATIENCE;
    while stored() < FIRST as u64 {
        assert!(
            Instant::now() < deadline,
            "the fill stored only {} bytes",
            stored()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second client arriving now starts at byte 0, far behind the download too.
    let late = tokio::spawn({
        let (c, url, blob) = (client(), url.clone(), blob.clone());
        async move { download(&c, &url, &blob).await }
    });
    // Everything up to the gate, while the upstream still holds the rest back.
    while got.len() < FIRST {
        let chunk = tokio::time::timeout(PATIENCE, slow.chunk())
            .await
            .expect("stored bytes are served while the fill waits")
            .unwrap()
            .expect("the body cannot end yet");
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got[..], blob[..got.len()], "bytes read back from the store");
    fake.release();
    got.extend_from_slice(&slow.bytes().await.unwrap());
    assert!(got == blob, "the whole blob, byte for byte");
    assert!(late.await.unwrap().intact(&blob), "the late client's copy");
    assert_eq!(fake.count("GET", &upstream_blob(&d)), 1);
    // Clients finish once the body verified; the commit may follow a moment later.
    eventually("the blob stored", || stored_blob_files(&s, &d).len() == 1).await;
    assert_eq!(stored_blob_files(&s, &d).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_upstream_body_is_never_stored_and_a_retry_succeeds() {
    let fake = Fake::start().await;
    let blob = pseudo_random(3, 1024 * 1024);
    let d = fake.add_blob(&blob);
    fake.set_mode(Mode::Truncated);
    let s = berth_for(&fake, LONG_TTL).await;
    let up = stats(&s, &fake.name());
    let c = client();
    let url = s.url(&via_ns(&fake, "blobs", &d.to_string()));

    let got = download(&c, &url, &blob).await;
    assert!(
        !got.intact(&blob),
        "a truncated upstream body was delivered whole"
    );
    if got.status == 200 {
        assert!(
            got.error.is_some() || got.received < blob.len() as u64,
            "the download must visibly fail: {got:?}"
        );
    } else {
        assert_eq!(got.status, 502, "{got:?}");
    }
    assert_eq!(fake.count("GET", &upstream_blob(&d)), 1);
    assert_eq!(up.stats.upstream_errors.get(), 1);
    assert!(
        stored_blob_files(&s, &d).is_empty(),
        "truncated blob stored"
    );

    // Not visible: a HEAD (through the prefix route) is answered by the upstream's HEAD,
    // and a GET goes upstream again.
    let prefixed = s.url(&via_prefix(&fake, "blobs", &d.to_string()));
    let r = client().head(&prefixed).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], blob.len().to_string());
    assert_eq!(fake.count("HEAD", &upstream_blob(&d)), 1, "asked upstream");
    assert_eq!(
        fake.count("GET", &upstream_blob(&d)),
        1,
        "a HEAD downloads nothing"
    );
    let got = download(&c, &prefixed, &blob).await;
    assert!(!got.intact(&blob), "still truncated: {got:?}");
    assert_eq!(fake.count("GET", &upstream_blob(&d)), 2, "refetched");
    eventually("the second truncated fill to fail", || {
        up.stats.upstream_errors.get() == 2
    })
    .await;
    assert!(
        stored_blob_files(&s, &d).is_empty(),
        "truncated blob stored"
    );

    fake.set_mode(Mode::Normal);
    let got = download(&c, &url, &blob).await;
    assert!(got.intact(&blob), "retry: {got:?}");
    assert_eq!(fake.count("GET", &upstream_blob(&d)), 3);
    // Clients finish once the body verified; the commit may follow a moment later.
    eventually("the blob stored", || stored_blob_files(&s, &d).len() == 1).await;
    assert_eq!(stored_blob_files(&s, &d).len(), 1, "stored after the retry");
    // Now it is served from the store.
    let got = download(&c, &url, &blob).await;
    assert!(got.intact(&blob), "from the store: {got:?}");
    assert_eq!(fake.count("GET", &upstream_blob(&d)), 3, "no further fetch");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_upstream_bytes_are_never_delivered_whole_nor_stored() {
    let fake = Fake::start().await;
    let blob = pseudo_random(4, 1024 * 1024);
    let d = fake.add_blob(&blob);
    // Every byte right but the last: only the digest check can tell.
    fake.set_mode(Mode::WrongBytes);
    let s = berth_for(&fake, LONG_TTL).await;
    let up = stats(&s, &fake.name());
    let c = client();
    let url = s.url(&via_ns(&fake, "blobs", &d.to_string()));

    let got = download(&c, &url, &blob).await;
    assert!(
        got.received < blob.len() as u64,
        "the client received the whole (wrong) body: {got:?}"
    );
    assert!(
        got.status != 200 || got.error.is_some(),
        "a short body must end in an error, not cleanly: {got:?}"
    );
    assert!(
        got.matches,
        "bytes delivered before the failure are the blob's"
    );
    assert_eq!(fake.count("GET", &upstream_blob(&d)), 1);
    assert_eq!(up.stats.upstream_errors.get(), 1);
    assert!(stored_blob_files(&s, &d).is_empty(), "corrupt blob stored");

    fake.set_mode(Mode::Normal);
    let got = download(&c, &url, &blob).await;
    assert!(got.intact(&blob), "retry: {got:?}");
    assert_eq!(fake.count("GET", &upstream_blob(&d)), 2);
    // Clients finish once the body verified; the commit may follow a moment later.
    eventually("the blob stored", || stored_blob_files(&s, &d).len() == 1).await;
    assert_eq!(stored_blob_files(&s, &d).len(), 1, "stored after the retry");
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_tag_is_served_while_the_upstream_is_down() {
    let mut fake = Fake::start().await;
    let (digest, manifest) = add_image(&fake, "latest", 5);
    let (_, _) = add_image(&fake, "other", 6);
    let never_pulled_blob = fake.add_blob(b"a blob nobody pulled");
    let s = berth_for(&fake, Duration::from_secs(1)).await;
    let up = stats(&s, &fake.name());
    let c = client();
    let latest = s.url(&via_ns(&fake, "manifests", "latest"));
    let other = s.url(&via_ns(&fake, "manifests", "other"));
    let blob = s.url(&via_ns(&fake, "blobs", &never_pulled_blob.to_string()));

    let r = c.get(&latest).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    let heads = fake.count("HEAD", &upstream_manifest("latest"));

    // Phase 1: the upstream answers 500.
    fake.set_mode(Mode::Error500);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c.get(&latest).send().await.unwrap();
    assert_eq!(r.status(), 200, "stale tag while the upstream errs");
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(r.bytes().await.unwrap()[..], manifest[..]);
    assert_eq!(
        fake.count("HEAD", &upstream_manifest("latest")),
        heads + 1,
        "berth asked upstream after the TTL"
    );
    assert_eq!(up.stats.stale_serves.get(), 1);
    let r = c.get(&other).send().await.unwrap();
    assert_eq!(
        r.status(),
        502,
        "a tag never pulled is unavailable, not unknown"
    );
    let r = c.get(&blob).send().await.unwrap();
    assert_eq!(
        r.status(),
        502,
        "a blob never pulled is unavailable, not unknown"
    );

    // Phase 2: the upstream is gone; connections are refused.
    fake.shutdown().await;
    assert!(
        TcpStream::connect(fake.addr).await.is_err(),
        "the fake still accepts connections"
    );
    let requests_before = fake.total();
    let r = c
        .get(s.url(&via_prefix(&fake, "manifests", "latest")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "stale tag while the upstream is down");
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(r.bytes().await.unwrap()[..], manifest[..]);
    assert_eq!(up.stats.stale_serves.get(), 2);
    let r = c.get(&other).send().await.unwrap();
    assert_eq!(
        r.status(),
        502,
        "a tag never pulled is unavailable, not unknown"
    );
    assert_eq!(fake.total(), requests_before);
    assert!(up.stats.upstream_errors.get() >= 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_are_revalidated_with_head_after_the_ttl() {
    let fake = Fake::start().await;
    let (digest, manifest) = add_image(&fake, "latest", 7);
    let s = berth_for(&fake, Duration::from_secs(1)).await;
    let c = client();
    let url = s.url(&via_ns(&fake, "manifests", "latest"));
    let pull = || async {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
        assert_eq!(r.bytes().await.unwrap()[..], manifest[..]);
    };
    // berth resolves a cold tag with a HEAD, then GETs the manifest by digest.
    let get = || fake.count_under("GET", &upstream_manifest(""));
    let head = || fake.count_under("HEAD", &upstream_manifest(""));

    pull().await;
    assert_eq!(get(), 1, "first pull: one manifest GET");
    let first_heads = head();
    assert!(first_heads <= 1, "first pull: {first_heads} HEADs");
    let total = fake.total();
    assert_eq!(total, get() + head(), "only manifest requests");
    pull().await;
    assert_eq!(
        fake.total(),
        total,
        "within the TTL no upstream request at all"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    pull().await;
    assert_eq!(
        (get(), head()),
        (1, first_heads + 1),
        "after the TTL: one HEAD, no GET"
    );
    assert_eq!(fake.total(), total + 1);
    // The HEAD renewed the tag: the next pull is within the TTL again.
    pull().await;
    assert_eq!(fake.total(), total + 1, "revalidation restarts the TTL");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_404s_become_the_matching_oci_errors() {
    let fake = Fake::start().await;
    let s = berth_for(&fake, LONG_TTL).await;
    let c = client();
    let missing = digest_of(b"nowhere upstream");

    let r = c
        .get(s.url(&via_ns(&fake, "blobs", &missing.to_string())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    assert_eq!(
        fake.count("GET", &upstream_blob(&missing)),
        1,
        "asked upstream"
    );
    let r = c
        .head(s.url(&via_prefix(&fake, "blobs", &missing.to_string())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = c
        .get(s.url(&via_ns(&fake, "manifests", "missing")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    assert!(fake.total() >= 3, "asked upstream");

    let r = c
        .get(s.url(&via_ns(&fake, "manifests", &missing.to_string())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    assert_eq!(
        fake.count("GET", &upstream_manifest(&missing.to_string())),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_upstream_namespace_is_name_unknown() {
    let fake = Fake::start().await;
    let (digest, _) = add_image(&fake, "latest", 8);
    let s = berth_for(&fake, LONG_TTL).await;
    let c = client();
    for path in [
        format!("/v2/{REPO}/manifests/latest?ns=registry.invalid"),
        format!("/v2/{REPO}/manifests/{digest}?ns=registry.invalid"),
        format!("/v2/{REPO}/blobs/{digest}?ns=registry.invalid"),
        // The fake's port, but not its configured name.
        format!(
            "/v2/{REPO}/manifests/latest?ns=localhost:{}",
            fake.addr.port()
        ),
    ] {
        let r = c.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(error_code(r).await, "NAME_UNKNOWN", "{path}");
    }
    let r = c
        .head(s.url(&format!("/v2/{REPO}/blobs/{digest}?ns=registry.invalid")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(fake.total(), 0, "no request reached the upstream");
}
