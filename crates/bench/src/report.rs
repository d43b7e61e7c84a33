//! The results of one server and the markdown table that sets all servers side by side,
//! with a berth/distribution ratio column per berth configuration.

use crate::server::Kind;
use std::fmt::Write as _;

/// Throughput is shown in decimal megabytes per second.
const MB: f64 = 1e6;
/// Memory is shown in binary mebibytes, as /proc reports it (in KiB).
const MIB: f64 = 1024.0 * 1024.0;

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
}

/// Everything measured against one server: its rounds and its peak memory at the end.
#[derive(Clone, Debug)]
pub struct Results {
    pub rounds: Vec<Round>,
    /// VmHWM: the high-water mark of resident memory, mapped file pages included.
    pub peak_rss_bytes: u64,
    /// The largest RssAnon sampled during the run: the server's own memory.
    pub peak_anon_bytes: u64,
}

/// Median, smallest and largest of some numbers (NaN for none).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
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
}

/// Where a row's number comes from.
enum Value {
    /// Measured every round: the cell shows the median and the range.
    PerRound(fn(&Round) -> f64),
    /// Measured once per server.
    Once(fn(&Results) -> f64),
}

/// One row: its label, its value divided by `unit`, and the decimals shown.
struct Row {
    label: &'static str,
    value: Value,
    unit: f64,
    decimals: usize,
}

impl Row {
    fn spread(&self, r: &Results) -> Spread {
        match self.value {
            Value::PerRound(f) => Spread::of(r.rounds.iter().map(|x| f(x) / self.unit).collect()),
            Value::Once(f) => Spread::of(vec![f(r) / self.unit]),
        }
    }

    fn cell(&self, r: &Results) -> String {
        let s = self.spread(r);
        let d = self.decimals;
        if s.min == s.max {
            format!("{:.d$}", s.median)
        } else {
            format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max)
        }
    }
}

const ROWS: &[Row] = &[
    Row {
        label: "blob GET, 1 client (MB/s)",
        value: Value::PerRound(|x| x.get_one.bytes_per_second),
        unit: MB,
        decimals: 0,
    },
    Row {
        label: "blob GET, 8 clients (MB/s, aggregate)",
        value: Value::PerRound(|x| x.get_many.bytes_per_second),
        unit: MB,
        decimals: 0,
    },
    Row {
        label: "server CPU per GiB served, 1 client (s, lower is better)",
        value: Value::PerRound(|x| x.get_one.cpu_seconds_per_gib),
        unit: 1.0,
        decimals: 2,
    },
    Row {
        label: "server CPU per GiB served, 8 clients (s, lower is better)",
        value: Value::PerRound(|x| x.get_many.cpu_seconds_per_gib),
        unit: 1.0,
        decimals: 2,
    },
    Row {
        label: "manifest GET, 64 connections (req/s)",
        value: Value::PerRound(|x| x.manifest_per_second),
        unit: 1.0,
        decimals: 0,
    },
    Row {
        label: "monolithic push (MB/s)",
        value: Value::PerRound(|x| x.push_monolithic_bytes_per_second),
        unit: MB,
        decimals: 0,
    },
    Row {
        label: "chunked push, 8 MiB chunks (MB/s)",
        value: Value::PerRound(|x| x.push_chunked_bytes_per_second),
        unit: MB,
        decimals: 0,
    },
    Row {
        label: "peak RSS, VmHWM (MiB, lower is better)",
        value: Value::Once(|r| r.peak_rss_bytes as f64),
        unit: MIB,
        decimals: 1,
    },
    Row {
        label: "peak anonymous RSS, sampled (MiB, lower is better)",
        value: Value::Once(|r| r.peak_anon_bytes as f64),
        unit: MIB,
        decimals: 1,
    },
];

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
        let mut cells = vec![row.label.to_owned()];
        cells.extend(columns.iter().map(|(_, r)| row.cell(r)));
        if let Some((_, base)) = baseline {
            let b = row.spread(base).median;
            cells.extend(compared.iter().map(|(_, r)| ratio(row.spread(r).median, b)));
        }
        push_line(&mut out, &cells);
    }
    out
}

fn ratio(value: f64, baseline: f64) -> String {
    if baseline > 0.0 {
        format!("{:.2}×", value / baseline)
    } else {
        "n/a".to_owned()
    }
}

fn push_line(out: &mut String, cells: &[String]) {
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
        }
    }

    fn results(scale: f64) -> Results {
        Results {
            rounds: vec![round(scale)],
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

    #[test]
    fn table_without_distribution_has_no_ratio() {
        let t = table(&[(Kind::Berth { fsync: true }, results(1.0))]);
        assert!(!t.contains("/ distribution"));
        assert!(t.contains("| peak RSS, VmHWM (MiB, lower is better) | 100.0 |"));
    }
}
