//! Line charts drawn as inline SVG, on the server, with no script: time along the
//! bottom (labelled back from the newest point: `-24h` … `now`), the value up the side
//! from zero, one line per series. Lines differ by dash pattern as well as colour and the
//! legend repeats both, so a chart reads in greyscale too; the newest value of each
//! series is written out in the legend and in the SVG's description for screen readers.

use crate::esc;
use std::fmt::Write as _;

/// One line: a name and its points (Unix seconds, value), in time order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(u64, f64)>,
}

/// How values are written on the axis and in the legend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// `1.5 GiB`
    Bytes,
    /// `75%`
    Percent,
    /// `1.2k`
    Count,
}

/// What to draw.
pub struct Chart<'a> {
    pub title: &'a str,
    pub unit: Unit,
    pub series: &'a [Series],
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
/// Room for the value labels on the left, the time labels below and the legend.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 46.0;

/// Line colours (distinct for the common colour blindnesses: the Okabe–Ito palette) and
/// dash patterns, taken in turn.
const COLOURS: [&str; 6] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9",
];
const DASHES: [&str; 6] = ["", "6 3", "2 2", "8 3 2 3", "1 4", "10 2"];

/// `v` in `unit`, short.
pub fn format_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Percent => format!("{v:.0}%"),
        Unit::Count => {
            let a = v.abs();
            if a >= 1e9 {
                format!("{:.1}G", v / 1e9)
            } else if a >= 1e6 {
                format!("{:.1}M", v / 1e6)
            } else if a >= 1e3 {
                format!("{:.1}k", v / 1e3)
            } else if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        }
        Unit::Bytes => {
            const STEPS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
            let mut x = v;
            let mut i = 0;
            while x.abs() >= 1024.0 && i + 1 < STEPS.len() {
                x /= 1024.0;
                i += 1;
            }
            if i == 0 {
                format!("{x:.0} B")
            } else {
                format!("{x:.1} {}", STEPS[i])
            }
        }
    }
}

/// A round top for the value axis at or above `max`: 1, 2 or 5 times a power of ten
/// (of 1024 for bytes), so the four grid lines fall on readable values.
fn axis_top(max: f64, unit: Unit) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    if unit == Unit::Percent {
        return 100.0;
    }
    let base: f64 = if unit == Unit::Bytes { 1024.0 } else { 10.0 };
    let mut scale = 1.0;
    while scale * base <= max {
        scale *= base;
    }
    for step in [1.0, 2.0, 4.0, 5.0, 8.0, 10.0] {
        if step * scale >= max {
            return step * scale;
        }
    }
    base * scale
}

/// `-3d`, `-12h`, `-45m`, `now`: how far back `secs` is.
fn back(secs: u64) -> String {
    match secs {
        0 => "now".to_owned(),
        s if s % 86_400 == 0 => format!("-{}d", s / 86_400),
        s if s % 3600 == 0 || s >= 3 * 3600 => format!("-{}h", (s + 1800) / 3600),
        s if s < 180 => format!("-{s}s"),
        s => format!("-{}m", (s + 30) / 60),
    }
}

/// The chart as an `<svg>` element, ready to inline in a page.
pub fn svg(chart: &Chart<'_>) -> String {
    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut t0, mut t1, mut vmax) = (u64::MAX, 0u64, 0f64);
    for (t, v) in points {
        t0 = t0.min(*t);
        t1 = t1.max(*t);
        vmax = vmax.max(*v);
    }
    let mut out = String::new();
    let title = esc(chart.title);
    let latest: Vec<String> = chart
        .series
        .iter()
        .filter_map(|s| {
            let (_, v) = s.points.last()?;
            Some(format!("{}: {}", s.label, format_value(*v, chart.unit)))
        })
        .collect();
    let _ = write!(
        out,
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{title}\">\
         <title>{title}</title><desc>{}</desc>\
         <text x=\"{LEFT}\" y=\"16\" font-size=\"13\" font-weight=\"600\">{title}</text>",
        esc(&if latest.is_empty() {
            "no data yet".to_owned()
        } else {
            format!("latest: {}", latest.join("; "))
        }),
    );
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    if t0 == u64::MAX {
        let _ = write!(
            out,
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#dde1e6\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#6a7280\">no data yet</text></svg>",
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
        return out;
    }
    let top = axis_top(vmax, chart.unit);
    let span = (t1 - t0).max(1) as f64;
    let x = |t: u64| LEFT + pw * (t - t0) as f64 / span;
    let y = |v: f64| TOP + ph * (1.0 - (v / top).clamp(0.0, 1.0));
    // Grid and value labels.
    for i in 0..=4 {
        let v = top * f64::from(i) / 4.0;
        let gy = y(v);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{gy:.1}\" y2=\"{gy:.1}\" stroke=\"#dde1e6\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"#6a7280\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            gy + 4.0,
            esc(&format_value(v, chart.unit))
        );
    }
    // Time labels, counted back from the newest point (each once: a short history has
    // fewer distinct ones).
    let mut labelled = Vec::new();
    for i in 0..=4u64 {
        let t = t0 + (t1 - t0) * i / 4;
        let label = back(t1 - t);
        if labelled.contains(&label) {
            continue;
        }
        labelled.push(label.clone());
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#6a7280\">{}</text>",
            x(t),
            TOP + ph + 14.0,
            label
        );
    }
    // The lines, then the legend.
    for (i, s) in chart.series.iter().enumerate() {
        let (colour, dash) = (COLOURS[i % COLOURS.len()], DASHES[i % DASHES.len()]);
        let mut pts = String::new();
        for (t, v) in &s.points {
            let _ = write!(pts, "{:.1},{:.1} ", x(*t), y(*v));
        }
        let _ = write!(
            out,
            "<polyline class=\"series\" data-label=\"{}\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"2\" stroke-dasharray=\"{dash}\" points=\"{}\"/>",
            esc(&s.label),
            pts.trim_end()
        );
        // A line of one point draws nothing: mark the point itself.
        if let [(t, v)] = s.points[..] {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{colour}\"/>",
                x(t),
                y(v)
            );
        }
        let lx = LEFT + (i % 3) as f64 * (pw / 3.0);
        let ly = TOP + ph + 30.0 + (i / 3) as f64 * 14.0;
        let now = s
            .points
            .last()
            .map(|(_, v)| format!(" ({})", format_value(*v, chart.unit)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" \
             stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>\
             <text x=\"{:.1}\" y=\"{ly:.1}\" font-size=\"11\">{}{}</text>",
            lx + 22.0,
            ly - 4.0,
            ly - 4.0,
            lx + 26.0,
            esc(&s.label),
            esc(&now)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_short_in_their_unit() {
        assert_eq!(format_value(0.0, Unit::Bytes), "0 B");
        assert_eq!(format_value(1536.0, Unit::Bytes), "1.5 KiB");
        assert_eq!(
            format_value(3.0 * 1024.0 * 1024.0 * 1024.0, Unit::Bytes),
            "3.0 GiB"
        );
        assert_eq!(format_value(75.4, Unit::Percent), "75%");
        assert_eq!(format_value(12.0, Unit::Count), "12");
        assert_eq!(format_value(1300.0, Unit::Count), "1.3k");
        assert_eq!(axis_top(0.0, Unit::Count), 1.0);
        assert_eq!(axis_top(37.0, Unit::Count), 40.0);
        assert_eq!(axis_top(3000.0, Unit::Bytes), 4096.0);
        assert_eq!(axis_top(12.0, Unit::Percent), 100.0);
        assert_eq!(back(0), "now");
        assert_eq!(back(86_400), "-1d");
        assert_eq!(back(6 * 3600), "-6h");
        assert_eq!(back(15 * 60), "-15m");
        assert_eq!(back(90), "-90s");
    }

    #[test]
    fn a_chart_draws_each_series_with_its_legend_and_latest_value() {
        let series = [
            Series {
                label: "hosted".into(),
                points: vec![(0, 1024.0), (3600, 2048.0), (7200, 4096.0)],
            },
            Series {
                label: "<docker.io>".into(),
                points: vec![(0, 0.0), (7200, 1024.0 * 1024.0)],
            },
        ];
        let s = svg(&Chart {
            title: "Storage used",
            unit: Unit::Bytes,
            series: &series,
        });
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"), "{s}");
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("data-label=\"hosted\""));
        // Names are escaped; the newest values are in the legend and the description.
        assert!(s.contains("&lt;docker.io&gt; (1.0 MiB)"), "{s}");
        assert!(
            s.contains("<desc>latest: hosted: 4.0 KiB; &lt;docker.io&gt;: 1.0 MiB</desc>"),
            "{s}"
        );
        assert!(!s.contains("<docker.io>"));
        // The lines differ by dash pattern, not only colour.
        assert!(s.contains("stroke-dasharray=\"6 3\""));
        // The newest point sits at the right edge, the largest value below the top.
        assert!(s.contains(&format!("{:.1},", WIDTH - RIGHT)));
        assert!(
            s.contains(">now</text>") && s.contains(">-2h</text>"),
            "{s}"
        );
    }

    #[test]
    fn a_chart_without_points_says_so() {
        let s = svg(&Chart {
            title: "Requests",
            unit: Unit::Count,
            series: &[Series {
                label: "requests".into(),
                points: Vec::new(),
            }],
        });
        assert!(s.contains(">no data yet</text>"));
        assert!(!s.contains("<polyline"));
    }
}
