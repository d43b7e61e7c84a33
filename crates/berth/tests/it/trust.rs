//! berth tried as an attacker would, over raw HTTP on loopback: racing requests on one
//! upload, whole-blob pushes of one new digest racing (some with lying bytes), requests
//! still in flight when an upload is committed, bytes pushed under an
//! upstream's digest, private blobs asked for through cache names, and lying headers
//! (overflowing ranges, unknown range units, oversized descriptor sizes, forged proxy
//! headers, bodies dripped a byte at a time, a full disk). Every test checks what a
//! client would see and that bytes served under a digest hash to it.

use crate::cache::Distribution;
use crate::common::*;
use bytes::Bytes;
use std::time::Duration;

/// A request body sent in parts: each message on the channel is one part, and the body
/// ends when the sender is dropped.
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, reqwest::Body) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(Ok::<_, std::io::Error>))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

async fn start_upload(s: &TestServer, repo: &str) -> String {
    let r = client()
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.headers()["location"].to_str().unwrap().to_owned()
}

fn patch(s: &TestServer, location: &str, start: u64, len: u64) -> reqwest::RequestBuilder {
    client()
        .patch(s.url(location))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{start}-{}", start + len - 1))
        .header("content-length", len)
}

async fn blob_status(s: &TestServer, repo: &str, d: &oci::Digest) -> (u16, Bytes) {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/blobs/{d}")))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap())
}

/// Two PATCHes for the same range of one upload, the second sent whole while the first
/// is mid-body (the attack of issue 14), and the same two fully concurrent: one is
/// acknowledged, the other gets 416 with the upload's real `Range`; the blob committed
/// is exactly the acknowledged bytes, and a PUT naming the other bytes' digest fails.
#[tokio::test(flavor = "multi_thread")]
async fn racing_patches_on_one_upload_never_both_succeed() {
    let s = TestServer::start().await;
    const N: usize = 256 * 1024;
    for round in 0..10u64 {
        let a = pseudo_random(round * 2 + 1, N);
        let b = pseudo_random(round * 2 + 2, N);
        let loc = start_upload(&s, "race/app").await;
        let statuses = if round % 2 == 0 {
            // A starts and stalls mid-body; B is sent whole; then A finishes.
            let (tx, body) = channel_body();
            let req_a = patch(&s, &loc, 0, N as u64).body(body).send();
            let a_task = tokio::spawn(req_a);
            tx.send(Bytes::copy_from_slice(&a[..N / 2])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let req_b = patch(&s, &loc, 0, N as u64).body(b.clone()).send();
            let b_task = tokio::spawn(req_b);
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(Bytes::copy_from_slice(&a[N / 2..])).await.unwrap();
            drop(tx);
            let ra = a_task.await.unwrap().unwrap();
            let rb = b_task.await.unwrap().unwrap();
            [ra, rb]
        } else {
            let (ra, rb) = futures::join!(
                patch(&s, &loc, 0, N as u64).body(a.clone()).send(),
                patch(&s, &loc, 0, N as u64).body(b.clone()).send()
            );
            [ra.unwrap(), rb.unwrap()]
        };
        let codes: Vec<u16> = statuses.iter().map(|r| r.status().as_u16()).collect();
        assert!(
            codes == [202, 416] || codes == [416, 202],
            "round {round}: exactly one PATCH of a range is acknowledged: {codes:?}"
        );
        let loser = statuses.iter().find(|r| r.status() == 416).unwrap();
        assert_eq!(
            loser.headers()["range"],
            format!("0-{}", N - 1),
            "the refused PATCH learns where the upload really is"
        );
        let (won, lost) = if codes[0] == 202 { (&a, &b) } else { (&b, &a) };
        if round % 4 < 2 {
            let d = digest_of(won);
            let r = client()
                .put(s.url(&with_query(&loc, &format!("digest={d}"))))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "round {round}");
            let (status, bytes) = blob_status(&s, "race/app", &d).await;
            assert_eq!(status, 200);
            assert!(
                bytes == won[..],
                "round {round}: the blob is the acknowledged bytes"
            );
        } else {
            let d = digest_of(lost);
            let r = client()
                .put(s.url(&with_query(&loc, &format!("digest={d}"))))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                400,
                "round {round}: the refused bytes were never stored"
            );
            assert_eq!(error_code(r).await, "DIGEST_INVALID");
            assert_eq!(blob_status(&s, "race/app", &d).await.0, 404);
        }
    }
}

/// A PATCH still streaming when a PUT commits the upload, and requests arriving after
/// the commit: whichever comes first wins, the other fails, and the published blob
/// never changes (issue 14, attack 2).
#[tokio::test(flavor = "multi_thread")]
async fn requests_in_flight_at_commit_never_change_the_published_blob() {
    let s = TestServer::start().await;
    const MIB: usize = 1024 * 1024;
    let first = pseudo_random(7, MIB);
    let extra = pseudo_random(8, 64 * 1024);
    let d = digest_of(&first);
    let loc = start_upload(&s, "race/commit").await;
    let r = patch(&s, &loc, 0, MIB as u64)
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // The second PATCH opens and sends a little; the PUT arrives; then the rest.
    let (tx, body) = channel_body();
    let second = tokio::spawn(
        patch(&s, &loc, MIB as u64, extra.len() as u64)
            .body(body)
            .send(),
    );
    tx.send(Bytes::copy_from_slice(&extra[..1024]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let put = tokio::spawn(
        client()
            .put(s.url(&with_query(&loc, &format!("digest={d}"))))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(Bytes::copy_from_slice(&extra[1024..]))
        .await
        .unwrap();
    drop(tx);
    let second = second.await.unwrap().unwrap().status().as_u16();
    let put = put.await.unwrap().unwrap().status().as_u16();
    assert!(
        (second == 202 && put == 400) || (second == 404 && put == 201),
        "the PATCH and the PUT are ordered, never both applied: PATCH {second}, PUT {put}"
    );
    let (status, bytes) = blob_status(&s, "race/commit", &d).await;
    if put == 201 {
        assert_eq!(status, 200);
        assert!(bytes == first[..]);
    } else {
        assert_eq!(status, 404, "a refused PUT publishes nothing");
    }

    // A clean commit, then every late request on the same upload fails and the blob
    // stays as it was.
    let loc = start_upload(&s, "race/commit").await;
    let r = client()
        .put(s.url(&with_query(&loc, &format!("digest={d}"))))
        .header("content-type", "application/octet-stream")
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let late = patch(&s, &loc, MIB as u64, extra.len() as u64)
        .body(extra.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 404);
    assert_eq!(error_code(late).await, "BLOB_UPLOAD_UNKNOWN");
    let late_put = client()
        .put(s.url(&with_query(&loc, &format!("digest={d}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(late_put.status(), 404);
    let (status, bytes) = blob_status(&s, "race/commit", &d).await;
    assert_eq!(status, 200);
    assert_eq!(
        digest_of(&bytes),
        d,
        "bytes served under a digest hash to it"
    );
}

/// Whole-blob pushes of one new digest racing each other: monolithic POSTs and closing
/// PUTs into one repository and into several, beside pushes that claim the digest with
/// other bytes. Every honest push lands (201), every lying one gets DIGEST_INVALID and
/// links nothing, and every repository an honest push named serves bytes that hash to
/// the digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_whole_blob_pushes_of_one_new_digest_all_land_intact() {
    let s = TestServer::start().await;
    for round in 0..5u64 {
        let bytes = pseudo_random(100 + round, 2 * 1024 * 1024 + 17);
        let lie = pseudo_random(200 + round, bytes.len());
        let d = digest_of(&bytes);
        let post = |repo: String, body: Vec<u8>| {
            let url = s.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}"));
            async move {
                let r = client()
                    .post(url)
                    .header("content-type", "application/octet-stream")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (repo, r.status().as_u16())
            }
        };
        let put = |repo: String, body: Vec<u8>| {
            let (s, d) = (&s, &d);
            async move {
                let loc = start_upload(s, &repo).await;
                let r = client()
                    .put(s.url(&with_query(&loc, &format!("digest={d}"))))
                    .header("content-type", "application/octet-stream")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (repo, r.status().as_u16())
            }
        };
        // (repository, honest, by a closing PUT rather than a POST)
        let mut pushes = Vec::new();
        for i in 0..3 {
            pushes.push((format!("race{round}/one"), true, false));
            pushes.push((format!("race{round}/post{i}"), true, false));
            pushes.push((format!("race{round}/put{i}"), true, true));
        }
        for i in 0..2 {
            pushes.push((format!("race{round}/liar{i}"), false, false));
            pushes.push((format!("race{round}/liar-put{i}"), false, true));
        }
        let results =
            futures::future::join_all(pushes.into_iter().map(|(repo, honest, by_put)| {
                let body = if honest { bytes.clone() } else { lie.clone() };
                let push = if by_put {
                    futures::future::Either::Right(put(repo, body))
                } else {
                    futures::future::Either::Left(post(repo, body))
                };
                async move {
                    let (repo, status) = push.await;
                    (repo, honest, status)
                }
            }))
            .await;
        for (repo, honest, status) in &results {
            if *honest {
                assert_eq!(*status, 201, "round {round}: an honest push to {repo}");
                let (status, served) = blob_status(&s, repo, &d).await;
                assert_eq!(status, 200, "{repo}");
                assert_eq!(
                    digest_of(&served),
                    d,
                    "bytes served under a digest hash to it"
                );
            } else {
                assert_eq!(*status, 400, "round {round}: a lying push to {repo}");
                assert_eq!(
                    blob_status(&s, repo, &d).await.0,
                    404,
                    "{repo} links nothing"
                );
            }
        }
        let stored = s
            .app
            .registry
            .store()
            .get(&registry::layout::blob(&d).unwrap())
            .await
            .unwrap()
            .expect("the blob is stored");
        assert_eq!(stored, bytes, "the stored blob is the honest bytes");
    }
}

/// Push a blob to distribution (POST, then PUT with the bytes) and return its digest.
async fn push_to_distribution(up: &Distribution, repo: &str, bytes: &[u8]) -> oci::Digest {
    let d = digest_of(bytes);
    let r = client()
        .post(format!("http://{}/v2/{repo}/blobs/uploads/", up.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let loc = if loc.starts_with('/') {
        format!("http://{}{loc}", up.addr)
    } else {
        loc
    };
    let r = client()
        .put(with_query(&loc, &format!("digest={d}")))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    d
}

/// The three ways to name a cached repository: path prefix, `?ns=`, and the upstream's
/// dedicated listener. Returns the URL of `path` (`/v2/<repo>/...` as the upstream names
/// it) by each route.
fn cache_urls(
    s: &TestServer,
    key: &str,
    name: &str,
    dedicated: std::net::SocketAddr,
    path: &str,
) -> Vec<(&'static str, String)> {
    let tail = path.strip_prefix("/v2/").unwrap();
    vec![
        ("path prefix", s.url(&format!("/v2/{key}/{tail}"))),
        ("?ns=", s.url(&with_query(path, &format!("ns={name}")))),
        ("dedicated listener", format!("http://{dedicated}{path}")),
    ]
}

/// Cached names serve only what their upstream confirms: a private hosted blob is not
/// readable through any cache route, a HEAD or an upload there creates no repository,
/// junk raced in under an upstream layer's digest is never what the cache serves, and
/// bytes the store holds are shared with the cache after a HEAD upstream instead of a
/// second download (issue 14, attack 3).
#[tokio::test(flavor = "multi_thread")]
async fn cached_names_serve_only_what_the_upstream_confirms() {
    let upstream = Distribution::start(None).await;
    let public = pseudo_random(21, 300 * 1024);
    let public_d = push_to_distribution(&upstream, "lib/app", &public).await;

    let name = upstream.addr.clone();
    let key = name.replace(':', "-");
    let dir = tempfile::tempdir().unwrap().keep();
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(
        &htpasswd,
        &[
            ("alice", "alice-pw"),
            ("mallory", "mallory-pw"),
            ("root", "root-pw"),
        ],
    );
    let s = TestServer::start_with(|c| {
        c.auth.htpasswd = Some(htpasswd);
        c.access = vec![
            // Even a user allowed everything cannot write into a cache.
            rule("**", &["root"], &["pull", "push", "delete"]),
            rule("private/**", &["alice"], &["pull", "push"]),
            rule("private/**", &["anonymous", "authenticated"], &[]),
            rule("mallory/**", &["mallory"], &["pull", "push"]),
            // One name per cached repository, whichever route reaches it.
            rule(&format!("{key}/lib/closed/**"), &["alice"], &["pull"]),
            rule(
                &format!("{key}/lib/closed/**"),
                &["anonymous", "authenticated"],
                &[],
            ),
            rule("**", &["anonymous", "authenticated"], &["pull"]),
        ];
        c.upstreams.push(upstream_config(
            &name,
            &format!("http://{name}"),
            Duration::from_secs(60),
        ));
    })
    .await;
    let dedicated = dedicated_listener(&s, &name).await;
    let alice = Some(("alice", "alice-pw"));
    let root = |r: reqwest::RequestBuilder| r.basic_auth("root", Some("root-pw"));

    // 1. Alice's private layer is nowhere to be read through a cache name.
    let secret = pseudo_random(22, 100 * 1024);
    let secret_d = push_blob_as(&s, "private/x", &secret, alice).await;
    for (route, url) in cache_urls(
        &s,
        &key,
        &name,
        dedicated,
        &format!("/v2/lib/anything/blobs/{secret_d}"),
    ) {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let r = client().request(method.clone(), &url).send().await.unwrap();
            assert_eq!(
                r.status(),
                404,
                "{method} via {route}: a private blob through a cache name"
            );
        }
    }

    // A rule on the cached repository's store name holds on every route.
    for (route, url) in cache_urls(
        &s,
        &key,
        &name,
        dedicated,
        "/v2/lib/closed/app/manifests/v1",
    ) {
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401, "anonymous via {route}");
        let r = client()
            .get(&url)
            .basic_auth("mallory", Some("mallory-pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "mallory via {route}");
        let r = client()
            .get(&url)
            .basic_auth("alice", Some("alice-pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "alice via {route}: allowed, and the upstream has none"
        );
    }

    // 2. Nothing sent into a cache namespace creates state: uploads, mounts and
    //    manifest PUTs are refused, and the HEADs above left no repository behind.
    for (route, url) in cache_urls(&s, &key, &name, dedicated, "/v2/lib/evil/blobs/uploads/") {
        let anonymous = client().post(&url).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "anonymous upload via {route}");
        let r = root(client().post(&url)).send().await.unwrap();
        assert_eq!(r.status(), 405, "upload via {route}");
        let r = root(client().post(with_query(
            &url,
            &format!("mount={secret_d}&from=private/x"),
        )))
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 405, "mount via {route}");
    }
    for (route, url) in cache_urls(&s, &key, &name, dedicated, "/v2/lib/evil/manifests/v1") {
        let r = root(client().put(&url))
            .header("content-type", oci::media::OCI_MANIFEST)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "manifest PUT via {route}");
    }
    // A HEAD for a layer the upstream has and the cache does not answers from the
    // upstream (a cache in front of this one must not see a false 404), without a
    // download and without creating the repository.
    for (route, url) in cache_urls(
        &s,
        &key,
        &name,
        dedicated,
        &format!("/v2/lib/app/blobs/{public_d}"),
    ) {
        let r = client().head(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "HEAD via {route}");
        assert_eq!(r.headers()["content-length"], public.len().to_string());
        assert_eq!(r.headers()["docker-content-digest"], public_d.to_string());
    }
    assert_eq!(
        stats(&s, &name).stats.upstream_blob_gets.get(),
        0,
        "a HEAD downloads nothing"
    );
    let all = s.app.registry.all_repositories().await.unwrap();
    assert!(
        all.iter().all(|r| !r.as_str().starts_with(&key)),
        "no cached repository was created by client requests: {all:?}"
    );

    // 3. Mallory races junk of the same length under the upstream layer's digest into
    //    her own repository; whatever she manages, the cache serves the upstream's bytes.
    let junk = pseudo_random(23, public.len());
    let loc = {
        let r = as_user(
            client().post(s.url("/v2/mallory/x/blobs/uploads/")),
            Some(("mallory", "mallory-pw")),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 202);
        r.headers()["location"].to_str().unwrap().to_owned()
    };
    let len = public.len() as u64;
    let mallory = |body: Vec<u8>| {
        as_user(patch(&s, &loc, 0, len), Some(("mallory", "mallory-pw")))
            .body(body)
            .send()
    };
    let (r1, r2) = futures::join!(mallory(junk.clone()), mallory(public.clone()));
    let acked: Vec<u16> = [r1.unwrap(), r2.unwrap()]
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(acked.contains(&416), "{acked:?}");
    let r = as_user(
        client().put(s.url(&with_query(&loc, &format!("digest={public_d}")))),
        Some(("mallory", "mallory-pw")),
    )
    .send()
    .await
    .unwrap();
    let stored_by_mallory = r.status() == 201;
    for (route, url) in cache_urls(
        &s,
        &key,
        &name,
        dedicated,
        &format!("/v2/lib/app/blobs/{public_d}"),
    ) {
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "via {route}");
        assert_eq!(
            r.headers()["oci-namespace"],
            name.as_str(),
            "via {route}: a cached response names its upstream"
        );
        let bytes = r.bytes().await.unwrap();
        assert_eq!(
            digest_of(&bytes),
            public_d,
            "via {route}: the upstream's bytes"
        );
    }
    // 4. When the store already held the layer (Mallory's verified push), the cache
    //    shared it after a HEAD upstream instead of downloading it again.
    let up = stats(&s, &name);
    let gets = up.stats.upstream_blob_gets.get();
    if stored_by_mallory {
        assert_eq!(
            gets, 0,
            "shared after the upstream confirmed it, not downloaded"
        );
    } else {
        assert_eq!(gets, 1);
    }
    // And the layer Alice holds that the upstream also lacks stays hers alone.
    assert_eq!(
        client()
            .get(s.url(&format!("/v2/{key}/lib/app/blobs/{secret_d}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// Headers that lie: a `Content-Range` whose length overflows, a range unit nobody
/// knows, and a manifest whose descriptor claims 2^64−1 bytes.
#[tokio::test(flavor = "multi_thread")]
async fn lying_ranges_and_sizes_get_clear_errors_and_change_nothing() {
    let s = TestServer::start().await;
    let loc = start_upload(&s, "lies/app").await;
    let r = client()
        .patch(s.url(&loc))
        .header("content-range", "0-18446744073709551615")
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416, "an overflowing Content-Range");
    let r = client().get(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-0", "the upload is unchanged");

    let bytes = b"some blob bytes".to_vec();
    let d = push_blob(&s, "lies/app", &bytes).await;
    let r = client()
        .get(s.url(&format!("/v2/lies/app/blobs/{d}")))
        .header("range", "items=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "an unknown range unit is ignored");
    assert_eq!(r.bytes().await.unwrap(), bytes);

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::media::OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": d.to_string(), "size": u64::MAX },
        "layers": [],
    });
    let r = client()
        .put(s.url("/v2/lies/app/manifests/v1"))
        .header("content-type", oci::media::OCI_MANIFEST)
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = client()
        .get(s.url("/v2/lies/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A body dripped a byte at a time never trips the idle timeout, but the minimum rate
/// ends it; the chunk is rolled back and the upload stays usable.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_dripped_a_byte_at_a_time_is_cut_off() {
    let s = TestServer::start_with(|c| {
        c.server.client_timeout = Duration::from_secs(1);
        c.server.min_body_rate = 1024;
    })
    .await;
    let loc = start_upload(&s, "drip/app").await;
    let (tx, body) = channel_body();
    let dripping = tokio::spawn(patch(&s, &loc, 0, 100).body(body).send());
    let drip = tokio::spawn(async move {
        for _ in 0..100 {
            if tx.send(Bytes::from_static(b"x")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let outcome = tokio::time::timeout(Duration::from_secs(10), dripping)
        .await
        .expect("the dripping request is ended within a few windows")
        .unwrap();
    drip.abort();
    if let Ok(r) = outcome {
        assert_eq!(r.status(), 408, "too slow a body is a request timeout");
    }
    let r = client().get(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"],
        "0-0",
        "the dripped bytes were rolled back"
    );
    let r = patch(&s, &loc, 0, 3).body("abc").send().await.unwrap();
    assert_eq!(r.status(), 202, "the upload goes on after the cut");
}

async fn failed_logins_then(s: &TestServer, guesses_from: &str, then_from: &str) -> u16 {
    for _ in 0..server::access::MAX_FAILED_LOGINS {
        let r = client()
            .get(s.url("/token?scope=repository:team/app:pull"))
            .basic_auth("alice", Some("guess"))
            .header("x-forwarded-for", guesses_from)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    client()
        .get(s.url("/token?scope=repository:team/app:pull"))
        .basic_auth("alice", Some("alice-pw"))
        .header("x-forwarded-for", then_from)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn proxied_server(trusted: bool, external: Option<&str>) -> TestServer {
    let dir = tempfile::tempdir().unwrap().keep();
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "alice-pw")]);
    let external = external.map(|e| e.parse().unwrap());
    TestServer::start_with(move |c| {
        c.auth.htpasswd = Some(htpasswd);
        c.access = vec![rule("team/**", &["alice"], &["pull", "push"])];
        if trusted {
            c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        }
        c.server.external_url = external;
    })
    .await
}

/// Behind a trusted proxy, failed-login limits are per real client (from
/// `X-Forwarded-For`), so one guesser does not lock everyone out; from an untrusted peer
/// the header is ignored, so a guesser cannot dodge the limit by inventing addresses.
/// Token realms and upload locations name `external_url`, never the request's `Host`,
/// and a forged `X-Forwarded-Proto` changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_headers_are_believed_only_from_trusted_proxies() {
    let behind_proxy = proxied_server(true, None).await;
    assert_eq!(
        failed_logins_then(&behind_proxy, "10.0.0.1", "10.0.0.2").await,
        200,
        "another client behind the same proxy still logs in"
    );
    assert_eq!(
        failed_logins_then(&behind_proxy, "10.0.0.3", "10.0.0.3").await,
        429,
        "the guesser itself is limited"
    );
    let direct = proxied_server(false, None).await;
    assert_eq!(
        failed_logins_then(&direct, "10.0.0.1", "10.0.0.2").await,
        429,
        "an untrusted X-Forwarded-For does not make a new client"
    );

    // Forged scheme and host from an untrusted client: the realm is what it reached.
    let r = client()
        .post(direct.url("/v2/team/app/blobs/uploads/"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"http://{}/token\"", direct.addr)),
        "{challenge}"
    );

    let external = proxied_server(false, Some("https://registry.example.com")).await;
    let r = client()
        .post(external.url("/v2/team/app/blobs/uploads/"))
        .header("host", "evil.example.net")
        .send()
        .await
        .unwrap();
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"https://registry.example.com/token\""),
        "{challenge}"
    );
    let r = client()
        .post(external.url("/v2/team/app/blobs/uploads/"))
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://registry.example.com/v2/team/app/blobs/uploads/"),
        "{location}"
    );
}

/// A real full disk: the store on a 4 MiB tmpfs. A push that does not fit gets 507 with
/// the spec's error body and leaves nothing visible; a push that fits works right after.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_507_and_keeps_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    let Some(_unmount) = Tmpfs::mount(&mount, "size=4m") else {
        return;
    };
    let data = mount.join("data");
    let s = TestServer::start_with(move |c| c.storage.path = data).await;
    let big = pseudo_random(31, 6 * 1024 * 1024);
    let d = digest_of(&big);
    let r = client()
        .post(s.url(&format!("/v2/full/app/blobs/uploads/?digest={d}")))
        .header("content-type", "application/octet-stream")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("insufficient storage"),
        "{body}"
    );
    assert_eq!(blob_status(&s, "full/app", &d).await.0, 404);
    let small = push_blob(&s, "full/app", b"fits easily").await;
    let (status, bytes) = blob_status(&s, "full/app", &small).await;
    assert_eq!(status, 200);
    assert_eq!(&bytes[..], b"fits easily");
}
