//! What keeps a cluster pulling when an upstream limits it or fails: the allow-list
//! (`repositories`) refusing other names without asking the upstream, the upstream's
//! 429 honoured for its `Retry-After` (cached tags served meanwhile, the rest answered
//! 429 rather than 502), the circuit breaker (after `down_after` failures in a row
//! cached content is served at once and nothing is sent, until one probe finds the
//! upstream back), and `max_concurrent` with a bounded queue answered 503 with
//! `Retry-After`. Against the fake upstream of `cache_faults`, which counts every
//! request it gets.

use crate::cache_faults::{
    Fake, LONG_TTL, Mode, REPO, add_image, berth_for, header, upstream_blob, via_ns,
};
use crate::common::*;
use crate::ops::{sample, scrape};
use std::time::Duration;

/// berth caching `fake` with its `[[upstream]]` entry changed by `f`.
async fn berth_with(
    fake: &Fake,
    ttl: Duration,
    f: impl FnOnce(&mut berth::config::UpstreamConfig),
) -> TestServer {
    let (name, url) = (fake.name(), fake.url());
    TestServer::start_with(|c| {
        let mut u = upstream_config(&name, &url, ttl);
        f(&mut u);
        c.upstreams.push(u);
    })
    .await
}

/// GET `url` (the test fails if nothing answers).
async fn get(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> reqwest::Response {
    c.get(url).send().await.unwrap()
}

/// The metric `family` of the fake's upstream.
async fn metric(s: &TestServer, fake: &Fake, family: &str) -> f64 {
    let text = scrape(s).await;
    let series = format!("{family}{{upstream=\"{}\"}}", fake.name());
    sample(&text, &series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test]
async fn the_allow_list_refuses_other_names_without_asking_the_upstream() {
    let fake = Fake::start().await;
    let (digest, _) = add_image(&fake, "v1", 1);
    let s = berth_with(&fake, LONG_TTL, |u| u.repositories = vec!["lib/*".into()]).await;
    let c = client();
    let ns = fake.name();
    for path in [
        format!("/v2/other/app/manifests/v1?ns={ns}"),
        format!("/v2/other/app/blobs/{digest}?ns={ns}"),
        format!("/v2/lib/deep/name/manifests/v1?ns={ns}"),
        format!("/v2/other/app/tags/list?ns={ns}"),
    ] {
        let r = get(&c, s.url(&path)).await;
        assert_eq!(r.status(), 403, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED", "{path}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("not in the allow-list") && message.contains("lib/*"),
            "{path}: {message}"
        );
    }
    assert_eq!(fake.total(), 0, "a refused name never reaches the upstream");
    assert_eq!(metric(&s, &fake, "berth_cache_denied_total").await, 4.0);
    // A name the list allows is pulled as always.
    let r = get(&c, s.url(&via_ns(&fake, "manifests", "v1"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());

    // A reload applies a new list at once (the specs a reload hands the cache).
    let mut config = berth::config::Config::load(None).unwrap();
    let mut u = upstream_config(&fake.name(), &fake.url(), LONG_TTL);
    u.repositories = vec!["team/**".into()];
    config.upstreams = vec![u];
    s.app
        .cache
        .reconfigure(berth::upstream_specs(&config).unwrap())
        .unwrap();
    let before = fake.total();
    let r = get(&c, s.url(&via_ns(&fake, "manifests", "v2"))).await;
    assert_eq!(r.status(), 403);
    assert_eq!(fake.total(), before);
}

#[tokio::test]
async fn an_upstream_429_is_honoured_for_its_retry_after() {
    let fake = Fake::start().await;
    add_image(&fake, "cached", 2);
    let (_, _) = add_image(&fake, "new", 3);
    // Tags revalidate on every request, so each one would ask the upstream.
    let s = berth_for(&fake, Duration::ZERO).await;
    let c = client();
    let cached = get(&c, s.url(&via_ns(&fake, "manifests", "cached"))).await;
    assert_eq!(cached.status(), 200);

    fake.set_mode(Mode::TooMany {
        retry_after: "7".into(),
    });
    let before = fake.total();
    // Not cached: the client gets the upstream's 429 and its wait, not a 502.
    let r = get(&c, s.url(&via_ns(&fake, "manifests", "new"))).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=7).contains(&wait), "{wait}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    assert_eq!(fake.total(), before + 1);
    // From now until the Retry-After passes nothing is sent: a cached tag is served
    // stale at once, the rest refused with the time left.
    let r = get(&c, s.url(&via_ns(&fake, "manifests", "cached"))).await;
    assert_eq!(r.status(), 200, "cached tags keep pulling");
    let r = get(&c, s.url(&via_ns(&fake, "manifests", "new"))).await;
    assert_eq!(r.status(), 429);
    assert!(!header(&r, "retry-after").is_empty());
    assert_eq!(fake.total(), before + 1, "nothing sent while rate-limited");
    assert_eq!(
        metric(&s, &fake, "berth_upstream_rate_limited_total").await,
        1.0
    );
    assert_eq!(metric(&s, &fake, "berth_upstream_rate_limited").await, 1.0);
    assert!(metric(&s, &fake, "berth_upstream_refused_rate_limited_total").await >= 2.0);
    assert!(metric(&s, &fake, "berth_cache_stale_serves_total").await >= 1.0);
}

#[tokio::test]
async fn a_failing_upstream_is_marked_down_and_one_probe_brings_it_back() {
    let fake = Fake::start().await;
    add_image(&fake, "v1", 4);
    let uncached = fake.add_blob(b"never pulled");
    let s = berth_with(&fake, Duration::ZERO, |u| {
        u.down_after = 2;
        u.down_for = Duration::from_millis(800);
    })
    .await;
    let c = client();
    let tag = s.url(&via_ns(&fake, "manifests", "v1"));
    assert_eq!(get(&c, &tag).await.status(), 200);

    fake.set_mode(Mode::Error500);
    // Two failures in a row: each revalidation fails and the cached tag is served.
    for _ in 0..2 {
        assert_eq!(get(&c, &tag).await.status(), 200);
    }
    assert_eq!(metric(&s, &fake, "berth_upstream_up").await, 0.0);
    assert_eq!(
        metric(&s, &fake, "berth_upstream_marked_down_total").await,
        1.0
    );
    let before = fake.total();
    // Down: cached content at once, nothing sent; the uncached answered 503 with a wait.
    assert_eq!(get(&c, &tag).await.status(), 200);
    let r = get(
        &c,
        s.url(&format!("/v2/{REPO}/blobs/{uncached}?ns={}", fake.name())),
    )
    .await;
    assert_eq!(r.status(), 503);
    assert!(!header(&r, "retry-after").is_empty());
    assert_eq!(fake.total(), before, "a down upstream is not asked");
    assert_eq!(fake.count("GET", &upstream_blob(&uncached)), 0);

    // Back up: after the cool-down one request probes and finds it.
    fake.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(get(&c, &tag).await.status(), 200);
    assert_eq!(fake.total(), before + 1, "one probe");
    assert_eq!(metric(&s, &fake, "berth_upstream_up").await, 1.0);
    let r = get(
        &c,
        s.url(&format!("/v2/{REPO}/blobs/{uncached}?ns={}", fake.name())),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"never pulled");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrent_with_a_full_queue_answers_503_with_retry_after() {
    let fake = Fake::start().await;
    let first = pseudo_random(5, 64 * 1024);
    let a = fake.add_blob(&first);
    let b = fake.add_blob(b"second blob");
    let s = berth_with(&fake, LONG_TTL, |u| {
        u.max_concurrent = Some(1);
        u.max_queue = 0;
    })
    .await;
    fake.set_mode(Mode::Gated { first: 1024 });
    let blob_url = |d: &oci::Digest| s.url(&format!("/v2/{REPO}/blobs/{d}?ns={}", fake.name()));
    // The first download holds the one slot until the fake lets it finish.
    let url_a = blob_url(&a);
    let downloading = tokio::spawn(async move {
        let r = client().get(&url_a).send().await.unwrap();
        (r.status(), r.bytes().await.unwrap())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&s, &fake, "berth_upstream_in_flight").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the download never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = client().get(blob_url(&b)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too many requests are waiting"),
        "{body}"
    );
    assert_eq!(fake.count("GET", &upstream_blob(&b)), 0);
    assert_eq!(
        metric(&s, &fake, "berth_upstream_refused_busy_total").await,
        1.0
    );
    fake.release();
    let (status, bytes) = downloading.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(bytes.as_ref(), &first[..]);
    // The slot is free again.
    fake.set_mode(Mode::Normal);
    let r = client().get(blob_url(&b)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"second blob");
}

#[tokio::test]
async fn bodies_that_break_count_as_failures_for_the_breaker() {
    let fake = Fake::start().await;
    let blob = pseudo_random(9, 64 * 1024);
    let d = fake.add_blob(&blob);
    let s = berth_with(&fake, LONG_TTL, |u| {
        u.down_after = 2;
        u.down_for = Duration::from_secs(60);
    })
    .await;
    // Headers arrive fine; each body stops at half: that is an outage, not a success.
    fake.set_mode(Mode::Truncated);
    let url = s.url(&format!("/v2/{REPO}/blobs/{d}?ns={}", fake.name()));
    for _ in 0..2 {
        let r = get(&client(), &url).await;
        let _ = r.bytes().await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&s, &fake, "berth_upstream_up").await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "two broken bodies did not mark it down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = fake.total();
    let r = get(&client(), &url).await;
    assert_eq!(r.status(), 503);
    assert_eq!(fake.total(), before, "a down upstream is not asked");
}

#[tokio::test]
async fn a_moved_tag_whose_new_manifest_is_rate_limited_serves_the_cached_image() {
    let fake = Fake::start().await;
    let (old, _) = add_image(&fake, "v1", 11);
    let s = berth_for(&fake, Duration::ZERO).await;
    let c = client();
    let tag = s.url(&via_ns(&fake, "manifests", "v1"));
    assert_eq!(
        header(&get(&c, &tag).await, "docker-content-digest"),
        old.to_string()
    );
    // The tag moves upstream; the HEAD (free on Docker Hub) says so, the GET is limited.
    let (new, _) = add_image(&fake, "v1", 12);
    assert_ne!(new, old);
    fake.set_mode(Mode::TooManyGets);
    let r = get(&c, &tag).await;
    assert_eq!(r.status(), 200, "the image the tag was, not an error");
    assert_eq!(header(&r, "docker-content-digest"), old.to_string());
    assert!(metric(&s, &fake, "berth_cache_stale_serves_total").await >= 1.0);
    // Once the GET goes through, the tag follows.
    fake.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let r = get(&c, &tag).await;
        if header(&r, "docker-content-digest") == new.to_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the moved tag never followed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_reload_keeps_an_upstreams_rate_limit_and_circuit() {
    let fake = Fake::start().await;
    add_image(&fake, "v1", 13);
    let s = berth_for(&fake, LONG_TTL).await;
    let c = client();
    fake.set_mode(Mode::TooMany {
        retry_after: "60".into(),
    });
    assert_eq!(
        get(&c, s.url(&via_ns(&fake, "manifests", "v1")))
            .await
            .status(),
        429
    );
    let before = fake.total();
    // The same limits, then new ones: either way the 429's wait stays in force.
    for max_concurrent in [None, Some(3)] {
        let mut config = berth::config::Config::load(None).unwrap();
        let mut u = upstream_config(&fake.name(), &fake.url(), LONG_TTL);
        u.max_concurrent = max_concurrent;
        config.upstreams = vec![u];
        s.app
            .cache
            .reconfigure(berth::upstream_specs(&config).unwrap())
            .unwrap();
        let r = get(&c, s.url(&via_ns(&fake, "manifests", "v1"))).await;
        assert_eq!(r.status(), 429, "max_concurrent {max_concurrent:?}");
        assert_eq!(fake.total(), before, "nothing sent after the reload");
    }
}
