//! `diff`: what a change to the rule library would change in the alerts, on history. The input is
//! read and decoded once and run through two pipelines, one per library, in the same order; their
//! alerts are paired by id (rule, entity, window or trigger, severity: `alert::policy`), then what
//! is left by rule, entity and trigger time, so an alert both libraries raise is one alert, and one
//! whose severity, departments, trigger time or mode (live, shadow) changed is listed as changed.
//!
//! **Two states, not one.** Rules do not write the state, but a library's lists classify the records
//! (`high_risk_prefixes`), and the classes are what the windows count: a change to the list is a
//! change to the state. So each library keeps its own; the records are decoded once for both.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::pipeline::Pipeline;
use crate::record::{Alert, Decoded};
use crate::source::FileSource;
use crate::telemetry::Progress;

use super::replay::{ReplayOptions, RulesChoice, Setup};

pub struct DiffOptions {
    pub usage: PathBuf,
    pub events: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// The library as it is (A).
    pub rules: PathBuf,
    /// The library to compare it with (B).
    pub against: PathBuf,
    /// Examples listed per rule and kind of difference.
    pub examples: usize,
    pub progress: bool,
}

/// An alert as the diff shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Example {
    pub alert_id: String,
    pub entity_type: String,
    pub entity: String,
    pub time: String,
    pub severity: String,
    pub departments: Vec<String>,
    /// `live`, or `shadow`: a shadow rule's alert reaches no department.
    pub mode: String,
    pub explanation: String,
}

impl Example {
    /// Its departments, or that it reaches none (a shadow rule's).
    fn goes_to(&self) -> String {
        match self.mode.as_str() {
            "shadow" => format!("shadow, not {}", self.departments.join("+")),
            _ => self.departments.join("+"),
        }
    }

    fn of(a: &Alert) -> Self {
        Example {
            alert_id: a.alert_id.clone(),
            entity_type: a.entity.kind.as_str().to_string(),
            entity: a.entity.key.clone(),
            time: a.trigger_event_time.to_string(),
            severity: a.severity.as_str().to_string(),
            departments: a
                .departments
                .iter()
                .map(|d| d.as_str().to_string())
                .collect(),
            mode: a.mode.as_str().to_string(),
            explanation: a.evidence.explanation.clone(),
        }
    }
}

/// An alert both libraries raise with another severity, other departments, another trigger time
/// (a changed threshold moves the record an alert of the same window fires on) or another mode.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Changed {
    pub a: Example,
    pub b: Example,
}

/// One rule's differences.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RuleDiff {
    pub rule: String,
    /// Alerts raised by A, by B, by both.
    pub a: u64,
    pub b: u64,
    pub both: u64,
    pub only_a: u64,
    pub only_b: u64,
    pub changed: u64,
    /// Up to `examples` of each, in input order.
    pub only_a_examples: Vec<Example>,
    pub only_b_examples: Vec<Example>,
    pub changed_examples: Vec<Changed>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub a_version: Option<String>,
    pub b_version: Option<String>,
    pub lines: u64,
    pub rejected: u64,
    /// Every rule of either library, by id.
    pub rules: Vec<RuleDiff>,
}

impl DiffReport {
    /// Rules with any difference.
    pub fn differing(&self) -> impl Iterator<Item = &RuleDiff> {
        self.rules
            .iter()
            .filter(|r| r.only_a + r.only_b + r.changed > 0)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let version = |v: &Option<String>| v.as_deref().unwrap_or("no rules").to_string();
        let _ = writeln!(s, "A: {} (rule set {})", self.a, version(&self.a_version));
        let _ = writeln!(s, "B: {} (rule set {})", self.b, version(&self.b_version));
        let _ = writeln!(
            s,
            "{} lines replayed through both ({} rejected)\n",
            self.lines, self.rejected
        );
        let w = self
            .rules
            .iter()
            .map(|r| r.rule.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            s,
            "  {:<w$}  {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "rule", "A", "B", "both", "only A", "only B", "changed"
        );
        for r in &self.rules {
            let _ = writeln!(
                s,
                "  {:<w$}  {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
                r.rule, r.a, r.b, r.both, r.only_a, r.only_b, r.changed
            );
        }
        let line = |e: &Example| {
            format!(
                "{} {} at {} [{}, {}]: {}",
                e.entity_type,
                e.entity,
                e.time,
                e.severity,
                e.goes_to(),
                e.explanation
            )
        };
        let mut any = false;
        for r in self.differing() {
            any = true;
            let _ = writeln!(s, "\n{}", r.rule);
            for (label, n, examples) in [
                ("only in A", r.only_a, &r.only_a_examples),
                ("only in B", r.only_b, &r.only_b_examples),
            ] {
                if n > 0 {
                    let _ = writeln!(s, "  {label} ({n}):");
                    for e in examples {
                        let _ = writeln!(s, "    {}", line(e));
                    }
                }
            }
            if r.changed > 0 {
                let _ = writeln!(s, "  changed ({}):", r.changed);
                for c in &r.changed_examples {
                    let _ = writeln!(
                        s,
                        "    {} {}: at {} [{}, {}] → at {} [{}, {}]: {}",
                        c.a.entity_type,
                        c.a.entity,
                        c.a.time,
                        c.a.severity,
                        c.a.goes_to(),
                        c.b.time,
                        c.b.severity,
                        c.b.goes_to(),
                        c.b.explanation
                    );
                }
            }
        }
        if !any {
            let _ = writeln!(s, "\nNo differences: both libraries raise the same alerts.");
        }
        s
    }
}

fn setup(opts: &DiffOptions, rules: &std::path::Path) -> anyhow::Result<Setup> {
    Setup::load(&ReplayOptions {
        usage: opts.usage.clone(),
        events: opts.events.clone(),
        config: opts.config.clone(),
        rules: RulesChoice::Dir(rules.to_path_buf()),
        ..Default::default()
    })
}

/// Replays the input through both libraries and compares their alerts.
pub fn run(opts: &DiffOptions) -> anyhow::Result<DiffReport> {
    let (sa, sb) = (setup(opts, &opts.rules)?, setup(opts, &opts.against)?);
    let scope = crate::pipeline::Scope::Everything;
    let (mut pa, mut pb) = (sa.pipeline(scope)?, sb.pipeline(scope)?);
    let mut source = FileSource::open(&opts.usage, opts.events.as_deref(), sa.cfg.decoder())?;
    let mut progress = Progress::new(opts.progress);
    // Alerts by id, in the order they came out, per library.
    let (mut a, mut b): (Vec<Alert>, Vec<Alert>) = (Vec::new(), Vec::new());
    while let Some(d) = source.next_decoded()? {
        let twin = Decoded {
            source: d.source,
            line: d.line,
            raw: d.raw,
            truncated: d.truncated,
            item: d.item.clone(),
        };
        pa.process(d);
        pb.process(twin);
        a.extend(pa.take_alerts());
        b.extend(pb.take_alerts());
        progress.tick(pa.counts.lines, source.progress());
    }
    for (p, out) in [(&mut pa, &mut a), (&mut pb, &mut b)] {
        p.finish();
        out.extend(p.take_alerts());
    }
    progress.done();
    let version = |p: &Pipeline| p.rules.as_ref().map(|e| e.version().to_string());
    Ok(DiffReport {
        a: opts.rules.display().to_string(),
        b: opts.against.display().to_string(),
        a_version: version(&pa),
        b_version: version(&pb),
        lines: pa.counts.lines,
        rejected: pa.counts.rejected_total(),
        rules: compare(&a, &b, opts.examples, rule_ids(&pa).chain(rule_ids(&pb))),
    })
}

fn rule_ids(p: &Pipeline) -> impl Iterator<Item = String> + '_ {
    p.rules
        .iter()
        .flat_map(|e| e.stats().iter().map(|s| s.id.clone()))
}

/// Matches the two alert lists by id, rule by rule; `rules` are listed even without alerts.
pub fn compare(
    a: &[Alert],
    b: &[Alert],
    examples: usize,
    rules: impl IntoIterator<Item = String>,
) -> Vec<RuleDiff> {
    let mut rules: BTreeMap<String, RuleDiff> = rules
        .into_iter()
        .map(|id| {
            let r = RuleDiff {
                rule: id.clone(),
                ..RuleDiff::default()
            };
            (id, r)
        })
        .collect();
    for (x, y) in pair(a, b) {
        match (x, y) {
            (Some(x), Some(y)) => {
                let r = entry(&mut rules, &x.rule.id);
                r.a += 1;
                r.b += 1;
                r.both += 1;
                if x.severity != y.severity
                    || x.departments != y.departments
                    || x.trigger_event_time != y.trigger_event_time
                    || x.mode != y.mode
                {
                    r.changed += 1;
                    if r.changed_examples.len() < examples {
                        r.changed_examples.push(Changed {
                            a: Example::of(x),
                            b: Example::of(y),
                        });
                    }
                }
            }
            (Some(x), None) => {
                let r = entry(&mut rules, &x.rule.id);
                r.a += 1;
                r.only_a += 1;
                if r.only_a_examples.len() < examples {
                    r.only_a_examples.push(Example::of(x));
                }
            }
            (None, Some(y)) => {
                let r = entry(&mut rules, &y.rule.id);
                r.b += 1;
                r.only_b += 1;
                if r.only_b_examples.len() < examples {
                    r.only_b_examples.push(Example::of(y));
                }
            }
            (None, None) => {}
        }
    }
    rules.into_values().collect()
}

/// Pairs the alerts of A with those of B: first by id (rule, entity, window or trigger, severity:
/// the same alert, though a threshold can move the record of its window it fires on), then what is
/// left by rule, entity and trigger time (the same alert with another severity, whose id differs);
/// unpaired alerts are one library's only. In the order of A, then B's unpaired.
fn pair<'a>(a: &'a [Alert], b: &'a [Alert]) -> Vec<(Option<&'a Alert>, Option<&'a Alert>)> {
    let mut b_by_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (j, y) in b.iter().enumerate() {
        b_by_id.entry(y.alert_id.as_str()).or_insert(j);
    }
    let mut taken = vec![false; b.len()];
    let mut paired: Vec<Option<usize>> = a
        .iter()
        .map(|x| {
            let j = *b_by_id.get(x.alert_id.as_str())?;
            (!taken[j]).then(|| {
                taken[j] = true;
                j
            })
        })
        .collect();
    type Occasion<'a> = (&'a str, &'a str, i64);
    let occasion =
        |x: &'a Alert| -> Occasion<'a> { (&x.rule.id, &x.entity.key, x.trigger_event_time.utc) };
    let mut b_left: BTreeMap<Occasion<'a>, std::collections::VecDeque<usize>> = BTreeMap::new();
    for (j, y) in b.iter().enumerate().filter(|&(j, _)| !taken[j]) {
        b_left.entry(occasion(y)).or_default().push_back(j);
    }
    for (i, x) in a.iter().enumerate() {
        if paired[i].is_none() {
            if let Some(j) = b_left.get_mut(&occasion(x)).and_then(|q| q.pop_front()) {
                taken[j] = true;
                paired[i] = Some(j);
            }
        }
    }
    let mut out: Vec<_> = a
        .iter()
        .zip(&paired)
        .map(|(x, j)| (Some(x), j.map(|j| &b[j])))
        .collect();
    out.extend(
        b.iter()
            .enumerate()
            .filter(|&(j, _)| !taken[j])
            .map(|(_, y)| (None, Some(y))),
    );
    out
}

fn entry<'a>(rules: &'a mut BTreeMap<String, RuleDiff>, id: &str) -> &'a mut RuleDiff {
    rules.entry(id.to_string()).or_insert_with(|| RuleDiff {
        rule: id.to_string(),
        ..RuleDiff::default()
    })
}
