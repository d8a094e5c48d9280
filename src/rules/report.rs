//! The per-rule summary: what each rule did, how often it failed, how long it took.

use std::fmt::Write as _;

use super::engine::{EngineCounters, RuleEngine};

#[derive(Clone, Debug, serde::Serialize)]
pub struct RuleRow {
    pub id: String,
    pub version: String,
    /// `live` or `shadow`.
    pub mode: &'static str,
    pub evaluations: u64,
    /// Evaluations its gate decided without calling the script (counted in `evaluations`).
    pub gated: u64,
    pub alerts: u64,
    pub entities: u64,
    pub suppressed: u64,
    /// Positive verdicts held back by an analyst's snooze.
    pub snoozed: u64,
    pub errors: u64,
    pub quarantined: bool,
    pub mean_us: f64,
    pub p99_us: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RulesReport {
    pub ruleset_version: String,
    pub rules_active: usize,
    pub counters: EngineCounters,
    pub rules: Vec<RuleRow>,
    /// Alert memory (cooldowns, min-hits, `edge` latches), estimated bytes.
    pub alert_memory_bytes: usize,
    /// `edge` names refused by `state.max_edges_per_entity`.
    pub edges_refused: u64,
}

impl RulesReport {
    pub fn of(engine: &RuleEngine) -> Self {
        let mut rules: Vec<RuleRow> = engine
            .stats()
            .iter()
            .map(|s| RuleRow {
                id: s.id.clone(),
                version: s.version.clone(),
                mode: s.mode.as_str(),
                evaluations: s.evaluations,
                gated: s.gated,
                alerts: s.alerts,
                entities: s.entities.len() as u64,
                suppressed: s.suppressed,
                snoozed: s.snoozed,
                errors: s.errors,
                quarantined: s.quarantined,
                mean_us: if s.latency.is_empty() {
                    0.0
                } else {
                    s.latency.mean() / 1000.0
                },
                p99_us: s.latency.value_at_quantile(0.99) as f64 / 1000.0,
                last_error: s.last_error.clone(),
            })
            .collect();
        rules.sort_by(|a, b| a.id.cmp(&b.id));
        let (alert_memory_bytes, edges_refused) = engine.alert_memory();
        RulesReport {
            alert_memory_bytes,
            edges_refused,
            ruleset_version: engine.version().to_string(),
            rules_active: engine.set().rules.len(),
            counters: engine.counters.clone(),
            rules,
        }
    }

    /// The reports of pipelines that ran the same library over parts of one input (`replay
    /// --threads`): counts added, the mean weighted by evaluations, the p99 the highest part's (its
    /// histogram stays with its thread), and a rule quarantined if it was anywhere.
    pub fn merge(parts: Vec<RulesReport>) -> Option<RulesReport> {
        let mut parts = parts.into_iter();
        let mut to = parts.next()?;
        for p in parts {
            let (a, b) = (&mut to.counters, &p.counters);
            a.usage_records += b.usage_records;
            a.usage_without_rules += b.usage_without_rules;
            a.events += b.events;
            a.timers += b.timers;
            a.evaluations += b.evaluations;
            a.gated += b.gated;
            a.alerts += b.alerts;
            a.errors += b.errors;
            to.alert_memory_bytes += p.alert_memory_bytes;
            to.edges_refused += p.edges_refused;
            for r in p.rules {
                match to.rules.iter_mut().find(|t| t.id == r.id) {
                    Some(t) => {
                        let n = t.evaluations + r.evaluations;
                        if n > 0 {
                            t.mean_us = (t.mean_us * t.evaluations as f64
                                + r.mean_us * r.evaluations as f64)
                                / n as f64;
                        }
                        t.evaluations = n;
                        t.gated += r.gated;
                        t.alerts += r.alerts;
                        t.entities += r.entities;
                        t.suppressed += r.suppressed;
                        t.snoozed += r.snoozed;
                        t.errors += r.errors;
                        t.quarantined |= r.quarantined;
                        t.p99_us = t.p99_us.max(r.p99_us);
                        if r.last_error.is_some() {
                            t.last_error = r.last_error;
                        }
                    }
                    None => to.rules.push(r),
                }
            }
        }
        to.rules.sort_by(|a, b| a.id.cmp(&b.id));
        Some(to)
    }

    /// Share of usage records that ran no rule at all (trigger dispatch found none).
    pub fn no_rule_share(&self) -> f64 {
        let c = &self.counters;
        c.usage_without_rules as f64 / c.usage_records.max(1) as f64
    }

    pub fn render(&self) -> String {
        let c = &self.counters;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  rules               {} active (rule set {}); {} evaluations ({} decided by gates), {} alerts, {} errors; {:.1}% of usage records ran no rule{}",
            self.rules_active,
            self.ruleset_version,
            c.evaluations,
            c.gated,
            c.alerts,
            c.errors,
            100.0 * self.no_rule_share(),
            if c.reloads_ok + c.reloads_failed > 0 {
                format!("; reloads {} ok, {} failed", c.reloads_ok, c.reloads_failed)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  alert memory        {:.1} MiB estimated{}",
            self.alert_memory_bytes as f64 / 1048576.0,
            if self.edges_refused > 0 {
                format!(
                    "; {} edge() names REFUSED (state.max_edges_per_entity)",
                    self.edges_refused
                )
            } else {
                String::new()
            }
        );
        if self.rules.is_empty() {
            return s;
        }
        let w = self
            .rules
            .iter()
            .map(|r| r.id.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            s,
            "    {:<w$}  {:>11} {:>11} {:>8} {:>8} {:>10} {:>7} {:>9} {:>9}",
            "rule",
            "evaluations",
            "gated",
            "alerts",
            "entities",
            "suppressed",
            "errors",
            "mean µs",
            "p99 µs"
        );
        for r in &self.rules {
            let _ = writeln!(
                s,
                "    {:<w$}  {:>11} {:>11} {:>8} {:>8} {:>10} {:>7} {:>9.2} {:>9.2}{}",
                r.id,
                r.evaluations,
                r.gated,
                r.alerts,
                r.entities,
                r.suppressed,
                r.errors,
                r.mean_us,
                r.p99_us,
                match (r.quarantined, r.mode) {
                    (true, "shadow") => "  QUARANTINED (shadow)",
                    (true, _) => "  QUARANTINED",
                    (false, "shadow") => "  (shadow)",
                    _ => "",
                }
            );
        }
        for r in self.rules.iter().filter(|r| r.snoozed > 0) {
            let _ = writeln!(
                s,
                "    {} held back by analysts' snoozes: {}",
                r.id, r.snoozed
            );
        }
        for r in self.rules.iter().filter(|r| r.errors > 0) {
            let _ = writeln!(
                s,
                "    {} last error: {}",
                r.id,
                r.last_error.as_deref().unwrap_or("")
            );
        }
        s
    }
}
