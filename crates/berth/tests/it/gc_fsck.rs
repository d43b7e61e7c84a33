//! Garbage collection, retention and fsck/scrub as users meet them: the old incident (a
//! tag cleanup then GC breaking multi-platform images) replayed, GC racing pushes and
//! pulls, content a client has just checked surviving GC, a blob deleted behind berth's
//! back found by fsck and by the scrub, corrupt content repaired or quarantined, and the
//! `gc`, `retention` and `fsck` commands.

use crate::common::*;
use crate::skopeo::{p, require_tools, skopeo};
use oci::Digest;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};
use upkeep::fsck::ProblemKind;

const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Run one garbage collection in-process, as `serve` does.
async fn gc_now(s: &TestServer, grace: Duration) -> upkeep::gc::GcReport {
    let opts = upkeep::gc::GcOptions {
        grace,
        renewal_slack: grace / 4,
        ..berth::gc_options(&s.config, false)
    };
    upkeep::gc::run_once(&s.app.registry, &opts, &upkeep::Quiet)
        .await
        .unwrap_or_else(|e| panic!("garbage collection failed: {e}"))
}

/// Run fsck in-process.
async fn fsck_now(s: &TestServer, deep: bool, repair: bool) -> upkeep::fsck::FsckReport {
    let opts = upkeep::fsck::FsckOptions {
        deep,
        repair,
        cache: Some(s.app.cache.clone()),
        cached: berth::cached_keys(&s.config),
        rate: None,
    };
    upkeep::fsck::run_once(&s.app.registry, &opts, &upkeep::Quiet)
        .await
        .unwrap()
}

fn data(s: &TestServer) -> PathBuf {
    s.dir.path().join("data")
}

fn blob_path(s: &TestServer, d: &Digest) -> PathBuf {
    data(s)
        .join("blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex())
}

/// Move a stored file's modification time `by` into the past.
fn age(path: &Path, by: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

/// An image with a config, a layer shared by the caller and a layer of its own, pushed by
/// digest (untagged). Returns (manifest digest, manifest size, its blob digests).
async fn push_child(
    s: &TestServer,
    repo: &str,
    seed: &str,
    shared: &[u8],
) -> (Digest, usize, Vec<Digest>) {
    let config = format!("{{\"architecture\":\"{seed}\",\"os\":\"linux\"}}");
    let own = pseudo_random(
        seed.len() as u64 * 7919 + seed.bytes().map(u64::from).sum::<u64>(),
        4096 + seed.len(),
    );
    let c = push_blob(s, repo, config.as_bytes()).await;
    let sh = push_blob(s, repo, shared).await;
    let o = push_blob(s, repo, &own).await;
    let m = image_manifest((&c, config.len()), &[(&sh, shared.len()), (&o, own.len())]);
    let d = digest_of(&m);
    let r = put_manifest(s, repo, &d.to_string(), oci::media::OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    (d, m.len(), vec![c, sh, o])
}

/// A two-platform index tagged `tag` whose children are untagged. Returns (index digest,
/// index size, child digests, every blob digest).
async fn push_index(
    s: &TestServer,
    repo: &str,
    tag: &str,
    seed: &str,
    shared: &[u8],
) -> (Digest, usize, Vec<Digest>, Vec<Digest>) {
    let mut children = Vec::new();
    let mut blobs = Vec::new();
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let (d, n, b) = push_child(s, repo, &format!("{seed}-{arch}"), shared).await;
        entries.push(json!({
            "mediaType": oci::media::OCI_MANIFEST, "digest": d, "size": n,
            "platform": {"architecture": arch, "os": "linux"}
        }));
        children.push(d);
        blobs.extend(b);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": oci::media::OCI_INDEX, "manifests": entries
    }))
    .unwrap();
    let r = put_manifest(s, repo, tag, oci::media::OCI_INDEX, &index).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    (digest_of(&index), index.len(), children, blobs)
}

/// An untagged signature-like artifact whose subject is `subject`.
async fn push_referrer(
    s: &TestServer,
    repo: &str,
    subject: (&Digest, usize),
    what: &str,
) -> Digest {
    let empty = push_blob(s, repo, b"{}").await;
    let payload = format!("signature {what}");
    let l = push_blob(s, repo, payload.as_bytes()).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::media::OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": EMPTY_CONFIG, "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": l, "size": payload.len()}],
        "subject": {"mediaType": oci::media::OCI_INDEX, "digest": subject.0, "size": subject.1},
    }))
    .unwrap();
    let d = digest_of(&m);
    let r = put_manifest(s, repo, &d.to_string(), oci::media::OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    d
}

/// Pull `reference` the way a client does: the manifest, every child of an index, every
/// config and layer, each checked against its digest. Returns how many blobs it read.
async fn pull_all(s: &TestServer, repo: &str, reference: &str) -> usize {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "pull {repo}:{reference}");
    let bytes = r.bytes().await.unwrap();
    if let Ok(d) = reference.parse::<Digest>() {
        assert_eq!(digest_of(&bytes), d, "manifest {reference} bytes");
    }
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let mut n = 0;
    if let Some(children) = v["manifests"].as_array() {
        for c in children {
            n += Box::pin(pull_all(s, repo, c["digest"].as_str().unwrap())).await;
        }
        return n;
    }
    let blobs = std::iter::once(&v["config"]).chain(v["layers"].as_array().unwrap().iter());
    for b in blobs {
        let d: Digest = b["digest"].as_str().unwrap().parse().unwrap();
        let got = get_bytes(&s.url(&format!("/v2/{repo}/blobs/{d}"))).await;
        assert_eq!(digest_of(&got), d, "blob {d} of {repo}:{reference}");
        n += 1;
    }
    n
}

async fn status(s: &TestServer, path: &str) -> u16 {
    client()
        .get(s.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn retention_rule(repos: &str, keep_last: usize) -> berth::config::RetentionRuleConfig {
    berth::config::RetentionRuleConfig {
        repositories: repos.to_owned(),
        keep_last: Some(keep_last),
        keep_tags: None,
        max_age: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_old_incident_tag_cleanup_then_gc_leaves_every_tagged_image_pullable() {
    require_tools();
    let s = TestServer::start_with(|c| {
        c.retention.rules = vec![retention_rule("team/**", 1)];
    })
    .await;
    let repo = "team/app";
    let shared = pseudo_random(1, 64 * 1024);
    let old = push_image(&s, repo, "old", "old").await;
    let (v0, v0_size, v0_children, v0_blobs) = push_index(&s, repo, "v0", "zero", &shared).await;
    let r0 = push_referrer(&s, repo, (&v0, v0_size), "of v0").await;
    let (v1, v1_size, v1_children, v1_blobs) = push_index(&s, repo, "v1", "one", &shared).await;
    let r1 = push_referrer(&s, repo, (&v1, v1_size), "of v1").await;

    // The tag cleanup: keep only the newest tag.
    let plan = upkeep::retention::plan(
        &s.app.registry,
        &berth::retention_rules(&s.config).unwrap(),
        &upkeep::Quiet,
    )
    .await
    .unwrap();
    let mut dropped: Vec<&str> = plan.drops.iter().map(|d| d.tag.as_str()).collect();
    dropped.sort();
    assert_eq!(dropped, ["old", "v0"]);
    let applied = upkeep::retention::apply(&s.app.registry, &plan)
        .await
        .unwrap();
    assert_eq!(applied.tags_deleted, 2);

    // Then GC, with no grace: only what the mark reaches survives.
    let report = gc_now(&s, Duration::ZERO).await;
    assert_eq!(
        report.manifests_deleted, 5,
        "old, v0 and its two children, v0's signature: {report:?}"
    );
    assert!(report.blobs_deleted >= 5, "{report:?}");

    // Every pull of v1 works: index, both children, configs and layers.
    assert_eq!(pull_all(&s, repo, "v1").await, 6);
    for c in &v1_children {
        pull_all(&s, repo, &c.to_string()).await;
    }
    // Its signature survives, found through the referrers API.
    let refs = get_json(&s.url(&format!("/v2/{repo}/referrers/{v1}"))).await;
    assert_eq!(refs["manifests"][0]["digest"], r1.to_string(), "{refs}");
    pull_all(&s, repo, &r1.to_string()).await;
    // And a real client pulls the whole index.
    let out = tempfile::tempdir().unwrap();
    let from = format!("docker://{}/{repo}:v1", s.addr);
    let to = format!("oci:{}:v1", p(out.path()));
    skopeo(&["copy", "--all", "--src-tls-verify=false", &from, &to]).await;

    // What the cleanup released is gone, shared bytes aside.
    for d in [&old, &v0, &r0].into_iter().chain(&v0_children) {
        assert_eq!(
            status(&s, &format!("/v2/{repo}/manifests/{d}")).await,
            404,
            "{d}"
        );
    }
    let shared_d = digest_of(&shared);
    for d in v0_blobs
        .iter()
        .filter(|d| **d != shared_d && !v1_blobs.contains(d))
    {
        assert!(!blob_path(&s, d).exists(), "{d} should be collected");
    }
    assert!(blob_path(&s, &shared_d).exists());

    let check = fsck_now(&s, true, false).await;
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_a_client_just_checked_or_mounted_survives_gc_so_the_manifest_put_that_follows_works()
 {
    let s = TestServer::start().await; // default grace: one hour
    let grace = s.config.gc.grace;
    let repo = "p/app";
    let checked = pseudo_random(2, 5000);
    let unchecked = pseudo_random(3, 5000);
    let mounted = pseudo_random(4, 5000);
    let x = push_blob(&s, repo, &checked).await;
    let y = push_blob(&s, repo, &unchecked).await;
    let w = push_blob(&s, "p/other", &mounted).await;
    // Uploaded two hours ago and never referenced: eligible for collection.
    for (r, d) in [(repo, &x), (repo, &y), ("p/other", &w)] {
        age(&blob_path(&s, d), 2 * grace);
        age(
            &data(&s).join(format!("repos/{r}/_blobs/sha256/{}", d.hex())),
            2 * grace,
        );
    }
    // A client checks x (it exists, so it skips the upload) and mounts w.
    let r = client()
        .head(s.url(&format!("/v2/{repo}/blobs/{x}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?mount={w}&from=p/other")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let report = gc_now(&s, grace).await;
    assert!(
        !blob_path(&s, &y).exists(),
        "the unchecked blob goes: {report:?}"
    );
    assert!(blob_path(&s, &x).exists(), "the checked blob stays");
    assert!(blob_path(&s, &w).exists(), "the mounted blob stays");

    // The manifest PUT that follows finds everything it references.
    let m = image_manifest((&x, checked.len()), &[(&w, mounted.len())]);
    let r = put_manifest(&s, repo, "v1", oci::media::OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(pull_all(&s, repo, "v1").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_in_a_loop_while_clients_push_and_pull_breaks_nothing() {
    require_tools();
    const GRACE: Duration = Duration::from_secs(5);
    let s = std::sync::Arc::new(
        TestServer::start_with(|c| {
            c.gc.grace = GRACE;
            c.gc.interval = Duration::ZERO;
        })
        .await,
    );
    let shared = std::sync::Arc::new(pseudo_random(9, 256 * 1024));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    // GC, back to back, for as long as the clients run.
    let gc = {
        let (s, done) = (s.clone(), done.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            let mut deleted = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let r = gc_now(&s, GRACE).await;
                deleted += r.manifests_deleted + r.blobs_deleted + r.blob_links_deleted;
                runs += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (runs, deleted)
        })
    };
    // Writers: multi-platform images sharing a layer, each with a signature; every other
    // image's tag is deleted again, leaving garbage for GC.
    let mut writers = Vec::new();
    for w in 0..4 {
        let (s, shared) = (s.clone(), shared.clone());
        writers.push(tokio::spawn(async move {
            let repo = format!("stress/w{w}");
            let mut kept = Vec::new();
            let mut dropped = Vec::new();
            for i in 0..6 {
                let tag = format!("t{i}");
                let (d, n, _, _) = push_index(&s, &repo, &tag, &format!("w{w}i{i}"), &shared).await;
                push_referrer(&s, &repo, (&d, n), &format!("w{w}i{i}")).await;
                if i % 2 == 1 {
                    let r = client()
                        .delete(s.url(&format!("/v2/{repo}/manifests/{tag}")))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202);
                    dropped.push((repo.clone(), d));
                } else {
                    kept.push((repo.clone(), tag));
                }
            }
            (kept, dropped)
        }));
    }
    // Readers: pull whatever is tagged, over and over.
    let readers = {
        let (s, done) = (s.clone(), done.clone());
        tokio::spawn(async move {
            let mut pulls = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for w in 0..4 {
                    let repo = format!("stress/w{w}");
                    if status(&s, &format!("/v2/{repo}/manifests/t0")).await == 200 {
                        pull_all(&s, &repo, "t0").await;
                        pulls += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            pulls
        })
    };
    let mut tagged = Vec::new();
    let mut untagged = Vec::new();
    for w in writers {
        let (kept, dropped) = w.await.unwrap();
        tagged.extend(kept);
        untagged.extend(dropped);
    }
    // Let everything untagged outlive the grace period, and collect once more.
    tokio::time::sleep(GRACE + GRACE / 4 + Duration::from_secs(1)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, deleted_while_pushing) = gc.await.unwrap();
    let pulls = readers.await.unwrap();
    let last = gc_now(&s, GRACE).await;
    assert!(runs >= 3, "GC ran {runs} times during the pushes");
    assert!(pulls > 0);

    let check = fsck_now(&s, true, false).await;
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!(check.tags, tagged.len() as u64);
    for (repo, tag) in &tagged {
        assert_eq!(pull_all(&s, repo, tag).await, 6);
        let out = tempfile::tempdir().unwrap();
        let from = format!("docker://{}/{repo}:{tag}", s.addr);
        let to = format!("oci:{}:x", p(out.path()));
        skopeo(&["copy", "--all", "--src-tls-verify=false", &from, &to]).await;
    }
    // The images whose tags were deleted are collected once past the grace period.
    assert!(
        deleted_while_pushing + last.manifests_deleted >= untagged.len() as u64,
        "{deleted_while_pushing} {last:?}"
    );
    for (repo, d) in &untagged {
        assert_eq!(
            status(&s, &format!("/v2/{repo}/manifests/{d}")).await,
            404,
            "{repo}@{d}"
        );
    }
}

/// Write a config file for the CLI that uses `s`'s data directory.
fn cli_config(s: &TestServer, extra: &str) -> PathBuf {
    let path = s.dir.path().join("berth.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\npath = \"{}\"\nfsync = false\n{extra}",
            p(&data(s))
        ),
    )
    .unwrap();
    path
}

fn berth_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_deleted_behind_berths_back_is_reported_by_the_scrub_and_by_fsck() {
    let s = TestServer::start_with(|c| c.scrub.interval = Duration::from_secs(1)).await;
    let repo = "scrubbed/app";
    let m = push_image(&s, repo, "v1", "scrub").await;
    let manifest: Value = get_json(&s.url(&format!("/v2/{repo}/manifests/{m}"))).await;
    let layer: Digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let deleted_at = SystemTime::now();
    std::fs::remove_file(blob_path(&s, &layer)).unwrap();

    // The scrub reports it within one interval (plus the time a scrub takes).
    let deadline = Instant::now() + Duration::from_secs(4);
    let found = loop {
        if let Some(r) = s.app.upkeep.last_scrub()
            && SystemTime::UNIX_EPOCH + Duration::from_secs(r.started_at + 1) >= deleted_at
            && !r.problems.is_empty()
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no scrub reported the missing blob"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let p0 = &found.problems[0];
    assert_eq!(
        (
            p0.repository.as_str(),
            p0.tag.as_deref(),
            p0.kind,
            p0.digest.as_str()
        ),
        (
            repo,
            Some("v1"),
            ProblemKind::MissingBlob,
            layer.to_string().as_str()
        )
    );

    // And `berth fsck` says the same and exits non-zero, from another process.
    let cfg = cli_config(&s, "");
    let (code, text) = berth_cli(&["fsck", "--config", p(&cfg)]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(repo)
            && text.contains("tag v1")
            && text.contains("missing_blob")
            && text.contains(&layer.to_string()),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["fsck", "--json", "--config", p(&cfg)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["problems"][0]["kind"], "missing_blob", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_cached_content_is_refetched_and_corrupt_hosted_content_quarantined() {
    require_tools();
    let up = crate::cache::Distribution::start(None).await;
    let name = up.addr.clone();
    let url = format!("http://{name}");
    // Fill the upstream with an image, then pull it through berth to cache it.
    let upstream_image = {
        let src = tempfile::tempdir().unwrap();
        let layout = src.path().join("layout");
        crate::skopeo::build_image(&layout, "v1", "amd64", 77, 256 * 1024).await;
        let from = format!("oci:{}:v1", p(&layout));
        let to = format!("docker://{name}/lib/app:v1");
        skopeo(&["copy", "--dest-tls-verify=false", &from, &to]).await;
        src
    };
    drop(upstream_image);
    let s = TestServer::start_with(|c| {
        c.upstreams = vec![upstream_config(&name, &url, Duration::from_secs(60))];
    })
    .await;
    let key = cache::key_for(&name);
    let cached_repo = format!("{key}/lib/app");
    assert_eq!(pull_all(&s, &cached_repo, "v1").await, 3);
    let manifest: Value = get_json(&s.url(&format!("/v2/{cached_repo}/manifests/v1"))).await;
    let cached_layer: Digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // A hosted image too.
    let hosted = push_image(&s, "mine/app", "v1", "hosted").await;
    let hm: Value = get_json(&s.url(&format!("/v2/mine/app/manifests/{hosted}"))).await;
    let hosted_layer: Digest = hm["layers"][0]["digest"].as_str().unwrap().parse().unwrap();

    // Bit rot in both layers, same length.
    for d in [&cached_layer, &hosted_layer] {
        let path = blob_path(&s, d);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }

    let shallow = fsck_now(&s, false, false).await;
    assert!(shallow.problems.is_empty(), "only a re-hash sees bit rot");
    let deep = fsck_now(&s, true, false).await;
    let kinds: Vec<(String, ProblemKind)> = deep
        .problems
        .iter()
        .map(|p| (p.digest.clone(), p.kind))
        .collect();
    assert!(
        kinds.contains(&(cached_layer.to_string(), ProblemKind::BlobDigestMismatch)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(hosted_layer.to_string(), ProblemKind::BlobDigestMismatch)),
        "{kinds:?}"
    );

    let repaired = fsck_now(&s, true, true).await;
    assert!(!repaired.is_clean(), "hosted content can not be repaired");
    let cached_fix = repaired
        .problems
        .iter()
        .find(|p| p.digest == cached_layer.to_string())
        .unwrap();
    assert!(
        cached_fix
            .repaired
            .as_deref()
            .unwrap_or_default()
            .contains("re-fetched"),
        "{cached_fix:?}"
    );
    let hosted_problem = repaired
        .problems
        .iter()
        .find(|p| p.digest == hosted_layer.to_string())
        .unwrap();
    assert!(hosted_problem.repaired.is_none());
    assert!(
        hosted_problem.detail.contains("quarantine"),
        "{hosted_problem:?}"
    );
    let quarantined = std::fs::read_dir(data(&s).join("quarantine"))
        .unwrap()
        .count();
    assert_eq!(
        quarantined, 2,
        "both corrupt copies are kept for inspection"
    );

    // The cached image pulls again; the hosted one reports its missing layer.
    assert_eq!(pull_all(&s, &cached_repo, "v1").await, 3);
    let after = fsck_now(&s, true, false).await;
    let left: Vec<(&str, ProblemKind)> = after
        .problems
        .iter()
        .map(|p| (p.repository.as_str(), p.kind))
        .collect();
    assert_eq!(left, [("mine/app", ProblemKind::MissingBlob)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_retention_and_fsck_commands_print_plans_and_act_only_when_asked() {
    let s = TestServer::start().await;
    let repo = "cli/app";
    for (i, tag) in ["a", "b", "c"].iter().enumerate() {
        push_image(&s, repo, tag, &format!("cli{i}")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let garbage = push_blob(&s, repo, b"never referenced").await;
    let cfg = cli_config(
        &s,
        "[gc]\ngrace = \"0s\"\n[[retention.rule]]\nrepositories = \"cli/*\"\nkeep_last = 1\nkeep_tags = \"^a$\"\n",
    );

    let (code, text) = berth_cli(&["retention", "--config", p(&cfg)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("would drop cli/app:b"), "{text}");
    assert!(
        !text.contains("cli/app:a") && !text.contains("cli/app:c"),
        "{text}"
    );
    assert_eq!(
        status(&s, &format!("/v2/{repo}/manifests/b")).await,
        200,
        "a plan changes nothing"
    );
    let (code, text) = berth_cli(&["retention", "--apply", "--config", p(&cfg)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("1 dropped"), "{text}");
    tokio::time::sleep(registry::METADATA_CACHE_TTL).await;
    assert_eq!(status(&s, &format!("/v2/{repo}/manifests/b")).await, 404);

    let (code, text) = berth_cli(&["gc", "--dry-run", "--config", p(&cfg)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("would delete 1 manifests"), "{text}");
    assert!(
        blob_path(&s, &garbage).exists(),
        "a dry run deletes nothing"
    );
    let (code, text) = berth_cli(&["gc", "--config", p(&cfg)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("deleted 1 manifests"), "{text}");
    assert!(!blob_path(&s, &garbage).exists());
    for tag in ["a", "c"] {
        assert_eq!(pull_all(&s, repo, tag).await, 2);
    }
    let (code, text) = berth_cli(&["fsck", "--deep", "--config", p(&cfg)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("clean"), "{text}");

    for sub in ["gc", "retention", "fsck"] {
        let (code, text) = berth_cli(&[sub, "--help"]);
        assert_eq!(code, 0);
        assert!(text.contains("--config"), "{text}");
    }
}
