//! The client commands against real registries: `berth verify` walking a multi-platform
//! index (pushed by skopeo) in berth and in CNCF distribution, HEAD and deep, and
//! finding a layer deleted behind each registry's back.

use crate::cache::Distribution;
use crate::common::*;
use crate::skopeo::{
    build_multi_layout, layout_manifest, p, referenced_blobs, require_tools, skopeo,
};
use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_walks_an_index_in_berth_and_distribution_and_finds_a_deleted_layer() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (_, index_digest, children) = build_multi_layout(&src).await;
    let berth_server = TestServer::start().await;
    let distribution = Distribution::start(None).await;
    // The arm64 image's first layer is deleted later.
    let (_, arm64) = layout_manifest(&src, "arm64");
    let victim = referenced_blobs(&arm64)[1].clone();
    let registries: [(String, PathBuf); 2] = [
        (
            berth_server.addr.to_string(),
            berth_server
                .dir
                .path()
                .join("data/blobs/sha256")
                .join(&victim[7..9])
                .join(&victim[7..]),
        ),
        (distribution.addr.clone(), distribution.blob_file(&victim)),
    ];
    for (addr, victim_file) in &registries {
        skopeo(&[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", p(&src)),
            &format!("docker://{addr}/team/multi:v1"),
        ])
        .await;
        let image = format!("{addr}/team/multi:v1");

        // Everything is there: HEAD walk, then a deep walk.
        for deep in [false, true] {
            let mut args = vec!["verify", "--plain-http", &image];
            if deep {
                args.push("--deep");
            }
            let (code, out, err) = run_berth(&args).await;
            assert_eq!(code, 0, "{addr} deep={deep}:\n{out}{err}");
            assert!(
                out.contains("9 nodes checked") && out.contains("all consistent"),
                "{out}"
            );
            assert!(out.contains(&format!("index     {index_digest}")), "{out}");
            for c in &children {
                assert!(out.contains(c), "{out}");
            }
        }
        let (code, json, _) = run_berth(&["verify", "--plain-http", "--json", &image]).await;
        assert_eq!(code, 0);
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(report["digest"], index_digest.as_str());
        assert_eq!(report["nodes"].as_array().unwrap().len(), 9);

        // A layer deleted behind the registry's back: found, with where it hangs.
        std::fs::remove_file(victim_file).unwrap();
        for deep in [false, true] {
            let mut args = vec!["verify", "--plain-http", &image];
            if deep {
                args.push("--deep");
            }
            let (code, out, _) = run_berth(&args).await;
            assert_eq!(code, 1, "{addr} deep={deep}: {out}");
            assert!(out.contains(&format!("FAIL  layer     {victim}")), "{out}");
            assert!(out.contains(&format!("in {}", children[1])), "{out}");
            assert!(out.contains("1 FAILED"), "{out}");
        }
        let (_, json, _) = run_berth(&["verify", "--plain-http", "--json", &image]).await;
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        let failed: Vec<_> = report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| !n["error"].is_null())
            .collect();
        assert_eq!(failed.len(), 1, "{json}");
        assert_eq!(failed[0]["digest"], victim.as_str());
        assert_eq!(failed[0]["parent"], children[1].as_str());
    }
    // A reference to nothing fails cleanly.
    let (code, out, _) = run_berth(&[
        "verify",
        "--plain-http",
        &format!("{}/team/none:v1", berth_server.addr),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(out.contains("FAIL") && out.contains("not found"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_logs_in_through_the_token_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "alice-pw")]);
    let s = TestServer::start_with(|c| {
        c.auth.htpasswd = Some(htpasswd);
        c.access = vec![rule("**", &["alice"], &["pull", "push"])];
    })
    .await;
    // Pushed as alice (Basic), then verified through the Bearer challenge.
    push_image_as(&s, "team/app", "v1", "token", Some(("alice", "alice-pw"))).await;
    let image = format!("{}/team/app:v1", s.addr);

    let (code, out, err) = run_berth(&["verify", "--plain-http", &image]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("credentials") || out.contains("401"), "{out}");
    let (code, out, err) = run_berth(&[
        "verify",
        "--plain-http",
        "--creds",
        "alice:alice-pw",
        "--deep",
        &image,
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("3 nodes checked (downloaded and hashed), all consistent"),
        "{out}"
    );
    let creds = tmp.path().join("creds");
    std::fs::write(&creds, "alice:alice-pw\n").unwrap();
    let (code, out, _) = run_berth(&[
        "verify",
        "--plain-http",
        "--creds-file",
        creds.to_str().unwrap(),
        &image,
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = run_berth(&["verify", "--plain-http", "--creds", "nocolon", &image]).await;
    assert_eq!(code, 1);
    assert!(err.contains("USER:PASS"), "{err}");
}

/// The digest and bytes a registry serves for `repo:reference` (any manifest type).
async fn served_manifest(addr: &str, repo: &str, reference: &str) -> (String, Vec<u8>) {
    let r = client()
        .get(format!("http://{addr}/v2/{repo}/manifests/{reference}"))
        .header(
            "accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{addr}/{repo}:{reference}");
    let bytes = r.bytes().await.unwrap().to_vec();
    (digest_of(&bytes).to_string(), bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_keeps_digests_between_registries_and_layouts_and_resumes() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (index, index_digest, children) = build_multi_layout(&src).await;
    let b = TestServer::start().await;
    let d = Distribution::start(None).await;
    let baddr = b.addr.to_string();
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", p(&src)),
        &format!("docker://{}/team/multi:v1", d.addr),
    ])
    .await;

    // distribution → berth, every platform: the index keeps its digest and bytes.
    let from = format!("{}/team/multi:v1", d.addr);
    let to = format!("{baddr}/mirror/multi:v1");
    let (code, out, err) = run_berth(&["copy", "--all", "--plain-http", &from, &to]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{index_digest}: 3 manifests; blobs: 6 copied")),
        "{out}"
    );
    // Not a terminal: one line per blob instead of bars.
    assert_eq!(err.matches("copying sha256:").count(), 6, "{err}");
    assert_eq!(err.matches("  copied sha256:").count(), 6, "{err}");
    let (digest, bytes) = served_manifest(&baddr, "mirror/multi", "v1").await;
    assert_eq!(digest, index_digest);
    assert!(bytes == index);
    for c in &children {
        assert_eq!(served_manifest(&baddr, "mirror/multi", c).await.0, *c);
    }
    let (code, out, _) = run_berth(&["verify", "--plain-http", "--deep", &to]).await;
    assert_eq!(code, 0, "{out}");
    // Again: nothing to send.
    let (code, out, _) = run_berth(&["copy", "--all", "--plain-http", &from, &to]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("blobs: 0 copied (0 B), 6 already there"),
        "{out}"
    );
    // Within one registry: mounted, not uploaded.
    let other = format!("{baddr}/other/multi:v1");
    let (code, out, _) = run_berth(&["copy", "--all", "--plain-http", &to, &other]).await;
    assert_eq!(code, 0);
    assert!(out.contains("6 mounted"), "{out}");
    // One platform from the index: the arm64 image itself.
    let (code, out, err) = run_berth(&[
        "copy",
        "--plain-http",
        "--platform",
        "linux/arm64",
        &from,
        &format!("{baddr}/single/arm:v1"),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        served_manifest(&baddr, "single/arm", "v1").await.0,
        children[1]
    );

    // berth → OCI layout (skopeo reads it back, byte for byte) → distribution.
    let layout = tmp.path().join("layout");
    let (code, out, err) = run_berth(&[
        "copy",
        "--all",
        "--plain-http",
        &to,
        &format!("oci:{}:v1", p(&layout)),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let raw = skopeo(&["inspect", "--raw", &format!("oci:{}:v1", p(&layout))]).await;
    assert!(raw == index, "{}", String::from_utf8_lossy(&raw));
    let back = tmp.path().join("back");
    skopeo(&[
        "copy",
        "--all",
        &format!("oci:{}:v1", p(&layout)),
        &format!("oci:{}:v1", p(&back)),
    ])
    .await;
    let (code, out, err) = run_berth(&[
        "copy",
        "--all",
        "--plain-http",
        &format!("oci:{}:v1", p(&layout)),
        &format!("{}/team/again:v2", d.addr),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        served_manifest(&d.addr, "team/again", "v2").await.0,
        index_digest
    );
    // Bad input: a layout without a tag, a missing image.
    let (code, _, err) = run_berth(&["copy", &format!("oci:{}", p(&layout)), &to]).await;
    assert_eq!(code, 1);
    assert!(err.contains("needs a tag"), "{err}");
    let (code, _, err) = run_berth(&[
        "copy",
        "--plain-http",
        &format!("{baddr}/nothing/here:v1"),
        &format!("{baddr}/x/y:v1"),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_and_import_round_trip_with_skopeo_and_docker_archives() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (index, index_digest, children) = build_multi_layout(&src).await;
    let b = TestServer::start().await;
    let d = Distribution::start(None).await;
    let baddr = b.addr.to_string();
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", p(&src)),
        &format!("docker://{baddr}/team/multi:v1"),
    ])
    .await;

    // export --all: skopeo reads the tarball, index byte for byte.
    let tarball = tmp.path().join("multi.tar");
    let (code, out, err) = run_berth(&[
        "export",
        "--all",
        "--plain-http",
        &format!("{baddr}/team/multi:v1"),
        "-o",
        p(&tarball),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&index_digest), "{out}");
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", p(&tarball))]).await;
    assert!(raw == index, "{}", String::from_utf8_lossy(&raw));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "scratch files left: {leftovers:?}");

    // import into distribution: the index keeps its digest; every blob verifies.
    let (code, out, err) = run_berth(&[
        "import",
        "--plain-http",
        p(&tarball),
        &format!("{}/team/imported:v1", d.addr),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        served_manifest(&d.addr, "team/imported", "v1").await.0,
        index_digest
    );
    let (code, out, _) = run_berth(&[
        "verify",
        "--plain-http",
        "--deep",
        &format!("{}/team/imported:v1", d.addr),
    ])
    .await;
    assert_eq!(code, 0, "{out}");

    // An archive skopeo wrote (one image) imports with its digest.
    let oci_tar = tmp.path().join("skopeo-oci.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:amd64", p(&src)),
        &format!("oci-archive:{}:amd64", p(&oci_tar)),
    ])
    .await;
    let (code, out, err) = run_berth(&[
        "import",
        "--plain-http",
        p(&oci_tar),
        &format!("{baddr}/from/skopeo:amd64"),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        served_manifest(&baddr, "from/skopeo", "amd64").await.0,
        children[0]
    );

    // A docker save archive (written by skopeo's docker-archive transport) becomes a
    // consistent OCI image: layers are the diff IDs the config names.
    let docker_tar = tmp.path().join("docker.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:arm64", p(&src)),
        &format!("docker-archive:{}:team/app:v1", p(&docker_tar)),
    ])
    .await;
    let (code, out, err) = run_berth(&[
        "import",
        "--plain-http",
        p(&docker_tar),
        &format!("{baddr}/from/docker:v1"),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run_berth(&[
        "verify",
        "--plain-http",
        "--deep",
        &format!("{baddr}/from/docker:v1"),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&served_manifest(&baddr, "from/docker", "v1").await.1).unwrap();
    let config: serde_json::Value = serde_json::from_slice(
        &get_bytes(&b.url(&format!(
            "/v2/from/docker/blobs/{}",
            manifest["config"]["digest"].as_str().unwrap()
        )))
        .await,
    )
    .unwrap();
    let layers: Vec<_> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].clone())
        .collect();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap(), &layers);
    assert_eq!(config["architecture"], "arm64");
    // skopeo pulls it like any image.
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{baddr}/from/docker:v1"),
        &format!("oci:{}:back", p(&tmp.path().join("pulled"))),
    ])
    .await;

    // An archive with a path that leaves the extraction directory is refused.
    let evil = tmp.path().join("evil.tar");
    {
        let mut t = tar::Builder::new(std::fs::File::create(&evil).unwrap());
        let mut h = tar::Header::new_old();
        let name = b"../escaped.txt";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        t.append(&h, &b"hi"[..]).unwrap();
        t.finish().unwrap();
    }
    let (code, _, err) = run_berth(&[
        "import",
        "--plain-http",
        p(&evil),
        &format!("{baddr}/x/y:v1"),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("leaves the archive"), "{err}");
    assert!(!std::env::temp_dir().join("escaped.txt").exists());
    // Something that is no image archive at all.
    let junk = tmp.path().join("junk.tar");
    {
        let mut t = tar::Builder::new(std::fs::File::create(&junk).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_path("hello.txt").unwrap();
        h.set_size(2);
        h.set_cksum();
        t.append(&h, &b"hi"[..]).unwrap();
        t.finish().unwrap();
    }
    let (code, _, err) = run_berth(&[
        "import",
        "--plain-http",
        p(&junk),
        &format!("{baddr}/x/y:v1"),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("neither an OCI image layout nor a docker save archive"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_writes_break_glass_exports_after_matching_pushes_and_keeps_the_last_n() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    let b = backups.clone();
    let s = TestServer::start_with(move |c| {
        c.exports = vec![berth::config::ExportConfig {
            repositories: "team/**".into(),
            tags: "v*".into(),
            directory: b,
            keep: 2,
        }];
    })
    .await;
    let src = tmp.path().join("src");
    let (index, index_digest, _) = build_multi_layout(&src).await;
    let push = |repo: &'static str, tag: &'static str| {
        let (src, addr) = (src.clone(), s.addr);
        async move {
            skopeo(&[
                "copy",
                "--all",
                "--dest-tls-verify=false",
                &format!("oci:{}:multi", p(&src)),
                &format!("docker://{addr}/{repo}:{tag}"),
            ])
            .await;
        }
    };
    // Three pushes of team/app:v1; one push not matching the tag pattern, one not
    // matching the repository pattern.
    let dir = backups.join("team/app/v1");
    let tars = |dir: &std::path::Path| -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.retain(|p: &PathBuf| p.extension().is_some_and(|x| x == "tar"));
        v.sort();
        v
    };
    for round in 1..=3 {
        push("team/app", "v1").await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while tars(&dir).len() < round.min(2) || (round == 3 && tars(&dir).len() != 2) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {:?}",
                tars(&dir)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Distinct names even within one second.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    push("team/app", "latest").await;
    push("other/app", "v1").await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let kept = tars(&dir);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(!backups.join("team/app/latest").exists());
    assert!(!backups.join("other").exists());
    // The newest is a complete archive skopeo reads, with the whole index.
    let newest = kept.last().unwrap();
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", p(newest))]).await;
    assert!(raw == index);
    let (code, out, err) = run_berth(&[
        "import",
        "--plain-http",
        p(newest),
        &format!("{}/restored/app:v1", s.addr),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&index_digest), "{out}");
    // No partial or scratch files beside them.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".tar") && !n.starts_with('.')),
        "{names:?}"
    );
}
