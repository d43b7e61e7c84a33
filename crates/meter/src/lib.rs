//! Counters and histograms in atomics, and a writer for the Prometheus text exposition
//! format (version 0.0.4). It owns number keeping and escaping; it never knows what is
//! measured, holds no global registry and does no I/O: each crate keeps the meters of
//! its own work and the HTTP layer writes them all out when scraped.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) for request and upstream latencies: from a cached manifest
/// answered from memory (well under 5 ms) to a multi-GiB layer download (minutes).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A distribution of durations over fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

impl Histogram {
    /// A histogram with these upper bounds (ascending, in seconds).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Record one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Meters of one kind told apart by label values (`K` is a tuple of strings, in the
/// order of the label names given when written out).
#[derive(Debug)]
pub struct Family<K: Ord, M> {
    members: Mutex<BTreeMap<K, Arc<M>>>,
}

impl<K: Ord, M> Default for Family<K, M> {
    fn default() -> Self {
        Family {
            members: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<K: Ord + Clone, M: Default> Family<K, M> {
    /// The meter for `key`, created on first use.
    pub fn get(&self, key: &K) -> Arc<M> {
        let mut m = self.members.lock();
        if let Some(v) = m.get(key) {
            return v.clone();
        }
        let v = Arc::new(M::default());
        m.insert(key.clone(), v.clone());
        v
    }

    /// Every member, in key order.
    pub fn snapshot(&self) -> Vec<(K, Arc<M>)> {
        let m = self.members.lock();
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// The kind of a metric family, as `# TYPE` names it.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A scrape being written: families one after another, each with its `# HELP` and
/// `# TYPE` lines and then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// Start a family. Its samples follow with [`Exposition::sample`] or
    /// [`Exposition::histogram`].
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    fn labels(labels: &[(&str, &str)], extra: Option<(&str, &str)>) -> String {
        let all: Vec<String> = labels
            .iter()
            .copied()
            .chain(extra)
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        if all.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", all.join(","))
        }
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let _ = writeln!(
            self.out,
            "{name}{} {}",
            Self::labels(labels, None),
            number(value)
        );
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The `_bucket`, `_sum` and `_count` samples of a histogram of the current family.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut cumulative = 0;
        for (i, bucket) in h.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            let le = number(le);
            let _ = writeln!(
                self.out,
                "{name}_bucket{} {cumulative}",
                Self::labels(labels, Some(("le", &le)))
            );
        }
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let lab = Self::labels(labels, None);
        let _ = writeln!(self.out, "{name}_sum{lab} {}", number(sum));
        let _ = writeln!(self.out, "{name}_count{lab} {cumulative}");
        self
    }

    /// The text to serve.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let requests: Family<(String,), Counter> = Family::default();
        requests.get(&("a\"b\\c\nd".to_owned(),)).add(3);
        let mut e = Exposition::default();
        e.family("x_requests_total", Kind::Counter, "Requests.\nMore.");
        for ((k,), c) in requests.snapshot() {
            e.sample("x_requests_total", &[("route", &k)], c.get() as f64);
        }
        e.family("x_seconds", Kind::Histogram, "Durations.");
        e.histogram("x_seconds", &[("route", "r")], &h);
        e.family("x_ratio", Kind::Gauge, "A ratio.");
        e.sample("x_ratio", &[], 0.25);
        assert_eq!(
            e.finish(),
            "# HELP x_requests_total Requests.\\nMore.\n\
             # TYPE x_requests_total counter\n\
             x_requests_total{route=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP x_seconds Durations.\n\
             # TYPE x_seconds histogram\n\
             x_seconds_bucket{route=\"r\",le=\"0.1\"} 1\n\
             x_seconds_bucket{route=\"r\",le=\"1\"} 2\n\
             x_seconds_bucket{route=\"r\",le=\"+Inf\"} 3\n\
             x_seconds_sum{route=\"r\"} 5.55\n\
             x_seconds_count{route=\"r\"} 3\n\
             # HELP x_ratio A ratio.\n\
             # TYPE x_ratio gauge\n\
             x_ratio 0.25\n"
        );
        assert_eq!(h.count(), 3);
    }
}
