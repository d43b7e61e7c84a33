//! Real-client round trips: images built offline with umoci are pushed to an in-process
//! berth with skopeo (single image, and a multi-platform OCI index with `--all`), pulled
//! back, inspected and deleted, and every manifest, index and blob must come back byte
//! for byte with the same digests.

use crate::common::*;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Run a tool to completion without blocking the runtime (the server runs on it) and
/// return its stdout; fail with the command line and its stderr when it fails.
pub(crate) async fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let shown = format!("{program} {}", args.join(" "));
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run `{shown}`: {e}"));
    assert!(
        out.status.success(),
        "`{shown}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

/// skopeo with a policy that accepts anything, so the machine's policy.json is irrelevant.
pub(crate) async fn skopeo(args: &[&str]) -> Vec<u8> {
    let mut all = vec!["--insecure-policy"];
    all.extend_from_slice(args);
    run("skopeo", &all).await
}

pub(crate) fn require_tools() {
    require_tool("skopeo");
    require_tool("umoci");
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Build image `layout:tag` offline with umoci: a layer holding `big` pseudo-random bytes,
/// a second small layer, `cmd` set to /bin/true and the given platform.
pub(crate) async fn build_image(layout: &Path, tag: &str, arch: &str, seed: u64, big: usize) {
    let image = format!("{}:{tag}", p(layout));
    if !layout.join("index.json").exists() {
        run("umoci", &["init", "--layout", p(layout)]).await;
    }
    run("umoci", &["new", "--image", &image]).await;
    let bundle = layout.with_file_name(format!("bundle-{tag}"));
    run(
        "umoci",
        &["unpack", "--rootless", "--image", &image, p(&bundle)],
    )
    .await;
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("data")).unwrap();
    std::fs::write(rootfs.join("data/random.bin"), pseudo_random(seed, big)).unwrap();
    run(
        "umoci",
        &["repack", "--refresh-bundle", "--image", &image, p(&bundle)],
    )
    .await;
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/motd"), format!("image {tag} for {arch}\n")).unwrap();
    run("umoci", &["repack", "--image", &image, p(&bundle)]).await;
    run(
        "umoci",
        &[
            "config",
            "--image",
            &image,
            "--config.cmd",
            "/bin/true",
            "--os",
            "linux",
            "--architecture",
            arch,
        ],
    )
    .await;
    run("umoci", &["gc", "--layout", p(layout)]).await;
}

pub(crate) fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The bytes of blob `digest` in an OCI layout.
pub(crate) fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let path = layout.join("blobs/sha256").join(hex);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The descriptor `index.json` of a layout holds for `tag`.
fn layout_descriptor(layout: &Path, tag: &str) -> Value {
    let index = read_json(&layout.join("index.json"));
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"][REF_NAME] == tag)
        .unwrap_or_else(|| panic!("no {tag:?} in {}/index.json: {index}", layout.display()))
        .clone()
}

/// Digest and bytes of the manifest tagged `tag` in a layout; the bytes must hash to it.
pub(crate) fn layout_manifest(layout: &Path, tag: &str) -> (String, Vec<u8>) {
    let desc = layout_descriptor(layout, tag);
    let digest = desc["digest"].as_str().unwrap().to_owned();
    let bytes = layout_blob(layout, &digest);
    assert_eq!(
        digest_of(&bytes).to_string(),
        digest,
        "layout {} is inconsistent",
        layout.display()
    );
    assert_eq!(desc["size"].as_u64(), Some(bytes.len() as u64));
    (digest, bytes)
}

/// The digests of a manifest's config and layers.
pub(crate) fn referenced_blobs(manifest: &[u8]) -> Vec<String> {
    let m: Value = serde_json::from_slice(manifest).unwrap();
    let mut out = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    for l in m["layers"].as_array().unwrap() {
        out.push(l["digest"].as_str().unwrap().to_owned());
    }
    out
}

/// Every blob the image manifest `manifest` references is identical in both layouts.
fn assert_same_blobs(src: &Path, out: &Path, manifest: &[u8]) {
    for d in referenced_blobs(manifest) {
        let a = layout_blob(src, &d);
        let b = layout_blob(out, &d);
        assert!(
            a == b,
            "blob {d} differs after the round trip ({} vs {} bytes)",
            a.len(),
            b.len()
        );
        assert_eq!(digest_of(&b).to_string(), d);
    }
}

/// GET a manifest over HTTP: (status, content type, Docker-Content-Digest, body).
async fn get_manifest(
    s: &TestServer,
    repo: &str,
    reference: &str,
) -> (u16, String, String, Vec<u8>) {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header(
            "accept",
            format!("{}, {}", oci::media::OCI_MANIFEST, oci::media::OCI_INDEX),
        )
        .send()
        .await
        .unwrap();
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (ct, dcd) = (h("content-type"), h("docker-content-digest"));
    (
        r.status().as_u16(),
        ct,
        dcd,
        r.bytes().await.unwrap().to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_push_pull_inspect_single_image_byte_for_byte() {
    require_tools();
    let s = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_image(&src, "single", "amd64", 1, 4 << 20).await;
    let (digest, manifest) = layout_manifest(&src, "single");
    let blobs = referenced_blobs(&manifest);
    assert_eq!(blobs.len(), 3, "config and two layers");
    assert!(
        layout_blob(&src, &blobs[1]).len() > 4 << 20,
        "the random layer should not compress"
    );

    let remote = format!("docker://{}/test/single:v1", s.addr);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:single", p(&src)),
        &remote,
    ])
    .await;

    // What a plain HTTP client sees: the exact bytes under the tag and the digest.
    let (status, ct, dcd, body) = get_manifest(&s, "test/single", "v1").await;
    assert_eq!(status, 200);
    assert_eq!(ct, oci::media::OCI_MANIFEST);
    assert_eq!(dcd, digest);
    assert!(
        body == manifest,
        "manifest bytes changed in the registry:\n{}",
        String::from_utf8_lossy(&body)
    );
    for d in &blobs {
        let r = client()
            .get(s.url(&format!("/v2/test/single/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "blob {d}");
        assert!(
            r.bytes().await.unwrap() == layout_blob(&src, d),
            "blob {d} bytes differ"
        );
    }

    // skopeo inspect: raw bytes, and the digest and layers it reports.
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &remote]).await;
    assert!(
        raw == manifest,
        "inspect --raw: {}",
        String::from_utf8_lossy(&raw)
    );
    let info: Value =
        serde_json::from_slice(&skopeo(&["inspect", "--tls-verify=false", &remote]).await).unwrap();
    assert_eq!(info["Digest"], digest.as_str(), "{info}");
    assert_eq!(info["Architecture"], "amd64", "{info}");
    assert_eq!(info["Os"], "linux", "{info}");
    let layers: Vec<&str> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        blobs[1..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let tags: Value = serde_json::from_slice(
        &skopeo(&[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/test/single", s.addr),
        ])
        .await,
    )
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]), "{tags}");

    // Pull back into a new layout: same manifest digest and bytes, same blobs.
    let out = tmp.path().join("out");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:v1", p(&out)),
    ])
    .await;
    let (out_digest, out_manifest) = layout_manifest(&out, "v1");
    assert_eq!(out_digest, digest);
    assert!(out_manifest == manifest);
    assert_same_blobs(&src, &out, &manifest);

    // Pull by digest too.
    let by_digest = format!("docker://{}/test/single@{digest}", s.addr);
    let out2 = tmp.path().join("out2");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &by_digest,
        &format!("oci:{}:pinned", p(&out2)),
    ])
    .await;
    assert_eq!(layout_manifest(&out2, "pinned").0, digest);
    assert_same_blobs(&src, &out2, &manifest);
}

/// An OCI index descriptor, serialized in the field order Go's image-spec types use so
/// that skopeo, re-encoding the index to check it, finds the bytes unchanged and pushes
/// them as they are.
#[derive(Serialize)]
struct IndexEntry {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    platform: Platform,
}

#[derive(Serialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Serialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    manifests: Vec<IndexEntry>,
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_copy_all_multi_platform_index_byte_for_byte() {
    require_tools();
    let s = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (index, index_digest, child_digests) = build_multi_layout(&src).await;
    let arches = ["amd64", "arm64"];

    let remote = format!("docker://{}/test/multi:v1", s.addr);
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", p(&src)),
        &remote,
    ])
    .await;

    // Over HTTP: the index under the tag, byte for byte, with its digest; each child by digest.
    let (status, ct, dcd, body) = get_manifest(&s, "test/multi", "v1").await;
    assert_eq!(status, 200);
    assert_eq!(ct, oci::media::OCI_INDEX);
    assert!(
        body == index,
        "index bytes changed:\n{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(dcd, digest_of(&body).to_string());
    assert_eq!(dcd, index_digest);
    for (arch, d) in arches.iter().zip(&child_digests) {
        let (status, ct, dcd, body) = get_manifest(&s, "test/multi", d).await;
        assert_eq!(
            (status, ct.as_str()),
            (200, oci::media::OCI_MANIFEST),
            "{arch}"
        );
        assert_eq!(&dcd, d);
        assert!(
            body == layout_manifest(&src, arch).1,
            "{arch} manifest bytes changed"
        );
    }
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &remote]).await;
    assert!(raw == index, "inspect --raw of the index");

    // Pull everything back: the index and each child survive byte for byte, with blobs.
    let out = tmp.path().join("out");
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:v1", p(&out)),
    ])
    .await;
    let desc = layout_descriptor(&out, "v1");
    assert_eq!(desc["mediaType"], oci::media::OCI_INDEX);
    let (out_digest, out_index) = layout_manifest(&out, "v1");
    assert_eq!(out_digest, index_digest);
    assert!(out_index == index);
    for (arch, d) in arches.iter().zip(&child_digests) {
        let pulled = layout_blob(&out, d);
        let (_, original) = layout_manifest(&src, arch);
        assert!(
            pulled == original,
            "{arch} manifest differs after the round trip"
        );
        assert_same_blobs(&src, &out, &original);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_delete_removes_the_manifest() {
    require_tools();
    let s = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_image(&src, "gone", "amd64", 20, 64 << 10).await;
    let (digest, _) = layout_manifest(&src, "gone");
    let remote = format!("docker://{}/test/single:v1", s.addr);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:gone", p(&src)),
        &remote,
    ])
    .await;
    // A second tag on the same manifest: deleting by digest takes every tag with it.
    let also = format!("docker://{}/test/single:also", s.addr);
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &remote,
        &also,
    ])
    .await;
    assert_eq!(get_manifest(&s, "test/single", "also").await.0, 200);
    // A different image in the same repository stays.
    let keep = format!("docker://{}/test/single:keep", s.addr);
    let src2 = tmp.path().join("src2");
    build_image(&src2, "keep", "amd64", 21, 64 << 10).await;
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:keep", p(&src2)),
        &keep,
    ])
    .await;

    skopeo(&["delete", "--tls-verify=false", &remote]).await;

    for reference in ["v1", "also", digest.as_str()] {
        let (status, ..) = get_manifest(&s, "test/single", reference).await;
        assert_eq!(status, 404, "manifest {reference} after skopeo delete");
    }
    let out = tokio::process::Command::new("skopeo")
        .args([
            "--insecure-policy",
            "inspect",
            "--tls-verify=false",
            "--raw",
            &remote,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "skopeo inspect of a deleted image succeeded"
    );
    let (status, ..) = get_manifest(&s, "test/single", "keep").await;
    assert_eq!(status, 200, "deleting one image must not touch another");
    let tags: Value = serde_json::from_slice(
        &skopeo(&[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/test/single", s.addr),
        ])
        .await,
    )
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["keep"]), "{tags}");
}

/// Build an OCI layout at `src` holding an amd64 and an arm64 image and an OCI index over
/// both, tagged `multi`. Returns the index bytes, its digest and the children's digests.
pub(crate) async fn build_multi_layout(src: &Path) -> (Vec<u8>, String, Vec<String>) {
    let arches = ["amd64", "arm64"];
    for (i, arch) in arches.iter().enumerate() {
        build_image(src, arch, arch, 10 + i as u64, 2 << 20).await;
    }

    // An index over both images, written into the layout and tagged "multi".
    let mut children = Vec::new();
    for arch in arches {
        let desc = layout_descriptor(src, arch);
        let (digest, bytes) = layout_manifest(src, arch);
        let config: Value =
            serde_json::from_slice(&layout_blob(src, &referenced_blobs(&bytes)[0])).unwrap();
        assert_eq!(config["architecture"], arch, "umoci config --architecture");
        children.push(IndexEntry {
            media_type: desc["mediaType"].as_str().unwrap().to_owned(),
            digest,
            size: bytes.len() as u64,
            platform: Platform {
                architecture: arch.to_owned(),
                os: "linux".to_owned(),
            },
        });
    }
    let index = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: oci::media::OCI_INDEX,
        manifests: children,
    })
    .unwrap();
    let index_digest = digest_of(&index).to_string();
    std::fs::write(
        src.join("blobs/sha256")
            .join(index_digest.strip_prefix("sha256:").unwrap()),
        &index,
    )
    .unwrap();
    let mut layout_index = read_json(&src.join("index.json"));
    layout_index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": oci::media::OCI_INDEX,
            "digest": index_digest,
            "size": index.len(),
            "annotations": {REF_NAME: "multi"},
        }));
    std::fs::write(
        src.join("index.json"),
        serde_json::to_vec(&layout_index).unwrap(),
    )
    .unwrap();
    let child_digests: Vec<String> = arches.iter().map(|a| layout_manifest(src, a).0).collect();
    (index, index_digest, child_digests)
}
