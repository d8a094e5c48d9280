//! Confirmed cases (`replay --labels FILE`) and the score of a replay against them.
//!
//! Two formats, told apart by the first character that is not white space:
//! - `[`: the JSON array `gen --labels` writes, `{"rule","entity","entity_type","severity","story"}`
//!   per alert a story must raise (only `rule`, `entity` and `entity_type` are read; a file written
//!   before `entity_type` existed matches the entity key under any type);
//! - anything else: CSV `rule,entity_type,entity_key`, one confirmed case a line, header optional,
//!   blank lines and `#` comments skipped.
//!
//! A case matches an alert by (rule, entity type, entity key). Precision is over the entities a rule
//! alerted on (a rule that alerts twice on one entity raised one case), recall over the cases.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tally::{Alerts, EntityKey};
use crate::record::{EntityType, EventTime, Severity};

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not the JSON `gen --labels` writes: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Csv {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// A confirmed case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Case {
    pub rule: String,
    /// `None`: a `gen` labels file from before `entity_type`; matches the key under any type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<EntityType>,
    pub entity_key: String,
}

impl Case {
    fn matches(&self, e: &EntityKey) -> bool {
        self.entity_key == e.key && self.entity_type.is_none_or(|t| t == e.kind)
    }
}

/// The confirmed cases of a run, each once.
#[derive(Clone, Debug)]
pub struct Labels {
    pub path: PathBuf,
    pub cases: BTreeSet<Case>,
}

/// One element of what `gen --labels` writes; severity and story are not part of the match.
#[derive(Deserialize)]
struct GenLabel {
    rule: String,
    entity: String,
    #[serde(default)]
    entity_type: Option<EntityType>,
}

const CSV_HEADER: [&str; 3] = ["rule", "entity_type", "entity_key"];

impl Labels {
    pub fn read(path: &Path) -> Result<Labels, LabelsError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Labels::parse(path, &text)
    }

    /// Parses either format (see the module doc); `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Labels, LabelsError> {
        let cases = if text.trim_start().starts_with('[') {
            let labels: Vec<GenLabel> =
                serde_json::from_str(text).map_err(|source| LabelsError::Json {
                    path: path.to_path_buf(),
                    source,
                })?;
            labels
                .into_iter()
                .map(|l| Case {
                    rule: l.rule,
                    entity_type: l.entity_type,
                    entity_key: l.entity,
                })
                .collect()
        } else {
            parse_csv(path, text)?
        };
        Ok(Labels {
            path: path.to_path_buf(),
            cases,
        })
    }
}

fn parse_csv(path: &Path, text: &str) -> Result<BTreeSet<Case>, LabelsError> {
    let mut cases = BTreeSet::new();
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let header = first && fields.iter().map(|f| f.to_ascii_lowercase()).eq(CSV_HEADER);
        first = false;
        if header {
            continue;
        }
        let err = |reason: String| LabelsError::Csv {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let [rule, kind, key] = fields[..] else {
            return Err(err(format!(
                "want 3 fields `rule,entity_type,entity_key`, found {}",
                fields.len()
            )));
        };
        if rule.is_empty() || key.is_empty() {
            return Err(err("the rule and the entity key must not be empty".into()));
        }
        let kind = EntityType::parse(kind).ok_or_else(|| {
            err(format!(
                "unknown entity type {kind:?}; one of: {}",
                EntityType::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        cases.insert(Case {
            rule: rule.to_string(),
            entity_type: Some(kind),
            entity_key: key.to_string(),
        });
    }
    Ok(cases)
}

/// An alerted entity no case confirms.
#[derive(Clone, Debug, Serialize)]
pub struct Unexpected {
    pub entity_type: EntityType,
    pub entity_key: String,
    pub alerts: u64,
    pub first: EventTime,
    pub severity: Severity,
    pub explanation: String,
}

/// How one rule (or all of them) did against the cases.
#[derive(Clone, Debug, Serialize)]
pub struct RuleScore {
    /// `None` for the overall row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Confirmed cases.
    pub labelled: u64,
    /// Entities alerted on.
    pub alerted: u64,
    /// Alerted entities a case confirms.
    pub confirmed: u64,
    /// Cases some alert found.
    pub found: u64,
    /// confirmed / alerted; `None` when nothing was alerted.
    pub precision: Option<f64>,
    /// found / labelled; `None` when nothing was labelled.
    pub recall: Option<f64>,
    /// Cases no alert found: `labelled - found`.
    pub missed_total: u64,
    /// Alerted entities no case confirms: `alerted - confirmed`.
    pub unexpected_total: u64,
    /// The missed cases, at most the listing cap.
    pub missed: Vec<Case>,
    /// The unexpected alerts, at most the listing cap.
    pub unexpected: Vec<Unexpected>,
}

/// A replay scored against confirmed cases.
#[derive(Clone, Debug, Serialize)]
pub struct Score {
    pub labels_file: PathBuf,
    pub overall: RuleScore,
    /// Every rule that was labelled or alerted, by id.
    pub rules: Vec<RuleScore>,
    /// Missed and unexpected alerts listed per rule at most; `*_total` count them all.
    pub listed_per_rule: usize,
}

impl Score {
    /// Scores `alerts` against `labels`, listing up to `cap` missed and unexpected alerts per rule.
    pub fn new(labels: &Labels, alerts: &Alerts, cap: usize) -> Score {
        let mut by_rule: BTreeMap<&str, Vec<&Case>> = BTreeMap::new();
        for c in &labels.cases {
            by_rule.entry(&c.rule).or_default().push(c);
        }
        for rule in alerts.by_rule_entity.keys() {
            by_rule.entry(rule).or_default();
        }
        let empty = Default::default();
        let mut rules = Vec::with_capacity(by_rule.len());
        for (rule, cases) in by_rule {
            let alerted = alerts.by_rule_entity.get(rule).unwrap_or(&empty);
            let mut entities: Vec<_> = alerted.iter().collect();
            entities.sort_by(|a, b| a.0.cmp(b.0));
            let mut unexpected = Vec::new();
            let mut confirmed = 0;
            for (e, a) in &entities {
                if cases.iter().any(|c| c.matches(e)) {
                    confirmed += 1;
                } else {
                    unexpected.push(Unexpected {
                        entity_type: e.kind,
                        entity_key: e.key.clone(),
                        alerts: a.alerts,
                        first: a.first,
                        severity: a.severity,
                        explanation: a.explanation.clone(),
                    });
                }
            }
            let missed: Vec<Case> = cases
                .iter()
                .filter(|c| !entities.iter().any(|(e, _)| c.matches(e)))
                .map(|c| (*c).clone())
                .collect();
            let (labelled, alerted) = (cases.len() as u64, entities.len() as u64);
            rules.push(RuleScore {
                rule: Some(rule.to_string()),
                labelled,
                alerted,
                confirmed,
                found: labelled - missed.len() as u64,
                precision: ratio(confirmed, alerted),
                recall: ratio(labelled - missed.len() as u64, labelled),
                missed_total: missed.len() as u64,
                unexpected_total: unexpected.len() as u64,
                missed: missed.into_iter().take(cap).collect(),
                unexpected: unexpected.into_iter().take(cap).collect(),
            });
        }
        let sum = |f: fn(&RuleScore) -> u64| rules.iter().map(f).sum::<u64>();
        let (labelled, alerted) = (sum(|r| r.labelled), sum(|r| r.alerted));
        let (confirmed, found) = (sum(|r| r.confirmed), sum(|r| r.found));
        let overall = RuleScore {
            rule: None,
            labelled,
            alerted,
            confirmed,
            found,
            precision: ratio(confirmed, alerted),
            recall: ratio(found, labelled),
            missed_total: sum(|r| r.missed_total),
            unexpected_total: sum(|r| r.unexpected_total),
            missed: Vec::new(),
            unexpected: Vec::new(),
        };
        Score {
            labels_file: labels.path.clone(),
            overall,
            rules,
            listed_per_rule: cap,
        }
    }

    /// The summary's section, after the replay's.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let o = &self.overall;
        let _ = writeln!(
            s,
            "  labels              {}: {} cases; precision {} ({} of {} alerted entities confirmed), recall {} ({} of {} cases found)",
            self.labels_file.display(),
            o.labelled,
            percent(o.precision),
            o.confirmed,
            o.alerted,
            percent(o.recall),
            o.found,
            o.labelled
        );
        if self.rules.is_empty() {
            return s;
        }
        let w = self
            .rules
            .iter()
            .filter_map(|r| r.rule.as_ref().map(String::len))
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            s,
            "    {:<w$}  {:>8} {:>8} {:>9} {:>9} {:>7}",
            "rule", "labelled", "alerted", "confirmed", "precision", "recall"
        );
        for r in &self.rules {
            let _ = writeln!(
                s,
                "    {:<w$}  {:>8} {:>8} {:>9} {:>9} {:>7}",
                r.rule.as_deref().unwrap_or(""),
                r.labelled,
                r.alerted,
                r.confirmed,
                percent(r.precision),
                percent(r.recall)
            );
        }
        for r in &self.rules {
            let rule = r.rule.as_deref().unwrap_or("");
            for c in &r.missed {
                let _ = writeln!(
                    s,
                    "    missed      {rule} {} {}",
                    c.entity_type.map_or("?", |t| t.as_str()),
                    c.entity_key
                );
            }
            more(&mut s, "missed", rule, r.missed_total, r.missed.len());
            for u in &r.unexpected {
                let _ = writeln!(
                    s,
                    "    unexpected  {rule} {} {} ({} alerts from {}, {}): {}",
                    u.entity_type, u.entity_key, u.alerts, u.first, u.severity, u.explanation
                );
            }
            more(
                &mut s,
                "unexpected",
                rule,
                r.unexpected_total,
                r.unexpected.len(),
            );
        }
        s
    }
}

fn more(s: &mut String, what: &str, rule: &str, total: u64, listed: usize) {
    if total > listed as u64 {
        let _ = writeln!(
            s,
            "    {what:<11} {rule}: {} more not listed ({total} in all)",
            total - listed as u64
        );
    }
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// `Some(1.0)` → "100.0%", `None` → "—".
pub fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{:.1}%", 100.0 * v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Alert, EntityRef, Evidence, Mode, RuleRef};

    fn alert(rule: &str, kind: EntityType, key: &str) -> Alert {
        let t = EventTime {
            utc: 1_800_000_000,
            offset_min: 60,
        };
        Alert {
            alert_id: format!("{rule}-{key}"),
            rule: RuleRef {
                id: rule.into(),
                version: "1".into(),
                ruleset_version: "x".into(),
            },
            category: crate::record::Category::Fraud,
            severity: Severity::High,
            score: 80,
            entity: EntityRef {
                kind,
                key: key.into(),
                msisdn: None,
                account_id: None,
                segment: None,
            },
            departments: vec![crate::record::Department::Fraud],
            trigger_event_time: t,
            detected_at: t,
            window: None,
            evidence: Evidence {
                explanation: "why".into(),
                ..Default::default()
            },
            recommended_actions: vec![],
            mode: Mode::Replay,
        }
    }

    #[test]
    fn csv_with_or_without_header_and_comments() {
        let p = Path::new("cases.csv");
        let with = Labels::parse(
            p,
            "rule,entity_type,entity_key\n# confirmed by the fraud desk\nirsf,subscriber,336\n\n",
        )
        .unwrap();
        let without = Labels::parse(p, "irsf, subscriber ,336\nirsf,subscriber,336\n").unwrap();
        assert_eq!(with.cases, without.cases);
        assert_eq!(with.cases.len(), 1);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let p = Path::new("cases.csv");
        let e = Labels::parse(p, "rule,entity_type,entity_key\nirsf,msisdn,336\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cases.csv:2: unknown entity type \"msisdn\"; one of: subscriber, account, calling_number, imei"
        );
        let e = Labels::parse(p, "irsf,subscriber\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cases.csv:1: want 3 fields `rule,entity_type,entity_key`, found 2"
        );
    }

    #[test]
    fn gen_labels_with_and_without_entity_type() {
        let p = Path::new("labels.json");
        let l = Labels::parse(
            p,
            r#"[{"rule":"a","entity":"1","entity_type":"account","severity":"high","story":"a#1"},
                {"rule":"b","entity":"2","severity":"high","story":"b#1"}]"#,
        )
        .unwrap();
        let kinds: Vec<_> = l.cases.iter().map(|c| c.entity_type).collect();
        assert_eq!(kinds, [Some(EntityType::Account), None]);
    }

    #[test]
    fn precision_and_recall_per_rule_by_rule_type_and_key() {
        let labels = Labels::parse(
            Path::new("l.csv"),
            "a,subscriber,1\na,subscriber,2\nb,account,9\n",
        )
        .unwrap();
        let mut alerts = Alerts::default();
        for a in [
            alert("a", EntityType::Subscriber, "1"),
            alert("a", EntityType::Subscriber, "1"),
            alert("a", EntityType::Subscriber, "3"),
            // Same key, other type: not the labelled case.
            alert("b", EntityType::Subscriber, "9"),
        ] {
            alerts.add(&a);
        }
        let s = Score::new(&labels, &alerts, 10);
        let a = &s.rules[0];
        assert_eq!((a.labelled, a.alerted, a.confirmed, a.found), (2, 2, 1, 1));
        assert_eq!((a.precision, a.recall), (Some(0.5), Some(0.5)));
        assert_eq!(a.missed[0].entity_key, "2");
        assert_eq!(a.unexpected[0].entity_key, "3");
        let b = &s.rules[1];
        assert_eq!((b.precision, b.recall), (Some(0.0), Some(0.0)));
        // Distinct entities: `a` alerted 1 and 3, `b` subscriber 9; one of the three is confirmed.
        assert_eq!(
            (s.overall.precision, s.overall.recall),
            (Some(1.0 / 3.0), Some(1.0 / 3.0))
        );
        let capped = Score::new(&labels, &alerts, 0);
        assert!(capped.rules[0].missed.is_empty());
        assert_eq!(capped.rules[0].missed_total, 1);
        assert!(capped
            .render()
            .contains("missed      a: 1 more not listed (1 in all)"));
    }
}
