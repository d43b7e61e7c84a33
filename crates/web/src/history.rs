//! A small, bounded history of a registry's numbers, for the page's charts: one sample a
//! minute for the last day and one an hour for the last month, each a set of named
//! numbers (storage used per area, requests, cache hits). It owns the sampling rules and
//! the serialised form; the server decides what to sample, when, and where the history
//! is kept (in the data store, one object per replica, so restarts and replicas keep it).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Minute samples kept: the last day, for the "last 24 hours" charts.
pub const MINUTES_KEPT: usize = 24 * 60;

/// Hourly samples kept: the last 30 days, for the "last month" charts. Together with
/// the minutes a history of a dozen numbers stays well under 1 MiB of JSON.
pub const HOURS_KEPT: usize = 30 * 24;

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;

/// The numbers as they stood at one time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unix seconds at the start of the sample's minute (or hour).
    pub at: u64,
    /// Each number by name (`storage.hosted`, `requests`, `hits.docker.io`, ...).
    pub values: BTreeMap<String, f64>,
}

/// How a number behaves over time, which decides how a chart shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A level (bytes stored): shown as it stood.
    Gauge,
    /// A running total that only grows while its process lives (requests, hits, bytes
    /// saved): shown as the rise from one sample to the next. A fall means the process
    /// restarted and counted from zero again, so the new value is the rise.
    Counter,
}

/// Minute and hourly samples, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    minutes: VecDeque<Sample>,
    hours: VecDeque<Sample>,
}

impl History {
    /// Record `values` as they stand at `at` (Unix seconds). A second sample within one
    /// minute replaces the first. The last minute sample of an hour becomes that hour's
    /// sample once a sample of a later hour arrives. A time earlier than the newest
    /// sample (a clock stepped back) is ignored, so the history stays in order.
    pub fn record(&mut self, at: u64, values: BTreeMap<String, f64>) {
        let minute = at - at % MINUTE;
        if let Some(last) = self.minutes.back() {
            if minute < last.at {
                return;
            }
            if minute == last.at {
                self.minutes.pop_back();
            } else if minute / HOUR != last.at / HOUR {
                let closed = Sample {
                    at: last.at - last.at % HOUR,
                    values: last.values.clone(),
                };
                push_bounded(&mut self.hours, closed, HOURS_KEPT);
            }
        }
        push_bounded(
            &mut self.minutes,
            Sample { at: minute, values },
            MINUTES_KEPT,
        );
    }

    /// The minute samples, oldest first.
    pub fn minutes(&self) -> impl Iterator<Item = &Sample> {
        self.minutes.iter()
    }

    /// The hourly samples, oldest first.
    pub fn hours(&self) -> impl Iterator<Item = &Sample> {
        self.hours.iter()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.minutes.back()
    }
}

fn push_bounded(q: &mut VecDeque<Sample>, s: Sample, max: usize) {
    q.push_back(s);
    while q.len() > max {
        q.pop_front();
    }
}

/// The points of number `name` over `samples` as a chart draws them: gauges as they
/// stood, counters as their rise since the sample before (so the first sample of a
/// counter gives no point). Samples without the number give no point.
pub fn series<'a>(
    samples: impl IntoIterator<Item = &'a Sample>,
    name: &str,
    kind: Kind,
) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    let mut before: Option<f64> = None;
    for s in samples {
        let Some(&v) = s.values.get(name) else {
            before = None;
            continue;
        };
        match kind {
            Kind::Gauge => out.push((s.at, v)),
            Kind::Counter => {
                if let Some(b) = before {
                    out.push((s.at, if v >= b { v - b } else { v }));
                }
            }
        }
        before = Some(v);
    }
    out
}

/// Several series added point by point at equal times (one per replica, into one): a
/// time only some have counts what those have.
pub fn sum(all: &[Vec<(u64, f64)>]) -> Vec<(u64, f64)> {
    let mut by_time: BTreeMap<u64, f64> = BTreeMap::new();
    for s in all {
        for (at, v) in s {
            *by_time.entry(*at).or_default() += v;
        }
    }
    by_time.into_iter().collect()
}

/// Several series combined point by point at equal times by their largest value: for a
/// gauge every replica reports about the same thing (the store's size as each last
/// measured it), where a sum would count it once per replica.
pub fn max(all: &[Vec<(u64, f64)>]) -> Vec<(u64, f64)> {
    let mut by_time: BTreeMap<u64, f64> = BTreeMap::new();
    for s in all {
        for (at, v) in s {
            let e = by_time.entry(*at).or_insert(*v);
            *e = e.max(*v);
        }
    }
    by_time.into_iter().collect()
}

/// `a / (a + b)` point by point, as a percentage, at the times both have and their sum
/// is not zero (a cache's hit rate from its hits and misses).
pub fn share(a: &[(u64, f64)], b: &[(u64, f64)]) -> Vec<(u64, f64)> {
    let b: BTreeMap<u64, f64> = b.iter().copied().collect();
    a.iter()
        .filter_map(|(at, x)| {
            let y = b.get(at)?;
            (x + y > 0.0).then(|| (*at, 100.0 * x / (x + y)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn minutes_are_kept_for_a_day_and_hours_for_a_month() {
        let mut h = History::default();
        let start = 1_800_000_000 - 1_800_000_000 % HOUR;
        // 40 days, a sample every minute (some twice within the minute).
        for m in 0..(40 * 24 * 60) {
            let at = start + m * MINUTE;
            h.record(at, values(&[("requests", m as f64)]));
            if m.is_multiple_of(7) {
                h.record(at + 30, values(&[("requests", m as f64 + 0.5)]));
            }
        }
        assert_eq!(h.minutes().count(), MINUTES_KEPT);
        assert_eq!(h.hours().count(), HOURS_KEPT);
        let minutes: Vec<u64> = h.minutes().map(|s| s.at).collect();
        assert!(minutes.windows(2).all(|w| w[1] - w[0] == MINUTE));
        let hours: Vec<&Sample> = h.hours().collect();
        assert!(hours.windows(2).all(|w| w[1].at - w[0].at == HOUR));
        // An hour's sample is the last minute of that hour.
        let last_hour = hours.last().unwrap();
        let m = (last_hour.at - start) / MINUTE + 59;
        assert_eq!(
            last_hour.values["requests"],
            m as f64 + if m.is_multiple_of(7) { 0.5 } else { 0.0 }
        );
        // Serialised and read back whole, and small.
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.len() < 1024 * 1024, "{} bytes", json.len());
        assert_eq!(serde_json::from_str::<History>(&json).unwrap(), h);
    }

    #[test]
    fn a_clock_stepped_back_changes_nothing() {
        let mut h = History::default();
        h.record(6000, values(&[("x", 1.0)]));
        h.record(5000, values(&[("x", 2.0)]));
        assert_eq!(h.minutes().count(), 1);
        assert_eq!(h.latest().unwrap().values["x"], 1.0);
    }

    #[test]
    fn counters_show_their_rise_and_survive_a_restart() {
        let s: Vec<Sample> = [(0, 10.0), (60, 15.0), (120, 15.0), (180, 4.0), (240, 9.0)]
            .iter()
            .map(|(at, v)| Sample {
                at: *at,
                values: values(&[("hits", *v)]),
            })
            .collect();
        assert_eq!(
            series(&s, "hits", Kind::Counter),
            vec![(60, 5.0), (120, 0.0), (180, 4.0), (240, 5.0)]
        );
        assert_eq!(series(&s, "hits", Kind::Gauge).len(), 5);
        assert!(series(&s, "misses", Kind::Counter).is_empty());
    }

    #[test]
    fn replicas_add_up_and_hit_rates_need_traffic() {
        let a = vec![(60, 3.0), (120, 1.0)];
        let b = vec![(120, 2.0), (180, 5.0)];
        assert_eq!(
            sum(&[a.clone(), b.clone()]),
            vec![(60, 3.0), (120, 3.0), (180, 5.0)]
        );
        assert_eq!(max(&[a, b]), vec![(60, 3.0), (120, 2.0), (180, 5.0)]);
        let misses = vec![(60, 1.0), (120, 0.0)];
        let hits = vec![(60, 3.0), (120, 0.0)];
        assert_eq!(share(&hits, &misses), vec![(60, 75.0)]);
    }
}
