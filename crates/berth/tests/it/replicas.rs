//! Several berth replicas on one S3 bucket (SeaweedFS, started by scripts/test): what one
//! replica stores, another serves; one upload's requests may land on different replicas.

use crate::common::*;
use crate::skopeo::{build_multi_layout, layout_manifest, p, require_tools, skopeo};

/// Point `c` at the test bucket under `prefix` (shared by the replicas of one test).
fn on_s3(c: &mut berth::config::Config, o: &store::s3::S3Options) {
    c.storage.kind = berth::config::StorageKind::S3;
    c.storage.bucket = Some(o.bucket.clone());
    c.storage.endpoint = o.endpoint.clone();
    c.storage.region = o.region.clone();
    c.storage.prefix = o.prefix.clone();
    c.storage.access_key_id = o.access_key_id.clone();
    c.storage.secret_access_key = o.secret_access_key.clone();
    c.storage.path_style = o.path_style;
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
