//! `[[probe]]`: berth checking a registry users push to (CNCF distribution here, the real
//! thing) on its interval: green while every image pulls, red within an interval of a
//! layer deleted behind the registry's back, with the image and the failing node on
//! `/metrics`, the web page and the log; and the shipped alert rules fire on exactly
//! those series (their promtool unit tests, `deploy/prometheus/alerts.test.yml`, run in
//! `ops::shipped_alert_rules_pass_promtool_check_and_unit_tests`).

use crate::cache::Distribution;
use crate::common::*;
use crate::mirror::Registry;
use crate::ops::{sample, scrape};
use std::time::{Duration, Instant};

/// The probe's interval: short, so the test sees several runs.
const INTERVAL: Duration = Duration::from_millis(500);

/// Wait until `series` reads `want` on `s`'s `/metrics`; the scrape.
async fn until(s: &TestServer, series: &str, want: f64) -> String {
    let deadline = Instant::now() + 40 * INTERVAL;
    loop {
        let text = scrape(s).await;
        if sample(&text, series) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        tokio::time::sleep(INTERVAL / 5).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_turns_red_within_an_interval_of_a_layer_lost_behind_the_registrys_back() {
    let dist = Distribution::start(None).await;
    let reg = Registry::new(&dist.addr);
    let pushed = reg.push_index("team/app", 1, &["v1"]).await;
    reg.push_index("team/other", 2, &["v1", "skip-me"]).await;
    let url = format!("http://{}", dist.addr);
    let s = TestServer::start_with(|c| {
        c.probes = vec![berth::config::ProbeConfig {
            url: url.clone(),
            username: None,
            password_file: None,
            password_env: None,
            repositories: vec!["team/*".into()],
            tags: vec!["v*".into()],
            interval: INTERVAL,
            deep: false,
        }];
    })
    .await;
    let label = format!("{{probe=\"{}\"}}", dist.addr);
    let text = until(&s, &format!("berth_probe_runs_total{label}"), 1.0).await;
    assert_eq!(
        sample(&text, &format!("berth_probe_images{label}")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("berth_probe_failed_images{label}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, &format!("berth_probe_catalog_up{label}")),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            &format!("berth_probe_last_success_timestamp_seconds{label}")
        )
        .unwrap()
            > 1.7e9
    );

    // A layer of team/app:v1 (its arm64 image's own) goes missing at the registry.
    let (_, arm64_blobs) = &pushed.children[1];
    let layer = &arm64_blobs[1];
    std::fs::remove_file(dist.blob_file(layer)).unwrap();
    let runs = |text: &str| sample(text, &format!("berth_probe_runs_total{label}")).unwrap();
    let before = runs(&scrape(&s).await);
    let text = until(&s, &format!("berth_probe_failed_images{label}"), 1.0).await;
    // Red at the first run that started after the loss: the one under way when the
    // layer went may still have seen it.
    assert!(
        runs(&text) - before <= 2.0,
        "red only {} runs later",
        runs(&text) - before
    );
    // The web page names the image and the failing node.
    let page = get_text(&s.url("/ui")).await;
    assert!(
        page.contains("Probes of other registries")
            && page.contains("team/app:v1")
            && page.contains(layer.as_str()),
        "{page}"
    );
    let view = s.app.probes.get(&dist.addr).unwrap();
    let bad: Vec<_> = view.images.iter().filter(|i| !i.ok).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].image, "team/app:v1");
    let failing = bad[0].failing.as_deref().unwrap();
    assert!(
        failing.starts_with("layer ") && failing.contains(layer.as_str()),
        "{failing}"
    );
    assert!(bad[0].last_success.is_some(), "it pulled at the first run");
}
