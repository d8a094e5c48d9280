//! `inspect`: one entity's features for each window and filter, and its account's credit view, as of a
//! point in event time. This is how an analyst answers "why did (or didn't) this alert?".

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{json, Value};

use crate::classify::ClassFilter;
use crate::record::{EventTime, Money, Number};
use crate::state::{Account, Entity, Features, Fix, Timer, WindowStore};

pub const DEFAULT_WINDOWS: &[&str] = &["10m", "1h", "4h", "24h", "72h", "7d", "30d"];
pub const DEFAULT_FILTERS: &[&str] = &[
    "all",
    "voice.mo",
    "voice.mo.international",
    "voice.mo.high_risk",
    "voice.mo.off_hours",
    "voice.mt",
    "voice.mt.international.short",
    "voice.forwarded",
    "sms.mo",
    "data",
    "roaming",
];

/// A window length as the user wrote it (`24h` stays `24h`, not `1d`).
#[derive(Clone, Debug)]
pub struct WindowSpec {
    pub label: String,
    pub secs: i64,
}

impl WindowSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let secs = crate::record::time::parse_duration(s)?;
        if secs < 600 {
            return Err(format!(
                "{s:?}: windows start at 10m (the finest bucket is 20 s)"
            ));
        }
        Ok(WindowSpec {
            label: s.trim().to_string(),
            secs,
        })
    }
}

#[derive(Clone, Debug)]
pub enum Target {
    Subscriber(Number),
    Account(String),
    CallingNumber(Number),
    Imei(Number),
}

#[derive(Serialize)]
pub struct FeatureRow {
    pub filter: String,
    pub window: String,
    pub count: u64,
    pub duration_s: u64,
    pub bytes: u64,
    pub charge: Money,
    /// `None` when the window is longer than the distinct horizon.
    pub distinct_numbers: Option<u32>,
    pub distinct_cells: Option<u32>,
}

fn features(
    e: &dyn Features,
    at: i64,
    windows: &[WindowSpec],
    filters: &[ClassFilter],
    distinct_horizon: i64,
) -> Vec<FeatureRow> {
    let mut rows = Vec::new();
    for f in filters {
        for spec in windows {
            let w = spec.secs;
            let s = e.sum(f, w, at);
            let d = (w <= distinct_horizon).then_some(());
            rows.push(FeatureRow {
                filter: f.as_str().to_string(),
                window: spec.label.clone(),
                count: s.count,
                duration_s: s.duration_s,
                bytes: s.bytes,
                charge: s.charge,
                distinct_numbers: d.map(|_| e.distinct_numbers(f, w, at)),
                distinct_cells: d.map(|_| e.distinct_cells(f, w, at)),
            });
        }
    }
    rows
}

/// Instants are shown in the offset of the `as of` time, so a report reads in one local clock.
fn local(utc: i64, offset_min: i16) -> EventTime {
    EventTime { utc, offset_min }
}

fn round5(x: f32) -> f64 {
    (x as f64 * 1e5).round() / 1e5
}

fn fix_json(f: &Option<Fix>, off: i16) -> Value {
    match f {
        // Stored as f32 (~1 m); print 5 decimals rather than f32 noise such as 48.849998474121094.
        Some(f) => {
            json!({"at": local(f.at, off), "lat": round5(f.lat), "lon": round5(f.lon)})
        }
        None => Value::Null,
    }
}

fn entity_json(e: &Entity, at: EventTime) -> Value {
    json!({
        "first_seen": local(e.first_seen, at.offset_min),
        "last_seen": local(e.last_seen, at.offset_min),
        "previous_location": fix_json(&e.fixes[0], at.offset_min),
        "last_location": fix_json(&e.fixes[1], at.offset_min),
        "open_calls": e.open_calls(at.utc),
        "cells_stored": e.cells.len(),
    })
}

/// A timer as reports show it (flat, with its kind named); snapshots encode timers their own way.
fn timer_json(t: &Timer) -> Value {
    let crate::state::TimerKind::InvoiceOverdue { invoice_id, days } = &t.kind;
    json!({"at": t.at, "account_id": t.account_id, "kind": "invoice_overdue",
           "invoice_id": invoice_id, "days": days})
}

fn account_json(a: &Account, at: EventTime, pending: Vec<&Timer>, fired: Vec<&Timer>) -> Value {
    let l = &a.ledger;
    let invoices: Vec<Value> = l
        .invoices
        .iter()
        .map(|i| {
            json!({"invoice_id": i.invoice_id, "issued_at": i.issued_at, "due_date": i.due_date, "amount_due": i.amount_due,
                   "paid": i.paid, "remaining": i.remaining(), "days_overdue": i.days_overdue(at)})
        })
        .collect();
    json!({
        "account_id": a.id,
        "segment": l.segment,
        "lines": a.lines.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "credit_limit": l.credit_limit,
        "activated_at": l.activated_at,
        "deactivated_at": l.deactivated_at,
        "last_sim_change": l.last_sim_change,
        "invoices": invoices,
        "payments": l.payments,
        "credit_balance": l.credit_balance,
        "unpaid": l.unpaid(),
        "overdue": l.overdue(at),
        "unbilled": l.unbilled,
        "exposure": l.exposure(),
        "exposure_pct_of_limit": l.credit_limit.filter(|c| c.micros() > 0).map(|c| (l.exposure().micros() as f64 / c.micros() as f64 * 1000.0).round() / 10.0),
        "promise_to_pay_until": l.promise_to_pay_until,
        "promise_active": l.promise_active(at),
        "reversals_90d": l.reversals_within(90 * 86_400, at),
        "timers_pending": pending.into_iter().map(timer_json).collect::<Vec<_>>(),
        "timers_fired": fired.into_iter().map(timer_json).collect::<Vec<_>>(),
    })
}

/// Builds the report as JSON (the text form is rendered from it).
pub fn report(
    store: &WindowStore,
    fired: &[Timer],
    target: &Target,
    at: EventTime,
    windows: &[WindowSpec],
    filters: &[ClassFilter],
) -> anyhow::Result<Value> {
    let horizon = store.config().distinct_horizon.0;
    let not_found =
        |what: &str| anyhow::anyhow!("{what} does not appear in the input (up to {at})");
    let (kind, key, entity, account) = match target {
        Target::Subscriber(n) => {
            let e = store
                .subscriber(*n)
                .ok_or_else(|| not_found(&format!("subscriber {n}")))?;
            ("subscriber", n.to_string(), Some(e), store.account_of(e))
        }
        Target::Account(id) => {
            let a = store
                .account(id)
                .ok_or_else(|| not_found(&format!("account {id}")))?;
            ("account", id.clone(), None, Some(a))
        }
        Target::CallingNumber(n) => {
            let e = store.calling_number(*n).ok_or_else(|| {
                not_found(&format!(
                    "calling number {n} (tracked for international MT voice)"
                ))
            })?;
            ("calling_number", n.to_string(), Some(e), None)
        }
        Target::Imei(n) => {
            let e = store
                .imei(*n)
                .ok_or_else(|| not_found(&format!("IMEI {n} (set state.track_imei = true)")))?;
            ("imei", n.to_string(), Some(e), None)
        }
    };
    let mut v = json!({
        "entity": {"type": kind, "key": key},
        "as_of": at,
        "account_id": account.map(|a| a.id.as_str()),
    });
    if let Some(e) = entity {
        v["state"] = entity_json(e, at);
        v["features"] = serde_json::to_value(features(e, at.utc, windows, filters, horizon))?;
    } else if let Some(a) = account {
        // The account's usage is its lines' usage, read together.
        let usage = store.usage_of(a);
        if !usage.is_empty() {
            v["state"] = json!({
                "first_seen": usage.first_seen().map(|t| local(t, at.offset_min)),
                "last_seen": usage.last_seen().map(|t| local(t, at.offset_min)),
                "open_calls": usage.open_calls(at.utc),
                "lines_in_state": a.lines.iter().filter(|l| store.subscriber(**l).is_some()).count(),
            });
            v["features"] =
                serde_json::to_value(features(&usage, at.utc, windows, filters, horizon))?;
        }
    }
    if let Some(a) = account {
        let mut pending: Vec<&Timer> = store.pending_timers(&a.id).collect();
        pending.sort();
        let fired: Vec<&Timer> = fired.iter().filter(|t| t.account_id == a.id).collect();
        v["account"] = account_json(a, at, pending, fired);
    }
    Ok(v)
}

/// Human-readable form: one row per (filter, window) with activity, then the account view.
pub fn render_text(v: &Value) -> String {
    let mut s = String::new();
    let e = &v["entity"];
    let _ = write!(
        s,
        "{} {}",
        e["type"].as_str().unwrap_or(""),
        e["key"].as_str().unwrap_or("")
    );
    if let (Some(a), false) = (v["account_id"].as_str(), e["type"] == "account") {
        let _ = write!(s, " (account {a})");
    }
    let _ = writeln!(s, " as of {}", v["as_of"].as_str().unwrap_or(""));
    let st = &v["state"];
    if !st.is_null() {
        let _ = writeln!(
            s,
            "  first seen {}, last seen {}, open calls {}",
            st["first_seen"].as_str().unwrap_or("-"),
            st["last_seen"].as_str().unwrap_or("-"),
            st["open_calls"].as_u64().unwrap_or(0)
        );
        for k in ["previous_location", "last_location"] {
            if let Some(f) = st[k].as_object() {
                let _ = writeln!(
                    s,
                    "  {:<18}{}, {} at {}",
                    k.replace('_', " "),
                    f["lat"],
                    f["lon"],
                    f["at"].as_str().unwrap_or("")
                );
            }
        }
        let _ = writeln!(
            s,
            "\n  {:<30}{:>6}{:>8}{:>9}{:>11}{:>12}{:>9}{:>7}",
            "filter", "window", "count", "minutes", "MB", "charge", "numbers", "cells"
        );
        let mut last_filter = String::new();
        for r in v["features"].as_array().into_iter().flatten() {
            if r["count"].as_u64() == Some(0) {
                continue;
            }
            let f = r["filter"].as_str().unwrap_or("");
            let shown = if f == last_filter { "" } else { f };
            last_filter = f.to_string();
            let opt = |x: &Value| {
                x.as_u64()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                s,
                "  {:<30}{:>6}{:>8}{:>9.1}{:>11.2}{:>12}{:>9}{:>7}",
                shown,
                r["window"].as_str().unwrap_or(""),
                r["count"].as_u64().unwrap_or(0),
                r["duration_s"].as_u64().unwrap_or(0) as f64 / 60.0,
                r["bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
                r["charge"].as_str().unwrap_or(""),
                opt(&r["distinct_numbers"]),
                opt(&r["distinct_cells"])
            );
        }
        let _ = writeln!(
            s,
            "  (rows with no records omitted; `-`: window longer than state.distinct_horizon)"
        );
    }
    let a = &v["account"];
    if !a.is_null() {
        let _ = writeln!(
            s,
            "\naccount {} · segment {} · lines {}",
            a["account_id"].as_str().unwrap_or(""),
            a["segment"].as_str().unwrap_or(""),
            a["lines"].as_array().map_or(0, Vec::len)
        );
        let money = |k: &str| a[k].as_str().unwrap_or("-").to_string();
        let _ =
            writeln!(
            s,
            "  credit limit {} · unpaid {} · overdue {} · unbilled {} · exposure {} ({}% of limit)",
            money("credit_limit"),
            money("unpaid"),
            money("overdue"),
            money("unbilled"),
            money("exposure"),
            a["exposure_pct_of_limit"].as_f64().map(|p| p.to_string()).unwrap_or_else(|| "-".into())
        );
        let _ = writeln!(
            s,
            "  activated {} · promise to pay until {} · reversals in 90 days {}",
            a["activated_at"].as_str().unwrap_or("-"),
            a["promise_to_pay_until"].as_str().unwrap_or("-"),
            a["reversals_90d"]
        );
        for i in a["invoices"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "  invoice {:<12} due {} amount {:>10} paid {:>10} remaining {:>10} days overdue {}",
                i["invoice_id"].as_str().unwrap_or(""),
                i["due_date"].as_str().unwrap_or(""),
                i["amount_due"].as_str().unwrap_or(""),
                i["paid"].as_str().unwrap_or(""),
                i["remaining"].as_str().unwrap_or(""),
                i["days_overdue"]
            );
        }
        for (label, key) in [("fired", "timers_fired"), ("pending", "timers_pending")] {
            for t in a[key].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "  timer {label:<8} {} {} invoice {} +{} days",
                    t["at"].as_str().unwrap_or(""),
                    t["kind"].as_str().unwrap_or(""),
                    t["invoice_id"].as_str().unwrap_or(""),
                    t["days"]
                );
            }
        }
    }
    s
}
