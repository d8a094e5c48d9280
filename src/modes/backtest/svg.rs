//! The page's charts as inline SVG, written by hand: stacked columns over time and horizontal bars.
//! No script: each mark carries a `<title>`, which browsers show on hover, and the page stays
//! readable printed or opened without JavaScript.
//!
//! Every text that comes from data is escaped here, the caller passes it raw.

use std::fmt::Write as _;

use super::escape::escape;

/// Width of every chart in SVG user units; the page scales them to its column (`viewBox`).
const WIDTH: f64 = 960.0;

/// One stacked series: a name, its colour, a value per bucket.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub values: Vec<u64>,
}

/// A bucket of the time axis.
pub struct Bucket {
    /// Shown on hover, e.g. `2026-11-02 14:00`.
    pub label: String,
    /// Shown under the axis when set (e.g. at the start of each day).
    pub tick: Option<String>,
}

/// Stacked columns, one per bucket, `series` bottom to top; `unit` names what is counted.
pub fn stacked_columns(series: &[Series<'_>], buckets: &[Bucket], unit: &str) -> String {
    let (height, left, right, top, bottom) = (220.0, 52.0, 8.0, 10.0, 24.0);
    let plot_w = WIDTH - left - right;
    let plot_h = height - top - bottom;
    let n = buckets.len().max(1);
    let totals: Vec<u64> = (0..n)
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let (max, step) = nice_axis(totals.iter().copied().max().unwrap_or(0) as f64);
    let y = |v: f64| top + plot_h - v / max * plot_h;
    let mut s = open(height, unit);
    axis_y(&mut s, left, WIDTH - right, max, step, y, |v| {
        format!("{v:.0}")
    });
    let bw = plot_w / n as f64;
    let gap = if bw > 4.0 { 1.0 } else { 0.0 };
    for (i, b) in buckets.iter().enumerate() {
        let x = left + i as f64 * bw;
        let mut base = 0.0;
        for sr in series {
            let v = sr.values.get(i).copied().unwrap_or(0) as f64;
            if v == 0.0 {
                continue;
            }
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} · {}: {v} {}</title></rect>"#,
                y(base + v),
                (bw - gap).max(0.5),
                y(base) - y(base + v),
                escape(sr.color),
                escape(sr.name),
                escape(&b.label),
                escape(unit),
            );
            base += v;
        }
        if let Some(t) = &b.tick {
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#888"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"##,
                top + plot_h,
                top + plot_h + 4.0,
                x + 2.0,
                height - 8.0,
                escape(t)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// One row of horizontal bars.
pub struct Row {
    pub label: String,
    /// (value, colour, hover text), stacked left to right (or overlaid, see `Layout`).
    pub segments: Vec<(f64, &'static str, String)>,
    /// Written after the bar, e.g. the total.
    pub note: String,
}

/// How a row's segments share the bar.
#[derive(Clone, Copy)]
pub enum Layout {
    /// Each segment starts where the one before ends: parts of a whole (severities).
    Stacked,
    /// Each segment starts at zero, drawn in order: the later, thinner one in front (mean over p99).
    Overlaid,
}

/// Horizontal bars, one row per item, the label on the left.
pub fn bars(rows: &[Row], layout: Layout) -> String {
    let (row_h, label_w, note_w) = (20.0, 260.0, 150.0);
    let height = row_h * rows.len().max(1) as f64 + 4.0;
    let plot_w = WIDTH - label_w - note_w;
    let total = |r: &Row| match layout {
        Layout::Stacked => r.segments.iter().map(|s| s.0).sum::<f64>(),
        Layout::Overlaid => r.segments.iter().map(|s| s.0).fold(0.0, f64::max),
    };
    let max = rows
        .iter()
        .map(total)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let mut s = open(height, "");
    for (i, r) in rows.iter().enumerate() {
        let y = 2.0 + i as f64 * row_h;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="label">{}</text>"#,
            label_w - 8.0,
            y + 14.0,
            escape(&r.label)
        );
        let mut x = label_w;
        for (k, (v, color, title)) in r.segments.iter().enumerate() {
            let w = v / max * plot_w;
            let (bx, by, bh) = match layout {
                Layout::Stacked => (x, y + 2.0, row_h - 4.0),
                // Later segments thinner, so the one behind stays visible.
                Layout::Overlaid => (
                    label_w,
                    y + 2.0 + 3.0 * k as f64,
                    row_h - 4.0 - 6.0 * k as f64,
                ),
            };
            if w > 0.0 {
                let _ = write!(
                    s,
                    r#"<rect x="{bx:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
                    w.max(0.5),
                    bh.max(2.0),
                    escape(color),
                    escape(title)
                );
            }
            if let Layout::Stacked = layout {
                x += w;
            }
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="note">{}</text>"#,
            label_w + total(r) / max * plot_w + 6.0,
            y + 14.0,
            escape(&r.note)
        );
    }
    s.push_str("</svg>");
    s
}

fn open(height: f64, label: &str) -> String {
    format!(
        r#"<svg viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{}">"#,
        escape(label)
    )
}

/// Horizontal grid lines with their values on the left.
fn axis_y(
    s: &mut String,
    left: f64,
    right: f64,
    max: f64,
    step: f64,
    y: impl Fn(f64) -> f64,
    fmt: impl Fn(f64) -> String,
) {
    let mut v = 0.0;
    while v <= max + step / 2.0 {
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{left:.1}" x2="{right:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" class="axis">{}</text>"##,
            left - 6.0,
            yy + 4.0,
            escape(&fmt(v))
        );
        v += step;
    }
}

/// An axis maximum at or above `max` and a step of 1, 2 or 5 × 10ⁿ giving about four grid lines.
pub fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 {
        return (1.0, 1.0);
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
        .max(1.0);
    ((max / step).ceil() * step, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_up_to_a_nice_step() {
        assert_eq!(nice_axis(0.0), (1.0, 1.0));
        assert_eq!(nice_axis(3.0), (3.0, 1.0));
        assert_eq!(nice_axis(17.0), (20.0, 5.0));
        assert_eq!(nice_axis(1234.0), (1500.0, 500.0));
    }

    #[test]
    fn names_from_data_are_escaped() {
        let svg = stacked_columns(
            &[Series {
                name: "<rule>",
                color: "#123456",
                values: vec![1],
            }],
            &[Bucket {
                label: "a&b".into(),
                tick: Some("<t>".into()),
            }],
            "alerts",
        );
        assert!(svg.contains("&lt;rule&gt; · a&amp;b: 1 alerts"), "{svg}");
        assert!(!svg.contains("<rule>") && !svg.contains("<t>"));
    }
}
