//! Concurrency stress over HTTP: many clients racing PATCH, PUT, DELETE and status on the
//! same uploads, and pushes and deletes of the same digest into different repositories,
//! on one filesystem server and on two S3 replicas sharing a bucket (so that requests of
//! one upload race across processes, where only the store's conditional writes order
//! them). Afterwards every acknowledged chunk must be part of exactly one consistent
//! history, every committed blob must be exactly its acknowledged chunks, and every blob
//! in the store must hash to its name.

use crate::common::*;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A small deterministic generator for the clients' choices.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What clients were told about one upload.
#[derive(Default)]
struct Told {
    /// Acknowledged chunks by start offset.
    acked: BTreeMap<u64, Vec<u8>>,
    /// The digest a PUT was answered 201 for.
    committed: Option<oci::Digest>,
}

impl Told {
    /// The bytes the acknowledged chunks make when they line up from 0.
    fn contiguous(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (start, bytes) in &self.acked {
            if *start != out.len() as u64 {
                break;
            }
            out.extend_from_slice(bytes);
        }
        out
    }
}

async fn race_one_upload(servers: &[&TestServer], repo: String, seed: u64, clients: u64) -> Told {
    let r = client()
        .post(servers[0].url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let told = Arc::new(Mutex::new(Told::default()));
    let may_delete = seed.is_multiple_of(3);
    let tasks = (0..clients).map(|c| {
        let told = told.clone();
        let loc = loc.clone();
        let urls: Vec<String> = servers.iter().map(|s| s.url(&loc)).collect();
        async move {
            let mut dice = Dice(seed * 1000 + c + 1);
            for op in 0..25u64 {
                let url = &urls[dice.roll(urls.len() as u64) as usize];
                let choice = dice.roll(20);
                if choice < 12 {
                    // PATCH at the end as this client knows it, or sometimes a stale one.
                    let known = told.lock().unwrap().contiguous().len() as u64;
                    let start = if dice.roll(4) == 0 { known / 2 } else { known };
                    let len = 1 + dice.roll(48 * 1024);
                    let data = pseudo_random(seed * 7919 + c * 131 + op, len as usize);
                    let r = client()
                        .patch(url)
                        .header("content-type", "application/octet-stream")
                        .header("content-range", format!("{start}-{}", start + len - 1))
                        .body(data.clone())
                        .send()
                        .await
                        .unwrap();
                    match r.status().as_u16() {
                        202 => {
                            let mut t = told.lock().unwrap();
                            assert!(
                                t.acked.insert(start, data).is_none(),
                                "two PATCHes acknowledged at offset {start}"
                            );
                        }
                        416 | 404 => {}
                        other => panic!("PATCH answered {other}: {}", r.text().await.unwrap()),
                    }
                } else if choice < 15 {
                    let r = client().get(url).send().await.unwrap();
                    assert!(
                        matches!(r.status().as_u16(), 204 | 404),
                        "status answered {}",
                        r.status()
                    );
                } else if choice < 19 || !may_delete {
                    let bytes = told.lock().unwrap().contiguous();
                    let d = digest_of(&bytes);
                    let r = client()
                        .put(with_query(url, &format!("digest={d}")))
                        .send()
                        .await
                        .unwrap();
                    match r.status().as_u16() {
                        201 => {
                            let mut t = told.lock().unwrap();
                            assert!(t.committed.is_none(), "an upload committed twice");
                            t.committed = Some(d);
                        }
                        400 | 404 | 416 => {}
                        other => panic!("PUT answered {other}: {}", r.text().await.unwrap()),
                    }
                } else {
                    let r = client().delete(url).send().await.unwrap();
                    assert!(matches!(r.status().as_u16(), 204 | 404));
                }
            }
        }
    });
    futures::future::join_all(tasks).await;
    Arc::try_unwrap(told)
        .unwrap_or_else(|_| unreachable!("every client is done"))
        .into_inner()
        .unwrap()
}

/// Every object under `blobs/` hashes to the name it is stored under.
async fn every_stored_blob_hashes_to_its_name(s: &TestServer) -> usize {
    let store = s.app.registry.store();
    let listed = store::walk_sorted(store.as_ref(), &store::Key::new("blobs").unwrap())
        .await
        .unwrap();
    for (path, meta) in &listed {
        // sha256/<2 hex>/<hex>
        let hex = path.rsplit('/').next().unwrap();
        let key = store::Key::new(format!("blobs/{path}")).unwrap();
        let mut body = store.read(&key, 0..meta.size).await.unwrap();
        let mut h = oci::Hasher::new(oci::Algorithm::Sha256);
        while let Some(c) = body.next().await {
            h.update(&c.unwrap());
        }
        assert_eq!(
            h.finish().hex(),
            hex,
            "blob {path} does not hash to its name"
        );
    }
    listed.len()
}

async fn stress(servers: &[&TestServer], tag: &str) {
    // 1. Racing requests on the same uploads.
    let mut checked = 0;
    let results = futures::future::join_all(
        (0..6u64).map(|u| race_one_upload(servers, format!("stress/{tag}/u{u}"), u + 1, 6)),
    )
    .await;
    for (u, told) in results.iter().enumerate() {
        // The acknowledged chunks are one history: contiguous from 0, no overlaps.
        let mut end = 0u64;
        for (start, bytes) in &told.acked {
            assert_eq!(
                *start, end,
                "upload {u}: acknowledged chunks overlap or leave a gap"
            );
            end += bytes.len() as u64;
        }
        if let Some(d) = &told.committed {
            let all = told.contiguous();
            assert_eq!(
                &digest_of(&all),
                d,
                "upload {u}: committed bytes are the acknowledged ones"
            );
            for s in servers {
                let got = get_bytes(&s.url(&format!("/v2/stress/{tag}/u{u}/blobs/{d}"))).await;
                assert!(
                    got == all[..],
                    "upload {u}: served bytes are the acknowledged ones"
                );
            }
            checked += 1;
        }
    }

    // 2. The same digest pushed into different repositories while others delete it.
    let content = pseudo_random(4242, 200 * 1024);
    let d = digest_of(&content);
    let tasks = (0..6usize).map(|c| {
        let content = content.clone();
        let d = d.clone();
        let urls: Vec<String> = servers.iter().map(|s| s.url("")).collect();
        async move {
            let mut dice = Dice(c as u64 + 77);
            for _ in 0..10 {
                let base = &urls[dice.roll(urls.len() as u64) as usize];
                let repo = format!("stress/{tag}/same{}", dice.roll(3));
                let r = if dice.roll(3) == 0 {
                    client()
                        .delete(format!("{base}/v2/{repo}/blobs/{d}"))
                        .send()
                        .await
                        .unwrap()
                } else {
                    client()
                        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                        .header("content-type", "application/octet-stream")
                        .body(content.clone())
                        .send()
                        .await
                        .unwrap()
                };
                let status = r.status().as_u16();
                assert!(
                    matches!(status, 201 | 202 | 404),
                    "push/delete answered {status}: {}",
                    r.text().await.unwrap()
                );
            }
        }
    });
    futures::future::join_all(tasks).await;
    for i in 0..3 {
        let repo = format!("stress/{tag}/same{i}");
        for s in servers {
            let r = client()
                .get(s.url(&format!("/v2/{repo}/blobs/{d}")))
                .send()
                .await
                .unwrap();
            match r.status().as_u16() {
                404 => {}
                200 => assert!(r.bytes().await.unwrap() == content[..]),
                other => panic!("GET answered {other}"),
            }
        }
    }
    let blobs = every_stored_blob_hashes_to_its_name(servers[0]).await;
    eprintln!(
        "stress {tag}: {checked} of 6 racing uploads committed; {blobs} stored blobs all hash to their names"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_clients_on_fs_leave_one_consistent_history() {
    let s = TestServer::start().await;
    stress(&[&s], "fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_clients_on_two_s3_replicas_leave_one_consistent_history() {
    let o = store::s3::test_options();
    let a = TestServer::start_with({
        let o = o.clone();
        move |c| crate::replicas::on_s3(c, &o)
    })
    .await;
    let b = TestServer::start_with(move |c| crate::replicas::on_s3(c, &o)).await;
    stress(&[&a, &b], "s3").await;
}
