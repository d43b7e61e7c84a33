//! The cache's invariants at its own boundary, on the in-memory store, against a fake
//! upstream speaking just enough HTTP/1.1 (blob GET and HEAD): one download however many
//! readers ask (single flight), bytes verified before anything is stored (a wrong body is
//! never committed nor delivered whole), and the last byte held back from readers until
//! the digest has been checked.

use crate::{BlobSource, Cache, Started, UpstreamSpec};
use bytes::Bytes;
use futures::StreamExt;
use oci::{Digest, RepoName};
use registry::{Registry, RegistryOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the fake upstream sends for its one blob.
struct Fake {
    url: String,
    /// Blob GETs received.
    gets: Arc<AtomicU64>,
    /// Opened to let the last byte of each GET go.
    release: Arc<tokio::sync::Semaphore>,
}

#[derive(Clone, Copy, PartialEq)]
enum Body {
    /// As long as the blob, its last byte changed: only the digest check can tell.
    Wrong,
    /// All but the last byte at once, the last after `Fake::release`.
    HoldLast,
}

impl Fake {
    async fn start(blob: Bytes, body: Body) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let gets = Arc::new(AtomicU64::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (g, r) = (gets.clone(), release.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (blob, g, r) = (blob.clone(), g.clone(), r.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head);
                    let is_head = text.starts_with("HEAD ");
                    let header = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                        blob.len()
                    );
                    let _ = sock.write_all(header.as_bytes()).await;
                    if is_head || !text.contains("/blobs/") {
                        return;
                    }
                    g.fetch_add(1, Ordering::SeqCst);
                    let mut bytes = blob.to_vec();
                    if body == Body::Wrong {
                        *bytes.last_mut().unwrap() ^= 0xff;
                    }
                    let (most, last) = bytes.split_at(bytes.len() - 1);
                    let _ = sock.write_all(most).await;
                    if body == Body::HoldLast
                        && let Ok(p) = r.acquire().await
                    {
                        p.forget();
                    }
                    let _ = sock.write_all(last).await;
                });
            }
        });
        Fake { url, gets, release }
    }
}

fn cache_of(fake: &Fake) -> (Cache, Registry) {
    cache_on(fake, Arc::new(store::memory::MemoryStore::new()))
}

/// A cache of `fake` on a registry over `store`.
fn cache_on(fake: &Fake, store: Arc<dyn store::Store>) -> (Cache, Registry) {
    let registry = Registry::new(store, RegistryOptions::default());
    let spec = UpstreamSpec {
        name: "up.test".into(),
        options: distribution::ClientOptions::new(fake.url.clone()),
        tag_ttl: Duration::from_secs(60),
        repositories: Vec::new(),
        limits: crate::Limits::default(),
        prefetch: Vec::new(),
    };
    (Cache::new(registry.clone(), vec![spec]).unwrap(), registry)
}

fn blob(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>())
}

/// Everything a reader's stream delivers, and whether it ended in an error.
async fn drain(source: BlobSource) -> (Vec<u8>, bool) {
    let BlobSource::Filling(mut reader) = source else {
        panic!("expected a fill");
    };
    assert!(matches!(reader.started().await, Started::Streaming(_)));
    let mut got = Vec::new();
    let mut s = reader.stream();
    while let Some(c) = s.next().await {
        match c {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

#[tokio::test(flavor = "multi_thread")]
async fn many_readers_share_one_download() {
    let bytes = blob(3 << 20);
    let fake = Fake::start(bytes.clone(), Body::HoldLast).await;
    let (cache, registry) = cache_of(&fake);
    let up = cache.upstream("up.test").unwrap();
    let repo: RepoName = "lib/app".parse().unwrap();
    let d = Digest::sha256_of(&bytes);
    // Eight readers join while the download is held before its last byte.
    let mut readers = Vec::new();
    for _ in 0..8 {
        readers.push(cache.blob(&up, &repo, &d).await.unwrap());
    }
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|s| tokio::spawn(drain(s)))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    fake.release.add_permits(64);
    for t in tasks {
        let (got, failed) = t.await.unwrap();
        assert!(!failed && got == bytes, "every reader gets the whole blob");
    }
    assert_eq!(fake.gets.load(Ordering::SeqCst), 1, "one download");
    assert_eq!(up.stats.misses.get(), 1);
    assert_eq!(up.stats.joins.get(), 7);
    // Readers get the last byte once the body verified, maybe before the store's commit;
    // the blob is then stored and linked, and the next request is a hit.
    let local = up.local(&repo).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while registry.stat_blob(&local, &d).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        registry.stat_blob(&local, &d).await.unwrap(),
        bytes.len() as u64
    );
    assert_eq!(fake.gets.load(Ordering::SeqCst), 1, "still one download");
    assert!(matches!(
        cache.blob(&up, &repo, &d).await.unwrap(),
        BlobSource::Local(_)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_bytes_are_neither_stored_nor_delivered_whole() {
    let bytes = blob(1 << 20);
    let fake = Fake::start(bytes.clone(), Body::Wrong).await;
    let (cache, registry) = cache_of(&fake);
    let up = cache.upstream("up.test").unwrap();
    let repo: RepoName = "lib/app".parse().unwrap();
    let d = Digest::sha256_of(&bytes);
    let (got, failed) = drain(cache.blob(&up, &repo, &d).await.unwrap()).await;
    assert!(failed, "the stream ends in an error");
    assert!(got.len() < bytes.len(), "never the whole (wrong) body");
    assert_eq!(
        got[..],
        bytes[..got.len()],
        "what arrived is the blob's own prefix"
    );
    let local = up.local(&repo).unwrap();
    assert!(
        registry.stat_blob(&local, &d).await.is_err(),
        "nothing linked"
    );
    assert_eq!(
        registry.content_size(&d).await.unwrap(),
        None,
        "nothing stored"
    );
    assert_eq!(up.stats.upstream_errors.get(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_byte_waits_for_the_digest_check() {
    let bytes = blob(256 << 10);
    let fake = Fake::start(bytes.clone(), Body::HoldLast).await;
    let (cache, _registry) = cache_of(&fake);
    let up = cache.upstream("up.test").unwrap();
    let repo: RepoName = "lib/app".parse().unwrap();
    let d = Digest::sha256_of(&bytes);
    let BlobSource::Filling(mut reader) = cache.blob(&up, &repo, &d).await.unwrap() else {
        panic!("expected a fill");
    };
    assert!(
        matches!(reader.started().await, Started::Streaming(Some(n)) if n == bytes.len() as u64)
    );
    let mut s = reader.stream();
    let mut got = Vec::new();
    while got.len() < bytes.len() - 1 {
        got.extend_from_slice(&s.next().await.unwrap().unwrap());
    }
    assert_eq!(got.len(), bytes.len() - 1);
    // Everything but the last byte has arrived; the last is not handed out before the
    // upstream sends it and the whole blob verifies.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.next())
            .await
            .is_err(),
        "the last byte was delivered before the digest was checked"
    );
    fake.release.add_permits(64);
    while let Some(c) = s.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert!(got == bytes);
}

/// A reader gets the whole verified blob while the store is still committing it (a slow
/// commit: on fs, the fsync of the whole file), and the blob is stored after.
#[tokio::test(flavor = "multi_thread")]
async fn readers_finish_once_verified_without_waiting_for_the_commit() {
    let bytes = blob(2 << 20);
    let fake = Fake::start(bytes.clone(), Body::HoldLast).await;
    fake.release.add_permits(64);
    let faulty = Arc::new(store::faults::FaultyStore::new(Arc::new(
        store::memory::MemoryStore::new(),
    )));
    faulty.arm(
        store::faults::Op::UploadCommit,
        None,
        0,
        store::faults::Fault::Slow(Duration::from_secs(2)),
    );
    let (cache, registry) = cache_on(&fake, faulty);
    let up = cache.upstream("up.test").unwrap();
    let repo: RepoName = "lib/app".parse().unwrap();
    let d = Digest::sha256_of(&bytes);
    let (got, failed) = drain(cache.blob(&up, &repo, &d).await.unwrap()).await;
    assert!(!failed && got == bytes, "the whole blob, verified");
    let local = up.local(&repo).unwrap();
    assert!(
        registry.stat_blob(&local, &d).await.is_err(),
        "the reader was done before the commit"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while registry.stat_blob(&local, &d).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.gets.load(Ordering::SeqCst), 1);
}

/// Appends wait for more segments only while the download keeps coming: a paused
/// upstream's bytes reach the store while the pause lasts. (How few appends a fast
/// download takes is a figure of the release build, in the bench's fill line; this
/// debug build hashes too slowly for the bytes to arrive "at once".)
#[tokio::test(flavor = "multi_thread")]
async fn a_fill_does_not_sit_on_the_bytes_of_a_paused_download() {
    let bytes = blob(32 << 20);
    let fake = Fake::start(bytes.clone(), Body::HoldLast).await;
    let (cache, registry) = cache_of(&fake);
    let up = cache.upstream("up.test").unwrap();
    let repo: RepoName = "lib/app".parse().unwrap();
    let d = Digest::sha256_of(&bytes);
    let reader = tokio::spawn(drain(cache.blob(&up, &repo, &d).await.unwrap()));
    // The upstream holds its last byte: everything before it is appended meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let uploads = registry.store().upload_list().await.unwrap_or_default();
        let size = uploads.iter().map(|(_, m)| m.size).max().unwrap_or(0);
        if size == bytes.len() as u64 - 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bytes before a pause never reached the store ({size} of {})",
            bytes.len() - 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.release.add_permits(1);
    let (got, failed) = reader.await.unwrap();
    assert!(!failed && got == bytes);
    let local = up.local(&repo).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while registry.stat_blob(&local, &d).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
