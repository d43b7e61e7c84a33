//! The run's headline figures in one table, printed last: each part of the run (serving
//! and caches, upkeep at each `--scale`, S3) hands in its rows, with berth beside the peer
//! or the plain client measured in the same run, and the target the figure answers to.
//! It owns only the rows and their layout; the parts measure.

use crate::report::Spread;

/// One row: a berth figure, what it is set against, and the goal.
pub struct Headline {
    pub measurement: String,
    /// berth's values, one per round.
    pub berth: Vec<f64>,
    /// Who or what is beside it ("distribution", "plain S3 client"), and its values;
    /// empty when nothing is.
    pub beside: (&'static str, Vec<f64>),
    /// Scale of the cells (1e6 for MB/s from bytes per second, 1 for seconds).
    pub unit: f64,
    pub decimals: usize,
    /// The target, in words ("≤ 1.0× distribution", "≤ 25 s"), or "".
    pub target: String,
}

impl Headline {
    /// A row of berth's own figure against a target, with nothing beside it.
    pub fn alone(
        measurement: impl Into<String>,
        berth: Vec<f64>,
        decimals: usize,
        target: impl Into<String>,
    ) -> Headline {
        Headline {
            measurement: measurement.into(),
            berth,
            beside: ("", Vec::new()),
            unit: 1.0,
            decimals,
            target: target.into(),
        }
    }
}

/// The table, or nothing when no part handed in rows.
pub fn table(rows: &[Headline]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "Headline figures of this run, one table (median of the rounds, range in brackets; \
         the ratio is berth's median over the other's):\n\n\
         | measurement | berth | beside it | measured beside | berth / beside | target |\n\
         | --- | ---: | ---: | --- | ---: | --- |\n",
    );
    let cell = |v: &[f64], row: &Headline| {
        if v.is_empty() {
            "–".to_owned()
        } else {
            Spread::of(v.iter().map(|x| x / row.unit).collect()).cell(row.decimals)
        }
    };
    for row in rows {
        let (who, theirs) = &row.beside;
        let ratio = if row.berth.is_empty() || theirs.is_empty() {
            "–".to_owned()
        } else {
            let ours = Spread::of(row.berth.clone()).median;
            let other = Spread::of(theirs.clone()).median;
            format!("{:.2}×", ours / other)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.measurement,
            cell(&row.berth, row),
            cell(theirs, row),
            if who.is_empty() { "–" } else { who },
            ratio,
            if row.target.is_empty() {
                "–"
            } else {
                &row.target
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_medians_ranges_and_ratios() {
        let rows = [
            Headline {
                measurement: "push (MB/s)".into(),
                berth: vec![100e6, 120e6, 110e6],
                beside: ("plain S3 client", vec![125e6, 150e6, 130e6]),
                unit: 1e6,
                decimals: 0,
                target: "≥ 0.8× plain".into(),
            },
            Headline::alone("gc (s)", vec![20.5], 1, "≤ 25 s"),
        ];
        let t = table(&rows);
        assert!(
            t.contains("| push (MB/s) | 110 (100–120) | 130 (125–150) | plain S3 client | 0.85× | ≥ 0.8× plain |"),
            "{t}"
        );
        assert!(t.contains("| gc (s) | 20.5 | – | – | – | ≤ 25 s |"), "{t}");
        assert_eq!(table(&[]), "");
    }
}
