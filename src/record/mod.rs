//! Wire types and their decoding. No I/O here: bytes in, typed values or a `Reject` out.

mod account_event;
mod alert;
mod decode;
mod money;
mod number;
mod object;
mod text;
pub mod time;
mod usage;

pub use account_event::{
    AccountEvent, Amount, Credit, EventType, Invoice, Lifecycle, Payment, Segment,
};
pub use alert::{
    Alert, AlertWindow, Category, Department, EntityRef, EntityType, Evidence, Mode, RuleRef,
    Severity,
};
pub use decode::{Decoder, Reject, RejectReason};
pub use money::Money;
pub use number::Number;
pub use text::Text;
pub use time::{Date, EventTime};
pub use usage::{
    Charge, Direction, Forwarding, Location, OtherParty, RecordType, Roaming, Served, UsageRecord,
    Volume,
};
