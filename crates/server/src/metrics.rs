//! `/metrics`: the HTTP layer's own meters (requests, durations, bytes, auth failures,
//! config reloads) and the writing out of every crate's meters in the Prometheus text
//! format at scrape time. It reads the cache's counters and the upkeep records; it never
//! changes them, and a scrape never touches the store beyond one `statvfs`.

use crate::App;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use meter::{Counter, Exposition, Family, Histogram, Kind};
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

/// Route class, method, status code.
type RequestKey = (&'static str, &'static str, u16);

/// The HTTP layer's meters, shared by every listener of one app.
pub struct Metrics {
    requests: Family<RequestKey, Counter>,
    durations: Family<(&'static str,), Histogram>,
    received: Family<(&'static str,), Counter>,
    sent: Family<(&'static str,), Counter>,
    /// Outcomes of configuration reloads.
    pub reloads: Reloads,
    /// When each repository (store name) last had a manifest pulled, since start.
    pulls: Mutex<std::collections::HashMap<String, SystemTime>>,
    started: SystemTime,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            durations: Family::default(),
            received: Family::default(),
            sent: Family::default(),
            reloads: Reloads::default(),
            pulls: Mutex::default(),
            started: SystemTime::now(),
        }
    }
}

/// What configuration reloads did.
#[derive(Default)]
pub struct Reloads {
    pub successes: Counter,
    pub failures: Counter,
    /// When a reload last succeeded, and whether the latest attempt failed.
    pub state: Mutex<(Option<SystemTime>, bool)>,
}

impl Reloads {
    /// Record the outcome of one reload attempt.
    pub fn record(&self, ok: bool) {
        let mut s = self.state.lock();
        if ok {
            self.successes.inc();
            *s = (Some(SystemTime::now()), false);
        } else {
            self.failures.inc();
            s.1 = true;
        }
    }
}

/// Methods as labels: a fixed set, so a client can not grow the label space.
fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::PUT => "PUT",
        http::Method::POST => "POST",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// Count one answered request; `took` is the time until its response head.
    pub(crate) fn request(
        &self,
        route: &'static str,
        method: &http::Method,
        status: u16,
        took: std::time::Duration,
    ) {
        self.requests
            .get(&(route, method_label(method), status))
            .inc();
        self.durations.get(&(route,)).observe(took);
    }

    /// Requests answered since start, and how many of them with a 5xx status.
    pub fn request_totals(&self) -> (u64, u64) {
        self.requests
            .snapshot()
            .iter()
            .fold((0, 0), |(all, errors), ((_, _, status), n)| {
                let n = n.get();
                (all + n, errors + if *status >= 500 { n } else { 0 })
            })
    }

    /// A manifest of `repo` (its name in the store) was pulled just now.
    pub(crate) fn pulled(&self, repo: String) {
        lock(&self.pulls).insert(repo, SystemTime::now());
    }

    /// When a manifest of `repo` was last pulled, as this process knows it (since it
    /// started, and what `seed_pulls` gave it from before).
    pub fn last_pull(&self, repo: &str) -> Option<SystemTime> {
        lock(&self.pulls).get(repo).copied()
    }

    /// The `max` most recently pulled repositories with their last pull (Unix seconds):
    /// what the history keeps across restarts.
    pub(crate) fn newest_pulls(&self, max: usize) -> std::collections::BTreeMap<String, u64> {
        let pulls = lock(&self.pulls);
        let mut all: Vec<(&String, u64)> = pulls
            .iter()
            .map(|(r, t)| {
                let unix = t.duration_since(SystemTime::UNIX_EPOCH);
                (r, unix.map_or(0, |d| d.as_secs()))
            })
            .collect();
        if all.len() > max {
            all.select_nth_unstable_by_key(max, |(_, t)| std::cmp::Reverse(*t));
            all.truncate(max);
        }
        all.into_iter().map(|(r, t)| (r.clone(), t)).collect()
    }

    /// Take up last pulls kept from before this process started (each kept only where
    /// it is newer than what this process saw).
    pub(crate) fn seed_pulls(&self, kept: &std::collections::BTreeMap<String, u64>) {
        let mut pulls = lock(&self.pulls);
        for (repo, at) in kept {
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(*at);
            let e = pulls.entry(repo.clone()).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// A request body that counts its bytes as they are read.
    pub(crate) fn count_received(&self, route: &'static str, body: Body) -> Body {
        Body::new(Counted {
            body,
            counter: self.received.get(&(route,)),
        })
    }

    /// A response body that counts its bytes as they are sent.
    pub(crate) fn count_sent(&self, route: &'static str, body: Body) -> Body {
        Body::new(Counted {
            body,
            counter: self.sent.get(&(route,)),
        })
    }
}

pin_project_lite::pin_project! {
    struct Counted<B> {
        #[pin]
        body: B,
        counter: Arc<Counter>,
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.counter.add(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    m.lock()
}

/// Write one upkeep job's record as `berth_<job>_*` families.
fn job<R>(
    e: &mut Exposition,
    job: &str,
    what: &str,
    record: &upkeep::JobRecord<R>,
    removed: Option<(&str, &str)>,
) {
    let runs = format!("berth_{job}_runs_total");
    e.family(&runs, Kind::Counter, &format!("{what} runs by result."));
    e.sample(&runs, &[("result", "success")], record.successes as f64);
    e.sample(&runs, &[("result", "failure")], record.failures as f64);
    let took = format!("berth_{job}_last_duration_seconds");
    e.single(
        &took,
        Kind::Gauge,
        &format!("How long the last {what} run took."),
        record.last_duration.as_secs_f64(),
    );
    if let Some(at) = record.last_success_at {
        let name = format!("berth_{job}_last_success_timestamp_seconds");
        e.single(
            &name,
            Kind::Gauge,
            &format!("When the last successful {what} run ended (Unix time)."),
            unix(at),
        );
    }
    if let Some((name, help)) = removed {
        e.single(name, Kind::Counter, help, record.removed as f64);
    }
}

/// A per-upstream counter: name, help, and how to read it from the cache's stats.
type UpstreamCounter = (&'static str, &'static str, fn(&cache::Stats) -> u64);

/// The whole scrape.
pub fn render(app: &App) -> String {
    let m = &app.metrics;
    let mut e = Exposition::default();
    e.family("berth_build_info", Kind::Gauge, "berth's version.");
    e.sample(
        "berth_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    e.single(
        "berth_process_start_time_seconds",
        Kind::Gauge,
        "When this berth process started (Unix time).",
        unix(m.started),
    );

    // HTTP.
    let name = "berth_http_requests_total";
    e.family(
        name,
        Kind::Counter,
        "HTTP requests answered, by route class, method and status code.",
    );
    for ((route, method, code), c) in m.requests.snapshot() {
        let code = code.to_string();
        e.sample(
            name,
            &[("route", route), ("method", method), ("code", &code)],
            c.get() as f64,
        );
    }
    let name = "berth_http_request_duration_seconds";
    e.family(
        name,
        Kind::Histogram,
        "Time until the response head was ready, by route class.",
    );
    for ((route,), h) in m.durations.snapshot() {
        e.histogram(name, &[("route", route)], &h);
    }
    for (name, family, help) in [
        (
            "berth_http_request_bytes_total",
            &m.received,
            "Request body bytes received, by route class.",
        ),
        (
            "berth_http_response_bytes_total",
            &m.sent,
            "Response body bytes sent, by route class.",
        ),
    ] {
        e.family(name, Kind::Counter, help);
        for ((route,), c) in family.snapshot() {
            e.sample(name, &[("route", route)], c.get() as f64);
        }
    }
    let name = "berth_auth_failures_total";
    e.family(
        name,
        Kind::Counter,
        "Refused credentials or tokens, by reason.",
    );
    for ((reason,), c) in app.access().failed.refusals.snapshot() {
        e.sample(name, &[("reason", reason)], c.get() as f64);
    }

    // Cache, per upstream.
    let upstreams = app.cache.upstreams();
    let counters: [UpstreamCounter; 16] = [
        (
            "berth_cache_hits_total",
            "Cached requests answered from the store.",
            |s| s.hits.get(),
        ),
        (
            "berth_cache_misses_total",
            "Cached requests that had to go upstream.",
            |s| s.misses.get(),
        ),
        (
            "berth_cache_stale_serves_total",
            "Tags served from the store because the upstream failed.",
            |s| s.stale_serves.get(),
        ),
        (
            "berth_cache_singleflight_joins_total",
            "Clients that joined an upstream blob download already under way.",
            |s| s.joins.get(),
        ),
        (
            "berth_upstream_errors_total",
            "Upstream requests that failed (unreachable, or an error answer).",
            |s| s.upstream_errors.get(),
        ),
        (
            "berth_upstream_fetched_bytes_total",
            "Blob bytes downloaded from the upstream into the store.",
            |s| s.fetched_bytes.get(),
        ),
        (
            "berth_cache_served_bytes_total",
            "Blob bytes sent to clients from the store without going upstream.",
            |s| s.served_bytes.get(),
        ),
        (
            "berth_cache_denied_total",
            "Requests refused by the upstream's allow-list (repositories), never sent upstream.",
            |s| s.denied.get(),
        ),
        (
            "berth_upstream_refused_busy_total",
            "Requests refused with 503 because too many were waiting for max_concurrent or max_rate.",
            |s| s.gate.refused_busy.get(),
        ),
        (
            "berth_upstream_refused_rate_limited_total",
            "Requests not sent while the upstream's 429 Retry-After was in force.",
            |s| s.gate.refused_rate_limited.get(),
        ),
        (
            "berth_upstream_refused_down_total",
            "Requests not sent while the upstream was marked down (circuit open).",
            |s| s.gate.refused_down.get(),
        ),
        (
            "berth_upstream_rate_limited_total",
            "429 Too Many Requests answers from the upstream.",
            |s| s.gate.rate_limited.get(),
        ),
        (
            "berth_prefetch_runs_total",
            "Prefetch rule runs finished ([[upstream.prefetch]]).",
            |s| s.prefetch_runs.get(),
        ),
        (
            "berth_prefetch_failures_total",
            "Tags a prefetch run could not bring into the cache.",
            |s| s.prefetch_failures.get(),
        ),
        (
            "berth_prefetch_downloads_total",
            "Manifests and blobs prefetch runs fetched from the upstream.",
            |s| s.prefetch_downloads.get(),
        ),
        (
            "berth_upstream_marked_down_total",
            "Times the upstream was marked down after failures in a row (the circuit opened).",
            |s| s.gate.circuit_opened.get(),
        ),
    ];
    for (name, help, get) in counters {
        e.family(name, Kind::Counter, help);
        for up in &upstreams {
            e.sample(name, &[("upstream", &up.name)], get(&up.stats) as f64);
        }
    }
    type UpstreamGauge = (&'static str, &'static str, fn(&cache::Gate) -> f64);
    let gauges: [UpstreamGauge; 4] = [
        (
            "berth_upstream_up",
            "1 when requests go to the upstream, 0 while it is marked down or being probed.",
            |g| f64::from(u8::from(matches!(g.circuit(), cache::Circuit::Up { .. }))),
        ),
        (
            "berth_upstream_rate_limited",
            "1 while a 429's Retry-After from the upstream is in force.",
            |g| f64::from(u8::from(g.rate_limited())),
        ),
        (
            "berth_upstream_in_flight",
            "Upstream requests holding a max_concurrent slot now (0 without the limit).",
            |g| g.in_flight() as f64,
        ),
        (
            "berth_upstream_waiting",
            "Requests waiting for a max_concurrent slot or a max_rate token now.",
            |g| g.waiting() as f64,
        ),
    ];
    for (name, help, get) in gauges {
        e.family(name, Kind::Gauge, help);
        for up in &upstreams {
            e.sample(name, &[("upstream", &up.name)], get(&up.gate));
        }
    }
    let name = "berth_prefetch_tags";
    e.family(
        name,
        Kind::Gauge,
        "Tags the last prefetch run of the upstream matched (kept cached and fresh).",
    );
    for up in upstreams.iter().filter(|u| !u.prefetch.is_empty()) {
        let n = up.stats.prefetched_tags();
        e.sample(name, &[("upstream", &up.name)], n as f64);
    }
    let name = "berth_upstream_request_duration_seconds";
    e.family(
        name,
        Kind::Histogram,
        "Time until the upstream answered a manifest or blob request.",
    );
    for up in &upstreams {
        e.histogram(name, &[("upstream", &up.name)], &up.stats.upstream_latency);
    }

    // Probes of other registries, one series per configured probe.
    let probes = app.probes.all();
    type ProbeGauge = (
        &'static str,
        Kind,
        &'static str,
        fn(&crate::probes::ProbeView) -> f64,
    );
    let families: [ProbeGauge; 7] = [
        (
            "berth_probe_runs_total",
            Kind::Counter,
            "Runs of the [[probe]] of this registry.",
            |p| p.runs as f64,
        ),
        (
            "berth_probe_catalog_up",
            Kind::Gauge,
            "1 when the probed registry's catalog answered at the last run, 0 when it did not (or no run yet).",
            |p| f64::from(u8::from(p.runs > 0 && p.catalog_error.is_none())),
        ),
        (
            "berth_probe_images",
            Kind::Gauge,
            "Images (repo:tag) the last run checked.",
            |p| p.images.len() as f64,
        ),
        (
            "berth_probe_failed_images",
            Kind::Gauge,
            "Images the last run found not pulling (a manifest, config or layer missing or wrong).",
            |p| p.failed() as f64,
        ),
        (
            "berth_probe_interval_seconds",
            Kind::Gauge,
            "How often the probe runs.",
            |p| p.interval.as_secs_f64(),
        ),
        (
            "berth_probe_last_run_timestamp_seconds",
            Kind::Gauge,
            "When the last run finished (Unix time; 0 before the first).",
            |p| p.last_run.map_or(0.0, unix),
        ),
        (
            "berth_probe_last_success_timestamp_seconds",
            Kind::Gauge,
            "When a run last found the catalog answering and every image pulling (Unix time; 0 never).",
            |p| p.last_success.map_or(0.0, unix),
        ),
    ];
    for (name, kind, help, get) in families {
        e.family(name, kind, help);
        for p in &probes {
            e.sample(name, &[("probe", &p.registry)], get(p));
        }
    }

    // Storage.
    let name = "berth_store_operations_total";
    e.family(
        name,
        Kind::Counter,
        "Operations made on the store (requests, jobs and tools), by kind; on S3 each is a round trip.",
    );
    let ops = app.registry.store_ops();
    for op in store::metered::Op::ALL {
        e.sample(name, &[("op", op.name())], ops.get(op) as f64);
    }
    if let Some(space) = app.registry.store().space() {
        e.single(
            "berth_storage_filesystem_size_bytes",
            Kind::Gauge,
            "Size of the filesystem holding the store.",
            space.total as f64,
        );
        e.single(
            "berth_storage_filesystem_avail_bytes",
            Kind::Gauge,
            "Free space on the filesystem holding the store.",
            space.available as f64,
        );
    }

    // Upkeep.
    let scrub = lock(&app.upkeep.scrub).clone();
    if let Some(r) = &scrub.last {
        for (name, help, v) in [
            (
                "berth_storage_bytes",
                "Bytes of all blobs in the store, as of the last scrub.",
                r.stored_bytes,
            ),
            (
                "berth_storage_blobs",
                "Blobs in the store (manifests included), as of the last scrub.",
                r.stored_blobs,
            ),
            (
                "berth_storage_manifests",
                "Distinct manifests linked from repositories, as of the last scrub.",
                r.stored_manifests,
            ),
        ] {
            e.single(name, Kind::Gauge, help, v as f64);
        }
    }
    let gc = lock(&app.upkeep.gc).clone();
    job(
        &mut e,
        "gc",
        "garbage collection",
        &gc,
        Some((
            "berth_gc_removed_objects_total",
            "Manifests, blobs, links and abandoned uploads garbage collection removed.",
        )),
    );
    e.single(
        "berth_gc_freed_bytes_total",
        Kind::Counter,
        "Blob bytes garbage collection freed.",
        gc.freed_bytes as f64,
    );
    let retention = lock(&app.upkeep.retention).clone();
    job(
        &mut e,
        "retention",
        "retention",
        &retention,
        Some((
            "berth_retention_deleted_tags_total",
            "Tags retention rules deleted.",
        )),
    );
    job(&mut e, "scrub", "integrity scrub", &scrub, None);
    if let Some(at) = scrub.last_success_at {
        e.single(
            "berth_scrub_last_completion_timestamp_seconds",
            Kind::Gauge,
            "When the last integrity scrub completed (Unix time).",
            unix(at),
        );
    }
    if let Some(r) = &scrub.last {
        let name = "berth_scrub_problems";
        e.family(
            name,
            Kind::Gauge,
            "Unrepaired problems the last scrub found, by kind.",
        );
        for kind in upkeep::fsck::ProblemKind::ALL {
            let n = r
                .problems
                .iter()
                .filter(|p| p.kind == kind && p.repaired.is_none())
                .count();
            e.sample(name, &[("kind", kind.as_str())], n as f64);
        }
        for (name, help, v) in [
            (
                "berth_scrub_manifests_checked",
                "Manifests the last scrub checked.",
                r.manifests_checked,
            ),
            (
                "berth_scrub_blobs_checked",
                "Blobs the last scrub checked.",
                r.blobs_checked,
            ),
        ] {
            e.single(name, Kind::Gauge, help, v as f64);
        }
    }

    // Configuration.
    let (last_ok, failing) = *lock(&m.reloads.state);
    let name = "berth_config_reloads_total";
    e.family(name, Kind::Counter, "Configuration reloads by result.");
    e.sample(
        name,
        &[("result", "success")],
        m.reloads.successes.get() as f64,
    );
    e.sample(
        name,
        &[("result", "failure")],
        m.reloads.failures.get() as f64,
    );
    e.single(
        "berth_config_last_reload_successful",
        Kind::Gauge,
        "1 unless the latest configuration reload was refused.",
        if failing { 0.0 } else { 1.0 },
    );
    if let Some(at) = last_ok {
        e.single(
            "berth_config_last_reload_success_timestamp_seconds",
            Kind::Gauge,
            "When the configuration was last reloaded successfully (Unix time).",
            unix(at),
        );
    }
    e.finish()
}
