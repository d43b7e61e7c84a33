//! `[[probe]]` while serving: each configured registry probed on its interval
//! (`client::probe::probe_once`), its result published on the server's [`ProbeBoard`]
//! for `/metrics` and the web page, with each image's last success carried from run to
//! run, and logged. It only reads the probed registries.

use crate::config::Config;
use client::probe::{ProbeReport, ProbeTarget, probe_once};
use server::probes::{ImageView, ProbeBoard, ProbeView};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The probes `config` names, built (credentials read) before any runs.
pub fn targets(config: &Config) -> anyhow::Result<Vec<(ProbeTarget, Duration)>> {
    config
        .probes
        .iter()
        .map(|p| {
            let (repositories, tags) = p.patterns()?;
            let client = distribution::Client::new(distribution::ClientOptions {
                credentials: p.credentials()?,
                ..distribution::ClientOptions::new(p.url.trim_end_matches('/'))
            })?;
            let target = ProbeTarget {
                registry: p.registry().to_owned(),
                client,
                repositories,
                tags,
                deep: p.deep,
            };
            Ok((target, p.interval))
        })
        .collect()
}

/// `view` after `report`: counts, times, and each image's last success (kept from the
/// previous view for an image that fails now).
pub fn record(mut view: ProbeView, report: &ProbeReport, at: SystemTime) -> ProbeView {
    let before = std::mem::take(&mut view.images);
    view.images = report
        .images
        .iter()
        .map(|i| ImageView {
            image: i.image.clone(),
            ok: i.ok,
            failing: i.failing.clone(),
            last_success: if i.ok {
                Some(at)
            } else {
                before
                    .iter()
                    .find(|b| b.image == i.image)
                    .and_then(|b| b.last_success)
            },
        })
        .collect();
    view.runs += 1;
    view.last_run = Some(at);
    view.catalog_error = report.catalog_error.clone();
    if report.catalog_error.is_none() && report.failed() == 0 {
        view.last_success = Some(at);
    }
    view
}

/// Probe every target on its interval, publishing on `board` (reset to these targets),
/// until the handles are dropped or aborted. The first run comes right away.
pub fn spawn_probes(
    targets: Vec<(ProbeTarget, Duration)>,
    board: Arc<ProbeBoard>,
) -> Vec<tokio::task::JoinHandle<()>> {
    board.reset(
        targets
            .iter()
            .map(|(t, every)| ProbeView::new(t.registry.clone(), *every))
            .collect(),
    );
    targets
        .into_iter()
        .map(|(target, every)| {
            let board = board.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let report = probe_once(&target).await;
                    let view = board
                        .get(&target.registry)
                        .unwrap_or_else(|| ProbeView::new(target.registry.clone(), every));
                    let view = record(view, &report, SystemTime::now());
                    match (&view.catalog_error, view.failed()) {
                        (None, 0) => tracing::info!(probe = %target.registry, images = view.images.len(), "probe: every image pulls"),
                        (catalog, failed) => {
                            for i in view.images.iter().filter(|i| !i.ok) {
                                tracing::warn!(probe = %target.registry, image = %i.image, failing = %i.failing.as_deref().unwrap_or_default(), "probe: image does not pull");
                            }
                            tracing::warn!(probe = %target.registry, failed, catalog_error = %catalog.as_deref().unwrap_or("none"), "probe found problems");
                        }
                    }
                    board.publish(view);
                }
            })
        })
        .collect()
}
