//! Crash safety of the real `berth` binary: SIGKILL while large uploads stream in (PATCH
//! chunks, a chunked PATCH, a monolithic PUT, a POST with digest), at three different
//! moments on one data directory, must keep every acknowledged push intact, publish no
//! partial blob, keep every file under `blobs/` true to its name, and leave a server that
//! works and lets interrupted sessions resume (or forgets them cleanly).

use crate::common::{client, digest_of, free_port, image_manifest, pseudo_random};
use bytes::Bytes;
use futures::StreamExt;
use oci::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MIB: usize = 1 << 20;
/// Size of the content every interrupted upload starts with (each then has its own tail).
const BIG: usize = 64 * MIB;
/// Pieces handed to the HTTP client, and the pause before each while a blob is in flight:
/// 16 MiB/s per upload, so none of the 64+ MiB uploads can finish before the kill.
const PIECE: usize = 256 * 1024;
const PIECE_PAUSE: Duration = Duration::from_millis(16);
/// Chunk size of the upload that PATCHes in several requests.
const PATCH_CHUNK: u64 = 8 * MIB as u64;

/// A blob's content as consecutive parts (big blobs share one large first part) and its
/// digest.
#[derive(Clone)]
struct Blob {
    parts: Vec<Bytes>,
    digest: Digest,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: digest_of(&bytes),
            parts: vec![Bytes::from(bytes)],
        }
    }

    fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }

    /// Is `bytes` exactly this blob's content?
    fn matches(&self, bytes: &[u8]) -> bool {
        if bytes.len() as u64 != self.len() {
            return false;
        }
        let mut at = 0;
        self.parts.iter().all(|p| {
            let same = bytes[at..at + p.len()] == p[..];
            at += p.len();
            same
        })
    }

    /// Bytes `from..to` as pieces of at most [`PIECE`] bytes (slices, no copies).
    fn pieces(&self, from: u64, to: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut start = 0u64;
        for p in &self.parts {
            let end = start + p.len() as u64;
            let (a, b) = (from.max(start), to.min(end));
            let mut i = a;
            while i < b {
                let j = (i + PIECE as u64).min(b);
                out.push(p.slice((i - start) as usize..(j - start) as usize));
                i = j;
            }
            start = end;
        }
        out
    }

    /// A request body of bytes `from..to`. With a `sent` counter it trickles in (one
    /// piece per [`PIECE_PAUSE`]) and counts every byte handed to the connection.
    fn body(&self, from: u64, to: u64, sent: Option<Arc<AtomicU64>>) -> reqwest::Body {
        let stream = futures::stream::iter(self.pieces(from, to)).then(move |piece| {
            let sent = sent.clone();
            async move {
                if let Some(sent) = sent {
                    tokio::time::sleep(PIECE_PAUSE).await;
                    sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
                }
                Ok::<_, std::io::Error>(piece)
            }
        });
        reqwest::Body::wrap_stream(stream)
    }
}

/// The large shared first part of the interrupted blobs, and the hash state after it,
/// so each blob's digest costs only its tail.
struct BigPrefix {
    bytes: Bytes,
    state: oci::Hasher,
}

impl BigPrefix {
    fn make() -> BigPrefix {
        let bytes = pseudo_random(7, BIG);
        let mut state = oci::Hasher::new(oci::Algorithm::Sha256);
        state.update(&bytes);
        BigPrefix {
            bytes: Bytes::from(bytes),
            state,
        }
    }

    /// A distinct big blob: the prefix and a tail of its own.
    fn blob(&self, seed: u64, tail_len: usize) -> Blob {
        let tail = pseudo_random(seed, tail_len);
        let mut h = self.state.clone();
        h.update(&tail);
        Blob {
            parts: vec![self.bytes.clone(), Bytes::from(tail)],
            digest: h.finish(),
        }
    }
}

/// A `berth serve` process on a data directory; SIGKILLed when dropped.
struct Berth {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Berth {
    /// Start the real binary with fsync on, on a fresh port, and wait until it answers.
    async fn start(dir: &Path) -> Berth {
        // The free port is only free until someone else takes it: try a few.
        for _ in 0..3 {
            if let Some(b) = Berth::try_start(dir).await {
                return b;
            }
        }
        panic!("berth could not listen on a free port three times");
    }

    /// `None` when the port was taken before berth could bind it.
    async fn try_start(dir: &Path) -> Option<Berth> {
        let port = free_port();
        let config = dir.join("berth.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[storage]\nkind = \"fs\"\npath = {:?}\nfsync = true\n\n[[access]]\nrepositories = \"**\"\nusers = [\"anonymous\"]\nallow = [\"pull\", \"push\", \"delete\"]\n",
                dir.join("data").to_str().unwrap()
            ),
        )
        .unwrap();
        let log = dir.join("berth.log");
        let _ = std::fs::remove_file(&log);
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut b = Berth {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = b.child.try_wait().unwrap() {
                let log = b.log_text();
                if log.contains("cannot listen") {
                    return None;
                }
                panic!("berth exited with {status} while starting:\n{log}");
            }
            if let Ok(r) = client().get(b.url("/v2/")).send().await
                && r.status() == 200
            {
                return Some(b);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "berth did not answer GET /v2/ within 30 s:\n{}",
                b.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no chance to finish anything
        let _ = self.child.wait();
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A pushed image: what its tag must keep resolving to.
#[derive(Clone)]
struct Image {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
    digest: Digest,
}

/// An image and the blobs it references.
type Pushed = (Image, Vec<Blob>);

/// Send a request and require status `want`; any other outcome, transport failures
/// included, is an `Err` naming the step.
async fn expect(
    rb: reqwest::RequestBuilder,
    want: u16,
    what: &str,
) -> Result<reqwest::Response, String> {
    let r = rb.send().await.map_err(|e| format!("{what}: {e}"))?;
    if r.status() != want {
        let status = r.status();
        return Err(format!(
            "{what}: HTTP {status}: {}",
            r.text().await.unwrap_or_default()
        ));
    }
    Ok(r)
}

/// The blobs and manifest of a small image whose layers are about `layer` and
/// `3 * layer` bytes.
fn make_image(repo: &str, tag: &str, seed: u64, layer: usize) -> Pushed {
    let config = Blob::new(
        format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}").into_bytes(),
    );
    let small = Blob::new(pseudo_random(seed, layer + 17));
    let chunked = Blob::new(pseudo_random(seed + 1, 3 * layer + 5));
    let manifest = image_manifest(
        (&config.digest, config.len() as usize),
        &[
            (&small.digest, small.len() as usize),
            (&chunked.digest, chunked.len() as usize),
        ],
    );
    let image = Image {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        digest: digest_of(&manifest),
        manifest,
    };
    (image, vec![config, small, chunked])
}

/// Push an image made by [`make_image`]: the first layer with a monolithic POST, the
/// config with POST then PUT, the second layer in three PATCH chunks, then the manifest
/// under its tag; every acknowledgement is checked.
async fn try_push(base: &str, (image, blobs): &Pushed) -> Result<(), String> {
    let c = client();
    let repo = &image.repo;
    let [config, small, chunked] = &blobs[..] else {
        unreachable!()
    };
    let uploads = format!("{base}/v2/{repo}/blobs/uploads/");

    expect(
        c.post(format!("{uploads}?digest={}", small.digest))
            .body(small.parts[0].clone()),
        201,
        "monolithic POST",
    )
    .await?;

    let r = expect(c.post(&uploads), 202, "POST").await?;
    let session = format!("{base}{}", header(&r, "location"));
    expect(
        c.put(format!("{session}?digest={}", config.digest))
            .body(config.parts[0].clone()),
        201,
        "PUT after POST",
    )
    .await?;

    let r = expect(c.post(&uploads), 202, "POST").await?;
    let session = format!("{base}{}", header(&r, "location"));
    let total = chunked.len();
    let step = total / 3 + 1;
    let mut at = 0;
    while at < total {
        let end = (at + step).min(total);
        let r = expect(
            c.patch(&session)
                .header("content-range", format!("{at}-{}", end - 1))
                .header("content-length", end - at)
                .body(chunked.body(at, end, None)),
            202,
            "PATCH",
        )
        .await?;
        if header(&r, "range") != format!("0-{}", end - 1) {
            return Err(format!(
                "PATCH to {end} answered Range {}",
                header(&r, "range")
            ));
        }
        at = end;
    }
    expect(
        c.put(format!("{session}?digest={}", chunked.digest)),
        201,
        "PUT closing a chunked upload",
    )
    .await?;

    let r = expect(
        c.put(format!("{base}/v2/{repo}/manifests/{}", image.tag))
            .header("content-type", oci::media::OCI_MANIFEST)
            .body(image.manifest.clone()),
        201,
        "manifest PUT",
    )
    .await?;
    if header(&r, "docker-content-digest") != image.digest.to_string() {
        return Err(format!(
            "manifest PUT answered digest {}",
            header(&r, "docker-content-digest")
        ));
    }
    Ok(())
}

/// Push a new image that must succeed.
async fn push_image(b: &Berth, repo: &str, tag: &str, seed: u64) -> Pushed {
    let image = make_image(repo, tag, seed, MIB);
    if let Err(e) = try_push(&b.base, &image).await {
        panic!("pushing {repo}:{tag}: {e}\n{}", b.log_text());
    }
    image
}

/// Push tiny images one after another until a push fails, recording each acknowledged
/// one in `done` and the one under way in `current`: this keeps manifest and tag writes
/// going at the moment of the kill.
async fn keep_pushing(
    base: String,
    round: usize,
    done: Arc<Mutex<Vec<Pushed>>>,
    current: Arc<Mutex<Option<Image>>>,
) -> String {
    for n in 0.. {
        let image = make_image(
            "crash/busy",
            &format!("r{round}-{n}"),
            10_000 * (round as u64 + 1) + 2 * n,
            4096,
        );
        *current.lock().unwrap() = Some(image.0.clone());
        if let Err(e) = try_push(&base, &image).await {
            return e;
        }
        done.lock().unwrap().push(image);
    }
    unreachable!()
}

/// Everything the server has acknowledged so far, and what it must never show.
#[derive(Default)]
struct Ledger {
    images: Vec<Image>,
    /// (repository, blob) pairs whose upload was acknowledged with 201.
    blobs: Vec<(String, Blob)>,
    /// (repository, digest) of uploads that were killed before they finished.
    interrupted: Vec<(String, Digest)>,
    /// Images whose push was under way at a kill: their tag may or may not exist, but
    /// if it does it must lead to the complete image.
    torn: Vec<Image>,
}

impl Ledger {
    fn add(&mut self, (image, blobs): Pushed) {
        self.blobs
            .extend(blobs.into_iter().map(|b| (image.repo.clone(), b)));
        self.images.push(image);
    }

    /// What every complete file under `blobs/` must hold, by hex digest.
    fn known(&self) -> HashMap<String, Blob> {
        let mut known: HashMap<String, Blob> = self
            .blobs
            .iter()
            .map(|(_, b)| (b.digest.hex().to_owned(), b.clone()))
            .collect();
        for i in &self.images {
            known.insert(i.digest.hex().to_owned(), Blob::new(i.manifest.clone()));
        }
        known
    }
}

/// Every file under `data/blobs` holds exactly the content its name is the digest of,
/// sits where the layout puts it, and is none of the interrupted uploads. Returns how
/// many files were checked.
fn check_blob_files(data: &Path, known: &HashMap<String, Blob>, interrupted: &[String]) -> usize {
    let root = data.join("blobs");
    let mut stack = vec![root.clone()];
    let mut checked = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let parts: Vec<&str> = rel.split('/').collect();
            assert!(
                parts.len() == 3
                    && parts[0] == "sha256"
                    && parts[2].starts_with(parts[1])
                    && parts[1].len() == 2,
                "unexpected file blobs/{rel}"
            );
            let hex = parts[2];
            assert!(
                !interrupted.iter().any(|i| i == hex),
                "an interrupted upload was published as blobs/{rel}"
            );
            let bytes = std::fs::read(&path).unwrap();
            match known.get(hex) {
                Some(b) => assert!(
                    b.matches(&bytes),
                    "blobs/{rel} does not hold the bytes pushed ({} bytes)",
                    bytes.len()
                ),
                None => assert_eq!(
                    digest_of(&bytes).hex(),
                    hex,
                    "blobs/{rel} holds content of another digest"
                ),
            }
            checked += 1;
        }
    }
    checked
}

/// After a restart: every acknowledged image and blob reads back exactly, no interrupted
/// blob is visible, and the blob files on disk are all true to their names.
async fn verify(b: &Berth, data: &Path, ledger: &Ledger) {
    let c = client();
    for i in &ledger.images {
        for reference in [i.tag.clone(), i.digest.to_string()] {
            let r = c
                .get(b.url(&format!("/v2/{}/manifests/{reference}", i.repo)))
                .header("accept", oci::media::OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                200,
                "manifest {}:{reference} lost in a crash",
                i.repo
            );
            assert_eq!(header(&r, "docker-content-digest"), i.digest.to_string());
            assert!(
                r.bytes().await.unwrap() == i.manifest,
                "manifest {}:{reference} changed",
                i.repo
            );
        }
        let tags: serde_json::Value = c
            .get(b.url(&format!("/v2/{}/tags/list", i.repo)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            tags["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == i.tag.as_str()),
            "tag {} missing from {tags}",
            i.tag
        );
    }
    for (repo, blob) in &ledger.blobs {
        let r = c
            .get(b.url(&format!("/v2/{repo}/blobs/{}", blob.digest)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "blob {} lost in a crash", blob.digest);
        assert_eq!(header(&r, "docker-content-digest"), blob.digest.to_string());
        assert!(
            blob.matches(&r.bytes().await.unwrap()),
            "blob {} changed",
            blob.digest
        );
    }
    for i in &ledger.torn {
        let r = c
            .get(b.url(&format!("/v2/{}/manifests/{}", i.repo, i.tag)))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            404 => {}
            200 => {
                assert_eq!(header(&r, "docker-content-digest"), i.digest.to_string());
                assert!(
                    r.bytes().await.unwrap() == i.manifest,
                    "tag {} of a torn push is corrupt",
                    i.tag
                );
                let m: serde_json::Value = serde_json::from_slice(&i.manifest).unwrap();
                let layers = m["layers"].as_array().unwrap().iter();
                for d in std::iter::once(&m["config"])
                    .chain(layers)
                    .map(|d| d["digest"].as_str().unwrap())
                {
                    let r = c
                        .get(b.url(&format!("/v2/{}/blobs/{d}", i.repo)))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(
                        r.status(),
                        200,
                        "tag {} resolves but its blob {d} is gone",
                        i.tag
                    );
                    assert_eq!(digest_of(&r.bytes().await.unwrap()).to_string(), d);
                }
            }
            s => panic!("tag {} of a torn push answers {s}", i.tag),
        }
    }
    for (repo, digest) in &ledger.interrupted {
        let r = c
            .head(b.url(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "interrupted upload {digest} is visible");
    }
    let known = ledger.known();
    let interrupted: Vec<String> = ledger
        .interrupted
        .iter()
        .map(|(_, d)| d.hex().to_owned())
        .collect();
    let data = data.to_owned();
    let checked =
        tokio::task::spawn_blocking(move || check_blob_files(&data, &known, &interrupted))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(
        checked >= ledger.images.len(),
        "only {checked} blob files on disk"
    );
}

/// How an interrupted upload sends its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// POST, then PATCH requests of [`PATCH_CHUNK`] bytes with Content-Range, then PUT.
    PatchChunks,
    /// POST, then one chunked-encoding PATCH of everything, then PUT.
    PatchStream,
    /// POST, then a PUT with digest carrying the whole body.
    PutStream,
    /// One POST with digest carrying the whole body.
    PostStream,
}

/// One upload that is in flight when the server dies.
struct Flight {
    style: Style,
    repo: String,
    blob: Blob,
    /// The session URL path, once the POST answered.
    location: Mutex<Option<String>>,
    /// Bytes handed to the connection: the server can hold no more.
    sent: Arc<AtomicU64>,
    /// Bytes the server acknowledged (202 to a PATCH): it must hold at least these.
    acked: AtomicU64,
}

impl Flight {
    fn location(&self) -> Option<String> {
        self.location.lock().unwrap().clone()
    }
}

/// Run an upload to the end. `Err` is a transport failure (what the kill causes); `Ok`
/// is an HTTP answer that ended it, which must not happen before the kill.
async fn fly(base: String, f: Arc<Flight>) -> Result<String, reqwest::Error> {
    let c = client();
    let len = f.blob.len();
    let digest = &f.blob.digest;
    let uploads = format!("{base}/v2/{}/blobs/uploads/", f.repo);
    let slow = |from, to| f.blob.body(from, to, Some(f.sent.clone()));
    if f.style == Style::PostStream {
        let r = c
            .post(format!("{uploads}?digest={digest}"))
            .header("content-length", len)
            .body(slow(0, len))
            .send()
            .await?;
        return Ok(format!("POST answered {}", r.status()));
    }
    let r = c.post(&uploads).send().await?;
    if r.status() != 202 {
        return Ok(format!("POST answered {}", r.status()));
    }
    let loc = header(&r, "location");
    *f.location.lock().unwrap() = Some(loc.clone());
    let session = format!("{base}{loc}");
    match f.style {
        Style::PatchChunks => {
            let mut at = 0;
            while at < len {
                let end = (at + PATCH_CHUNK).min(len);
                let r = c
                    .patch(&session)
                    .header("content-range", format!("{at}-{}", end - 1))
                    .header("content-length", end - at)
                    .body(slow(at, end))
                    .send()
                    .await?;
                if r.status() != 202 {
                    return Ok(format!("PATCH answered {}", r.status()));
                }
                f.acked.store(end, Ordering::SeqCst);
                at = end;
            }
        }
        Style::PatchStream => {
            let r = c.patch(&session).body(slow(0, len)).send().await?;
            if r.status() != 202 {
                return Ok(format!("PATCH answered {}", r.status()));
            }
            f.acked.store(len, Ordering::SeqCst);
        }
        Style::PutStream => {
            let r = c
                .put(format!("{session}?digest={digest}"))
                .header("content-length", len)
                .body(slow(0, len))
                .send()
                .await?;
            return Ok(format!("PUT answered {}", r.status()));
        }
        Style::PostStream => unreachable!(),
    }
    let r = c.put(format!("{session}?digest={digest}")).send().await?;
    Ok(format!("PUT answered {}", r.status()))
}

/// Where an upload session stands after the restart: `Some(bytes)` or `None` for 404.
async fn session_offset(b: &Berth, loc: &str) -> Option<u64> {
    let r = client().get(b.url(loc)).send().await.unwrap();
    match r.status().as_u16() {
        404 => None,
        204 => {
            let range = header(&r, "range");
            let last: u64 = range
                .strip_prefix("0-")
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("bad Range {range:?} for {loc}"));
            // "0-0" is what an empty upload reports (a 1-byte one is not possible here).
            Some(if last == 0 { 0 } else { last + 1 })
        }
        s => panic!("GET {loc} after restart answered {s}"),
    }
}

/// Finish an interrupted upload from where the server says it stands (or, if it forgot
/// the session, upload again from scratch); the blob must then read back exactly.
async fn resume(b: &Berth, f: &Flight, offset: Option<u64>) {
    let c = client();
    let len = f.blob.len();
    let digest = &f.blob.digest;
    match (f.location(), offset) {
        (Some(loc), Some(n)) => {
            let r = c
                .patch(b.url(&loc))
                .header("content-range", format!("{n}-{}", len - 1))
                .header("content-length", len - n)
                .body(f.blob.body(n, len, None))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202, "resuming {:?} at {n}", f.style);
            assert_eq!(header(&r, "range"), format!("0-{}", len - 1));
            let r = c
                .put(b.url(&format!("{loc}?digest={digest}")))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                201,
                "closing the resumed {:?} upload (resumed at {n}): {}",
                f.style,
                r.text().await.unwrap()
            );
            assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
        }
        _ => {
            let r = c
                .post(b.url(&format!("/v2/{}/blobs/uploads/?digest={digest}", f.repo)))
                .header("content-length", len)
                .body(f.blob.body(0, len, None))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "uploading {:?} again", f.style);
        }
    }
    let r = c
        .get(b.url(&format!("/v2/{}/blobs/{digest}", f.repo)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        f.blob.matches(&r.bytes().await.unwrap()),
        "resumed blob reads back different bytes"
    );
}

/// The moment of a kill, by how far the PATCH-chunks upload has got: robust against
/// how fast the machine is, and each lands somewhere different in the protocol.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This many bytes handed to the connection.
    Sent(u64),
    /// This many bytes acknowledged by the server.
    Acked(u64),
}

impl KillAt {
    fn reached(self, f: &Flight) -> bool {
        match self {
            KillAt::Sent(n) => f.sent.load(Ordering::SeqCst) >= n,
            KillAt::Acked(n) => f.acked.load(Ordering::SeqCst) >= n,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_large_uploads_keeps_acknowledged_data_and_publishes_nothing_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let prefix = tokio::task::spawn_blocking(BigPrefix::make);
    let mut server = Berth::start(tmp.path()).await;
    let prefix = prefix.await.unwrap();
    let mut ledger = Ledger::default();
    let mut busy_total = 0;
    let styles = [
        Style::PatchChunks,
        Style::PatchStream,
        Style::PutStream,
        Style::PostStream,
    ];
    // When to kill, and which interrupted upload to resume afterwards: just after the
    // first chunk was acknowledged; barely started; deep into the third chunk.
    let rounds = [
        (KillAt::Acked(PATCH_CHUNK), Style::PatchChunks),
        (KillAt::Sent(512 * 1024), Style::PutStream),
        (
            KillAt::Sent(2 * PATCH_CHUNK + 3 * MIB as u64),
            Style::PatchStream,
        ),
    ];

    for (round, (kill_at, resumed)) in rounds.into_iter().enumerate() {
        let seed = 1000 * (round as u64 + 1);
        for k in 0..2 {
            ledger.add(push_image(&server, "crash/done", &format!("r{round}-{k}"), seed + k).await);
        }

        let flights: Vec<Arc<Flight>> = styles
            .iter()
            .enumerate()
            .map(|(i, &style)| {
                Arc::new(Flight {
                    style,
                    repo: "crash/flight".to_owned(),
                    blob: prefix.blob(seed + 100 + i as u64, i * MIB + 4096 + round),
                    location: Mutex::new(None),
                    sent: Arc::default(),
                    acked: AtomicU64::new(0),
                })
            })
            .collect();
        let tasks: Vec<_> = flights
            .iter()
            .map(|f| tokio::spawn(fly(server.base.clone(), f.clone())))
            .collect();
        // Small pushes keep going beside the uploads, so blob, manifest and tag writes
        // are under way at the kill too; each acknowledged one must survive.
        let done = Arc::new(Mutex::new(Vec::new()));
        let current = Arc::new(Mutex::new(None));
        let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pusher = tokio::spawn({
            let (base, done, current, killed) = (
                server.base.clone(),
                done.clone(),
                current.clone(),
                killed.clone(),
            );
            async move {
                let e = keep_pushing(base, round, done, current).await;
                assert!(
                    killed.load(Ordering::SeqCst),
                    "a push failed while the server was up: {e}"
                );
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Every upload that works through a session has one before the kill (under load
        // a POST can lag behind the first flight's bytes).
        let sessions_open = |flights: &[Arc<Flight>]| {
            flights
                .iter()
                .all(|f| f.style == Style::PostStream || f.location().is_some())
        };
        while !kill_at.reached(&flights[0]) || !sessions_open(&flights) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: uploads never reached {kill_at:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        killed.store(true, Ordering::SeqCst);
        drop(server); // SIGKILL, with every upload in flight
        tokio::time::timeout(Duration::from_secs(10), pusher)
            .await
            .expect("the pusher did not notice the server died")
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let pushed = std::mem::take(&mut *done.lock().unwrap());
        let busy = pushed.len();
        busy_total += busy;
        if let Some(torn) = current.lock().unwrap().take() {
            ledger.torn.push(torn);
        }
        for image in pushed {
            ledger.add(image);
        }
        for (t, f) in tasks.into_iter().zip(&flights) {
            match tokio::time::timeout(Duration::from_secs(10), t).await {
                Ok(Ok(Err(_))) => {} // the connection died with the server
                Ok(Ok(Ok(ended))) => panic!(
                    "round {round}: the {:?} upload ended before the kill ({ended}); it should still be streaming",
                    f.style
                ),
                Ok(Err(e)) => panic!("upload task failed: {e}"),
                Err(_) => panic!("the {:?} upload did not notice the server died", f.style),
            }
            ledger
                .interrupted
                .push((f.repo.clone(), f.blob.digest.clone()));
        }
        let progress: Vec<String> = flights
            .iter()
            .map(|f| {
                format!(
                    "{:?} sent {} acked {}",
                    f.style,
                    f.sent.load(Ordering::SeqCst),
                    f.acked.load(Ordering::SeqCst)
                )
            })
            .collect();

        server = Berth::start(tmp.path()).await;
        verify(&server, &data, &ledger).await;

        // Interrupted sessions: the server holds no more than was sent and no less than it
        // acknowledged; one is resumed to completion, the others are cancelled.
        for f in &flights {
            let Some(loc) = f.location() else {
                assert_eq!(
                    f.style,
                    Style::PostStream,
                    "round {round}: no session for {:?}",
                    f.style
                );
                continue;
            };
            let offset = session_offset(&server, &loc).await;
            if let Some(n) = offset {
                let (sent, acked) = (
                    f.sent.load(Ordering::SeqCst),
                    f.acked.load(Ordering::SeqCst),
                );
                assert!(
                    n <= sent,
                    "round {round}: {:?} session holds {n} bytes, only {sent} were sent",
                    f.style
                );
                assert!(
                    n >= acked,
                    "round {round}: {:?} session holds {n} bytes, {acked} were acknowledged",
                    f.style
                );
            }
            if f.style == resumed {
                resume(&server, f, offset).await;
                ledger.interrupted.retain(|(_, d)| *d != f.blob.digest);
                ledger.blobs.push((f.repo.clone(), f.blob.clone()));
            } else if offset.is_some() {
                let r = client().delete(server.url(&loc)).send().await.unwrap();
                assert_eq!(
                    r.status(),
                    204,
                    "cancelling the interrupted {:?} session",
                    f.style
                );
                assert_eq!(
                    session_offset(&server, &loc).await,
                    None,
                    "cancelled session still answers"
                );
            }
        }
        eprintln!(
            "round {round}: killed at {kill_at:?} with {busy} small pushes done: {}",
            progress.join(", ")
        );
    }

    // The server keeps working normally after the last crash, and nothing was lost.
    assert!(
        busy_total > 0,
        "no small push completed beside the large uploads: the test did not exercise that"
    );
    ledger.add(push_image(&server, "crash/after", "final", 9).await);
    verify(&server, &data, &ledger).await;
}
