//! A rule's metadata: the `RULE` constant each script declares at its top level.
//!
//! ```rhai
//! const RULE = #{
//!     id: "irsf_high_risk_destination",     // equal to the file stem
//!     name: "IRSF: calls to high-risk destinations",
//!     description: "...",
//!     category: "fraud",                   // fraud | arrears | customer
//!     severity: "high",                    // default severity; the rule may raise it per alert
//!     departments: ["FRAUD"],              // FRAUD | COLLECTIONS | KEY_ACCOUNTS | CARE
//!     entity: "subscriber",                // subscriber | account | calling_number | imei
//!     triggers: ["voice.mo.high_risk"],    // record classes, `event:<type>` or `timer:<kind>`;
//!                                          // `charged` / `located` narrow a class natively
//!     requires: ["account"],               // optional: account, credit_limit, overdue
//!     version: "1.0.0",
//!     window: "1h",                        // optional: the window the alert reports on
//!     cooldown: "1h",                      // optional: default = window, else 1h
//!     min_hits: 1,                         // optional: positive evaluations needed within the window
//!     actions: ["bar_international"],      // optional: default recommended actions
//!     params: #{ min_calls: "int 1.." },   // the type of each params.toml value (`param_types`)
//!     mode: "live",                        // optional: `shadow` runs the rule on the same state and
//!                                          // records, its alerts only to the shadow output
//! };
//! ```

use serde::Deserialize;

use crate::classify::{ClassFilter, RecordClass, CLASS_COUNT};
use crate::record::time::parse_duration;
use crate::record::EventType;
use crate::record::{Category, Department, EntityType, Severity};

use super::param_types::ParamSpec;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMeta {
    pub id: String,
    pub name: String,
    pub description: String,
    pub category: Category,
    pub severity: Severity,
    pub departments: Vec<Department>,
    pub entity: EntityType,
    pub triggers: Vec<String>,
    pub version: String,
    #[serde(default)]
    pub window: Option<String>,
    #[serde(default)]
    pub cooldown: Option<String>,
    #[serde(default)]
    pub min_hits: Option<u32>,
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub requires: Vec<String>,
    /// Declared type of each parameter in `params.toml` (`param_types::ParamSpec`).
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub mode: RuleMode,
}

/// Whether a rule's alerts go to the departments (`live`) or only to the shadow output (`shadow`):
/// a candidate rule evaluated on the same state and records as the live ones, to be promoted by
/// editing this one word (a hot reload).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    #[default]
    Live,
    Shadow,
}

impl RuleMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleMode::Live => "live",
            RuleMode::Shadow => "shadow",
        }
    }
}

/// Record predicates a usage trigger can add to its class filter, checked natively before any script
/// runs: `charged` (charge > 0), `located` (latitude and longitude present).
pub const CHARGED: u8 = 1;
pub const LOCATED: u8 = 2;

/// Account conditions a rule can require (`RULE.requires`), checked natively before its script runs.
pub const NEEDS_ACCOUNT: u8 = 1;
pub const NEEDS_CREDIT_LIMIT: u8 = 2;
pub const NEEDS_OVERDUE: u8 = 4;

/// What can start a rule's evaluation.
#[derive(Clone, Debug)]
pub enum Trigger {
    /// A usage record whose class matches and that has the predicates of the mask.
    Usage(ClassFilter, u8),
    /// An account event of this type.
    Event(EventType),
    /// A timer of this kind firing (today `invoice_overdue`).
    Timer(TimerTrigger),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerTrigger {
    InvoiceOverdue,
}

/// Metadata checked and resolved: durations in seconds, triggers parsed.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub meta: RuleMeta,
    pub triggers: Vec<Trigger>,
    pub window_s: Option<i64>,
    pub cooldown_s: i64,
    pub min_hits: u32,
    /// `NEEDS_*` bits from `RULE.requires`.
    pub requires: u8,
    /// `RULE.params`, parsed.
    pub params: std::collections::BTreeMap<String, ParamSpec>,
}

impl RuleMeta {
    /// Checks the metadata against the file it came from; every problem is reported.
    pub fn resolve(self, file_stem: &str) -> Result<Resolved, Vec<String>> {
        let mut errs = Vec::new();
        if self.id != file_stem {
            errs.push(format!(
                "RULE.id {:?} must equal the file name {file_stem:?}",
                self.id
            ));
        }
        if !self
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || self.id.is_empty()
        {
            errs.push(format!(
                "RULE.id {:?}: use lowercase letters, digits and _",
                self.id
            ));
        }
        if self.departments.is_empty() {
            errs.push("RULE.departments: at least one department".into());
        }
        if self.version.trim().is_empty() {
            errs.push("RULE.version: must not be empty".into());
        }
        let dur = |field: &str, v: &Option<String>, errs: &mut Vec<String>| match v {
            None => None,
            Some(s) => match parse_duration(s) {
                Ok(d) if d > 0 => Some(d),
                Ok(_) => {
                    errs.push(format!("RULE.{field}: must be positive"));
                    None
                }
                Err(e) => {
                    errs.push(format!("RULE.{field}: {e}"));
                    None
                }
            },
        };
        let window_s = dur("window", &self.window, &mut errs);
        let cooldown_s = dur("cooldown", &self.cooldown, &mut errs)
            .or(window_s)
            .unwrap_or(3600);
        if self.triggers.is_empty() {
            errs.push("RULE.triggers: at least one trigger (a record class, event:<type> or timer:<kind>)".into());
        }
        let mut triggers = Vec::new();
        for t in &self.triggers {
            match parse_trigger(t) {
                Ok(t) => triggers.push(t),
                Err(e) => errs.push(format!("RULE.triggers: {e}")),
            }
        }
        let mut requires = 0;
        for r in &self.requires {
            match r.as_str() {
                "account" => requires |= NEEDS_ACCOUNT,
                "credit_limit" => requires |= NEEDS_ACCOUNT | NEEDS_CREDIT_LIMIT,
                "overdue" => requires |= NEEDS_ACCOUNT | NEEDS_OVERDUE,
                other => errs.push(format!(
                    "RULE.requires: unknown condition {other:?} (account, credit_limit, overdue)"
                )),
            }
        }
        let min_hits = self.min_hits.unwrap_or(1);
        if min_hits == 0 {
            errs.push("RULE.min_hits: at least 1".into());
        }
        if min_hits > 1 && window_s.is_none() {
            errs.push("RULE.min_hits: needs RULE.window (hits are counted within it)".into());
        }
        let mut params = std::collections::BTreeMap::new();
        for (name, spec) in &self.params {
            match ParamSpec::parse(spec) {
                Ok(p) => {
                    params.insert(name.clone(), p);
                }
                Err(e) => errs.push(format!("RULE.params.{name}: {e}")),
            }
        }
        if errs.is_empty() {
            Ok(Resolved {
                meta: self,
                triggers,
                window_s,
                cooldown_s,
                min_hits,
                requires,
                params,
            })
        } else {
            Err(errs)
        }
    }
}

fn parse_trigger(t: &str) -> Result<Trigger, String> {
    if let Some(kind) = t.strip_prefix("event:") {
        return serde_json::from_value::<EventType>(serde_json::Value::String(kind.into()))
            .map(Trigger::Event)
            .map_err(|_| format!("unknown account event type {kind:?} (invoice_issued, payment_received, payment_reversed, credit_limit_changed, promise_to_pay, activation, deactivation, sim_change, segment_changed)"));
    }
    if let Some(kind) = t.strip_prefix("timer:") {
        return match kind {
            "invoice_overdue" => Ok(Trigger::Timer(TimerTrigger::InvoiceOverdue)),
            _ => Err(format!("unknown timer kind {kind:?} (invoice_overdue)")),
        };
    }
    // Predicate tokens come out of the filter; they narrow every alternative alike.
    let mut mask = 0;
    let mut rest = Vec::new();
    for alt in t.split('|') {
        let mut tokens = Vec::new();
        let mut alt_mask = 0;
        for tok in alt.split('.') {
            match tok {
                "charged" => alt_mask |= CHARGED,
                "located" => alt_mask |= LOCATED,
                _ => tokens.push(tok),
            }
        }
        if !rest.is_empty() && alt_mask != mask {
            return Err(format!(
                "{t:?}: `charged`/`located` must be the same in every alternative"
            ));
        }
        mask = alt_mask;
        rest.push(tokens.join("."));
    }
    ClassFilter::parse(&rest.join("|")).map(|f| Trigger::Usage(f, mask))
}

impl Resolved {
    /// True when no record class, event or timer can ever start this rule (a filter like
    /// `data.mo.international` matches nothing: data records have no direction).
    pub fn can_trigger(&self) -> bool {
        self.triggers.iter().any(|t| match t {
            Trigger::Usage(f, _) => (0..CLASS_COUNT as u16).any(|c| {
                let c = RecordClass(c);
                crate::classify::is_possible(c) && f.matches(c)
            }),
            _ => true,
        })
    }
}
