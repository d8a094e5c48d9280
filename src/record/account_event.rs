//! Account events from billing and CRM: invoices, payments, credit limits, lifecycle, segment.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::object::optional_object;
use super::{Date, EventTime, Money, Number};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    InvoiceIssued,
    PaymentReceived,
    PaymentReversed,
    CreditLimitChanged,
    PromiseToPay,
    Activation,
    Deactivation,
    SimChange,
    SegmentChanged,
}

wire_names!(EventType {
    InvoiceIssued => "invoice_issued",
    PaymentReceived => "payment_received",
    PaymentReversed => "payment_reversed",
    CreditLimitChanged => "credit_limit_changed",
    PromiseToPay => "promise_to_pay",
    Activation => "activation",
    Deactivation => "deactivation",
    SimChange => "sim_change",
    SegmentChanged => "segment_changed",
});

wire_names!(Segment {
    Consumer => "consumer",
    Smb => "smb",
    Enterprise => "enterprise",
    Vip => "vip",
    Government => "government",
    M2m => "m2m",
    Test => "test",
});

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Segment {
    #[default]
    Consumer,
    Smb,
    Enterprise,
    Vip,
    Government,
    M2m,
    Test,
}

impl Segment {
    /// Key accounts get a key-account manager's review instead of automatic barring.
    pub fn is_key_account(self) -> bool {
        matches!(
            self,
            Segment::Enterprise | Segment::Vip | Segment::Government
        )
    }
}

/// An account event as it travels on the wire: one flat object, blocks present per `event_type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountEvent {
    pub event_id: CompactString,
    pub event_type: EventType,
    pub occurred_at: EventTime,
    pub account_id: CompactString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msisdn: Option<Number>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_object"
    )]
    pub invoice: Option<Invoice>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_object"
    )]
    pub payment: Option<Payment>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_object"
    )]
    pub amount: Option<Amount>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_object"
    )]
    pub credit: Option<Credit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Date>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_object"
    )]
    pub lifecycle: Option<Lifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Segment>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    pub invoice_id: CompactString,
    pub due_date: Date,
    pub amount_due: Money,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub payment_id: CompactString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<CompactString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reversed_payment_id: Option<CompactString>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Amount {
    pub value: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<CompactString>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Credit {
    pub credit_limit: Money,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_imsi: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_imei: Option<Number>,
}

impl AccountEvent {
    /// An event with no type-specific block yet (builders fill in the one its type needs).
    pub fn new(
        event_id: CompactString,
        event_type: EventType,
        occurred_at: EventTime,
        account_id: CompactString,
    ) -> Self {
        AccountEvent {
            event_id,
            event_type,
            occurred_at,
            account_id,
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

    /// The per-type requirements serde cannot express, each naming its field path.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let missing = |path: &'static str| {
            Err((
                path,
                format!(
                    "missing field `{path}` for event_type {:?}",
                    self.event_type
                ),
            ))
        };
        if self.event_id.is_empty() {
            return Err(("event_id", "must not be empty".into()));
        }
        if self.account_id.is_empty() {
            return Err(("account_id", "must not be empty".into()));
        }
        match self.event_type {
            EventType::InvoiceIssued => match &self.invoice {
                None => return missing("invoice"),
                Some(inv) if inv.amount_due.is_negative() => {
                    return Err(("invoice.amount_due", "must not be negative".into()))
                }
                _ => {}
            },
            EventType::PaymentReceived | EventType::PaymentReversed => {
                if self.payment.is_none() {
                    return missing("payment");
                }
                match &self.amount {
                    None => return missing("amount"),
                    Some(a) if a.value.micros() <= 0 => {
                        return Err(("amount.value", "must be positive".into()))
                    }
                    _ => {}
                }
                if self.event_type == EventType::PaymentReversed
                    && self
                        .payment
                        .as_ref()
                        .is_some_and(|p| p.reversed_payment_id.is_none())
                {
                    return missing("payment.reversed_payment_id");
                }
            }
            EventType::CreditLimitChanged => match &self.credit {
                None => return missing("credit"),
                Some(c) if c.credit_limit.is_negative() => {
                    return Err(("credit.credit_limit", "must not be negative".into()))
                }
                _ => {}
            },
            EventType::PromiseToPay if self.until.is_none() => return missing("until"),
            EventType::SegmentChanged if self.segment.is_none() => return missing("segment"),
            EventType::SimChange if self.lifecycle.is_none() => return missing("lifecycle"),
            _ => {}
        }
        Ok(())
    }
}
