//! The alert: what cdrguard emits. Defined here as part of the wire contract; the rule engine fills it.

use serde::{Deserialize, Serialize};

use super::{EventTime, Segment};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Fraud,
    Arrears,
    Customer,
}

wire_names!(Category { Fraud => "fraud", Arrears => "arrears", Customer => "customer" });

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

wire_names!(Severity {
    Info => "info",
    Low => "low",
    Medium => "medium",
    High => "high",
    Critical => "critical",
});

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Department {
    Fraud,
    Collections,
    KeyAccounts,
    Care,
}

wire_names!(Department {
    Fraud => "FRAUD",
    Collections => "COLLECTIONS",
    KeyAccounts => "KEY_ACCOUNTS",
    Care => "CARE",
});

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityType {
    Subscriber,
    Account,
    CallingNumber,
    Imei,
}

wire_names!(EntityType {
    Subscriber => "subscriber",
    Account => "account",
    CallingNumber => "calling_number",
    Imei => "imei",
});

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Live,
    Replay,
    Shadow,
}

wire_names!(Mode { Live => "live", Replay => "replay", Shadow => "shadow" });

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic: derived from (rule id, entity key, window bucket or trigger), so replays and
    /// at-least-once redelivery produce the same id.
    pub alert_id: String,
    pub rule: RuleRef,
    pub category: Category,
    pub severity: Severity,
    /// 0–100.
    pub score: u8,
    pub entity: EntityRef,
    pub departments: Vec<Department>,
    pub trigger_event_time: EventTime,
    pub detected_at: EventTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<AlertWindow>,
    pub evidence: Evidence,
    pub recommended_actions: Vec<String>,
    pub mode: Mode,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleRef {
    pub id: String,
    pub version: String,
    pub ruleset_version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityRef {
    #[serde(rename = "type")]
    pub kind: EntityType,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msisdn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Segment>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertWindow {
    /// e.g. `1h`.
    pub size: String,
    pub start: EventTime,
    pub end: EventTime,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Measured values, e.g. `{"calls": 4, "minutes": 12.5}`; ordered for byte-identical replays.
    pub metrics: std::collections::BTreeMap<String, serde_json::Value>,
    pub thresholds: std::collections::BTreeMap<String, serde_json::Value>,
    pub record_ids: Vec<String>,
    pub explanation: String,
    /// The numbers of the triggering record its feed wrote in another form than the canonical one
    /// (`record::numbering`): canonical → as written, e.g. `"33140000000": "0140000000"`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub written_numbers: std::collections::BTreeMap<String, String>,
    /// The triggering record's charge as priced, when that was another currency converted at
    /// decode (`record::rates`), e.g. `"90.00 XDR"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_charge: Option<String>,
}
