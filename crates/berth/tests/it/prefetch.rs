//! Prefetch (`[[upstream.prefetch]]`): the images a rule names come into the cache on
//! its interval with no client pulling them (every platform of an index, configs and
//! layers), a tag pushed upstream later follows within an interval, tags the rule does
//! not name never come, eviction leaves prefetched images alone, and `berth prefetch
//! [--dry-run]` shows and does a run. The upstream is an in-process berth with hosted
//! repositories.

use crate::common::*;
use berth::config::PrefetchConfig;
use oci::{Digest, Reference, RepoName};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// The rule's interval: short, so the test sees several runs.
const INTERVAL: Duration = Duration::from_millis(500);

/// Push an index of two single-layer images (linux/amd64, linux/arm64) as `repo:tag`,
/// its content varied by `build`; the index's digest and every digest it reaches.
async fn push_index(s: &TestServer, repo: &str, tag: &str, build: u32) -> (Digest, Vec<Digest>) {
    let mut reached = Vec::new();
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = format!("{{\"architecture\":\"{arch}\",\"tag\":\"{tag}\",\"build\":{build}}}");
        let layer = format!("{arch} layer of {repo}:{tag}, build {build}").repeat(50);
        let c = push_blob(s, repo, config.as_bytes()).await;
        let l = push_blob(s, repo, layer.as_bytes()).await;
        let m = image_manifest((&c, config.len()), &[(&l, layer.len())]);
        let d = digest_of(&m);
        let r = put_manifest(s, repo, &d.to_string(), oci::media::OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), 201);
        children.push(serde_json::json!({
            "mediaType": oci::media::OCI_MANIFEST, "digest": d, "size": m.len(),
            "platform": {"os": "linux", "architecture": arch},
        }));
        reached.extend([c, l, d]);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": oci::media::OCI_INDEX, "manifests": children,
    }))
    .unwrap();
    let r = put_manifest(s, repo, tag, oci::media::OCI_INDEX, &index).await;
    assert_eq!(r.status(), 201);
    (digest_of(&index), reached)
}

/// The digest berth's cache holds for `up.test/repo:tag`, without going through the
/// cache (which would pull it).
async fn cached(s: &TestServer, repo: &str, tag: &str) -> Option<Digest> {
    let local: RepoName = format!("up.test/{repo}").parse().unwrap();
    s.app
        .registry
        .get_manifest(&local, &Reference::Tag(tag.parse().unwrap()))
        .await
        .ok()
        .map(|m| m.digest)
}

async fn holds_blob(s: &TestServer, repo: &str, d: &Digest) -> bool {
    let local: RepoName = format!("up.test/{repo}").parse().unwrap();
    s.app.registry.stat_blob(&local, d).await.is_ok()
        || s.app.registry.manifest_by_digest(&local, d).await.is_ok()
}

fn rule() -> PrefetchConfig {
    PrefetchConfig {
        repositories: vec!["team/app".into()],
        tags: Vec::new(),
        tags_regex: None,
        tags_semver: Some(">=1.27, <2".into()),
        platforms: Vec::new(),
        interval: INTERVAL,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetched_images_arrive_and_stay_fresh_without_a_client_pull() {
    let upstream = TestServer::start().await;
    let (v127, reached) = push_index(&upstream, "team/app", "1.27", 1).await;
    push_image(&upstream, "team/app", "0.9", "old").await;
    push_image(&upstream, "team/app", "latest", "latest").await;
    let url = upstream.url("");
    let s = TestServer::start_with(|c| {
        let mut u = upstream_config("up.test", url.trim_end_matches('/'), Duration::ZERO);
        u.prefetch = vec![rule()];
        c.upstreams.push(u);
    })
    .await;

    let deadline = Instant::now() + 20 * INTERVAL;
    while cached(&s, "team/app", "1.27").await.is_none() {
        assert!(Instant::now() < deadline, "1.27 never prefetched");
        tokio::time::sleep(INTERVAL / 5).await;
    }
    assert_eq!(cached(&s, "team/app", "1.27").await, Some(v127.clone()));
    // Every platform's manifest, config and layer, before any client asked.
    let deadline = Instant::now() + 20 * INTERVAL;
    for d in &reached {
        while !holds_blob(&s, "team/app", d).await {
            assert!(Instant::now() < deadline, "{d} of 1.27 never prefetched");
            tokio::time::sleep(INTERVAL / 5).await;
        }
    }
    let up = s.app.cache.upstream("up.test").unwrap();

    // A matching tag pushed upstream now arrives within an interval or two.
    let (v128, _) = push_index(&upstream, "team/app", "1.28", 1).await;
    let deadline = Instant::now() + 20 * INTERVAL;
    while cached(&s, "team/app", "1.28").await != Some(v128.clone()) {
        assert!(Instant::now() < deadline, "1.28 never prefetched");
        tokio::time::sleep(INTERVAL / 5).await;
    }
    // A moved tag follows too.
    let (moved, _) = push_index(&upstream, "team/app", "1.27", 2).await;
    assert_ne!(moved, v127);
    let deadline = Instant::now() + 20 * INTERVAL;
    while cached(&s, "team/app", "1.27").await != Some(moved.clone()) {
        assert!(Instant::now() < deadline, "the moved 1.27 never followed");
        tokio::time::sleep(INTERVAL / 5).await;
    }
    // Tags the range leaves out never come.
    assert_eq!(cached(&s, "team/app", "0.9").await, None);
    assert_eq!(cached(&s, "team/app", "latest").await, None);

    // Eviction leaves what the rule covers, however small the limit.
    let limits = cache::EvictionLimits {
        max_size: Some(0),
        ..Default::default()
    };
    let later = SystemTime::now() + Duration::from_secs(24 * 3600);
    s.app.cache.evict_once(&up, &limits, later).await.unwrap();
    assert_eq!(cached(&s, "team/app", "1.28").await, Some(v128));

    let text = crate::ops::scrape(&s).await;
    let runs = crate::ops::sample(&text, "berth_prefetch_runs_total{upstream=\"up.test\"}");
    assert!(runs.is_some_and(|n| n >= 2.0), "{text}");
    assert_eq!(
        crate::ops::sample(&text, "berth_prefetch_tags{upstream=\"up.test\"}"),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn berth_prefetch_shows_a_dry_run_and_then_fetches() {
    let upstream = TestServer::start().await;
    push_index(&upstream, "team/app", "1.30", 1).await;
    push_image(&upstream, "team/app", "0.1", "too old").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(
        &file,
        format!(
            "[storage]\npath = {:?}\n[[upstream]]\nname = \"up.test\"\nurl = {:?}\n\
             [[upstream.prefetch]]\nrepositories = [\"team/*\"]\ntags_regex = \"^[0-9.]+$\"\n\
             platforms = [\"linux/arm64\"]\n",
            dir.path().join("data").display().to_string(),
            upstream.url("").trim_end_matches('/'),
        ),
    )
    .unwrap();
    let run = move |args: &[&str]| {
        crate::cli::output(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .arg("prefetch")
                .arg("--config")
                .arg(&file)
                .args(args),
        )
    };
    // The pattern goes through the upstream's catalog; the regex through the tag list.
    let (ok, text) = tokio::task::spawn_blocking(move || {
        let dry = run(&["--dry-run"]);
        let real = run(&[]);
        let again = run(&["--dry-run"]);
        (dry, real, again)
    })
    .await
    .map(|(dry, real, again)| {
        assert!(dry.0, "{}", dry.1);
        assert!(
            dry.1.contains("2 tags matched, 0 cached, 2 would fetch")
                && dry.1.contains("would fetch team/app:1.30")
                && dry.1.contains("would fetch team/app:0.1"),
            "{}",
            dry.1
        );
        assert!(real.0, "{}", real.1);
        assert!(real.1.contains("fetched team/app:1.30"), "{}", real.1);
        again
    })
    .unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains("2 tags matched, 2 cached, 0 would fetch"),
        "{text}"
    );
}
