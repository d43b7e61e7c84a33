//! The overview page: health at a glance (see `health`), the charts of the kept
//! history, each upstream's cache counters, the upkeep jobs and the probes. It reads
//! in-memory state and the history; it never lists repositories or reads manifests.

use super::{View, ago, esc, human_bytes};
use crate::App;
use std::fmt::Write as _;
use std::time::SystemTime;

/// The overview's body.
pub(super) async fn render(view: &View<'_>) -> String {
    let app = view.app;
    let mut h = String::with_capacity(16 * 1024);
    super::health::strip(view, &mut h);
    super::browse::search_form(view, &mut h);
    charts_section(app, &mut h).await;
    upstream_section(app, &mut h);
    upkeep_section(view, &mut h);
    probe_section(app, &mut h, view.now);
    h
}

fn upkeep_section(view: &View<'_>, h: &mut String) {
    let (app, now) = (view.app, view.now);
    let scrub = app.upkeep.scrub.lock().clone();
    let gc = app.upkeep.gc.lock().clone();
    h.push_str("<h2>Integrity and garbage collection</h2><table><tr><th>job</th><th>last success</th><th>runs</th><th>result</th></tr>");
    let scrub_result = match &scrub.last {
        None => "<span class=\"muted\">not run yet</span>".to_owned(),
        Some(r) => {
            let open: Vec<_> = r.problems.iter().filter(|p| p.repaired.is_none()).collect();
            let mut s = format!(
                "{} manifests and {} blobs checked{}; ",
                r.manifests_checked,
                r.blobs_checked,
                if r.deep { " (re-hashed)" } else { "" }
            );
            if open.is_empty() {
                s.push_str("<span class=\"ok\">no problems</span>");
            } else {
                let _ = write!(s, "<span class=\"bad\">{} problems</span><ul>", open.len());
                // Only problems in repositories the visitor may pull are named.
                let (named, hidden): (Vec<&&upkeep::fsck::Problem>, Vec<_>) =
                    open.iter().partition(|p| {
                        p.repository.is_empty()
                            || p.repository
                                .parse::<oci::RepoName>()
                                .is_ok_and(|r| view.may_pull(&r))
                    });
                for p in named.iter().take(20) {
                    let _ = write!(
                        s,
                        "<li>{} <code>{}</code> in {}{}</li>",
                        p.kind.as_str(),
                        esc(&p.digest),
                        esc(&p.repository),
                        p.tag
                            .as_deref()
                            .map(|t| format!(" (tag {})", esc(t)))
                            .unwrap_or_default()
                    );
                }
                if !hidden.is_empty() {
                    let _ = write!(
                        s,
                        "<li>{} in repositories you may not pull</li>",
                        hidden.len()
                    );
                }
                s.push_str("</ul>");
            }
            s
        }
    };
    let gc_result = match &gc.last {
        None => "<span class=\"muted\">not run yet</span>".to_owned(),
        Some(r) => format!(
            "{} manifests and {} blobs deleted, {} freed",
            r.manifests_deleted,
            r.blobs_deleted,
            human_bytes(r.bytes_freed)
        ),
    };
    for (name, at, ok, failed, err, result) in [
        (
            "scrub",
            scrub.last_success_at,
            scrub.successes,
            scrub.failures,
            scrub.last_error.clone(),
            scrub_result,
        ),
        (
            "garbage collection",
            gc.last_success_at,
            gc.successes,
            gc.failures,
            gc.last_error.clone(),
            gc_result,
        ),
    ] {
        // The message may name repositories the visitor may not pull: the log has it.
        let err = err
            .map(|_| {
                "<br><span class=\"bad\">✖ last run failed (berth's log has the error)</span>"
                    .to_owned()
            })
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{}</td><td class=\"n\">{ok} ok, {failed} failed</td><td>{result}{err}</td></tr>",
            ago(at, now)
        );
    }
    h.push_str("</table>");
}

fn upstream_section(app: &App, h: &mut String) {
    let upstreams = app.cache.upstreams();
    h.push_str("<h2>Upstream caches</h2>");
    if upstreams.is_empty() {
        h.push_str("<p class=\"muted\">No upstreams configured.</p>");
        return;
    }
    h.push_str("<table><tr><th>upstream</th><th>hits</th><th>misses</th><th>hit rate</th><th>bytes saved</th><th>bytes fetched</th><th>stale serves</th><th>upstream errors</th><th>state</th><th>prefetched tags</th></tr>");
    for up in upstreams {
        let s = &up.stats;
        let hits = s.hits.get();
        let misses = s.misses.get();
        let rate = if hits + misses == 0 {
            "—".to_owned()
        } else {
            format!("{:.0}%", 100.0 * hits as f64 / (hits + misses) as f64)
        };
        let stale = s.stale_serves.get();
        let state = match (up.gate.circuit(), up.gate.rate_limited()) {
            (_, true) => "<span class=\"bad\">rate-limited</span>",
            (cache::Circuit::Up { .. }, false) => "up",
            (_, false) => "<span class=\"bad\">down</span>",
        };
        let prefetched = if up.prefetch.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "{} ({} runs, {} failed)",
                s.prefetched_tags(),
                s.prefetch_runs.get(),
                s.prefetch_failures.get()
            )
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{hits}</td><td class=\"n\">{misses}</td><td class=\"n\">{rate}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n{}\">{stale}</td><td class=\"n\">{}</td>\
             <td>{state}</td><td class=\"n\">{prefetched}</td></tr>",
            esc(&up.name),
            human_bytes(s.served_bytes.get()),
            human_bytes(s.fetched_bytes.get()),
            if stale > 0 { " bad" } else { "" },
            s.upstream_errors.get(),
        );
    }
    h.push_str("</table>");
}

/// Charts of the history every replica keeps (see `history`): requests and server
/// errors, each upstream's hit rate and bytes served from the cache (counters, added up
/// over the replicas), and the storage the newest collection kept, hosted and per
/// upstream (a gauge: the largest replica's figure).
async fn charts_section(app: &App, h: &mut String) {
    use crate::history::names;
    use web::chart::{Chart, Series, Unit, svg};
    use web::history::{Kind, max, series, share, sum};
    let all = app.history.all(app).await;
    // A counter's rise per step, summed over every replica's history.
    let over = |name: &str, hourly: bool| {
        let each: Vec<Vec<(u64, f64)>> = all
            .iter()
            .map(|h| {
                if hourly {
                    series(h.hours(), name, Kind::Counter)
                } else {
                    series(h.minutes(), name, Kind::Counter)
                }
            })
            .collect();
        sum(&each)
    };
    let line = |label: &str, points| Series {
        label: label.to_owned(),
        points,
    };
    h.push_str("<h2>Over time</h2><div class=\"charts\">");
    let mut chart = |title: &str, unit: Unit, series: &[Series]| {
        h.push_str(&svg(&Chart {
            title,
            unit,
            series,
        }));
    };
    let upstreams = app.cache.upstreams();
    // One line per upstream, from its numbers in the last 24 hours.
    let per_upstream = |points: &dyn Fn(&str) -> Vec<(u64, f64)>| -> Vec<Series> {
        upstreams
            .iter()
            .map(|u| line(&u.name, points(&u.name)))
            .collect()
    };
    let of = |what: &str, name: &str| over(&names::of_upstream(what, name), false);
    chart(
        "Requests per minute, last 24 hours",
        Unit::Count,
        &[
            line("requests", over(names::REQUESTS, false)),
            line("server errors (5xx)", over(names::SERVER_ERRORS, false)),
        ],
    );
    if !upstreams.is_empty() {
        chart(
            "Cache hit rate per upstream, last 24 hours",
            Unit::Percent,
            &per_upstream(&|u| share(&of(names::HITS, u), &of(names::MISSES, u))),
        );
        chart(
            "Bytes served from the cache per minute (not fetched again), last 24 hours",
            Unit::Bytes,
            &per_upstream(&|u| of(names::SERVED, u)),
        );
    }
    // Storage: hourly for the month, then each minute of the last day.
    let stored = |source: &str| {
        let name = names::of_upstream(names::STORED, source);
        let each: Vec<Vec<(u64, f64)>> = all
            .iter()
            .map(|h| {
                let day_from = h.minutes().next().map_or(u64::MAX, |s| s.at);
                let samples = h.hours().filter(|s| s.at < day_from).chain(h.minutes());
                series(samples, &name, Kind::Gauge)
            })
            .collect();
        max(&each)
    };
    let mut storage = vec![line("hosted", stored("hosted"))];
    storage.extend(
        upstreams
            .iter()
            .map(|u| line(&format!("cache of {}", u.name), stored(&u.key))),
    );
    chart(
        "Storage kept at each garbage collection, last 30 days",
        Unit::Bytes,
        &storage,
    );
    chart(
        "Requests per hour, last 30 days",
        Unit::Count,
        &[
            line("requests", over(names::REQUESTS, true)),
            line("server errors (5xx)", over(names::SERVER_ERRORS, true)),
        ],
    );
    h.push_str("</div>");
}

fn probe_section(app: &App, h: &mut String, now: SystemTime) {
    let probes = app.probes.all();
    if probes.is_empty() {
        return;
    }
    h.push_str("<h2>Probes of other registries</h2><table><tr><th>registry</th><th>last run</th><th>catalog</th><th>images</th><th>not pulling</th></tr>");
    for p in &probes {
        let failed = p.failed();
        let catalog = match (&p.catalog_error, p.runs) {
            (_, 0) => "—".to_owned(),
            (None, _) => "ok".to_owned(),
            (Some(e), _) => format!("<span class=\"bad\">{}</span>", esc(e)),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{catalog}</td><td class=\"n\">{}</td><td class=\"n{}\">{failed}</td></tr>",
            esc(&p.registry),
            ago(p.last_run, now),
            p.images.len(),
            if failed > 0 { " bad" } else { "" },
        );
        for i in p.images.iter().filter(|i| !i.ok) {
            let _ = write!(
                h,
                "<tr><td colspan=\"5\" class=\"bad\">{}: {} (last pulled {})</td></tr>",
                esc(&i.image),
                esc(i.failing.as_deref().unwrap_or("does not pull")),
                ago(i.last_success, now),
            );
        }
    }
    h.push_str("</table>");
}
