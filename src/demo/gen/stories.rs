//! Injected stories: fraud and arrears episodes laid over the background traffic, one kind per rule of
//! the shipped library, each with the alerts it must raise (its labels).
//!
//! A story uses identities of its own (fresh lines from an unused range, accounts `S-<rule>-<n>`) so
//! that it neither borrows a background customer's history nor disturbs it — except where the fraud is
//! about other people: a Wangiri wave rings real subscribers, a SIM box calls them. Labels list every
//! alert a story raises, including the ones of a second rule it legitimately trips (a Wangiri callback
//! story is also a Wangiri wave). Stories draw from their own random generator, so the background is
//! the same bytes with or without them.
//!
//! Timing: stories happen inside the period (at least 12 h from either end), history they need
//! (a week of normal spending before a bill shock, an invoice issued weeks ago) goes before it.

use compact_str::{format_compact, CompactString};
use fastrand::Rng;
use serde::Serialize;

use super::clock::Clock;
use super::numbering::NumberPlan;
use super::population::Population;
use super::tariff::VISITED;
use crate::record::{
    AccountEvent, Amount, Charge, Credit, Date, Direction, EntityType, EventTime, EventType,
    Forwarding, Invoice, Location, Money, Number, OtherParty, Payment, RecordType, Roaming,
    Segment, Served, Severity, UsageRecord, Volume,
};

/// Rules a story can be injected for, in catalogue order.
pub const STORY_RULES: [&str; 17] = [
    "irsf_high_risk_destination",
    "wangiri_inbound",
    "wangiri_callback",
    "simbox_behaviour",
    "sms_sim_farm",
    "pbx_off_hours_international",
    "impossible_travel",
    "roaming_high_usage",
    "simultaneous_calls",
    "early_life_high_usage",
    "call_forwarding_high_risk",
    "credit_limit_warning",
    "credit_limit_exceeded",
    "usage_spike_in_arrears",
    "invoice_overdue",
    "payment_reversal",
    "bill_shock",
];

/// An alert a story must raise.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Label {
    pub rule: String,
    pub entity: String,
    /// The rule's entity type: with the rule and the key, what `replay --labels` matches an alert by.
    pub entity_type: EntityType,
    pub severity: Severity,
    /// Which story raised it, e.g. `wangiri_callback#1`.
    pub story: String,
}

/// Everything the stories add: records and events (each sorted by time) and the labels.
#[derive(Default)]
pub struct Stories {
    pub usage: Vec<UsageRecord>,
    pub events: Vec<AccountEvent>,
    pub labels: Vec<Label>,
}

const MIN: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// Plans `count` stories for each requested rule. Errors name an unknown rule or a period too short.
pub fn plan(
    requests: &[(String, u32)],
    seed: u64,
    pop: &Population,
    plan: &NumberPlan,
    clock: &Clock,
    home_cc: &str,
    tag: &str,
) -> Result<Stories, String> {
    if requests.is_empty() {
        return Ok(Stories::default());
    }
    for (rule, _) in requests {
        if !STORY_RULES.contains(&rule.as_str()) {
            return Err(format!(
                "no story for rule {rule:?}; stories exist for: {}",
                STORY_RULES.join(", ")
            ));
        }
    }
    if clock.len_s() < 4 * DAY {
        return Err("stories need a period of at least 4 days (--days 4)".into());
    }
    let taken: ahash::AHashSet<u64> = pop.lines.iter().map(|l| l.msisdn.key()).collect();
    let mut w = Writer {
        rng: Rng::with_seed(seed ^ 0x5354_4f52_4945_5321),
        plan,
        clock,
        pop,
        taken,
        next_line: 0,
        home_cc: home_cc.to_string(),
        tag: tag.to_string(),
        story: String::new(),
        seq: 0,
        out: Stories::default(),
    };
    // Counts per rule, in catalogue order: `all` plus `irsf=2` is three IRSF stories, numbered 1–3
    // (story numbers name record ids and accounts, so they must not repeat).
    let counts: Vec<(&str, u32)> = STORY_RULES
        .iter()
        .map(|&r| {
            (
                r,
                requests
                    .iter()
                    .filter(|(q, _)| q == r)
                    .map(|(_, n)| n)
                    .sum(),
            )
        })
        .filter(|&(_, n)| n > 0)
        .collect();
    for (rule, count) in counts {
        for k in 1..=count {
            w.story = format!("{rule}#{k}");
            w.seq = 0;
            w.tell(rule, k);
        }
    }
    w.out
        .usage
        .sort_by_key(|r| (r.event_start.utc, r.record_id.clone()));
    w.out
        .events
        .sort_by_key(|e| (e.occurred_at.utc, e.event_id.clone()));
    w.out.labels.sort();
    Ok(w.out)
}

struct Writer<'a> {
    rng: Rng,
    plan: &'a NumberPlan,
    clock: &'a Clock,
    pop: &'a Population,
    taken: ahash::AHashSet<u64>,
    next_line: u64,
    home_cc: String,
    tag: String,
    story: String,
    seq: u32,
    out: Stories,
}

/// A usage record being built: the fields stories vary.
#[derive(Clone)]
struct Rec {
    t: i64,
    msisdn: Number,
    kind: RecordType,
    direction: Option<Direction>,
    other: Option<Number>,
    duration_s: u32,
    answered: bool,
    account: Option<CompactString>,
    charge: Money,
    cell: Option<u64>,
    fix: Option<(f64, f64)>,
    roaming: Option<&'static str>,
    forwarded_to: Option<Number>,
    bytes: u64,
}

impl Writer<'_> {
    fn at(&self, utc: i64) -> EventTime {
        EventTime {
            utc,
            offset_min: self.clock.start().offset_min,
        }
    }

    /// A start time for a story lasting `len` seconds, at least 12 h from either end of the period.
    fn when(&mut self, len: i64) -> i64 {
        let start = self.clock.start().utc + 12 * HOUR;
        let latest = self.clock.start().utc + self.clock.len_s() - 12 * HOUR - len;
        self.rng.i64(start..=latest.max(start))
    }

    /// A line no background subscriber has: `<cc>7999` and a counter.
    fn fresh_line(&mut self) -> Number {
        loop {
            self.next_line += 1;
            let n = Number::parse(&format!("{}7999{:05}", self.home_cc, self.next_line))
                .expect("digits");
            if self.taken.insert(n.key()) {
                return n;
            }
        }
    }

    fn account_id(&self, rule_tag: &str) -> CompactString {
        format_compact!(
            "S-{}{rule_tag}-{}",
            self.tag,
            self.story.rsplit('#').next().unwrap_or("1")
        )
    }

    fn background_line(&mut self) -> Number {
        self.pop.lines[self.rng.usize(0..self.pop.lines.len())].msisdn
    }

    /// The account of a background line, as mediation writes it on the line's records (and as the
    /// producers key them: a record without it would land in another partition than its account).
    fn account_of(&self, n: Number) -> Option<CompactString> {
        let line = self.pop.lines.iter().find(|l| l.msisdn == n)?;
        Some(self.pop.accounts[line.account as usize].id.clone())
    }

    fn high_risk(&mut self) -> Number {
        self.plan
            .high_risk(&mut self.rng)
            .map(|(n, _)| n)
            .expect("the shipped plan has high-risk ranges")
    }

    fn label(&mut self, rule: &str, kind: EntityType, entity: impl ToString, severity: Severity) {
        self.out.labels.push(Label {
            rule: rule.into(),
            entity: entity.to_string(),
            entity_type: kind,
            severity,
            story: self.story.clone(),
        });
    }

    fn rec(&self, t: i64, msisdn: Number, kind: RecordType) -> Rec {
        Rec {
            t,
            msisdn,
            kind,
            direction: (kind != RecordType::Data).then_some(Direction::Mo),
            other: None,
            duration_s: 0,
            answered: true,
            account: None,
            charge: Money::ZERO,
            cell: None,
            fix: None,
            roaming: None,
            forwarded_to: None,
            bytes: 0,
        }
    }

    fn emit(&mut self, r: Rec) {
        self.seq += 1;
        let id = format_compact!(
            "story-{}{}-{}",
            self.tag,
            self.story.replace('#', "-"),
            self.seq
        );
        let (lat, lon) = r.fix.unzip();
        self.out.usage.push(UsageRecord {
            record_id: id,
            record_type: r.kind,
            direction: r.direction,
            event_start: self.at(r.t),
            duration_s: r.duration_s,
            answered: r.answered,
            served: Served {
                account_id: r.account,
                ..Served::new(r.msisdn)
            },
            other_party: OtherParty {
                number: r.other,
                ..OtherParty::default()
            },
            location: Location {
                cell_id: r.cell,
                lat,
                lon,
            },
            roaming: Roaming {
                is_roaming: r.roaming.is_some(),
                visited_plmn: r.roaming.map(CompactString::from),
            },
            forwarding: Forwarding {
                forwarded_to_number: r.forwarded_to,
                ..Forwarding::default()
            },
            volume: Volume {
                bytes_up: 0,
                bytes_down: r.bytes,
            },
            charge: Charge::stated(r.charge, (r.charge > Money::ZERO).then(|| "EUR".into())),
            call_ref: None,
            seq: None,
            partial: None,
            cumulative: false,
            repairs: Default::default(),
        });
    }

    fn event(&mut self, t: i64, account: &CompactString, kind: EventType) -> AccountEvent {
        self.seq += 1;
        AccountEvent::new(
            format_compact!(
                "story-{}{}-e{}",
                self.tag,
                self.story.replace('#', "-"),
                self.seq
            ),
            kind,
            self.at(t),
            account.clone(),
        )
    }

    fn push_event(&mut self, e: AccountEvent) {
        self.out.events.push(e);
    }

    fn credit_limit(&mut self, t: i64, account: &CompactString, units: i64) {
        let mut e = self.event(t, account, EventType::CreditLimitChanged);
        e.credit = Some(Credit {
            credit_limit: Money::from_units(units),
        });
        self.push_event(e);
    }

    fn invoice(&mut self, t: i64, account: &CompactString, id: &str, due: Date, units: i64) {
        let mut e = self.event(t, account, EventType::InvoiceIssued);
        e.invoice = Some(Invoice {
            invoice_id: id.into(),
            due_date: due,
            amount_due: Money::from_units(units),
        });
        self.push_event(e);
    }

    fn payment(&mut self, t: i64, account: &CompactString, id: &str, invoice: &str, units: i64) {
        let mut e = self.event(t, account, EventType::PaymentReceived);
        e.payment = Some(Payment {
            payment_id: id.into(),
            invoice_id: Some(invoice.into()),
            reversed_payment_id: None,
        });
        e.amount = Some(Amount {
            value: Money::from_units(units),
            currency: Some("EUR".into()),
        });
        self.push_event(e);
    }

    /// A Wangiri wave from `caller` ringing 25 background subscribers, 20 s apart, from `t`. Returns
    /// the victims.
    fn wangiri_wave(&mut self, t: i64, caller: Number) -> Vec<Number> {
        let mut victims: Vec<Number> = Vec::new();
        while victims.len() < 25 {
            let v = self.background_line();
            if !victims.contains(&v) {
                victims.push(v);
            }
        }
        for (i, &v) in victims.iter().enumerate() {
            let mut r = self.rec(t + 20 * i as i64, v, RecordType::Voice);
            r.account = self.account_of(v);
            r.direction = Some(Direction::Mt);
            r.other = Some(caller);
            r.answered = i % 3 == 0;
            r.duration_s = if r.answered { 2 } else { 0 };
            self.emit(r);
        }
        self.label(
            "wangiri_inbound",
            EntityType::CallingNumber,
            caller,
            Severity::High,
        );
        victims
    }

    fn tell(&mut self, rule: &str, k: u32) {
        let hour_local = |w: &Self, utc: i64| -> i64 {
            (utc + w.clock.start().offset_min as i64 * 60).rem_euclid(DAY) / HOUR
        };
        match rule {
            // Four 4-minute calls to a high-risk range, 10 min apart: the third passes 10 minutes.
            "irsf_high_risk_destination" => {
                let (s, t, dest) = (self.fresh_line(), self.when(HOUR), self.high_risk());
                for i in 0..4 {
                    let mut r = self.rec(t + i * 10 * MIN, s, RecordType::Voice);
                    r.other = Some(dest);
                    r.duration_s = 240;
                    self.emit(r);
                }
                self.label(rule, EntityType::Subscriber, s, Severity::High);
            }
            "wangiri_inbound" => {
                let (t, caller) = (self.when(HOUR), self.high_risk());
                self.wangiri_wave(t, caller);
            }
            // A victim of the wave calls the number back 40 minutes later.
            "wangiri_callback" => {
                let (t, caller) = (self.when(2 * HOUR), self.high_risk());
                let victims = self.wangiri_wave(t, caller);
                let mut r = self.rec(t + 40 * MIN, victims[7], RecordType::Voice);
                r.account = self.account_of(victims[7]);
                r.other = Some(caller);
                r.duration_s = 75;
                self.emit(r);
                self.label(rule, EntityType::Subscriber, victims[7], Severity::Medium);
            }
            // 60 calls to 40 numbers over 10 h from one cell, 2 received, no data or SMS.
            "simbox_behaviour" => {
                let (s, t) = (self.fresh_line(), self.when(11 * HOUR));
                let called: Vec<Number> = (0..40)
                    .map(|_| self.plan.home_mobile(&mut self.rng))
                    .collect();
                let cell = 900_000 + k as u64;
                for i in 0..60 {
                    let mut r = self.rec(t + i * 10 * MIN, s, RecordType::Voice);
                    r.other = Some(called[i as usize % 40]);
                    r.duration_s = 90;
                    r.cell = Some(cell);
                    self.emit(r);
                }
                for i in 0..2 {
                    let mut r = self.rec(t + 5 * MIN + i * 200 * MIN, s, RecordType::Voice);
                    r.direction = Some(Direction::Mt);
                    r.other = Some(self.plan.home_mobile(&mut self.rng));
                    r.duration_s = 60;
                    r.cell = Some(cell);
                    self.emit(r);
                }
                self.label(rule, EntityType::Subscriber, s, Severity::High);
            }
            // 120 SMS in an hour, each to another recipient.
            "sms_sim_farm" => {
                let (s, t) = (self.fresh_line(), self.when(HOUR));
                for i in 0..120 {
                    let mut r = self.rec(t + i * 30, s, RecordType::Sms);
                    r.other = Some(self.plan.home_mobile(&mut self.rng));
                    self.emit(r);
                }
                self.label(rule, EntityType::Subscriber, s, Severity::Medium);
            }
            // An enterprise PBX: three lines call abroad from 22:00 local, 25 minutes each.
            "pbx_off_hours_international" => {
                let acct = self.account_id("pbx");
                let seg_t = self.clock.start().utc - 30 * DAY;
                let mut e = self.event(seg_t, &acct, EventType::SegmentChanged);
                e.segment = Some(Segment::Enterprise);
                self.push_event(e);
                let t0 = self.when(DAY);
                let night =
                    t0 - t0.rem_euclid(HOUR) + (22 - hour_local(self, t0)).rem_euclid(24) * HOUR;
                for i in 0..3 {
                    let line = self.fresh_line();
                    let mut r = self.rec(night + i * 5 * MIN, line, RecordType::Voice);
                    r.other = Some(self.plan.foreign(&mut self.rng).0);
                    r.duration_s = 25 * 60;
                    r.account = Some(acct.clone());
                    self.emit(r);
                }
                self.label(rule, EntityType::Account, acct, Severity::Critical);
            }
            // Paris, then Marseille (660 km) 20 minutes later.
            "impossible_travel" => {
                let (s, t) = (self.fresh_line(), self.when(HOUR));
                for (i, fix) in [(48.8566, 2.3522), (43.2965, 5.3698)]
                    .into_iter()
                    .enumerate()
                {
                    let mut r = self.rec(t + i as i64 * 20 * MIN, s, RecordType::Data);
                    r.duration_s = 300;
                    r.bytes = 2_000_000;
                    r.fix = Some(fix);
                    self.emit(r);
                }
                self.label(rule, EntityType::Subscriber, s, Severity::High);
            }
            // Four roaming calls of 60.00 in the UK within 2.5 hours.
            "roaming_high_usage" => {
                let (s, t) = (self.fresh_line(), self.when(3 * HOUR));
                for i in 0..4 {
                    let mut r = self.rec(t + i * 50 * MIN, s, RecordType::Voice);
                    r.other = Some(self.plan.foreign(&mut self.rng).0);
                    r.duration_s = 600;
                    r.roaming = Some(VISITED[0].plmn);
                    r.fix = Some((VISITED[0].lat, VISITED[0].lon));
                    r.charge = Money::from_units(60);
                    self.emit(r);
                }
                self.label(rule, EntityType::Subscriber, s, Severity::High);
            }
            // Three answered MO calls overlapping.
            "simultaneous_calls" => {
                let (s, t) = (self.fresh_line(), self.when(HOUR));
                for i in 0..3 {
                    let mut r = self.rec(t + i * 5 * MIN, s, RecordType::Voice);
                    r.other = Some(self.plan.home_mobile(&mut self.rng));
                    r.duration_s = 1800;
                    self.emit(r);
                }
                self.label(rule, EntityType::Subscriber, s, Severity::Medium);
            }
            // Activated 10 days ago; fourteen 9-minute high-risk calls an hour apart (126 minutes,
            // never 10 minutes within an hour, so IRSF stays quiet).
            "early_life_high_usage" => {
                let acct = self.account_id("early");
                let s = self.fresh_line();
                let t = self.when(16 * HOUR);
                let mut e = self.event(t - 10 * DAY, &acct, EventType::Activation);
                e.msisdn = Some(s);
                self.push_event(e);
                let dest = self.high_risk();
                for i in 0..14 {
                    let mut r = self.rec(t + i * 65 * MIN, s, RecordType::Voice);
                    r.other = Some(dest);
                    r.duration_s = 9 * 60;
                    r.account = Some(acct.clone());
                    self.emit(r);
                }
                self.label(rule, EntityType::Account, acct, Severity::High);
            }
            // An incoming call forwarded to a satellite number.
            "call_forwarding_high_risk" => {
                let (s, t) = (self.fresh_line(), self.when(HOUR));
                let mut r = self.rec(t, s, RecordType::Voice);
                r.direction = Some(Direction::Mt);
                r.other = Some(self.plan.home_mobile(&mut self.rng));
                r.forwarded_to = Some(self.high_risk());
                r.duration_s = 120;
                self.emit(r);
                self.label(rule, EntityType::Subscriber, s, Severity::Critical);
            }
            // Limit 100: 30 + 30 + 25 of data crosses 80%.
            "credit_limit_warning" | "credit_limit_exceeded" => {
                let exceed = rule == "credit_limit_exceeded";
                let acct = self.account_id(if exceed { "cx" } else { "cw" });
                let s = self.fresh_line();
                self.credit_limit(self.clock.start().utc - 20 * DAY, &acct, 100);
                let t = self.when(3 * HOUR);
                let amounts: &[i64] = if exceed { &[40, 40, 30] } else { &[30, 30, 25] };
                for (i, &a) in amounts.iter().enumerate() {
                    let mut r = self.rec(t + i as i64 * 50 * MIN, s, RecordType::Data);
                    r.duration_s = 900;
                    r.bytes = 50_000_000;
                    r.charge = Money::from_units(a);
                    r.account = Some(acct.clone());
                    self.emit(r);
                }
                self.label(
                    "credit_limit_warning",
                    EntityType::Account,
                    &acct,
                    Severity::Medium,
                );
                if exceed {
                    self.label(rule, EntityType::Account, &acct, Severity::High);
                }
            }
            // An invoice 16 days overdue (a promise to pay keeps dunning quiet), 1.00 a day of usage for
            // 20 days, then 8.00 six times within 4 hours.
            "usage_spike_in_arrears" => {
                let acct = self.account_id("spike");
                let s = self.fresh_line();
                let start = self.clock.start().utc;
                let issued = start - 30 * DAY;
                let due = Date::of(self.at(start - 16 * DAY));
                self.invoice(issued, &acct, &format!("INV-{acct}"), due, 40);
                let mut e = self.event(issued + HOUR, &acct, EventType::PromiseToPay);
                e.until = Some(Date::of(self.at(start + 30 * DAY)));
                self.push_event(e);
                for d in 1..=20 {
                    let mut r = self.rec(start - d * DAY + 12 * HOUR, s, RecordType::Data);
                    r.duration_s = 600;
                    r.bytes = 1_000_000;
                    r.charge = Money::from_units(1);
                    r.account = Some(acct.clone());
                    self.emit(r);
                }
                let t = self.when(5 * HOUR);
                for i in 0..6 {
                    let mut r = self.rec(t + i * 40 * MIN, s, RecordType::Data);
                    r.duration_s = 600;
                    r.bytes = 80_000_000;
                    r.charge = Money::from_units(8);
                    r.account = Some(acct.clone());
                    self.emit(r);
                }
                self.label(rule, EntityType::Account, acct, Severity::High);
            }
            // Due 12 days before the period: +7 passes before it, +15 inside it (a 4-day period or
            // longer), +30 after.
            "invoice_overdue" => {
                let acct = self.account_id("overdue");
                let start = self.clock.start().utc;
                let due = Date::of(self.at(start - 12 * DAY));
                self.invoice(start - 26 * DAY, &acct, &format!("INV-{acct}"), due, 70);
                let end = start + self.clock.len_s();
                for (days, sev) in [
                    (7, Severity::Low),
                    (15, Severity::Medium),
                    (30, Severity::High),
                ] {
                    let fires = due
                        .plus_days(days)
                        .midnight(self.clock.start().offset_min)
                        .utc;
                    // The last background records are within minutes of the end; keep a margin.
                    if fires < end - 12 * HOUR {
                        self.label(rule, EntityType::Account, &acct, sev);
                    }
                }
            }
            // Paid 50.00, then 60.00 of usage, then the payment is charged back.
            "payment_reversal" => {
                let acct = self.account_id("reversal");
                let s = self.fresh_line();
                let start = self.clock.start().utc;
                let invoice = format!("INV-{acct}");
                let due = Date::of(self.at(start + 20 * DAY));
                self.invoice(start - 5 * DAY, &acct, &invoice, due, 50);
                let t = self.when(DAY);
                let payment = format!("PAY-{acct}");
                self.payment(t, &acct, &payment, &invoice, 50);
                for i in 0..3 {
                    let mut r = self.rec(t + HOUR + i * 2 * HOUR, s, RecordType::Data);
                    r.duration_s = 900;
                    r.bytes = 40_000_000;
                    r.charge = Money::from_units(20);
                    r.account = Some(acct.clone());
                    self.emit(r);
                }
                let mut e = self.event(t + 20 * HOUR, &acct, EventType::PaymentReversed);
                e.payment = Some(Payment {
                    payment_id: format_compact!("REV-{acct}"),
                    invoice_id: Some(invoice.as_str().into()),
                    reversed_payment_id: Some(payment.as_str().into()),
                });
                e.amount = Some(Amount {
                    value: Money::from_units(50),
                    currency: Some("EUR".into()),
                });
                self.push_event(e);
                self.label(rule, EntityType::Account, acct, Severity::High);
            }
            // Eight days of 1.00 a day, then 12.00 and 6.00 of data within 20 minutes.
            "bill_shock" => {
                let s = self.fresh_line();
                let start = self.clock.start().utc;
                for d in 0..16 {
                    let mut r = self.rec(
                        start - 8 * DAY + d * 12 * HOUR + 9 * HOUR,
                        s,
                        RecordType::Voice,
                    );
                    r.other = Some(self.plan.home_mobile(&mut self.rng));
                    r.duration_s = 120;
                    r.charge = Money(500_000);
                    self.emit(r);
                }
                let t = self.when(HOUR);
                for (i, a) in [12, 6].into_iter().enumerate() {
                    let mut r = self.rec(t + i as i64 * 20 * MIN, s, RecordType::Data);
                    r.duration_s = 600;
                    r.bytes = 200_000_000;
                    r.charge = Money::from_units(a);
                    self.emit(r);
                }
                self.label(rule, EntityType::Subscriber, s, Severity::Medium);
            }
            other => unreachable!("checked against STORY_RULES: {other}"),
        }
    }
}
