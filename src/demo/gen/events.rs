//! The billing side: activations, credit limits, segments, one invoice per account shortly before the
//! period, payments for most of them during it, and a few reversals.
//!
//! Invoices are issued 1–12 days before the start with 14 days to pay, so none is overdue when the period
//! starts: arrears rules fire only as time passes inside the period, on the ~15% left unpaid.

use std::io::{self, Write};

use compact_str::{format_compact, CompactString};
use fastrand::Rng;

use super::clock::{Clock, Profile};
use super::dist::chance;
use super::population::Population;
use crate::record::time::civil_from_days;
use crate::record::{
    AccountEvent, Amount, Credit, Date, EventTime, EventType, Invoice, Money, Payment, Segment,
};

const PAID_SHARE: f64 = 0.85;
const REVERSED_SHARE: f64 = 0.02;

/// An event before it is written: 32 bytes instead of a ~300-byte `AccountEvent`, so the 2.4 × 10⁵
/// events of 10⁵ lines cost ~8 MB while they wait to be sorted.
struct Planned {
    /// UTC seconds.
    at: i64,
    account: u32,
    what: What,
}

enum What {
    Activation { line: u32 },
    CreditLimit(Money),
    Segment(Segment),
    Invoice { cycle: Date, amount: Money },
    Payment { cycle: Date, amount: Money },
    Reversal { cycle: Date, amount: Money },
}

/// Plans every account's events, sorts them by time and writes them as NDJSON. Returns the count.
pub fn write(
    rng: &mut Rng,
    pop: &Population,
    clock: &Clock,
    stories: &[AccountEvent],
    tag: &str,
    out: &mut dyn Write,
) -> io::Result<u64> {
    let planned = plan(rng, pop, clock);
    let offset_min = clock.start().offset_min;
    let mut buf = Vec::with_capacity(512);
    let mut write = |event: &AccountEvent| -> io::Result<()> {
        buf.clear();
        serde_json::to_writer(&mut buf, event)?;
        buf.push(b'\n');
        out.write_all(&buf)
    };
    let mut told = stories.iter().peekable();
    for (seq, p) in planned.iter().enumerate() {
        let event = build(pop, p, seq as u64 + 1, offset_min, tag);
        while let Some(s) = told.next_if(|s| s.occurred_at.utc <= event.occurred_at.utc) {
            write(s)?;
        }
        write(&event)?;
    }
    for s in told {
        write(s)?;
    }
    Ok((planned.len() + stories.len()) as u64)
}

fn plan(rng: &mut Rng, pop: &Population, clock: &Clock) -> Vec<Planned> {
    let start = clock.start();
    let end = start.utc + clock.len_s();
    let today = Date::of(start);
    let midnight = today.midnight(start.offset_min).utc;
    let mut out = Vec::with_capacity(pop.lines.len() + pop.accounts.len() * 3);
    for (i, account) in pop.accounts.iter().enumerate() {
        let a = i as u32;
        let mut push = |at: i64, what: What| {
            out.push(Planned {
                at,
                account: a,
                what,
            })
        };

        // Signed up in a shop or online, during opening hours, 2 months to 13 months ago.
        let age_days = rng.i64(60..=400);
        let created = midnight - age_days * 86_400 + rng.i64(9 * 3600..19 * 3600);
        for (k, line) in account.lines.clone().enumerate() {
            // Families and companies mostly take their lines together; some are added later.
            let at = if k == 0 || chance(rng, 0.5) {
                created + k as i64 * 30
            } else {
                created + rng.i64(1..=age_days - 30) * 86_400 + rng.i64(0..600)
            };
            push(at, What::Activation { line });
        }
        // Last month's bill, known to credit control when it set the limit: limits sit at 2.5–4 times
        // a customer's usual bill (rounded to 50), so a paying customer's exposure stays well under
        // the limit and credit rules fire on real arrears, not on every invoice.
        let cents = match account.segment {
            Segment::Consumer => rng.i64(1_000..=15_000),
            Segment::Vip => rng.i64(6_000..=40_000),
            _ => account.lines.len() as i64 * rng.i64(2_500..=12_000),
        };
        let amount = Money(cents * 10_000);
        let floor = if account.segment == Segment::Consumer {
            100
        } else {
            500
        };
        let limit_units = (cents * rng.i64(25..=40) / 1_000 + 49) / 50 * 50;
        let limit = Money::from_units(limit_units.max(floor));
        push(created + rng.i64(60..=900), What::CreditLimit(limit));
        if account.segment != Segment::Consumer {
            // Account managers re-file key customers after the sale, not at the counter.
            let day = created - (created - midnight).rem_euclid(86_400) + rng.i64(1..=3) * 86_400;
            let at = day + rng.i64(9 * 3600..18 * 3600);
            push(at, What::Segment(account.segment));
        }

        // Last month's invoice, from the overnight billing run.
        let cycle = today.plus_days(-rng.i32(1..=12));
        let issued = cycle.midnight(start.offset_min).utc + rng.i64(2 * 3600..5 * 3600);
        push(issued, What::Invoice { cycle, amount });
        if chance(rng, PAID_SHARE) {
            // Card payments and bank transfers happen when people are awake.
            let paid = start.utc + clock.sample(rng, Profile::Consumer) as i64;
            push(paid, What::Payment { cycle, amount });
            // A bounced direct debit or a chargeback, within three days and inside the period.
            let window = (end - paid - 1).min(3 * 86_400);
            if chance(rng, REVERSED_SHARE) && window > 0 {
                let at = paid + 1 + rng.i64(0..window);
                push(at, What::Reversal { cycle, amount });
            }
        }
    }
    // Stable: events of one instant keep their causal order (activation before its credit limit).
    out.sort_by_key(|p| p.at);
    out
}

fn build(pop: &Population, p: &Planned, seq: u64, offset_min: i16, tag: &str) -> AccountEvent {
    let account = &pop.accounts[p.account as usize];
    let n = p.account + 1;
    let mut e = AccountEvent::new(
        format_compact!("ev-{tag}{seq:09}"),
        EventType::Activation,
        EventTime {
            utc: p.at,
            offset_min,
        },
        account.id.clone(),
    );
    let paid = |amount: Money| {
        Some(Amount {
            value: amount,
            currency: Some(CompactString::const_new("EUR")),
        })
    };
    match p.what {
        What::Activation { line } => e.msisdn = Some(pop.lines[line as usize].msisdn),
        What::CreditLimit(limit) => {
            e.event_type = EventType::CreditLimitChanged;
            e.credit = Some(Credit {
                credit_limit: limit,
            });
        }
        What::Segment(segment) => {
            e.event_type = EventType::SegmentChanged;
            e.segment = Some(segment);
        }
        What::Invoice { cycle, amount } => {
            e.event_type = EventType::InvoiceIssued;
            e.invoice = Some(Invoice {
                invoice_id: document_id("INV", cycle, n),
                due_date: cycle.plus_days(14),
                amount_due: amount,
            });
        }
        What::Payment { cycle, amount } => {
            e.event_type = EventType::PaymentReceived;
            e.payment = Some(Payment {
                payment_id: document_id("PAY", cycle, n),
                invoice_id: Some(document_id("INV", cycle, n)),
                reversed_payment_id: None,
            });
            e.amount = paid(amount);
        }
        What::Reversal { cycle, amount } => {
            e.event_type = EventType::PaymentReversed;
            e.payment = Some(Payment {
                payment_id: document_id("REV", cycle, n),
                invoice_id: Some(document_id("INV", cycle, n)),
                reversed_payment_id: Some(document_id("PAY", cycle, n)),
            });
            e.amount = paid(amount);
        }
    }
    e
}

/// `INV-202610-000042`: billing numbers documents per cycle (year and month of issue) and account.
fn document_id(kind: &str, cycle: Date, account: u32) -> CompactString {
    let (y, m, _) = civil_from_days(cycle.0 as i64);
    format_compact!("{kind}-{y:04}{m:02}-{account:06}")
}
