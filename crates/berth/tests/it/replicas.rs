//! Several berth replicas on one S3 bucket (SeaweedFS, started by scripts/test): what one
//! replica stores, another serves; one upload's requests may land on different replicas.

use crate::common::*;
use crate::skopeo::{build_multi_layout, layout_manifest, p, require_tools, skopeo};

/// Point `c` at the test bucket under `prefix` (shared by the replicas of one test).
pub(crate) fn on_s3(c: &mut berth::config::Config, o: &store::s3::S3Options) {
    c.storage.kind = berth::config::StorageKind::S3;
    c.storage.bucket = Some(o.bucket.clone());
    c.storage.endpoint = o.endpoint.clone();
    c.storage.region = o.region.clone();
    c.storage.prefix = o.prefix.clone();
    c.storage.access_key_id = o.access_key_id.clone();
    c.storage.secret_access_key = o.secret_access_key.clone();
    c.storage.path_style = Some(o.path_style);
}

/// The configuration file of a replica run as its own process on `o`'s bucket and
/// prefix, listening on `port`, with `extra` appended (more sections).
fn process_config(o: &store::s3::S3Options, port: u16, extra: &str) -> String {
    let q = |v: &Option<String>| format!("{:?}", v.clone().unwrap_or_default());
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nkind = \"s3\"\nbucket = {:?}\nendpoint = {}\nregion = \"us-east-1\"\nprefix = {}\naccess_key_id = {}\nsecret_access_key = {}\npath_style = true\n[[access]]\nrepositories = \"**\"\nusers = [\"anonymous\"]\nallow = [\"pull\", \"push\", \"delete\"]\n{extra}",
        o.bucket,
        q(&o.endpoint),
        q(&o.prefix),
        q(&o.access_key_id),
        q(&o.secret_access_key),
    )
}

/// A replica run as its own `berth serve` process (to be SIGKILLed): its folder, base
/// URL and process.
async fn replica_process(o: &store::s3::S3Options) -> (tempfile::TempDir, String, KillOnDrop) {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = tmp.path().join("berth.toml");
    std::fs::write(&config, process_config(o, port, "")).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let process = serve_process(&config, &base, None, &[]).await;
    (tmp, base, process)
}

async fn two_replicas() -> (TestServer, TestServer) {
    let o = store::s3::test_options();
    let a = TestServer::start_with({
        let o = o.clone();
        move |c| on_s3(c, &o)
    })
    .await;
    let b = TestServer::start_with(move |c| on_s3(c, &o)).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_pushes_to_one_replica_and_pulls_from_the_other() {
    require_tools();
    let (a, b) = two_replicas().await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (index, index_digest, children) = build_multi_layout(&src).await;
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", p(&src)),
        &format!("docker://{}/team/multi:v1", a.addr),
    ])
    .await;
    let out = tmp.path().join("out");
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/team/multi:v1", b.addr),
        &format!("oci:{}:v1", p(&out)),
    ])
    .await;
    let raw = skopeo(&["inspect", "--raw", &format!("oci:{}:v1", p(&out))]).await;
    assert!(raw == index);
    assert_eq!(digest_of(&raw).to_string(), index_digest);
    for (arch, c) in ["amd64", "arm64"].iter().zip(&children) {
        let (d, m) = layout_manifest(&src, arch);
        assert_eq!(&d, c);
        assert!(
            crate::skopeo::layout_blob(&out, c) == m,
            "{arch} manifest differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_upload_alternates_between_replicas() {
    let (a, b) = two_replicas().await;
    let data = pseudo_random(9, 12 << 20);
    let d = digest_of(&data);
    let r = client()
        .post(a.url("/v2/team/chunked/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut location = r.headers()["location"].to_str().unwrap().to_owned();
    let chunk = 5 << 20;
    let mut offset = 0;
    for (i, part) in data.chunks(chunk).enumerate() {
        let server = if i % 2 == 0 { &b } else { &a };
        let end = offset + part.len() - 1;
        let r = client()
            .patch(server.url(&location))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{offset}-{end}"))
            .body(part.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            202,
            "chunk {i} on replica {}",
            if i % 2 == 0 { "B" } else { "A" }
        );
        assert_eq!(r.headers()["range"], format!("0-{end}"));
        location = r.headers()["location"].to_str().unwrap().to_owned();
        offset += part.len();
    }
    // Finished on the replica that did not take the last chunk.
    let r = client()
        .put(a.url(&format!("{location}?digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    for s in [&a, &b] {
        let got = get_bytes(&s.url(&format!("/v2/team/chunked/blobs/{d}"))).await;
        assert!(got.as_ref() == data.as_slice());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_on_one_replica_while_the_other_takes_pushes_leaves_a_clean_store() {
    let (a, b) = two_replicas().await;
    // Garbage to collect: images whose tags are deleted, pushed through B.
    for i in 0..3 {
        push_image(&b, "team/old", &format!("v{i}"), &format!("old-{i}")).await;
        let r = client()
            .delete(b.url(&format!("/v2/team/old/manifests/v{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Age nothing: a grace of two seconds stands in for an hour; pushes take far less.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let gc = upkeep::gc::GcOptions {
        grace: std::time::Duration::from_secs(2),
        renewal_slack: std::time::Duration::from_secs(1),
        ..upkeep::gc::GcOptions::default()
    };
    let registry = a.app.registry.clone();
    let collector = tokio::spawn(async move {
        let mut runs = Vec::new();
        for _ in 0..6 {
            runs.push(upkeep::gc::run_once(&registry, &gc, &upkeep::Quiet).await);
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        runs
    });
    let mut pushed = Vec::new();
    for i in 0..8 {
        pushed.push(push_image(&b, "team/new", &format!("v{i}"), &format!("new-{i}")).await);
    }
    let runs = collector.await.unwrap();
    let deleted: u64 = runs
        .iter()
        .map(|r| r.as_ref().map(|r| r.manifests_deleted).unwrap_or(0))
        .sum();
    assert!(
        runs.iter().all(|r| r.is_ok()),
        "{:?}",
        runs.iter()
            .filter_map(|r| r.as_ref().err())
            .collect::<Vec<_>>()
    );
    assert!(deleted >= 3, "the deleted images were collected: {deleted}");
    // Everything pushed meanwhile pulls from either replica, and a deep fsck is clean.
    for (i, d) in pushed.iter().enumerate() {
        for s in [&a, &b] {
            let raw = get_bytes(&s.url(&format!("/v2/team/new/manifests/v{i}"))).await;
            assert_eq!(digest_of(&raw), *d);
            let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            for l in m["layers"].as_array().unwrap() {
                get_bytes(&s.url(&format!(
                    "/v2/team/new/blobs/{}",
                    l["digest"].as_str().unwrap()
                )))
                .await;
            }
        }
    }
    let fsck = upkeep::fsck::FsckOptions {
        deep: true,
        repair: false,
        cache: None,
        cached: Vec::new(),
        rate: None,
    };
    let report = upkeep::fsck::run_once(&b.app.registry, &fsck, &upkeep::Quiet)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.tags, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_one_replica_sweeps_at_a_time() {
    let (a, b) = two_replicas().await;
    let store_a = a.app.registry.store().clone();
    // Replica A's process holds the gc lease (as during a long sweep)...
    assert!(
        store_a
            .acquire_lease("gc", "replica-a", std::time::Duration::from_secs(60))
            .await
            .unwrap()
    );
    // ...so a collection started on B is skipped, not run alongside.
    let r = upkeep::gc::run_once(
        &b.app.registry,
        &upkeep::gc::GcOptions::default(),
        &upkeep::Quiet,
    )
    .await;
    assert!(matches!(r, Err(upkeep::UpkeepError::Busy("gc"))), "{r:?}");
    store_a.release_lease("gc", "replica-a").await.unwrap();
    assert!(
        upkeep::gc::run_once(
            &b.app.registry,
            &upkeep::gc::GcOptions::default(),
            &upkeep::Quiet
        )
        .await
        .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blob_gets_redirect_to_presigned_urls_when_asked() {
    require_tools();
    let o = store::s3::test_options();
    let s = TestServer::start_with(move |c| {
        on_s3(c, &o);
        c.storage.redirect = true;
    })
    .await;
    let m = push_image(&s, "team/redirect", "v1", "redirect").await;
    let manifest: serde_json::Value =
        get_json(&s.url(&format!("/v2/team/redirect/manifests/{m}"))).await;
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let url = s.url(&format!("/v2/team/redirect/blobs/{layer}"));
    // HEAD answers itself; GET sends the client to the bucket.
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("X-Amz-Signature"), "{location}");
    assert!(location.starts_with(store::s3::test_options().endpoint.unwrap().as_str()));
    let bytes = client()
        .get(&location)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(digest_of(&bytes).to_string(), layer);
    // An unknown blob is still a 404 from berth, not a redirect.
    let r = client()
        .get(s.url(&format!("/v2/team/redirect/blobs/{}", digest_of(b"none"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A real client follows the redirect: skopeo pushes an image and pulls it back.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    crate::skopeo::build_image(&src, "v2", "amd64", 21, 256 << 10).await;
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v2", p(&src)),
        &format!("docker://{}/team/redirect:v2", s.addr),
    ])
    .await;
    let out = tmp.path().join("out");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/team/redirect:v2", s.addr),
        &format!("oci:{}:v2", p(&out)),
    ])
    .await;
    let (digest, manifest) = layout_manifest(&src, "v2");
    assert_eq!(layout_manifest(&out, "v2").0, digest);
    for d in crate::skopeo::referenced_blobs(&manifest) {
        assert!(
            crate::skopeo::layout_blob(&out, &d) == crate::skopeo::layout_blob(&src, &d),
            "{d}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_upload_loses_nothing_committed() {
    let o = store::s3::test_options();
    // Replica A: a real process, killed with SIGKILL during an append.
    let (_tmp, base, mut a) = replica_process(&o).await;
    let b = TestServer::start_with(move |c| on_s3(c, &o)).await;

    // Committed through A before the crash: an image, and the first chunk of an upload.
    let config_blob = b"{}";
    let r = client()
        .post(format!(
            "{base}/v2/team/safe/blobs/uploads/?digest={}",
            digest_of(config_blob)
        ))
        .body(&config_blob[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let data = pseudo_random(17, 10 << 20);
    let d = digest_of(&data);
    let r = client()
        .post(format!("{base}/v2/team/crash/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let first = 6 << 20;
    let r = client()
        .patch(format!("{base}{location}"))
        .header("content-range", format!("0-{}", first - 1))
        .body(data[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();

    // The second chunk trickles in; A dies in the middle of it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let rest = data[first..].to_vec();
    let url = format!("{base}{location}");
    let patch = tokio::spawn(async move {
        client()
            .patch(url)
            .header(
                "content-range",
                format!("{first}-{}", first + rest.len() - 1),
            )
            .header("content-length", rest.len())
            .body(reqwest::Body::wrap_stream(tokio_stream_from(rx)))
            .send()
            .await
    });
    tx.send(Ok(bytes::Bytes::copy_from_slice(
        &data[first..first + (3 << 20)],
    )))
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let _ = a.0.kill();
    let _ = a.0.wait();
    drop(tx);
    assert!(
        patch
            .await
            .unwrap()
            .map(|r| r.status() != 202)
            .unwrap_or(true)
    );

    // Replica B sees exactly the committed chunk, finishes the upload, and serves both.
    let r = client().get(b.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], format!("0-{}", first - 1));
    let r = client()
        .put(b.url(&format!("{location}?digest={d}")))
        .header("content-range", format!("{first}-{}", data.len() - 1))
        .body(data[first..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert!(
        get_bytes(&b.url(&format!("/v2/team/crash/blobs/{d}")))
            .await
            .as_ref()
            == data.as_slice()
    );
    assert_eq!(
        get_bytes(&b.url(&format!("/v2/team/safe/blobs/{}", digest_of(config_blob))))
            .await
            .as_ref(),
        config_blob
    );
}

/// A stream of what arrives on `rx`.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Three replicas on one bucket; the one serving a pull is killed part way through the
/// body, and the client's retry of the rest (a ranged GET) on another replica completes
/// the blob byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_pull_leaves_the_retry_on_another_succeeding() {
    use futures::StreamExt;
    let o = store::s3::test_options();
    let (_tmp, base, mut a) = replica_process(&o).await;
    let b = TestServer::start_with({
        let o = o.clone();
        move |c| on_s3(c, &o)
    })
    .await;
    let c = TestServer::start_with(move |c| on_s3(c, &o)).await;

    // Bigger than what loopback sockets buffer, so the pull is still under way.
    let data = pseudo_random(23, 64 << 20);
    let d = digest_of(&data);
    let r = client()
        .post(b.url(&format!("/v2/team/pulled/blobs/uploads/?digest={d}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let r = client()
        .get(format!("{base}/v2/team/pulled/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut got: Vec<u8> = Vec::new();
    while got.len() < 4 << 20 {
        got.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    let _ = a.0.kill();
    let _ = a.0.wait();
    let mut cut = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(
        cut || got.len() < data.len(),
        "the killed replica's answer must end short"
    );
    assert!(got.len() < data.len());
    assert!(
        data.starts_with(&got),
        "what arrived before the kill is right"
    );

    // The retry, as clients resume: the rest by Range, from a replica still up.
    let r = client()
        .get(c.url(&format!("/v2/team/pulled/blobs/{d}")))
        .header("range", format!("bytes={}-", got.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    got.extend_from_slice(&r.bytes().await.unwrap());
    assert_eq!(got.len(), data.len());
    assert_eq!(digest_of(&got), d, "the resumed pull is byte-exact");
    // The third replica serves it whole too.
    assert!(
        get_bytes(&b.url(&format!("/v2/team/pulled/blobs/{d}")))
            .await
            .as_ref()
            == data.as_slice()
    );
}

/// A `berth gc` process killed mid-collection holds the store's lease until its
/// `lease_ttl` runs out: a run on another replica meanwhile is skipped, the next one
/// after that takes the lease over and finishes the job, and the tagged image pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_during_gc_leaves_the_next_run_to_finish() {
    use futures::StreamExt;
    let o = store::s3::test_options();
    let b = TestServer::start_with({
        let o = o.clone();
        move |c| on_s3(c, &o)
    })
    .await;
    // A tagged image that must survive, and many garbage blobs (linked, unreferenced).
    let repo: oci::RepoName = "team/kept".parse().unwrap();
    let (config_d, layer_d) = (
        b.put_blob_direct(&repo, b"{}").await,
        b.put_blob_direct(&repo, b"kept layer").await,
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d.to_string(), "size": 10}],
    });
    let r = client()
        .put(b.url("/v2/team/kept/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let garbage: oci::RepoName = "team/garbage".parse().unwrap();
    let bodies: Vec<Vec<u8>> = (0..600u32)
        .map(|i| format!("garbage blob {i}").into_bytes())
        .collect();
    futures::stream::iter(&bodies)
        .for_each_concurrent(16, |body| {
            let (b, garbage) = (&b, &garbage);
            async move {
                b.put_blob_direct(garbage, body).await;
            }
        })
        .await;
    let store = b.app.registry.store().clone();
    let count = || {
        let store = store.clone();
        async move {
            store::walk_sorted(store.as_ref(), &store::Key::new("blobs").unwrap())
                .await
                .unwrap()
                .len()
        }
    };
    let before = count().await;
    assert!(before >= 602);

    // `berth gc` as its own process, killed once it has begun deleting.
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("berth.toml");
    let gc_section = "[gc]\ngrace = \"0s\"\nlease_ttl = \"4s\"\n";
    std::fs::write(&config, process_config(&o, free_port(), gc_section)).unwrap();
    let mut gc = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["gc", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let links = || {
        let store = store.clone();
        async move {
            store::walk_sorted(store.as_ref(), &store::Key::new("repos").unwrap())
                .await
                .unwrap()
                .len()
        }
    };
    let links_before = links().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while links().await == links_before {
        assert!(std::time::Instant::now() < deadline, "gc never began");
        assert!(
            gc.0.try_wait().unwrap().is_none(),
            "gc ended before it deleted anything"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _ = gc.0.kill();
    let _ = gc.0.wait();
    let left = count().await;
    assert!(
        left > 2,
        "the killed run left garbage behind ({left} blobs)"
    );

    let opts = upkeep::gc::GcOptions {
        grace: std::time::Duration::ZERO,
        renewal_slack: std::time::Duration::ZERO,
        lease_ttl: std::time::Duration::from_secs(4),
        ..upkeep::gc::GcOptions::default()
    };
    let r = upkeep::gc::run_once(&b.app.registry, &opts, &upkeep::Quiet).await;
    assert!(
        matches!(r, Err(upkeep::UpkeepError::Busy("gc"))),
        "the dead run's lease still holds: {r:?}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let report = upkeep::gc::run_once(&b.app.registry, &opts, &upkeep::Quiet)
        .await
        .unwrap();
    assert!(report.blobs_deleted > 0, "{report:?}");
    assert_eq!(
        count().await,
        3,
        "only the image's config, layer and manifest remain"
    );
    let r = client()
        .get(b.url("/v2/team/kept/manifests/v1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        get_bytes(&b.url(&format!("/v2/team/kept/blobs/{layer_d}")))
            .await
            .as_ref()
            == b"kept layer"
    );
}
