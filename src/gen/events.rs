//! The billing side: activations, credit limits, segments, one invoice per account near the start,
//! payments for most of them, and a few reversals.

use compact_str::format_compact;

use crate::record::{
    AccountEvent, Amount, Credit, Date, EventTime, EventType, Invoice, Money, Payment, Segment,
};

use super::population::Population;
use super::GenConfig;

fn event(
    id: compact_str::CompactString,
    kind: EventType,
    at: i64,
    cfg: &GenConfig,
    account: &str,
) -> AccountEvent {
    AccountEvent {
        event_id: id,
        event_type: kind,
        occurred_at: EventTime {
            utc: at,
            offset_min: cfg.start.offset_min,
        },
        account_id: account.into(),
        msisdn: None,
        invoice: None,
        payment: None,
        amount: None,
        credit: None,
        until: None,
        lifecycle: None,
        segment: None,
    }
}

pub fn account_events(
    rng: &mut fastrand::Rng,
    pop: &Population,
    cfg: &GenConfig,
) -> Vec<AccountEvent> {
    let start = cfg.start.utc;
    let span = cfg.days.max(1) as i64 * 86_400;
    let mut out = Vec::new();
    for a in &pop.accounts {
        let id = a.id.as_str();
        let business = matches!(
            a.segment,
            Segment::Smb | Segment::Enterprise | Segment::Government
        );
        let activated = start - rng.i64(60..=400) * 86_400 - rng.i64(0..86_400);
        for (k, &line) in a.lines.iter().enumerate() {
            let mut e = event(
                format_compact!("act-{id}-{k}"),
                EventType::Activation,
                activated + k as i64 * 60,
                cfg,
                id,
            );
            e.msisdn = Some(pop.lines[line as usize].msisdn);
            out.push(e);
        }
        let limit = if business {
            rng.i64(500..=5000)
        } else {
            rng.i64(50..=150)
        };
        let mut e = event(
            format_compact!("cl-{id}"),
            EventType::CreditLimitChanged,
            activated + 3600,
            cfg,
            id,
        );
        e.credit = Some(Credit {
            credit_limit: Money::from_units(limit),
        });
        out.push(e);
        if a.segment != Segment::Consumer {
            let mut e = event(
                format_compact!("seg-{id}"),
                EventType::SegmentChanged,
                activated + 7200,
                cfg,
                id,
            );
            e.segment = Some(a.segment);
            out.push(e);
        }
        // Last month's invoice, issued shortly before the traffic starts, due 14 days later.
        let issued = start - rng.i64(1..=10) * 86_400;
        let issued_t = EventTime {
            utc: issued - issued.rem_euclid(86_400),
            offset_min: cfg.start.offset_min,
        };
        let cents = if business {
            rng.i64(20_000..=300_000)
        } else {
            rng.i64(1_000..=15_000)
        } * a.lines.len() as i64;
        let amount = Money(cents * 10_000);
        let inv_id = format_compact!("INV-{id}");
        let mut e = event(
            format_compact!("inv-{id}"),
            EventType::InvoiceIssued,
            issued_t.utc,
            cfg,
            id,
        );
        e.invoice = Some(Invoice {
            invoice_id: inv_id.clone(),
            due_date: Date::of(issued_t).plus_days(14),
            amount_due: amount,
        });
        out.push(e);
        if rng.f64() < 0.85 {
            let paid_at = start + rng.i64(0..span);
            let mut e = event(
                format_compact!("pay-{id}"),
                EventType::PaymentReceived,
                paid_at,
                cfg,
                id,
            );
            e.payment = Some(Payment {
                payment_id: format_compact!("P-{id}"),
                invoice_id: Some(inv_id),
                reversed_payment_id: None,
            });
            e.amount = Some(Amount {
                value: amount,
                currency: Some("EUR".into()),
            });
            out.push(e);
            if rng.f64() < 0.02 {
                let mut e = event(
                    format_compact!("rev-{id}"),
                    EventType::PaymentReversed,
                    paid_at + rng.i64(3600..=48 * 3600),
                    cfg,
                    id,
                );
                e.payment = Some(Payment {
                    payment_id: format_compact!("R-{id}"),
                    invoice_id: None,
                    reversed_payment_id: Some(format_compact!("P-{id}")),
                });
                e.amount = Some(Amount {
                    value: amount,
                    currency: Some("EUR".into()),
                });
                out.push(e);
            }
        }
    }
    // Stable sort: events at the same instant keep their causal order (activation before limit ...).
    out.sort_by_key(|e| e.occurred_at.utc);
    out
}
