//! The results of one server and the markdown table that sets all servers side by side,
//! with a berth/distribution ratio column per berth configuration. Cache measurements
//! may fail without stopping the run (distribution's proxy mode is allowed to); their
//! cells then say how. The upkeep table (see `upkeep`) formats its cells and ratios with
//! the same helpers.

use crate::headline::Headline;
use crate::pull::COLD_CLIENTS;
use crate::server::Kind;
use std::fmt::Write as _;

/// Throughput is shown in decimal megabytes per second.
const MB: f64 = 1e6;
/// Memory is shown in binary mebibytes, as /proc reports it (in KiB).
const MIB: f64 = 1024.0 * 1024.0;
/// Times are measured in seconds; latencies are shown in milliseconds.
const MS: f64 = 1e-3;

/// One blob GET run: aggregate throughput and the server's CPU cost.
#[derive(Clone, Copy, Debug)]
pub struct GetRun {
    pub bytes_per_second: f64,
    pub cpu_seconds_per_gib: f64,
}

/// One round of measurements against one server.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub get_one: GetRun,
    pub get_many: GetRun,
    pub manifest_per_second: f64,
    pub push_monolithic_bytes_per_second: f64,
    pub push_chunked_bytes_per_second: f64,
    /// Store operations of the 1-client blob GET (one request); `None` where the server
    /// does not count them.
    pub store_ops_per_get: Option<f64>,
}

/// A cache measurement's numbers, or the short reason it failed (shown in the cell).
pub type Outcome<T> = Result<T, String>;

/// One pull of a blob through a cache by one or more concurrent clients.
#[derive(Clone, Copy, Debug)]
pub struct PullStats {
    /// From the common start until the last client had the whole body.
    pub wall_seconds: f64,
    /// Time to first byte, the median over the clients.
    pub ttfb_median_seconds: f64,
    /// Bytes received by all clients together.
    pub bytes: u64,
}

/// A cold pull through a cache: a blob the cache has never seen, pushed to the upstream
/// just before.
#[derive(Clone, Debug)]
pub struct ColdPull {
    /// The upstream's own time to first byte for this blob (a GET straight to it).
    pub upstream_ttfb_seconds: f64,
    /// The same through the counting proxy the caches use.
    pub proxy_ttfb_seconds: f64,
    /// The rate of a whole GET of the blob through the counting proxy: the ceiling of a
    /// cold pull on this machine.
    pub proxy_bytes_per_second: f64,
    pub pull: Outcome<PullStats>,
    /// `GET /v2/.../blobs/<digest>` requests the upstream received for this blob during
    /// the pull (and any download the cache went on with after it).
    pub upstream_gets: u64,
    /// Where berth's fill spent its time, from its "blob fetched from upstream" log line;
    /// `None` for distribution.
    pub fill: Option<FillTimes>,
}

/// A berth fill's log line: its whole time and its parts, in seconds. The download's
/// parts overlap (the store writes while the upstream sends).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FillTimes {
    pub seconds: f64,
    pub upstream_read: f64,
    pub hash: f64,
    pub store_write: f64,
    pub commit: f64,
}

impl FillTimes {
    /// The fields of the last "blob fetched from upstream" line of `log` for `digest`.
    pub fn from_log(log: &str, digest: &str) -> Option<FillTimes> {
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("blob fetched from upstream") && l.contains(digest))?;
        let field = |name: &str| -> Option<f64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        Some(FillTimes {
            seconds: field("seconds")?,
            upstream_read: field("upstream_read_s")?,
            hash: field("hash_s")?,
            store_write: field("store_write_s")?,
            commit: field("commit_s")?,
        })
    }
}

/// One round of cache measurements against one server.
#[derive(Clone, Debug)]
pub struct CacheRound {
    pub cold_one: ColdPull,
    pub cold_many: ColdPull,
    /// A second GET (1 client) of the blob `cold_one` pulled, once the cache holds it.
    pub warm_one: Outcome<PullStats>,
    /// The same with as many clients as `cold_many`, of its blob: the least time that
    /// many copies take to leave the server, whatever the cache does.
    pub warm_many: Outcome<PullStats>,
    /// Upstream blob GETs during both warm pulls.
    pub warm_upstream_gets: u64,
    /// Store operations of the 1-client warm pull (one GET, a cache hit); `None` where
    /// the server does not count them.
    pub store_ops_per_hit: Option<f64>,
}

/// Everything measured against one server: its rounds and its peak memory at the end.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub rounds: Vec<Round>,
    /// The rounds against the same kind of server as a pull-through cache.
    pub cache: Vec<CacheRound>,
    /// VmHWM: the high-water mark of resident memory, mapped file pages included.
    pub peak_rss_bytes: u64,
    /// The largest RssAnon sampled during the run: the server's own memory.
    pub peak_anon_bytes: u64,
}

/// Median, smallest and largest of some numbers (NaN for none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    pub(crate) fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// `median` with `decimals` decimals, then `(min–max)` when they differ.
    pub(crate) fn cell(&self, decimals: usize) -> String {
        let d = decimals;
        if self.min == self.max {
            format!("{:.d$}", self.median)
        } else {
            format!("{:.d$} ({:.d$}–{:.d$})", self.median, self.min, self.max)
        }
    }
}

/// Where a row's number comes from.
enum Value {
    /// Measured every round: the cell shows the median and the range.
    PerRound(fn(&Round) -> f64),
    /// Measured once per server.
    Once(fn(&Results) -> f64),
    /// Measured every round where the server can tell (otherwise the cell shows "–").
    PerRoundWhereKnown(fn(&Round) -> Option<f64>),
    /// Measured every cache round where the server can tell.
    CacheWhereKnown(fn(&CacheRound) -> Option<f64>),
    /// Measured every cache round, one or more samples a round, each of which may have
    /// failed.
    Cache(fn(&CacheRound) -> Vec<Outcome<f64>>),
}

/// One row: its label, its value divided by `unit`, the decimals shown, and whether a
/// berth/distribution ratio means anything (not for the upstream's own numbers).
struct Row {
    label: &'static str,
    value: Value,
    unit: f64,
    decimals: usize,
    ratio: bool,
}

impl Row {
    /// Every sample of the row for one server, divided by the unit.
    fn samples(&self, r: &Results) -> Vec<Outcome<f64>> {
        let raw: Vec<Outcome<f64>> = match self.value {
            Value::PerRound(f) => r.rounds.iter().map(|x| Ok(f(x))).collect(),
            Value::Once(f) => vec![Ok(f(r))],
            Value::Cache(f) => r.cache.iter().flat_map(f).collect(),
            Value::PerRoundWhereKnown(f) => r.rounds.iter().filter_map(f).map(Ok).collect(),
            Value::CacheWhereKnown(f) => r.cache.iter().filter_map(f).map(Ok).collect(),
        };
        raw.into_iter().map(|s| s.map(|v| v / self.unit)).collect()
    }

    /// Whether the part of the run this row belongs to (hosted rounds or cache rounds)
    /// ran against the server of `r`.
    fn part_ran(&self, r: &Results) -> bool {
        match self.value {
            Value::PerRound(_) | Value::Once(_) | Value::PerRoundWhereKnown(_) => {
                !r.rounds.is_empty()
            }
            Value::Cache(_) | Value::CacheWhereKnown(_) => !r.cache.is_empty(),
        }
    }

    /// The spread of the samples that did not fail.
    fn spread(&self, r: &Results) -> Spread {
        Spread::of(self.samples(r).into_iter().filter_map(Result::ok).collect())
    }

    fn cell(&self, r: &Results) -> String {
        let samples = self.samples(r);
        if samples.is_empty() {
            return "–".to_owned();
        }
        let mut failures: Vec<&str> = samples
            .iter()
            .filter_map(|s| s.as_ref().err().map(String::as_str))
            .collect();
        let failed = failures.len();
        failures.sort_unstable();
        failures.dedup();
        let why = failures.join(", ");
        if failed == samples.len() {
            return format!("failed: {why}");
        }
        let numbers = self.spread(r).cell(self.decimals);
        if failed == 0 {
            numbers
        } else {
            format!("{numbers}; {failed} of {} failed: {why}", samples.len())
        }
    }
}

/// A pull's wall time.
fn wall(p: &Outcome<PullStats>) -> Outcome<f64> {
    p.as_ref().map(|s| s.wall_seconds).map_err(Clone::clone)
}

/// A pull's median time to first byte.
fn ttfb(p: &Outcome<PullStats>) -> Outcome<f64> {
    p.as_ref()
        .map(|s| s.ttfb_median_seconds)
        .map_err(Clone::clone)
}

const ROWS: &[Row] = &[
    Row {
        label: "blob GET, 1 client (MB/s)",
        value: Value::PerRound(|x| x.get_one.bytes_per_second),
        unit: MB,
        decimals: 0,
        ratio: true,
    },
    Row {
        label: "blob GET, 8 clients (MB/s, aggregate)",
        value: Value::PerRound(|x| x.get_many.bytes_per_second),
        unit: MB,
        decimals: 0,
        ratio: true,
    },
    Row {
        label: "server CPU per GiB served, 1 client (s, lower is better)",
        value: Value::PerRound(|x| x.get_one.cpu_seconds_per_gib),
        unit: 1.0,
        decimals: 2,
        ratio: true,
    },
    Row {
        label: "server CPU per GiB served, 8 clients (s, lower is better)",
        value: Value::PerRound(|x| x.get_many.cpu_seconds_per_gib),
        unit: 1.0,
        decimals: 2,
        ratio: true,
    },
    Row {
        label: "manifest GET, 64 connections (req/s)",
        value: Value::PerRound(|x| x.manifest_per_second),
        unit: 1.0,
        decimals: 0,
        ratio: true,
    },
    Row {
        label: "monolithic push (MB/s)",
        value: Value::PerRound(|x| x.push_monolithic_bytes_per_second),
        unit: MB,
        decimals: 0,
        ratio: true,
    },
    Row {
        label: "chunked push, 8 MiB chunks (MB/s)",
        value: Value::PerRound(|x| x.push_chunked_bytes_per_second),
        unit: MB,
        decimals: 0,
        ratio: true,
    },
    Row {
        label: "store operations per blob GET, hosted (berth counts them)",
        value: Value::PerRoundWhereKnown(|x| x.store_ops_per_get),
        unit: 1.0,
        decimals: 0,
        ratio: false,
    },
    Row {
        label: "peak RSS, VmHWM (MiB, lower is better)",
        value: Value::Once(|r| r.peak_rss_bytes as f64),
        unit: MIB,
        decimals: 1,
        ratio: true,
    },
    Row {
        label: "peak anonymous RSS, sampled (MiB, lower is better)",
        value: Value::Once(|r| r.peak_anon_bytes as f64),
        unit: MIB,
        decimals: 1,
        ratio: true,
    },
    Row {
        label: "cold pull through the cache, 1 client (s, lower is better)",
        value: Value::Cache(|c| vec![wall(&c.cold_one.pull)]),
        unit: 1.0,
        decimals: 2,
        ratio: true,
    },
    Row {
        label: "  berth's fill of that pull: upstream read, waiting for bytes (s)",
        value: Value::CacheWhereKnown(|c| c.cold_one.fill.map(|f| f.upstream_read)),
        unit: 1.0,
        decimals: 2,
        ratio: false,
    },
    Row {
        label: "  berth's fill of that pull: hashing as the bytes arrive (s)",
        value: Value::CacheWhereKnown(|c| c.cold_one.fill.map(|f| f.hash)),
        unit: 1.0,
        decimals: 2,
        ratio: false,
    },
    Row {
        label: "  berth's fill of that pull: store appends, beside the read (s)",
        value: Value::CacheWhereKnown(|c| c.cold_one.fill.map(|f| f.store_write)),
        unit: 1.0,
        decimals: 2,
        ratio: false,
    },
    Row {
        label: "  berth's fill of that pull: verify and commit after the last byte (s)",
        value: Value::CacheWhereKnown(|c| c.cold_one.fill.map(|f| f.commit)),
        unit: 1.0,
        decimals: 2,
        ratio: false,
    },
    Row {
        label: "cold pull through the cache, 16 clients (s, lower is better)",
        value: Value::Cache(|c| vec![wall(&c.cold_many.pull)]),
        unit: 1.0,
        decimals: 2,
        ratio: true,
    },
    Row {
        label: "warm pull through the cache, 16 clients (s; the floor of the row above)",
        value: Value::Cache(|c| vec![wall(&c.warm_many)]),
        unit: 1.0,
        decimals: 2,
        ratio: true,
    },
    Row {
        label: "store operations per blob GET, cache hit (berth counts them)",
        value: Value::CacheWhereKnown(|c| c.store_ops_per_hit),
        unit: 1.0,
        decimals: 0,
        ratio: false,
    },
    Row {
        label: "cold pull, 16-client wall / 1-client wall (target ≤ 1.3)",
        value: Value::Cache(|c| {
            vec![wall(&c.cold_many.pull).and_then(|many| Ok(many / wall(&c.cold_one.pull)?))]
        }),
        unit: 1.0,
        decimals: 2,
        ratio: true,
    },
    Row {
        label: "cold TTFB, 1 client (ms, lower is better)",
        value: Value::Cache(|c| vec![ttfb(&c.cold_one.pull)]),
        unit: MS,
        decimals: 1,
        ratio: true,
    },
    Row {
        label: "cold TTFB, 16 clients, median of the clients (ms, lower is better)",
        value: Value::Cache(|c| vec![ttfb(&c.cold_many.pull)]),
        unit: MS,
        decimals: 1,
        ratio: true,
    },
    Row {
        label: "upstream's own TTFB, GET straight to it (ms, same blobs)",
        value: Value::Cache(|c| {
            vec![
                Ok(c.cold_one.upstream_ttfb_seconds),
                Ok(c.cold_many.upstream_ttfb_seconds),
            ]
        }),
        unit: MS,
        decimals: 1,
        ratio: false,
    },
    Row {
        label: "upstream TTFB through the counting proxy (ms, same blobs)",
        value: Value::Cache(|c| {
            vec![
                Ok(c.cold_one.proxy_ttfb_seconds),
                Ok(c.cold_many.proxy_ttfb_seconds),
            ]
        }),
        unit: MS,
        decimals: 1,
        ratio: false,
    },
    Row {
        label: "upstream GET through the counting proxy, 1 client (MB/s; the ceiling of a cold pull)",
        value: Value::Cache(|c| {
            vec![
                Ok(c.cold_one.proxy_bytes_per_second),
                Ok(c.cold_many.proxy_bytes_per_second),
            ]
        }),
        unit: MB,
        decimals: 0,
        ratio: false,
    },
    Row {
        label: "upstream blob GETs, cold pull, 1 client (target 1)",
        value: Value::Cache(|c| vec![Ok(c.cold_one.upstream_gets as f64)]),
        unit: 1.0,
        decimals: 0,
        ratio: true,
    },
    Row {
        label: "upstream blob GETs, cold pull, 16 clients (target 1)",
        value: Value::Cache(|c| vec![Ok(c.cold_many.upstream_gets as f64)]),
        unit: 1.0,
        decimals: 0,
        ratio: true,
    },
    Row {
        label: "warm pull through the cache, 1 client (MB/s; hosted: blob GET, 1 client)",
        value: Value::Cache(|c| {
            vec![
                c.warm_one
                    .as_ref()
                    .map(|s| s.bytes as f64 / s.wall_seconds)
                    .map_err(Clone::clone),
            ]
        }),
        unit: MB,
        decimals: 0,
        ratio: true,
    },
    Row {
        label: "upstream blob GETs, both warm pulls (target 0)",
        value: Value::Cache(|c| vec![Ok(c.warm_upstream_gets as f64)]),
        unit: 1.0,
        decimals: 0,
        ratio: true,
    },
];

/// The serving part's headline rows: berth (fsync) as a cache beside distribution's
/// proxy, and where berth's fill spent its time.
pub fn headlines(columns: &[(Kind, Results)], cache_mib: usize) -> Vec<Headline> {
    let column = |k: Kind| columns.iter().find(|(kind, _)| *kind == k).map(|(_, r)| r);
    let (Some(berth), dist) = (
        column(Kind::Berth { fsync: true }),
        column(Kind::Distribution),
    ) else {
        return Vec::new();
    };
    let each = |r: Option<&Results>, f: fn(&CacheRound) -> Outcome<f64>| -> Vec<f64> {
        r.map_or(Vec::new(), |r| {
            r.cache.iter().filter_map(|c| f(c).ok()).collect()
        })
    };
    let versus = |measurement: String,
                  f: fn(&CacheRound) -> Outcome<f64>,
                  decimals,
                  target: &str| Headline {
        measurement,
        berth: each(Some(berth), f),
        beside: ("distribution (proxy)", each(dist, f)),
        unit: 1.0,
        decimals,
        target: target.to_owned(),
    };
    let mut rows = vec![
        versus(
            format!("cold pull through the cache, 1 client, {cache_mib} MiB (s)"),
            |c| wall(&c.cold_one.pull),
            2,
            "≤ 1.0× distribution",
        ),
        versus(
            format!("cold pull through the cache, {COLD_CLIENTS} clients (s)"),
            |c| wall(&c.cold_many.pull),
            2,
            "",
        ),
        versus(
            format!("upstream blob GETs, cold pull, {COLD_CLIENTS} clients"),
            |c| Ok(c.cold_many.upstream_gets as f64),
            0,
            "1",
        ),
    ];
    type Part = fn(&FillTimes) -> f64;
    let fill: [(&str, Part); 4] = [
        ("upstream read", |f| f.upstream_read),
        ("hashing", |f| f.hash),
        ("store appends, beside the read", |f| f.store_write),
        ("verify and commit", |f| f.commit),
    ];
    for (part, f) in fill {
        rows.push(Headline::alone(
            format!("  berth's fill of the 1-client cold pull: {part} (s)"),
            berth
                .cache
                .iter()
                .filter_map(|c| c.cold_one.fill.as_ref().map(f))
                .collect(),
            2,
            "",
        ));
    }
    rows
}

/// The markdown table: one column per server (the median over rounds, with the range
/// in brackets when rounds differ), then `berth / distribution` of the medians for each
/// berth column when distribution was measured too.
pub fn table(columns: &[(Kind, Results)]) -> String {
    let baseline = columns.iter().find(|(k, _)| *k == Kind::Distribution);
    let compared: Vec<&(Kind, Results)> = match baseline {
        Some(_) => columns
            .iter()
            .filter(|(k, _)| *k != Kind::Distribution)
            .collect(),
        None => Vec::new(),
    };
    let mut header = vec!["measurement".to_owned()];
    header.extend(columns.iter().map(|(k, _)| k.label().to_owned()));
    header.extend(
        compared
            .iter()
            .map(|(k, _)| format!("{} / distribution", k.label())),
    );
    let mut rule = vec!["---".to_owned()];
    rule.resize(header.len(), "---:".to_owned());
    let mut out = String::new();
    push_line(&mut out, &header);
    push_line(&mut out, &rule);
    for row in ROWS {
        // A part not measured in this run (`--only-caches`) has no rows.
        if !columns.iter().any(|(_, r)| row.part_ran(r)) {
            continue;
        }
        let mut cells = vec![row.label.to_owned()];
        cells.extend(columns.iter().map(|(_, r)| row.cell(r)));
        if let Some((_, base)) = baseline {
            let b = row.spread(base).median;
            cells.extend(compared.iter().map(|(_, r)| {
                if row.ratio {
                    ratio(row.spread(r).median, b)
                } else {
                    "–".to_owned()
                }
            }));
        }
        push_line(&mut out, &cells);
    }
    out
}

/// `value / baseline`, or n/a when either is missing (a failed measurement) or the
/// baseline is zero.
pub(crate) fn ratio(value: f64, baseline: f64) -> String {
    if baseline > 0.0 && value.is_finite() {
        format!("{:.2}×", value / baseline)
    } else {
        "n/a".to_owned()
    }
}

pub(crate) fn push_line(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(scale: f64) -> Round {
        let get = GetRun {
            bytes_per_second: 1e9 * scale,
            cpu_seconds_per_gib: 0.5 * scale,
        };
        Round {
            get_one: get,
            get_many: get,
            manifest_per_second: 10_000.0 * scale,
            push_monolithic_bytes_per_second: 5e8 * scale,
            push_chunked_bytes_per_second: 4e8 * scale,
            store_ops_per_get: Some(3.0),
        }
    }

    fn pull(wall: f64) -> PullStats {
        PullStats {
            wall_seconds: wall,
            ttfb_median_seconds: 0.002,
            bytes: 1_000_000_000,
        }
    }

    fn cold(pull: Outcome<PullStats>, upstream_gets: u64) -> ColdPull {
        ColdPull {
            upstream_ttfb_seconds: 0.001,
            proxy_ttfb_seconds: 0.0015,
            proxy_bytes_per_second: 2e9,
            pull,
            upstream_gets,
            fill: None,
        }
    }

    #[test]
    fn a_fill_log_line_is_read_back() {
        let log = "2026-12-01T10:00:00Z  INFO cache::fill: blob fetched from upstream \
                   upstream=u digest=sha256:aa bytes=9 seconds=0.5 upstream_read_s=0.25 \
                   hash_s=0.125 store_write_s=0.3 commit_s=0.01\n";
        let t = FillTimes::from_log(log, "sha256:aa").unwrap();
        assert_eq!(
            t,
            FillTimes {
                seconds: 0.5,
                upstream_read: 0.25,
                hash: 0.125,
                store_write: 0.3,
                commit: 0.01
            }
        );
        assert_eq!(FillTimes::from_log(log, "sha256:bb"), None);
    }

    fn cache_round(scale: f64) -> CacheRound {
        CacheRound {
            cold_one: cold(Ok(pull(1.0 * scale)), 1),
            cold_many: cold(Ok(pull(1.2 * scale)), 1),
            warm_one: Ok(pull(0.5 * scale)),
            warm_many: Ok(pull(0.8 * scale)),
            warm_upstream_gets: 0,
            store_ops_per_hit: Some(3.0),
        }
    }

    fn results(scale: f64) -> Results {
        Results {
            rounds: vec![round(scale)],
            cache: vec![cache_round(scale)],
            peak_rss_bytes: (100.0 * MIB * scale) as u64,
            peak_anon_bytes: (10.0 * MIB * scale) as u64,
        }
    }

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(vec![3.0, 1.0, 2.0, 10.0]).median, 2.5);
        assert!(Spread::of(Vec::new()).median.is_nan());
    }

    #[test]
    fn cells_show_the_range_when_rounds_differ() {
        let mut r = results(1.0);
        r.rounds = vec![round(3.0), round(1.0), round(2.0)];
        let t = table(&[(Kind::Berth { fsync: true }, r)]);
        assert!(t.contains("| manifest GET, 64 connections (req/s) | 20000 (10000–30000) |"));
    }

    #[test]
    fn a_run_of_the_caches_alone_has_only_cache_rows() {
        let caches_only = |scale| Results {
            rounds: Vec::new(),
            ..results(scale)
        };
        let t = table(&[
            (Kind::Distribution, caches_only(1.0)),
            (Kind::Berth { fsync: true }, caches_only(2.0)),
        ]);
        assert!(!t.contains("| blob GET, 1 client (MB/s) |"), "{t}");
        assert!(!t.contains("peak RSS, VmHWM"), "{t}");
        assert!(t.contains("cold pull through the cache, 1 client"), "{t}");
        let full = table(&[(Kind::Distribution, results(1.0))]);
        assert!(t.lines().count() < full.lines().count());
    }

    #[test]
    fn table_has_a_ratio_column_per_berth_configuration() {
        let t = table(&[
            (Kind::Distribution, results(1.0)),
            (Kind::Berth { fsync: true }, results(2.0)),
            (Kind::Berth { fsync: false }, results(0.5)),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + ROWS.len());
        assert!(lines[0].contains("berth (fsync) / distribution"));
        assert!(lines[0].contains("berth (no fsync) / distribution"));
        assert_eq!(
            lines[2],
            "| blob GET, 1 client (MB/s) | 1000 | 2000 | 500 | 2.00× | 0.50× |"
        );
    }

    fn line<'a>(table: &'a str, label: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap()
    }

    #[test]
    fn cache_rows_show_walls_ratios_and_counts() {
        let t = table(&[
            (Kind::Distribution, results(2.0)),
            (Kind::Berth { fsync: true }, results(1.0)),
        ]);
        assert_eq!(
            line(
                &t,
                "cold pull, 16-client wall / 1-client wall (target ≤ 1.3)"
            ),
            "| cold pull, 16-client wall / 1-client wall (target ≤ 1.3) | 1.20 | 1.20 | 1.00× |"
        );
        assert_eq!(
            line(
                &t,
                "warm pull through the cache, 1 client (MB/s; hosted: blob GET, 1 client)"
            ),
            "| warm pull through the cache, 1 client (MB/s; hosted: blob GET, 1 client) | 1000 | 2000 | 2.00× |"
        );
        assert_eq!(
            line(
                &t,
                "upstream's own TTFB, GET straight to it (ms, same blobs)"
            ),
            "| upstream's own TTFB, GET straight to it (ms, same blobs) | 1.0 | 1.0 | – |"
        );
        assert!(t.contains("| cold TTFB, 1 client (ms, lower is better) | 2.0 | 2.0 | 1.00× |"));
    }

    #[test]
    fn failed_cache_pulls_are_shown_not_fatal() {
        let mut dist = results(1.0);
        dist.cache[0].cold_many = cold(Err("500".to_owned()), 17);
        let mut partly = results(1.0);
        partly.cache.push(partly.cache[0].clone());
        partly.cache.push(partly.cache[0].clone());
        partly.cache[1].cold_one = cold(Err("broken body".to_owned()), 2);
        let t = table(&[
            (Kind::Distribution, dist),
            (Kind::Berth { fsync: true }, partly),
        ]);
        assert_eq!(
            line(
                &t,
                "cold pull through the cache, 16 clients (s, lower is better)"
            ),
            "| cold pull through the cache, 16 clients (s, lower is better) | failed: 500 | 1.20 | n/a |"
        );
        assert_eq!(
            line(
                &t,
                "cold pull, 16-client wall / 1-client wall (target ≤ 1.3)"
            ),
            "| cold pull, 16-client wall / 1-client wall (target ≤ 1.3) | failed: 500 | 1.20; 1 of 3 failed: broken body | n/a |"
        );
        assert_eq!(
            line(&t, "upstream blob GETs, cold pull, 16 clients (target 1)"),
            "| upstream blob GETs, cold pull, 16 clients (target 1) | 17 | 1 | 0.06× |"
        );
        assert_eq!(
            line(&t, "upstream blob GETs, cold pull, 1 client (target 1)"),
            "| upstream blob GETs, cold pull, 1 client (target 1) | 1 | 1 (1–2) | 1.00× |"
        );
    }

    #[test]
    fn cache_row_labels_name_the_client_count() {
        let many = format!("{} clients", crate::pull::COLD_CLIENTS);
        let rows = ROWS.iter().filter(|r| r.label.contains(" clients"));
        for row in rows.filter(|r| r.label.contains("cold")) {
            assert!(row.label.contains(&many), "{}", row.label);
        }
    }

    #[test]
    fn table_without_distribution_has_no_ratio() {
        let t = table(&[(Kind::Berth { fsync: true }, results(1.0))]);
        assert!(!t.contains("/ distribution"));
        assert!(t.contains("| peak RSS, VmHWM (MiB, lower is better) | 100.0 |"));
    }
}
