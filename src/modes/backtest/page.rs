//! `replay --report FILE`: one self-contained HTML page of a back-test — inline CSS and inline SVG,
//! no script, nothing fetched — so it opens from a file, a mail attachment or a ticket as it is.
//!
//! Every chart shares one time axis: the hours of the usage records and of the alerts, in buckets
//! of 1 h or more so that a long replay still fits (at most `MAX_BUCKETS` columns).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::escape::escape;
use super::labels::{percent, Score};
use super::svg::{self, Bucket, Layout, Row, Series};
use super::tally::{hour_of, Tally, HOUR};
use crate::modes::replay::{group, ReplayReport};
use crate::record::{Department, EventTime, Severity};

/// Columns of a time chart at most; more hours are merged into wider buckets.
const MAX_BUCKETS: i64 = 168;
/// Entities listed per rule.
const TOP_ENTITIES: usize = 5;

/// Colours of the rules, in id order (cycling beyond): Tableau 20, readable on white.
const RULE_COLORS: [&str; 20] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a",
    "#d62728", "#ff9896", "#9467bd", "#c5b0d5",
];

fn department_color(d: Department) -> &'static str {
    match d {
        Department::Fraud => "#e15759",
        Department::Collections => "#4e79a7",
        Department::KeyAccounts => "#b07aa1",
        Department::Care => "#59a14f",
    }
}

fn severity_color(s: Severity) -> &'static str {
    match s {
        Severity::Info => "#bab0ac",
        Severity::Low => "#76b7b2",
        Severity::Medium => "#edc948",
        Severity::High => "#f28e2b",
        Severity::Critical => "#d62728",
    }
}

const USAGE_COLOR: &str = "#4e79a7";
const EVENTS_COLOR: &str = "#f28e2b";

/// What the page shows.
pub struct Page<'a> {
    pub report: &'a ReplayReport,
    pub tally: &'a Tally,
    pub score: Option<&'a Score>,
    pub usage: &'a Path,
    pub events: Option<&'a Path>,
}

/// The time axis every chart shares.
struct Axis {
    /// UTC hour of the first bucket's start.
    first: i64,
    /// Hours per bucket.
    width: i64,
    count: usize,
    offset_min: i16,
}

impl Axis {
    /// Over the usage records' hours and the alerts' (account events may reach weeks back: history).
    fn of(tally: &Tally, volume: &BTreeMap<i64, [u64; 2]>) -> Option<Axis> {
        let usage = volume.iter().filter(|(_, c)| c[0] > 0).map(|(h, _)| *h);
        let alerts = tally
            .alerts
            .by_rule_hour
            .values()
            .flat_map(|m| m.keys().copied());
        let (lo, hi) = usage
            .chain(alerts)
            .fold(None, |acc: Option<(i64, i64)>, h| {
                Some(acc.map_or((h, h), |(lo, hi)| (lo.min(h), hi.max(h))))
            })?;
        let offset_min = tally.volume.offset_min().unwrap_or(0);
        let span = hi - lo + 1;
        let width = [1, 2, 3, 6, 12, 24, 48, 168]
            .into_iter()
            .find(|w| ceil_div(span, *w) <= MAX_BUCKETS)
            .unwrap_or_else(|| ceil_div(span, MAX_BUCKETS));
        // Buckets start on local multiples of their width (midnight for days).
        let local = |h: i64| hour_of(h * HOUR + offset_min as i64 * 60);
        let first = lo - local(lo).rem_euclid(width);
        let count = (hi - first) / width + 1;
        Some(Axis {
            first,
            width,
            count: count as usize,
            offset_min,
        })
    }

    fn index(&self, hour: i64) -> Option<usize> {
        let i = (hour - self.first).div_euclid(self.width);
        (0..self.count as i64).contains(&i).then_some(i as usize)
    }

    fn values(&self, hours: &BTreeMap<i64, u64>) -> Vec<u64> {
        let mut v = vec![0; self.count];
        for (h, n) in hours {
            if let Some(i) = self.index(*h) {
                v[i] += n;
            }
        }
        v
    }

    fn time(&self, hour: i64) -> String {
        minute(EventTime {
            utc: hour * HOUR,
            offset_min: self.offset_min,
        })
    }

    fn buckets(&self) -> Vec<Bucket> {
        let days = ceil_div(self.count as i64 * self.width, 24);
        // About a dozen day labels at most.
        let stride = ceil_div(days, 12).max(1);
        (0..self.count as i64)
            .map(|i| {
                let start = self.first + i * self.width;
                let local = hour_of(start * HOUR + self.offset_min as i64 * 60);
                let label = if self.width == 1 {
                    self.time(start)
                } else {
                    format!("{} – {}", self.time(start), self.time(start + self.width))
                };
                let day = local.div_euclid(24);
                let tick = (local.rem_euclid(24) < self.width.min(24) && day % stride == 0)
                    .then(|| self.time(start).get(..10).unwrap_or_default().to_string());
                Bucket { label, tick }
            })
            .collect()
    }

    fn describe(&self) -> String {
        let unit = match self.width {
            1 => "hour".to_string(),
            24 => "day".to_string(),
            168 => "week".to_string(),
            w => format!("{w} hours"),
        };
        format!(
            "{} to {}, one column per {unit}",
            self.time(self.first),
            self.time(self.first + self.count as i64 * self.width)
        )
    }
}

/// `2026-11-02T14:05:09+01:00` → `2026-11-02 14:05`: the offset is the input's, said once.
fn minute(t: EventTime) -> String {
    let t = t.to_string();
    t.get(..16).unwrap_or(&t).replacen('T', " ", 1)
}

/// `a / b` rounded up, for positive `b` (`i64::div_ceil` is not stable).
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1).div_euclid(b)
}

/// The whole page.
pub fn render(p: &Page<'_>) -> String {
    let r = p.report;
    let volume = p.tally.volume.hours();
    let axis = Axis::of(p.tally, &volume);
    let rules: Vec<&str> = rule_ids(p);
    let color = |rule: &str| {
        RULE_COLORS[rules.iter().position(|r| *r == rule).unwrap_or(0) % RULE_COLORS.len()]
    };
    let mut s = String::with_capacity(64 * 1024);
    let title = format!(
        "cdrguard back-test · {}",
        p.usage.file_name().map_or_else(
            || p.usage.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        )
    );
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    header(&mut s, p, axis.as_ref());
    if let Some(score) = p.score {
        labels_section(&mut s, score);
    }

    let _ = write!(
        s,
        "<section id=\"alerts-by-rule\"><h2>Alerts over time, by rule</h2>"
    );
    match &axis {
        Some(axis) if p.tally.alerts.total > 0 => {
            let series: Vec<Series<'_>> = p
                .tally
                .alerts
                .by_rule_hour
                .iter()
                .map(|(rule, hours)| Series {
                    name: rule,
                    color: color(rule),
                    values: axis.values(hours),
                })
                .collect();
            let _ = write!(
                s,
                "<p class=\"note\">Trigger time, {}.</p>{}",
                escape(&axis.describe()),
                svg::stacked_columns(&series, &axis.buckets(), "alerts")
            );
            legend(
                &mut s,
                series
                    .iter()
                    .map(|x| (x.name, x.color, x.values.iter().sum())),
            );
        }
        _ => s.push_str("<p class=\"empty\">No alerts.</p>"),
    }
    s.push_str("</section>\n");

    let _ = write!(
        s,
        "<section id=\"alerts-by-department\"><h2>Alerts over time, by department</h2>"
    );
    match &axis {
        Some(axis) if p.tally.alerts.total > 0 => {
            let series: Vec<Series<'_>> = p
                .tally
                .alerts
                .by_department_hour
                .iter()
                .map(|(d, hours)| Series {
                    name: d.as_str(),
                    color: department_color(*d),
                    values: axis.values(hours),
                })
                .collect();
            let _ = write!(
                s,
                "<p class=\"note\">An alert routed to two departments counts in both.</p>{}",
                svg::stacked_columns(&series, &axis.buckets(), "alerts")
            );
            legend(
                &mut s,
                series
                    .iter()
                    .map(|x| (x.name, x.color, x.values.iter().sum())),
            );
        }
        _ => s.push_str("<p class=\"empty\">No alerts.</p>"),
    }
    s.push_str("</section>\n");

    severity_section(&mut s, p);
    entities_section(&mut s, p);
    timing_section(&mut s, r);
    rejects_section(&mut s, r);
    volume_section(&mut s, axis.as_ref(), &volume);

    let _ = write!(
        s,
        "<footer>Written by cdrguard {} (commit {}) · replay took {:.2} s, {} records/s.</footer>\n</main>\n</body>\n</html>\n",
        escape(env!("CARGO_PKG_VERSION")),
        escape(env!("CDRGUARD_GIT_COMMIT")),
        r.elapsed.as_secs_f64(),
        group(r.records_per_sec() as u64)
    );
    s
}

/// Rules that ran or alerted, by id: the order of their colours.
fn rule_ids<'a>(p: &Page<'a>) -> Vec<&'a str> {
    let mut ids: Vec<&str> = p
        .report
        .rules
        .iter()
        .flat_map(|r| r.rules.iter().map(|x| x.id.as_str()))
        .chain(p.tally.alerts.by_rule_hour.keys().map(String::as_str))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn header(s: &mut String, p: &Page<'_>, axis: Option<&Axis>) {
    let r = p.report;
    let c = &r.counts;
    let mut inputs = format!(
        "usage <code>{}</code>",
        escape(&p.usage.display().to_string())
    );
    if let Some(e) = p.events {
        let _ = write!(
            inputs,
            ", account events <code>{}</code>",
            escape(&e.display().to_string())
        );
    }
    let rules = r.rules.as_ref().map_or_else(
        || "no rules".to_string(),
        |x| {
            format!(
                "rule set <code>{}</code>, {} rules",
                escape(&x.ruleset_version),
                x.rules_active
            )
        },
    );
    let period = axis.map_or_else(
        || "no usage records".to_string(),
        |a| {
            escape(&format!(
                "{} to {}",
                a.time(a.first),
                a.time(a.first + a.count as i64 * a.width)
            ))
        },
    );
    let _ = write!(
        s,
        "<p class=\"sub\">{inputs} · {rules} · {period}</p>\n<div class=\"cards\">"
    );
    let cards: [(&str, String); 6] = [
        ("lines read", group(c.lines)),
        ("usage records", group(c.usage_accepted)),
        ("account events", group(c.events_accepted)),
        ("rejected", group(c.rejected_total())),
        ("duplicates", group(c.duplicates)),
        ("alerts", group(r.alerts)),
    ];
    for (name, v) in cards {
        let _ = write!(s, "<div class=\"card\"><b>{v}</b><span>{name}</span></div>");
    }
    if let Some(score) = p.score {
        let o = &score.overall;
        let _ = write!(
            s,
            "<div class=\"card\"><b>{}</b><span>precision</span></div><div class=\"card\"><b>{}</b><span>recall</span></div>",
            percent(o.precision),
            percent(o.recall)
        );
    }
    s.push_str("</div>\n");
}

fn labels_section(s: &mut String, score: &Score) {
    let o = &score.overall;
    let _ = write!(
        s,
        "<section id=\"labels\"><h2>Against confirmed cases</h2><p class=\"note\"><code>{}</code>: {} cases. Precision: alerted entities a case confirms ({} of {}); recall: cases an alert found ({} of {}). Matched by rule, entity type and entity key.</p>",
        escape(&score.labels_file.display().to_string()),
        o.labelled,
        o.confirmed,
        o.alerted,
        o.found,
        o.labelled
    );
    s.push_str("<table><thead><tr><th>rule</th><th>labelled</th><th>alerted</th><th>confirmed</th><th>precision</th><th>recall</th><th>missed</th><th>unexpected</th></tr></thead><tbody>");
    for r in score.rules.iter().chain(std::iter::once(o)) {
        let bad = |n: u64| if n > 0 { " class=\"bad\"" } else { "" };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td{}>{}</td></tr>",
            r.rule.as_deref().map_or_else(|| "<b>all rules</b>".to_string(), escape),
            r.labelled,
            r.alerted,
            r.confirmed,
            percent(r.precision),
            percent(r.recall),
            bad(r.missed_total),
            r.missed_total,
            bad(r.unexpected_total),
            r.unexpected_total
        );
    }
    s.push_str("</tbody></table>");
    let listed: Vec<_> = score
        .rules
        .iter()
        .filter(|r| r.missed_total + r.unexpected_total > 0)
        .collect();
    if !listed.is_empty() {
        s.push_str("<h3>Missed and unexpected</h3><table><thead><tr><th>rule</th><th></th><th>entity</th><th>alerts</th><th>first</th><th>severity</th><th>explanation</th></tr></thead><tbody>");
    }
    for r in &listed {
        let rule = escape(r.rule.as_deref().unwrap_or(""));
        for c in &r.missed {
            let _ = write!(
                s,
                "<tr><td>{rule}</td><td class=\"bad\">missed</td><td>{} <code>{}</code></td><td>0</td><td></td><td></td><td></td></tr>",
                c.entity_type.map_or("", |t| t.as_str()),
                escape(&c.entity_key)
            );
        }
        for u in &r.unexpected {
            let _ = write!(
                s,
                "<tr><td>{rule}</td><td class=\"bad\">unexpected</td><td class=\"nw\">{} <code>{}</code></td><td>{}</td><td class=\"nw\">{}</td><td>{}</td><td>{}</td></tr>",
                u.entity_type,
                escape(&u.entity_key),
                u.alerts,
                minute(u.first),
                u.severity,
                escape(&u.explanation)
            );
        }
        let hidden = (r.missed_total - r.missed.len() as u64)
            + (r.unexpected_total - r.unexpected.len() as u64);
        if hidden > 0 {
            let _ = write!(
                s,
                "<tr><td>{rule}</td><td colspan=\"6\" class=\"note\">{hidden} more not listed</td></tr>"
            );
        }
    }
    if !listed.is_empty() {
        s.push_str("</tbody></table>");
    }
    s.push_str("</section>\n");
}

fn severity_section(s: &mut String, p: &Page<'_>) {
    s.push_str("<section id=\"severity\"><h2>Severity mix</h2>");
    let by_rule = &p.tally.alerts.by_rule_severity;
    if by_rule.is_empty() {
        s.push_str("<p class=\"empty\">No alerts.</p></section>\n");
        return;
    }
    let mut all: BTreeMap<Severity, u64> = BTreeMap::new();
    let row = |label: &str, counts: &BTreeMap<Severity, u64>| Row {
        label: label.to_string(),
        segments: counts
            .iter()
            .map(|(sev, n)| {
                (
                    *n as f64,
                    severity_color(*sev),
                    format!("{label} · {sev}: {n} alerts"),
                )
            })
            .collect(),
        note: group(counts.values().sum()),
    };
    // All rules together are the legend's totals: as a bar they would dwarf every rule's.
    let mut rows: Vec<Row> = Vec::new();
    for (rule, counts) in by_rule {
        for (sev, n) in counts {
            *all.entry(*sev).or_default() += n;
        }
        rows.push(row(rule, counts));
    }
    s.push_str(&svg::bars(&rows, Layout::Stacked));
    legend(
        s,
        Severity::ALL.iter().map(|sev| {
            (
                sev.as_str(),
                severity_color(*sev),
                all.get(sev).copied().unwrap_or(0),
            )
        }),
    );
    s.push_str("</section>\n");
}

fn entities_section(s: &mut String, p: &Page<'_>) {
    let _ = write!(
        s,
        "<section id=\"entities\"><h2>Top entities per rule</h2><p class=\"note\">The {TOP_ENTITIES} entities with the most alerts of each rule; the time and the explanation are the first alert's.</p>"
    );
    let by_rule = &p.tally.alerts.by_rule_entity;
    if by_rule.is_empty() {
        s.push_str("<p class=\"empty\">No alerts.</p>");
    } else {
        s.push_str("<table><thead><tr><th>rule</th><th>entity</th><th>alerts</th><th>highest</th><th>first</th><th>explanation</th></tr></thead><tbody>");
    }
    for (rule, entities) in by_rule {
        let mut top: Vec<_> = entities.iter().collect();
        top.sort_by(|a, b| {
            b.1.alerts
                .cmp(&a.1.alerts)
                .then(a.1.first.utc.cmp(&b.1.first.utc))
                .then(a.0.cmp(b.0))
        });
        let more = top.len().saturating_sub(TOP_ENTITIES);
        for (i, (e, a)) in top.into_iter().take(TOP_ENTITIES).enumerate() {
            let rule_cell = if i == 0 {
                format!(
                    "{}<br><span class=\"note\">{} entities</span>",
                    escape(rule),
                    group(entities.len() as u64)
                )
            } else {
                String::new()
            };
            let _ = write!(
                s,
                "<tr{}><td>{rule_cell}</td><td class=\"nw\">{} <code>{}</code></td><td>{}</td><td class=\"nw\"><span class=\"sev\" style=\"background:{}\"></span>{}</td><td class=\"nw\">{}</td><td>{}</td></tr>",
                if i == 0 { " class=\"first\"" } else { "" },
                e.kind,
                escape(&e.key),
                a.alerts,
                severity_color(a.severity),
                a.severity,
                minute(a.first),
                escape(&a.explanation)
            );
        }
        if more > 0 {
            let _ = write!(
                s,
                "<tr><td></td><td colspan=\"5\" class=\"note\">and {} more</td></tr>",
                group(more as u64)
            );
        }
    }
    if !by_rule.is_empty() {
        s.push_str("</tbody></table>");
    }
    s.push_str("</section>\n");
}

fn timing_section(s: &mut String, r: &ReplayReport) {
    s.push_str("<section id=\"timing\"><h2>Evaluation time per rule</h2>");
    let Some(rules) = r.rules.as_ref().filter(|x| !x.rules.is_empty()) else {
        s.push_str("<p class=\"empty\">No rules ran.</p></section>\n");
        return;
    };
    s.push_str("<p class=\"note\">Wall time per evaluation, mean (dark) over p99 (light), in µs; gated evaluations were decided by the rule's gate without running its script.</p>");
    let rows: Vec<Row> = rules
        .rules
        .iter()
        .map(|x| Row {
            label: x.id.clone(),
            segments: vec![
                (
                    x.p99_us,
                    "#aec7e8",
                    format!("{} p99: {:.2} µs", x.id, x.p99_us),
                ),
                (
                    x.mean_us,
                    "#1f77b4",
                    format!("{} mean: {:.2} µs", x.id, x.mean_us),
                ),
            ],
            note: format!("{:.1} / {:.1} µs", x.mean_us, x.p99_us),
        })
        .collect();
    s.push_str(&svg::bars(&rows, Layout::Overlaid));
    s.push_str("<table><thead><tr><th>rule</th><th>version</th><th>evaluations</th><th>gated</th><th>alerts</th><th>errors</th><th>mean µs</th><th>p99 µs</th></tr></thead><tbody>");
    for x in &rules.rules {
        let _ = write!(
            s,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            escape(&x.id),
            if x.quarantined { " <b class=\"bad\">quarantined</b>" } else { "" },
            escape(&x.version),
            group(x.evaluations),
            group(x.gated),
            group(x.alerts),
            if x.errors > 0 { " class=\"bad\"" } else { "" },
            group(x.errors),
            x.mean_us,
            x.p99_us
        );
    }
    s.push_str("</tbody></table></section>\n");
}

fn rejects_section(s: &mut String, r: &ReplayReport) {
    s.push_str("<section id=\"rejects\"><h2>Rejected input by reason</h2>");
    let c = &r.counts;
    if c.rejected.is_empty() {
        s.push_str("<p class=\"empty\">No line was rejected.</p></section>\n");
        return;
    }
    let rows: Vec<Row> = c
        .rejected
        .iter()
        .map(|(reason, n)| Row {
            label: reason.as_str().to_string(),
            segments: vec![(
                *n as f64,
                "#e15759",
                format!("{}: {n} lines", reason.as_str()),
            )],
            note: group(*n),
        })
        .collect();
    let _ = writeln!(
        s,
        "<p class=\"note\">{} of {} lines{}.</p>{}</section>",
        group(c.rejected_total()),
        group(c.lines),
        r.dead_letter.as_ref().map_or_else(String::new, |p| format!(
            "; the lines are in <code>{}</code>",
            escape(&p.display().to_string())
        )),
        svg::bars(&rows, Layout::Stacked)
    );
}

fn volume_section(s: &mut String, axis: Option<&Axis>, volume: &BTreeMap<i64, [u64; 2]>) {
    s.push_str("<section id=\"volume\"><h2>Input volume over event time</h2>");
    let Some(axis) = axis else {
        s.push_str("<p class=\"empty\">No usage records.</p></section>\n");
        return;
    };
    let pick =
        |k: usize| -> BTreeMap<i64, u64> { volume.iter().map(|(h, c)| (*h, c[k])).collect() };
    let series = [
        Series {
            name: "usage records",
            color: USAGE_COLOR,
            values: axis.values(&pick(0)),
        },
        Series {
            name: "account events",
            color: EVENTS_COLOR,
            values: axis.values(&pick(1)),
        },
    ];
    let outside: u64 = volume
        .iter()
        .filter(|(h, _)| axis.index(**h).is_none())
        .map(|(_, c)| c[0] + c[1])
        .sum();
    let note = if outside > 0 {
        format!(
            " {} records (account history: invoices and payments before the period) fall outside it and are not drawn.",
            group(outside)
        )
    } else {
        String::new()
    };
    let _ = write!(
        s,
        "<p class=\"note\">Decoded records by their event time, duplicates and late ones included (lines that did not decode have no time: see the rejects).{}</p>{}",
        escape(&note),
        svg::stacked_columns(&series, &axis.buckets(), "records")
    );
    legend(
        s,
        series
            .iter()
            .map(|x| (x.name, x.color, x.values.iter().sum())),
    );
    s.push_str("</section>\n");
}

fn legend<'a>(s: &mut String, items: impl Iterator<Item = (&'a str, &'a str, u64)>) {
    s.push_str("<ul class=\"legend\">");
    for (name, color, total) in items {
        let _ = write!(
            s,
            "<li><span class=\"swatch\" style=\"background:{}\"></span>{} <span class=\"note\">{}</span></li>",
            escape(color),
            escape(name),
            group(total)
        );
    }
    s.push_str("</ul>");
}

const CSS: &str = "
:root { color-scheme: light; }
body { margin: 0; background: #f6f6f4; color: #222; font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 20px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 8px; }
h3 { font-size: 14px; margin: 16px 0 6px; }
section { background: #fff; border: 1px solid #e2e2de; border-radius: 6px; padding: 14px 16px; margin: 14px 0; }
.sub, .note { color: #666; }
.note { font-size: 12px; margin: 2px 0 8px; }
.empty { color: #888; font-style: italic; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.card { flex: 1 1 0; background: #fff; border: 1px solid #e2e2de; border-radius: 6px; padding: 8px 12px; min-width: 80px; }
.card b { display: block; font-size: 20px; }
.card span { color: #666; font-size: 12px; }
svg { display: block; width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
svg .axis, svg .label { text-anchor: end; }
.legend { list-style: none; padding: 0; margin: 6px 0 0; display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; }
.swatch, .sev { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; font-size: 12px; margin-top: 8px; }
th, td { text-align: left; padding: 3px 8px 3px 0; border-bottom: 1px solid #eee; vertical-align: top; }
th { color: #555; font-weight: 600; }
tr.first td { border-top: 1px solid #ccc; }
td:nth-child(n+3) { font-variant-numeric: tabular-nums; }
.bad { color: #c0392b; }
.nw { white-space: nowrap; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
footer { color: #888; font-size: 12px; margin-top: 20px; }
";
