//! An account's credit view: invoices, payments and reversals, credit limit, segment and lifecycle.
//!
//! This is not windowed state: an unpaid invoice stays until it is paid, however old. Payments are
//! allocated to the invoice they name, else to the oldest open invoices; a reversal undoes exactly the
//! allocations of the payment it reverses, so the ledger never drifts from billing's view.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::record::{AccountEvent, Date, EventTime, EventType, Money, Number, Segment};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InvoiceState {
    pub invoice_id: CompactString,
    pub issued_at: EventTime,
    pub due_date: Date,
    pub amount_due: Money,
    pub paid: Money,
}

impl InvoiceState {
    pub fn remaining(&self) -> Money {
        (self.amount_due - self.paid).max(Money::ZERO)
    }

    /// Whole days past the due date at `at` (0 on or before the due date).
    pub fn days_overdue(&self, at: EventTime) -> i32 {
        (Date::of(at).0 - self.due_date.0).max(0)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PaymentState {
    pub payment_id: CompactString,
    pub at: EventTime,
    pub amount: Money,
    /// (invoice id, amount) this payment settled; the rest went to the account's credit balance.
    pub allocations: Vec<(CompactString, Money)>,
    pub reversed_at: Option<EventTime>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    pub segment: Segment,
    pub credit_limit: Option<Money>,
    pub activated_at: Option<EventTime>,
    pub deactivated_at: Option<EventTime>,
    pub promise_to_pay_until: Option<Date>,
    pub invoices: Vec<InvoiceState>,
    pub payments: Vec<PaymentState>,
    /// Times of payment reversals (kept 90 days after the fact).
    pub reversals: Vec<EventTime>,
    /// Payments not allocated to any invoice yet.
    pub credit_balance: Money,
    pub last_invoice_at: Option<EventTime>,
    /// Usage charges with event time at or after the last invoice (or since first seen).
    pub unbilled: Money,
    pub last_sim_change: Option<EventTime>,
}

/// What applying an event asks of the store.
#[derive(Debug, Default, PartialEq)]
pub struct LedgerEffects {
    /// Invoice issued: the store schedules its overdue timers and resets unbilled usage.
    pub invoice_issued: Option<(CompactString, Date, EventTime)>,
    /// A line (msisdn) named by the event belongs to this account.
    pub line: Option<Number>,
    /// The newest invoice moved the billing cut here: unbilled usage restarts from it.
    pub billing_cut: Option<EventTime>,
}

/// Why an event could not be applied in full; counted, never fatal.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerWarning {
    #[error("payment_reversed names unknown payment {0:?}")]
    UnknownPayment(CompactString),
    #[error("payment {0:?} was already reversed")]
    AlreadyReversed(CompactString),
    #[error("invoice {0:?} issued twice; the second replaces the first")]
    InvoiceReissued(CompactString),
    #[error("payment {0:?} received twice under different event ids; applied once")]
    DuplicatePayment(CompactString),
}

impl Ledger {
    pub fn apply(&mut self, e: &AccountEvent) -> (LedgerEffects, Option<LedgerWarning>) {
        let mut fx = LedgerEffects {
            line: e.msisdn,
            ..Default::default()
        };
        let mut warn = None;
        match e.event_type {
            EventType::InvoiceIssued => {
                let inv = e.invoice.as_ref().expect("validated by the decoder");
                let state = InvoiceState {
                    invoice_id: inv.invoice_id.clone(),
                    issued_at: e.occurred_at,
                    due_date: inv.due_date,
                    amount_due: inv.amount_due,
                    paid: Money::ZERO,
                };
                if let Some(i) = self
                    .invoices
                    .iter()
                    .position(|x| x.invoice_id == inv.invoice_id)
                {
                    warn = Some(LedgerWarning::InvoiceReissued(inv.invoice_id.clone()));
                    let paid = self.invoices[i].paid;
                    self.invoices[i] = InvoiceState { paid, ..state };
                } else {
                    super::reserve_tight(&mut self.invoices);
                    self.invoices.push(state);
                }
                // Credit sitting on the account settles the new invoice first.
                if self.credit_balance > Money::ZERO {
                    let inv = self
                        .invoices
                        .iter_mut()
                        .find(|x| x.invoice_id == inv.invoice_id)
                        .expect("just inserted");
                    let take = self.credit_balance.min(inv.remaining());
                    inv.paid += take;
                    self.credit_balance -= take;
                }
                if self.last_invoice_at.is_none_or(|t| e.occurred_at > t) {
                    self.last_invoice_at = Some(e.occurred_at);
                    fx.billing_cut = Some(e.occurred_at);
                }
                // A reissue keeps its timer chain; the timer checks the due date when it fires.
                if warn.is_none() {
                    fx.invoice_issued = Some((inv.invoice_id.clone(), inv.due_date, e.occurred_at));
                }
            }
            EventType::PaymentReceived => {
                let p = e.payment.as_ref().expect("validated");
                let amount = e.amount.as_ref().expect("validated").value;
                if self.payments.iter().any(|x| x.payment_id == p.payment_id) {
                    warn = Some(LedgerWarning::DuplicatePayment(p.payment_id.clone()));
                } else {
                    let allocations = self.allocate(amount, p.invoice_id.as_deref());
                    super::reserve_tight(&mut self.payments);
                    self.payments.push(PaymentState {
                        payment_id: p.payment_id.clone(),
                        at: e.occurred_at,
                        amount,
                        allocations,
                        reversed_at: None,
                    });
                }
            }
            EventType::PaymentReversed => {
                let p = e.payment.as_ref().expect("validated");
                let target = p.reversed_payment_id.as_ref().expect("validated");
                let amount = e.amount.as_ref().expect("validated").value;
                match self.payments.iter_mut().find(|x| x.payment_id == target) {
                    None => warn = Some(LedgerWarning::UnknownPayment(target.clone())),
                    Some(pay) if pay.reversed_at.is_some() => {
                        warn = Some(LedgerWarning::AlreadyReversed(target.clone()))
                    }
                    Some(pay) => {
                        pay.reversed_at = Some(e.occurred_at);
                        // A chargeback may be partial: undo up to its amount, credit first, then the
                        // most recent allocations. What cannot go back on an invoice (pruned, or settled
                        // from credit this payment created) becomes negative credit: money owed.
                        let mut left = amount.min(pay.amount);
                        let allocated: Money = pay.allocations.iter().map(|(_, m)| *m).sum();
                        let from_credit = (pay.amount - allocated).min(left);
                        self.credit_balance -= from_credit;
                        left -= from_credit;
                        for (inv_id, amt) in pay.allocations.iter().rev() {
                            if left <= Money::ZERO {
                                break;
                            }
                            let undo = (*amt).min(left);
                            left -= undo;
                            match self.invoices.iter_mut().find(|x| x.invoice_id == inv_id) {
                                Some(inv) => inv.paid -= undo,
                                None => self.credit_balance -= undo,
                            }
                        }
                    }
                }
                // Even an unknown reversal is a reversal: count it for the "second within 90 days"
                // test. A second reversal of the same payment is refused, and not counted: it is a
                // redelivery or a billing error, not a second chargeback.
                if !matches!(warn, Some(LedgerWarning::AlreadyReversed(_))) {
                    super::reserve_tight(&mut self.reversals);
                    self.reversals.push(e.occurred_at);
                }
            }
            EventType::CreditLimitChanged => {
                self.credit_limit = Some(e.credit.as_ref().expect("validated").credit_limit)
            }
            EventType::PromiseToPay => self.promise_to_pay_until = e.until,
            EventType::Activation => {
                if self.activated_at.is_none_or(|t| e.occurred_at < t) {
                    self.activated_at = Some(e.occurred_at);
                }
                self.deactivated_at = None;
            }
            EventType::Deactivation => self.deactivated_at = Some(e.occurred_at),
            EventType::SimChange => self.last_sim_change = Some(e.occurred_at),
            EventType::SegmentChanged => self.segment = e.segment.expect("validated"),
        }
        (fx, warn)
    }

    fn allocate(&mut self, amount: Money, invoice_id: Option<&str>) -> Vec<(CompactString, Money)> {
        let mut left = amount;
        let mut out = Vec::new();
        let mut settle = |inv: &mut InvoiceState, left: &mut Money| {
            let take = (*left).min(inv.remaining());
            if take > Money::ZERO {
                inv.paid += take;
                *left -= take;
                out.push((inv.invoice_id.clone(), take));
            }
        };
        if let Some(id) = invoice_id {
            match self.invoices.iter_mut().find(|x| x.invoice_id == id) {
                Some(inv) => settle(inv, &mut left),
                // Paid before billing told us about the invoice: hold it as credit, which settles
                // the invoice when it is issued, instead of spending it on an older one.
                None => {
                    self.credit_balance += left;
                    return out;
                }
            }
        }
        let mut open: Vec<usize> = (0..self.invoices.len())
            .filter(|&i| self.invoices[i].remaining() > Money::ZERO)
            .collect();
        open.sort_by_key(|&i| (self.invoices[i].due_date, self.invoices[i].issued_at));
        for i in open {
            if left <= Money::ZERO {
                break;
            }
            settle(&mut self.invoices[i], &mut left);
        }
        self.credit_balance += left;
        out
    }

    pub fn unpaid(&self) -> Money {
        self.invoices.iter().map(InvoiceState::remaining).sum()
    }

    /// Remaining amounts of invoices past their due date at `at`.
    pub fn overdue(&self, at: EventTime) -> Money {
        self.invoices
            .iter()
            .filter(|i| i.days_overdue(at) > 0)
            .map(InvoiceState::remaining)
            .sum()
    }

    /// Unpaid invoices plus unbilled usage: what the customer owes or will owe.
    pub fn exposure(&self) -> Money {
        // Negative credit (a reversal that could not go back on an invoice) is owed too.
        self.unpaid() + self.unbilled - self.credit_balance
    }

    pub fn promise_active(&self, at: EventTime) -> bool {
        self.promise_to_pay_until.is_some_and(|d| Date::of(at) <= d)
    }

    pub fn reversals_within(&self, window_s: i64, end: EventTime) -> usize {
        self.reversals
            .iter()
            .filter(|t| t.utc > end.utc - window_s && t.utc <= end.utc)
            .count()
    }

    /// Drops settled history no rule looks at any more (paid invoices and payments older than `keep_s`).
    /// True if anything was dropped: the sweep visits every account, and only those it changed go
    /// into an incremental checkpoint.
    pub fn prune(&mut self, now: i64, keep_s: i64) -> bool {
        let cutoff = now - keep_s;
        let before = self.invoices.len() + self.payments.len() + self.reversals.len();
        self.invoices
            .retain(|i| i.remaining() > Money::ZERO || i.issued_at.utc >= cutoff);
        self.payments.retain(|p| p.at.utc >= cutoff);
        self.reversals.retain(|t| t.utc >= cutoff);
        self.invoices.len() + self.payments.len() + self.reversals.len() != before
    }

    /// True when the ledger holds nothing worth keeping for an idle account.
    pub fn is_empty(&self) -> bool {
        self.invoices.is_empty()
            && self.payments.is_empty()
            && self.reversals.is_empty()
            && self.credit_limit.is_none()
            && self.segment == Segment::Consumer
            && self.activated_at.is_none()
            && self.deactivated_at.is_none()
            && self.promise_to_pay_until.is_none()
            && self.credit_balance == Money::ZERO
            && self.unbilled == Money::ZERO
            && self.last_invoice_at.is_none()
            && self.last_sim_change.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Decoder;

    fn ev(json: &str) -> AccountEvent {
        Decoder::default().account_event(json.as_bytes()).unwrap()
    }

    fn invoice(id: &str, due: &str, amount: &str) -> AccountEvent {
        ev(&format!(
            r#"{{"event_id":"e-{id}","event_type":"invoice_issued","occurred_at":"2026-11-01T00:00:00+01:00","account_id":"A","invoice":{{"invoice_id":"{id}","due_date":"{due}","amount_due":"{amount}"}}}}"#
        ))
    }

    fn payment(id: &str, inv: Option<&str>, amount: &str) -> AccountEvent {
        let inv = inv
            .map(|i| format!(r#","invoice_id":"{i}""#))
            .unwrap_or_default();
        ev(&format!(
            r#"{{"event_id":"e-{id}","event_type":"payment_received","occurred_at":"2026-11-10T00:00:00+01:00","account_id":"A","payment":{{"payment_id":"{id}"{inv}}},"amount":{{"value":"{amount}"}}}}"#
        ))
    }

    #[test]
    fn payments_settle_named_then_oldest_and_reversals_undo_them() {
        let mut l = Ledger::default();
        l.apply(&invoice("I1", "2026-11-15", "80.00"));
        l.apply(&invoice("I2", "2026-12-15", "40.00"));
        assert_eq!(l.unpaid(), Money::parse("120").unwrap());
        l.apply(&payment("P1", None, "100.00"));
        assert_eq!(l.invoices[0].remaining(), Money::ZERO);
        assert_eq!(l.invoices[1].remaining(), Money::parse("20").unwrap());
        let rev = ev(
            r#"{"event_id":"r1","event_type":"payment_reversed","occurred_at":"2026-11-12T00:00:00+01:00","account_id":"A","payment":{"payment_id":"R1","reversed_payment_id":"P1"},"amount":{"value":"100.00"}}"#,
        );
        let (_, warn) = l.apply(&rev);
        assert_eq!(warn, None);
        assert_eq!(l.unpaid(), Money::parse("120").unwrap());
        assert_eq!(
            l.apply(&rev).1,
            Some(LedgerWarning::AlreadyReversed("P1".into()))
        );
        // The refused second reversal is not a second chargeback (issue 14: it used to count).
        assert_eq!(l.reversals.len(), 1);
    }

    #[test]
    fn overpayment_becomes_credit_and_settles_the_next_invoice() {
        let mut l = Ledger::default();
        l.apply(&payment("P1", Some("nope"), "30.00"));
        assert_eq!(l.credit_balance, Money::parse("30").unwrap());
        l.apply(&invoice("I1", "2026-11-15", "80.00"));
        assert_eq!(l.unpaid(), Money::parse("50").unwrap());
        assert_eq!(l.credit_balance, Money::ZERO);
    }

    fn reversal(id: &str, of: &str, amount: &str) -> AccountEvent {
        ev(&format!(
            r#"{{"event_id":"e-{id}","event_type":"payment_reversed","occurred_at":"2026-11-12T00:00:00+01:00","account_id":"A","payment":{{"payment_id":"{id}","reversed_payment_id":"{of}"}},"amount":{{"value":"{amount}"}}}}"#
        ))
    }

    // Regression (review): reversing a payment whose credit had settled a later invoice left the
    // account owing less than billing says.
    #[test]
    fn a_refused_double_reversal_is_not_a_second_reversal() {
        let mut l = Ledger::default();
        l.apply(&payment("P1", None, "30.00"));
        l.apply(&reversal("R1", "P1", "30.00"));
        let (_, warn) = l.apply(&reversal("R2", "P1", "30.00"));
        assert_eq!(warn, Some(LedgerWarning::AlreadyReversed("P1".into())));
        assert_eq!(l.reversals.len(), 1);
    }

    #[test]
    fn reversing_credit_that_was_spent_leaves_the_debt() {
        let mut l = Ledger::default();
        l.apply(&payment("P1", None, "30.00"));
        l.apply(&invoice("I1", "2026-11-15", "80.00"));
        l.apply(&reversal("R1", "P1", "30.00"));
        assert_eq!(l.exposure(), Money::parse("80").unwrap());
    }

    // Regression (review): a partial chargeback reversed the whole payment.
    #[test]
    fn partial_chargeback_reverses_only_its_amount() {
        let mut l = Ledger::default();
        l.apply(&invoice("I1", "2026-11-15", "80.00"));
        l.apply(&payment("P1", Some("I1"), "80.00"));
        l.apply(&reversal("R1", "P1", "30.00"));
        assert_eq!(l.unpaid(), Money::parse("30").unwrap());
    }

    // Regression (review): a payment naming an invoice not yet issued went to an older invoice.
    #[test]
    fn payment_for_an_unknown_invoice_waits_as_credit() {
        let mut l = Ledger::default();
        l.apply(&invoice("OLD", "2026-10-15", "20.00"));
        l.apply(&payment("P1", Some("NEW"), "50.00"));
        assert_eq!(l.invoices[0].remaining(), Money::parse("20").unwrap());
        l.apply(&invoice("NEW", "2026-11-15", "50.00"));
        assert_eq!(l.unpaid(), Money::parse("20").unwrap());
        let (_, warn) = l.apply(&payment("P1", Some("NEW"), "50.00"));
        assert_eq!(warn, Some(LedgerWarning::DuplicatePayment("P1".into())));
    }

    #[test]
    fn overdue_counts_days_after_the_due_date() {
        let mut l = Ledger::default();
        l.apply(&invoice("I1", "2026-11-15", "80.00"));
        let on_due = EventTime::parse("2026-11-15T23:00:00+01:00").unwrap();
        let week_late = EventTime::parse("2026-11-22T00:00:00+01:00").unwrap();
        assert_eq!(l.overdue(on_due), Money::ZERO);
        assert_eq!(l.invoices[0].days_overdue(week_late), 7);
        assert_eq!(l.overdue(week_late), Money::parse("80").unwrap());
    }
}
