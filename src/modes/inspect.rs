//! `inspect`: one entity's features for each window and filter, and its account's credit view, as of a
//! point in event time. This is how an analyst answers "why did (or didn't) this alert?".

use std::fmt::Write as _;

use serde::Serialize;

use crate::classify::ClassFilter;
use crate::record::{Date, EntityType, EventTime, Input, Money, Number, Segment};
use crate::state::{Account, Features, Fix, PaymentState, Timer, WindowStore};

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

#[derive(Debug, Serialize)]
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

/// What `inspect` and `state inspect` show: built once, rendered as JSON (serde) and as text
/// (`render_text`), so the two never disagree and a field cannot be misspelt in one of them.
#[derive(Debug, Serialize)]
pub struct Report {
    pub entity: EntityId,
    pub as_of: EventTime,
    /// The account of a subscriber (or the account itself).
    pub account_id: Option<String>,
    /// Activity and locations; absent for an account none of whose lines has usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<StateView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<FeatureRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountView>,
    /// Offsets the input of this entity's partition skipped (records gone from the broker before
    /// they were read) over a span some window still covers: counts there may be short.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<GapView>,
    /// Snoozes holding as of `as_of`, per rule (`alert::feedback`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snoozes: Vec<SnoozeView>,
    /// Analysts' last decisions about its alerts, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<DecisionView>,
}

#[derive(Debug, Serialize)]
pub struct SnoozeView {
    pub rule: String,
    pub until: EventTime,
    pub analyst: String,
}

#[derive(Debug, Serialize)]
pub struct DecisionView {
    pub alert_id: String,
    pub rule: String,
    pub disposition: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<EventTime>,
    pub analyst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Event time of the state when it was applied.
    pub applied_at: EventTime,
}

/// Adds what analysts said about the entity's alerts, from the alert memory that issued them.
pub fn add_decisions(r: &mut Report, memory: &crate::alert::memory::AlertMemory) {
    use crate::alert::memory::Disposition;
    let off = r.as_of.offset_min;
    let list = memory.judgements_of(&r.entity.key);
    r.decisions = list
        .iter()
        .map(|j| DecisionView {
            alert_id: format!("{:032x}", j.alert_id),
            rule: j.rule.clone(),
            disposition: j.disposition.as_str(),
            until: j.until.map(|u| local(u, off)),
            analyst: j.analyst.clone(),
            note: j.note.clone(),
            applied_at: local(j.at, off),
        })
        .collect();
    // The newest snooze of each rule is the one in force.
    let mut newest: std::collections::BTreeMap<&str, &crate::alert::memory::Judgement> =
        Default::default();
    for j in list.iter().filter(|j| j.disposition == Disposition::Snooze) {
        newest.insert(&j.rule, j);
    }
    r.snoozes = newest
        .into_iter()
        .filter_map(|(rule, j)| {
            let until = j.until.filter(|&u| u > r.as_of.utc)?;
            Some(SnoozeView {
                rule: rule.to_string(),
                until: local(until, off),
                analyst: j.analyst.clone(),
            })
        })
        .collect();
}

#[derive(Debug, Serialize)]
pub struct GapView {
    pub input: Input,
    pub partition: i32,
    /// Offsets `from..to` (to exclusive) were skipped.
    pub from: i64,
    pub to: i64,
    pub reason: &'static str,
    /// The event-time span whose windows may miss records: after the newest record before the gap,
    /// before the first after it.
    pub after: Option<EventTime>,
    pub before: Option<EventTime>,
}

#[derive(Debug, Serialize)]
pub struct EntityId {
    #[serde(rename = "type")]
    pub kind: EntityType,
    pub key: String,
}

/// An entity's own state, or an account's lines read together.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum StateView {
    Entity {
        first_seen: EventTime,
        last_seen: EventTime,
        previous_location: Option<LocationView>,
        last_location: Option<LocationView>,
        open_calls: usize,
        cells_stored: usize,
    },
    Lines {
        first_seen: Option<EventTime>,
        last_seen: Option<EventTime>,
        open_calls: usize,
        lines_in_state: usize,
    },
}

#[derive(Debug, Serialize)]
pub struct LocationView {
    pub at: EventTime,
    /// Stored as f32 (~1 m); shown with 5 decimals rather than f32 noise such as 48.849998474121094.
    pub lat: f64,
    pub lon: f64,
}

impl LocationView {
    fn of(f: &Option<Fix>, offset_min: i16) -> Option<Self> {
        f.as_ref().map(|f| LocationView {
            at: local(f.at, offset_min),
            lat: round5(f.lat),
            lon: round5(f.lon),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct AccountView {
    pub account_id: String,
    pub segment: Segment,
    pub lines: Vec<String>,
    pub credit_limit: Option<Money>,
    pub activated_at: Option<EventTime>,
    pub deactivated_at: Option<EventTime>,
    pub last_sim_change: Option<EventTime>,
    pub invoices: Vec<InvoiceView>,
    pub payments: Vec<PaymentState>,
    pub credit_balance: Money,
    pub unpaid: Money,
    pub overdue: Money,
    pub unbilled: Money,
    pub exposure: Money,
    pub exposure_pct_of_limit: Option<f64>,
    pub promise_to_pay_until: Option<Date>,
    pub promise_active: bool,
    pub reversals_90d: usize,
    pub timers_pending: Vec<TimerView>,
    pub timers_fired: Vec<TimerView>,
}

#[derive(Debug, Serialize)]
pub struct InvoiceView {
    pub invoice_id: String,
    pub issued_at: EventTime,
    pub due_date: Date,
    pub amount_due: Money,
    pub paid: Money,
    pub remaining: Money,
    pub days_overdue: i32,
}

/// A timer as reports show it (flat, with its kind named); snapshots encode timers their own way.
#[derive(Debug, Serialize)]
pub struct TimerView {
    pub at: EventTime,
    pub account_id: String,
    pub kind: &'static str,
    pub invoice_id: String,
    pub days: u16,
}

impl TimerView {
    fn of(t: &Timer) -> Self {
        let crate::state::TimerKind::InvoiceOverdue { invoice_id, days } = &t.kind;
        TimerView {
            at: t.at,
            account_id: t.account_id.to_string(),
            kind: "invoice_overdue",
            invoice_id: invoice_id.to_string(),
            days: *days,
        }
    }
}

impl AccountView {
    fn of(a: &Account, at: EventTime, pending: Vec<&Timer>, fired: Vec<&Timer>) -> Self {
        let l = &a.ledger;
        AccountView {
            account_id: a.id.to_string(),
            segment: l.segment,
            lines: a.lines.iter().map(|n| n.to_string()).collect(),
            credit_limit: l.credit_limit,
            activated_at: l.activated_at,
            deactivated_at: l.deactivated_at,
            last_sim_change: l.last_sim_change,
            invoices: l
                .invoices
                .iter()
                .map(|i| InvoiceView {
                    invoice_id: i.invoice_id.to_string(),
                    issued_at: i.issued_at,
                    due_date: i.due_date,
                    amount_due: i.amount_due,
                    paid: i.paid,
                    remaining: i.remaining(),
                    days_overdue: i.days_overdue(at),
                })
                .collect(),
            payments: l.payments.clone(),
            credit_balance: l.credit_balance,
            unpaid: l.unpaid(),
            overdue: l.overdue(at),
            unbilled: l.unbilled,
            exposure: l.exposure(),
            exposure_pct_of_limit: l.credit_limit.filter(|c| c.micros() > 0).map(|c| {
                (l.exposure().micros() as f64 / c.micros() as f64 * 1000.0).round() / 10.0
            }),
            promise_to_pay_until: l.promise_to_pay_until,
            promise_active: l.promise_active(at),
            reversals_90d: l.reversals_within(90 * 86_400, at),
            timers_pending: pending.into_iter().map(TimerView::of).collect(),
            timers_fired: fired.into_iter().map(TimerView::of).collect(),
        }
    }
}

/// Builds the report of one entity as of `at`.
pub fn report(
    store: &WindowStore,
    fired: &[Timer],
    target: &Target,
    at: EventTime,
    windows: &[WindowSpec],
    filters: &[ClassFilter],
) -> anyhow::Result<Report> {
    let horizon = store.config().distinct_horizon.0;
    let not_found =
        |what: &str| anyhow::anyhow!("{what} does not appear in the input (up to {at})");
    let (kind, key, entity, account) = match target {
        Target::Subscriber(n) => {
            let e = store
                .subscriber(*n)
                .ok_or_else(|| not_found(&format!("subscriber {n}")))?;
            (
                EntityType::Subscriber,
                n.to_string(),
                Some(e),
                store.account_of(e),
            )
        }
        Target::Account(id) => {
            let a = store
                .account(id)
                .ok_or_else(|| not_found(&format!("account {id}")))?;
            (EntityType::Account, id.clone(), None, Some(a))
        }
        Target::CallingNumber(n) => {
            let e = store.calling_number(*n).ok_or_else(|| {
                not_found(&format!(
                    "calling number {n} (tracked for international MT voice)"
                ))
            })?;
            (EntityType::CallingNumber, n.to_string(), Some(e), None)
        }
        Target::Imei(n) => {
            let e = store
                .imei(*n)
                .ok_or_else(|| not_found(&format!("IMEI {n} (set state.track_imei = true)")))?;
            (EntityType::Imei, n.to_string(), Some(e), None)
        }
    };
    let mut r = Report {
        entity: EntityId { kind, key },
        as_of: at,
        account_id: account.map(|a| a.id.to_string()),
        state: None,
        features: None,
        account: None,
        gaps: Vec::new(),
        snoozes: Vec::new(),
        decisions: Vec::new(),
    };
    let off = at.offset_min;
    r.gaps = store
        .gaps()
        .iter()
        .map(|g| GapView {
            input: g.input,
            partition: g.partition,
            from: g.from,
            to: g.to,
            reason: g.reason.as_str(),
            after: g.after.map(|t| local(t, off)),
            before: g.before.map(|t| local(t, off)),
        })
        .collect();
    if let Some(e) = entity {
        r.state = Some(StateView::Entity {
            first_seen: local(e.first_seen, off),
            last_seen: local(e.last_seen, off),
            previous_location: LocationView::of(&e.fixes[0], off),
            last_location: LocationView::of(&e.fixes[1], off),
            open_calls: e.open_calls(at.utc),
            cells_stored: e.cells.len(),
        });
        r.features = Some(features(e, at.utc, windows, filters, horizon));
    } else if let Some(a) = account {
        // The account's usage is its lines' usage, read together.
        let usage = store.usage_of(a);
        if !usage.is_empty() {
            r.state = Some(StateView::Lines {
                first_seen: usage.first_seen().map(|t| local(t, off)),
                last_seen: usage.last_seen().map(|t| local(t, off)),
                open_calls: usage.open_calls(at.utc),
                lines_in_state: a
                    .lines
                    .iter()
                    .filter(|l| store.subscriber(**l).is_some())
                    .count(),
            });
            r.features = Some(features(&usage, at.utc, windows, filters, horizon));
        }
    }
    if let Some(a) = account {
        let mut pending: Vec<&Timer> = store.pending_timers(&a.id).collect();
        pending.sort();
        let fired: Vec<&Timer> = fired.iter().filter(|t| t.account_id == a.id).collect();
        r.account = Some(AccountView::of(a, at, pending, fired));
    }
    Ok(r)
}

fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Human-readable form: one row per (filter, window) with activity, then the account view.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let _ = write!(s, "{} {}", r.entity.kind, r.entity.key);
    if let (Some(a), false) = (&r.account_id, r.entity.kind == EntityType::Account) {
        let _ = write!(s, " (account {a})");
    }
    let _ = writeln!(s, " as of {}", r.as_of);
    if let Some(st) = &r.state {
        let (first, last, open) = match st {
            StateView::Entity {
                first_seen,
                last_seen,
                open_calls,
                ..
            } => (Some(*first_seen), Some(*last_seen), *open_calls),
            StateView::Lines {
                first_seen,
                last_seen,
                open_calls,
                ..
            } => (*first_seen, *last_seen, *open_calls),
        };
        let _ = writeln!(
            s,
            "  first seen {}, last seen {}, open calls {open}",
            or_dash(first),
            or_dash(last)
        );
        if let StateView::Entity {
            previous_location,
            last_location,
            ..
        } = st
        {
            for (label, f) in [
                ("previous location", previous_location),
                ("last location", last_location),
            ] {
                if let Some(f) = f {
                    let _ = writeln!(s, "  {label:<18}{}, {} at {}", f.lat, f.lon, f.at);
                }
            }
        }
        let _ = writeln!(
            s,
            "\n  {:<30}{:>6}{:>8}{:>9}{:>11}{:>12}{:>9}{:>7}",
            "filter", "window", "count", "minutes", "MB", "charge", "numbers", "cells"
        );
        let mut last_filter = "";
        for row in r.features.iter().flatten().filter(|row| row.count > 0) {
            let shown = if row.filter == last_filter {
                ""
            } else {
                &row.filter
            };
            last_filter = &row.filter;
            let _ = writeln!(
                s,
                "  {:<30}{:>6}{:>8}{:>9.1}{:>11.2}{:>12}{:>9}{:>7}",
                shown,
                row.window,
                row.count,
                row.duration_s as f64 / 60.0,
                row.bytes as f64 / 1e6,
                row.charge,
                or_dash(row.distinct_numbers),
                or_dash(row.distinct_cells)
            );
        }
        let _ = writeln!(
            s,
            "  (rows with no records omitted; `-`: window longer than state.distinct_horizon)"
        );
    }
    for z in &r.snoozes {
        let _ = writeln!(
            s,
            "\n  SNOOZED: {} until {} (by {}): its positive verdicts raise nothing until then",
            z.rule, z.until, z.analyst
        );
    }
    if !r.decisions.is_empty() {
        let _ = writeln!(s, "\n  analysts' decisions (oldest first)");
        for d in &r.decisions {
            let _ = writeln!(
                s,
                "    {}  {:<16} {:<14} by {}{}{}  alert {}",
                d.applied_at,
                d.rule,
                d.disposition,
                d.analyst,
                d.until.map(|u| format!(" until {u}")).unwrap_or_default(),
                d.note
                    .as_deref()
                    .map(|n| format!(" — {n}"))
                    .unwrap_or_default(),
                d.alert_id
            );
        }
    }
    for g in &r.gaps {
        let _ = writeln!(
            s,
            "\n  GAP: {} partition {} skipped offsets {}..{} ({}): records between {} and {} may be missing from these windows",
            g.input,
            g.partition,
            g.from,
            g.to,
            g.reason,
            or_dash(g.after),
            or_dash(g.before)
        );
    }
    if let Some(a) = &r.account {
        let _ = writeln!(
            s,
            "\naccount {} · segment {} · lines {}",
            a.account_id,
            a.segment,
            a.lines.len()
        );
        let _ = writeln!(
            s,
            "  credit limit {} · unpaid {} · overdue {} · unbilled {} · exposure {} ({}% of limit)",
            or_dash(a.credit_limit),
            a.unpaid,
            a.overdue,
            a.unbilled,
            a.exposure,
            or_dash(a.exposure_pct_of_limit)
        );
        let _ = writeln!(
            s,
            "  activated {} · promise to pay until {} · reversals in 90 days {}",
            or_dash(a.activated_at),
            or_dash(a.promise_to_pay_until),
            a.reversals_90d
        );
        for i in &a.invoices {
            let _ = writeln!(
                s,
                "  invoice {:<12} due {} amount {:>10} paid {:>10} remaining {:>10} days overdue {}",
                i.invoice_id, i.due_date, i.amount_due, i.paid, i.remaining, i.days_overdue
            );
        }
        for (label, timers) in [("fired", &a.timers_fired), ("pending", &a.timers_pending)] {
            for t in timers {
                let _ = writeln!(
                    s,
                    "  timer {label:<8} {} {} invoice {} +{} days",
                    t.at, t.kind, t.invoice_id, t.days
                );
            }
        }
    }
    s
}
