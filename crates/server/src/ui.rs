//! `/ui`: a read-only, server-rendered page (no JavaScript) showing repositories with
//! their tags, sizes and last push and pull, each upstream's cache hit rate, saved bytes
//! and stale serves, and the last GC and scrub with their findings. It shows only what
//! the caller may pull (the API's access rules) and changes nothing.

use crate::App;
use crate::access::Caller;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oci::{Digest, ParsedManifest, RepoName};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::SystemTime;
use web::esc;

/// Repositories shown on one page: the page stays quick on a large registry; the rest is
/// counted and reachable through the catalog API.
const MAX_REPOSITORIES: usize = 300;

/// Tags shown per repository, newest first.
const MAX_TAGS: usize = 20;

/// `1.5 GiB`, `312 KiB`, `17 B`.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// `3 min ago`, `2 h ago`, `5 d ago`; `—` when never.
fn ago(t: Option<SystemTime>, now: SystemTime) -> String {
    let Some(t) = t else {
        return "—".to_owned();
    };
    let s = now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// Bytes an image or index needs: its manifest, config and layers, and for an index every
/// child the repository holds (shared blobs counted once).
async fn image_size(app: &App, repo: &RepoName, digest: &Digest) -> Option<u64> {
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut total = 0u64;
    let mut todo = vec![digest.clone()];
    while let Some(d) = todo.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        let stored = app.registry.manifest_by_digest(repo, &d).await.ok()?;
        total += stored.bytes.len() as u64;
        let parsed = ParsedManifest::parse(&stored.bytes, Some(&stored.media_type)).ok()?;
        for b in parsed.config.iter().chain(parsed.layers.iter()) {
            if seen.insert(b.digest.clone()) {
                total += b.size;
            }
        }
        todo.extend(parsed.manifests.iter().map(|m| m.digest.clone()));
    }
    Some(total)
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}\
.muted{color:#6a7280}table{border-collapse:collapse;background:#fff;min-width:60%}\
th,td{border:1px solid #dde1e6;padding:4px 10px;text-align:left;vertical-align:top}\
th{background:#eef1f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#11763a;font-weight:600}.bad{color:#b3261e;font-weight:600}\
code{font-size:12px}ul{margin:4px 0;padding-left:18px}\
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fff;border:1px solid #dde1e6}";

/// `GET /ui`; `?login` asks a browser for credentials.
pub(crate) async fn page(
    app: &App,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    client: std::net::IpAddr,
) -> Response {
    let access = app.access();
    let caller = match access.caller(headers, Some(client)).await {
        Ok(c) => c,
        Err(_) => return login_prompt(),
    };
    let who = caller.subject();
    let login = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "login" || p.starts_with("login="))
    });
    if login && matches!(who, auth::Subject::Anonymous) {
        return login_prompt();
    }
    let now = SystemTime::now();
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>berth</title><style>{STYLE}</style></head><body>\
         <h1>berth</h1><div class=\"muted\">version {} · signed in as {} · \
         <a href=\"/ui?login\">log in</a>{}</div>",
        env!("CARGO_PKG_VERSION"),
        esc(&match &who {
            auth::Subject::Anonymous => "anonymous".to_owned(),
            auth::Subject::User(u) => u.clone(),
        }),
        if app.metrics_at == crate::MetricsAt::Api {
            " · <a href=\"/metrics\">metrics</a>"
        } else {
            ""
        },
    );
    upkeep_section(app, &mut h, now);
    upstream_section(app, &mut h);
    charts_section(app, &mut h).await;
    probe_section(app, &mut h, now);
    repository_section(app, &caller, &access, &mut h, now).await;
    h.push_str("</body></html>");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        h,
    )
        .into_response()
}

/// A Basic challenge, so a browser asks for a user name and password.
fn login_prompt() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>berth</title><p>Sign in to see more of this registry.</p>",
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"berth\", charset=\"UTF-8\""),
    );
    r
}

fn upkeep_section(app: &App, h: &mut String, now: SystemTime) {
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
                for p in open.iter().take(20) {
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
        let err = err
            .map(|e| {
                format!(
                    "<br><span class=\"bad\">last run failed: {}</span>",
                    esc(&e)
                )
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
/// errors, and each upstream's hit rate and bytes served from the cache, added up over
/// the replicas.
async fn charts_section(app: &App, h: &mut String) {
    use crate::history::names;
    use web::chart::{Chart, Series, Unit, svg};
    use web::history::{Kind, series, share, sum};
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
    let requests = [
        line("requests", over(names::REQUESTS, false)),
        line("server errors (5xx)", over(names::SERVER_ERRORS, false)),
    ];
    h.push_str(&svg(&Chart {
        title: "Requests per minute, last 24 hours",
        unit: Unit::Count,
        series: &requests,
    }));
    let upstreams = app.cache.upstreams();
    if !upstreams.is_empty() {
        let of = |what: &str, name: &str| over(&names::of_upstream(what, name), false);
        let rates: Vec<Series> = upstreams
            .iter()
            .map(|u| {
                let hits = of(names::HITS, &u.name);
                line(&u.name, share(&hits, &of(names::MISSES, &u.name)))
            })
            .collect();
        h.push_str(&svg(&Chart {
            title: "Cache hit rate per upstream, last 24 hours",
            unit: Unit::Percent,
            series: &rates,
        }));
        let served: Vec<Series> = upstreams
            .iter()
            .map(|u| line(&u.name, of(names::SERVED, &u.name)))
            .collect();
        h.push_str(&svg(&Chart {
            title: "Bytes served from the cache per minute (not fetched again), last 24 hours",
            unit: Unit::Bytes,
            series: &served,
        }));
    }
    let monthly = [
        line("requests", over(names::REQUESTS, true)),
        line("server errors (5xx)", over(names::SERVER_ERRORS, true)),
    ];
    h.push_str(&svg(&Chart {
        title: "Requests per hour, last 30 days",
        unit: Unit::Count,
        series: &monthly,
    }));
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

async fn repository_section(
    app: &App,
    caller: &Caller,
    access: &crate::Access,
    h: &mut String,
    now: SystemTime,
) {
    h.push_str("<h2>Repositories</h2>");
    let repos = match app.registry.all_repositories().await {
        Ok(r) => r,
        Err(e) => {
            let _ = write!(
                h,
                "<p class=\"bad\">cannot list repositories: {}</p>",
                esc(&e.to_string())
            );
            return;
        }
    };
    let visible: Vec<RepoName> = repos
        .into_iter()
        .filter(|r| access.allowed(caller, r).contains(auth::Action::Pull))
        .collect();
    if visible.is_empty() {
        h.push_str("<p class=\"muted\">No repositories you may pull.</p>");
        return;
    }
    let _ = write!(
        h,
        "<p class=\"muted\">{} repositories{}.</p>",
        visible.len(),
        if visible.len() > MAX_REPOSITORIES {
            format!(", the first {MAX_REPOSITORIES} shown")
        } else {
            String::new()
        }
    );
    h.push_str("<table><tr><th>repository</th><th>tag</th><th>size</th><th>pushed</th><th>last pull</th></tr>");
    for repo in visible.iter().take(MAX_REPOSITORIES) {
        let mut tags = Vec::new();
        for t in app.registry.all_tags(repo).await.unwrap_or_default() {
            let at = app.registry.tag_written_at(repo, &t).await.ok().flatten();
            tags.push((t, at));
        }
        tags.sort_by_key(|t| std::cmp::Reverse(t.1));
        let pulled = app.metrics.last_pull(repo.as_str());
        let shown = tags.len().clamp(1, MAX_TAGS);
        let _ = write!(h, "<tr><td rowspan=\"{shown}\">{}</td>", esc(repo.as_str()));
        if tags.is_empty() {
            let _ = write!(
                h,
                "<td class=\"muted\">untagged</td><td></td><td></td><td>{}</td></tr>",
                ago(pulled, now)
            );
            continue;
        }
        for (i, (tag, at)) in tags.iter().take(MAX_TAGS).enumerate() {
            if i > 0 {
                h.push_str("<tr>");
            }
            let size = match app.registry.resolve_tag(repo, tag).await {
                Ok(d) => image_size(app, repo, &d)
                    .await
                    .map(human_bytes)
                    .unwrap_or_else(|| "?".to_owned()),
                Err(_) => "?".to_owned(),
            };
            let _ = write!(
                h,
                "<td>{}</td><td class=\"n\">{size}</td><td>{}</td>",
                esc(tag.as_str()),
                ago(*at, now)
            );
            if i == 0 {
                let _ = write!(h, "<td rowspan=\"{shown}\">{}</td>", ago(pulled, now));
            }
            h.push_str("</tr>");
        }
    }
    h.push_str("</table>");
}
