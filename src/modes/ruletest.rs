//! `cdrguard test`: runs every rule's test cases through the real pipeline and compares the alerts.
//!
//! A case is a folder — `fixtures/rules/<rule_id>/<case>/` or `<rule file's folder>/<rule_id>.cases/<case>/`
//! beside the rule — holding `usage.ndjson`, optionally `events.ndjson` and `config.toml`, and
//! `expect.json`:
//!
//! ```json
//! { "description": "3 calls to a high-risk range within the hour",
//!   "alerts": [ { "rule": "irsf_high_risk_destination", "entity": "33612345678", "severity": "high" } ] }
//! ```
//!
//! The whole library runs (a rule may need another: a Wangiri callback needs the Wangiri alert), and the
//! alerts compared are those of the case's rule plus any rule the expectation names. A case with
//! `"alerts": []` is a near miss: nothing of its rule may fire.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::modes::replay::{self, ReplayOptions, RulesChoice};
use crate::record::Alert;
use crate::rules::library::CASES_SUFFIX;
use crate::rules::RuleSources;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub rule: String,
    pub entity: String,
    pub severity: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    #[serde(default)]
    description: String,
    alerts: Vec<Expected>,
}

/// One case's outcome.
#[derive(Debug)]
pub struct CaseResult {
    pub rule: String,
    pub case: String,
    pub dir: PathBuf,
    pub description: String,
    pub missing: Vec<Expected>,
    pub unexpected: Vec<Expected>,
    /// Script failures of the rules compared (a typo'd method, a bad verdict key): each fails the
    /// case, with its `file:line:col`, however the alerts compare.
    pub script_errors: Vec<String>,
    /// The case could not run (bad files); counted as a failure.
    pub error: Option<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.script_errors.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct TestReport {
    pub cases: Vec<CaseResult>,
    /// Rules with no case at all.
    pub untested: Vec<String>,
    /// Case folders named after no rule.
    pub orphans: Vec<PathBuf>,
}

impl TestReport {
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed()).count()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for c in &self.cases {
            let status = if c.passed() { "PASS" } else { "FAIL" };
            let _ = writeln!(s, "{status} {}/{}  {}", c.rule, c.case, c.description);
            if let Some(e) = &c.error {
                let _ = writeln!(s, "     error: {e}");
            }
            for e in &c.script_errors {
                let _ = writeln!(s, "     script error: {e}");
            }
            for m in &c.missing {
                let _ = writeln!(
                    s,
                    "     - expected, not raised: {} {} {}",
                    m.rule, m.entity, m.severity
                );
            }
            for u in &c.unexpected {
                let _ = writeln!(
                    s,
                    "     + raised, not expected: {} {} {}",
                    u.rule, u.entity, u.severity
                );
            }
        }
        for r in &self.untested {
            let _ = writeln!(s, "warning: rule {r} has no test cases");
        }
        for o in &self.orphans {
            let _ = writeln!(s, "warning: {} names no rule", o.display());
        }
        let _ = writeln!(
            s,
            "{} cases: {} passed, {} failed",
            self.cases.len(),
            self.cases.len() - self.failed(),
            self.failed()
        );
        s
    }
}

/// Finds and runs the cases of every rule in `rules_dir`; `cases_dir` holds `<rule_id>/<case>/`.
pub fn run(rules_dir: &Path, cases_dir: &Path) -> anyhow::Result<TestReport> {
    let sources = RuleSources::read(rules_dir)?;
    let mut rules: Vec<(String, PathBuf)> = Vec::new();
    for f in &sources.scripts {
        let stem = f
            .path
            .rsplit('/')
            .next()
            .unwrap_or(&f.path)
            .trim_end_matches(".rhai")
            .to_string();
        let beside = rules_dir
            .join(&f.path)
            .with_file_name(format!("{stem}{CASES_SUFFIX}"));
        rules.push((stem, beside));
    }
    let mut report = TestReport::default();
    for (rule, beside) in &rules {
        let mut case_dirs = Vec::new();
        for parent in [cases_dir.join(rule), beside.clone()] {
            if parent.is_dir() {
                let mut dirs: Vec<PathBuf> = std::fs::read_dir(&parent)
                    .with_context(|| format!("reading {}", parent.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir())
                    .collect();
                dirs.sort();
                case_dirs.extend(dirs);
            }
        }
        if case_dirs.is_empty() {
            report.untested.push(rule.clone());
        }
        for dir in case_dirs {
            report.cases.push(run_case(rule, &dir, rules_dir));
        }
    }
    if cases_dir.is_dir() {
        for e in std::fs::read_dir(cases_dir)?.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().to_string();
            if e.path().is_dir() && !rules.iter().any(|(r, _)| *r == name) {
                report.orphans.push(e.path());
            }
        }
        report.orphans.sort();
    }
    Ok(report)
}

fn run_case(rule: &str, dir: &Path, rules_dir: &Path) -> CaseResult {
    let mut result = CaseResult {
        rule: rule.to_string(),
        case: dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        dir: dir.to_path_buf(),
        description: String::new(),
        missing: vec![],
        unexpected: vec![],
        script_errors: vec![],
        error: None,
    };
    // Per-case replay logs ("Rules loaded") would drown the report; failures show in the diff.
    let outcome =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            compare(rule, dir, rules_dir)
        });
    match outcome {
        Ok((description, missing, unexpected, script_errors)) => {
            result.description = description;
            result.missing = missing;
            result.unexpected = unexpected;
            result.script_errors = script_errors;
        }
        Err(e) => result.error = Some(format!("{e:#}")),
    }
    result
}

type Diff = (String, Vec<Expected>, Vec<Expected>, Vec<String>);

fn compare(rule: &str, dir: &Path, rules_dir: &Path) -> anyhow::Result<Diff> {
    let expect_path = dir.join("expect.json");
    let text = std::fs::read_to_string(&expect_path)
        .with_context(|| format!("reading {}", expect_path.display()))?;
    let expect: Expectation = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", expect_path.display()))?;
    let (alerts, rules_report) = replay_case(dir, rules_dir)?;
    let mut rules_compared: BTreeSet<&str> =
        expect.alerts.iter().map(|e| e.rule.as_str()).collect();
    rules_compared.insert(rule);
    let script_errors: Vec<String> = rules_report
        .iter()
        .flat_map(|r| &r.rules)
        .filter(|r| r.errors > 0 && rules_compared.contains(r.id.as_str()))
        .map(|r| {
            format!(
                "{} failed {} of {} evaluations; last: {}",
                r.id,
                r.errors,
                r.evaluations,
                r.last_error.as_deref().unwrap_or("?")
            )
        })
        .collect();
    // Compared as multisets: "once per crossing" means two crossings give two alerts, not one.
    let mut actual: Vec<Expected> = alerts
        .iter()
        .filter(|a| rules_compared.contains(a.rule.id.as_str()))
        .map(|a| Expected {
            rule: a.rule.id.clone(),
            entity: a.entity.key.clone(),
            severity: serde_json::to_value(a.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        })
        .collect();
    let mut missing = Vec::new();
    for e in expect.alerts {
        match actual.iter().position(|a| *a == e) {
            Some(i) => {
                actual.swap_remove(i);
            }
            None => missing.push(e),
        }
    }
    actual.sort();
    missing.sort();
    let unexpected = actual;
    Ok((expect.description, missing, unexpected, script_errors))
}

/// Replays a case folder with the library; the alerts raised and what the rules did.
pub fn replay_case(
    dir: &Path,
    rules_dir: &Path,
) -> anyhow::Result<(Vec<Alert>, Option<crate::rules::RulesReport>)> {
    let usage = dir.join("usage.ndjson");
    let events = dir.join("events.ndjson");
    let config = dir.join("config.toml");
    let opts = ReplayOptions {
        usage: usage.clone(),
        events: events.exists().then_some(events),
        no_dead_letter: true,
        config: config.exists().then_some(config),
        rules: RulesChoice::Dir(rules_dir.to_path_buf()),
        // A rule in shadow is a candidate: its cases test it as they will once it is promoted.
        shadow_in_alerts: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    let (report, _) = replay::run_to(&opts, &mut out)
        .with_context(|| format!("replaying {}", usage.display()))?;
    let alerts = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<Alert>(l).context("reading back an alert"))
        .collect::<anyhow::Result<_>>()?;
    Ok((alerts, report.rules))
}
