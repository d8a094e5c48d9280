//! Wire types and their decoding. No I/O here: bytes in, typed values or a `Reject` out.

/// The wire names of a closed enum, written once: `as_str` for metric labels, headers and reports,
/// `parse` for text, `ALL` to list them. Serde's derive spells the same names (`tests::wire_names`
/// checks that they agree), so no code turns an enum into a string through `serde_json`.
macro_rules! wire_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            pub fn parse(s: &str) -> Option<$ty> {
                match s {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

mod account_event;
mod alert;
mod costs;
mod decode;
mod gap;
mod item;
mod money;
mod number;
pub mod numbering;
mod object;
mod party;
pub mod rates;
mod repair;
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
pub use costs::CostTable;
pub use decode::{Decoder, Reject, RejectReason};
pub use gap::{detect as detect_gap, GapMark, GapReason, OffsetGap};
pub use item::{Decoded, Input, Item};
pub use money::Money;
pub use number::Number;
pub use numbering::{NumberKind, Numbering, TypeOfNumber};
pub use rates::{RateTable, Rates};
pub use repair::{Repair, Repairs};
pub use text::Text;
pub use time::{Date, EventTime};
pub use usage::{
    Charge, Direction, Forwarding, Location, OtherParty, Partial, RecordType, Roaming, Served,
    UsageRecord, Volume,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// `as_str` and serde must spell every variant alike: both are wire names.
    #[test]
    fn wire_names() {
        fn check<T: serde::Serialize + Copy>(all: &[T], name: impl Fn(T) -> &'static str) {
            for &v in all {
                assert_eq!(serde_json::to_value(v).unwrap(), name(v));
            }
        }
        check(Category::ALL, Category::as_str);
        check(Severity::ALL, Severity::as_str);
        check(Department::ALL, Department::as_str);
        check(EntityType::ALL, EntityType::as_str);
        check(Mode::ALL, Mode::as_str);
        check(EventType::ALL, EventType::as_str);
        check(Segment::ALL, Segment::as_str);
        check(RecordType::ALL, RecordType::as_str);
        check(Direction::ALL, Direction::as_str);
        check(RejectReason::ALL, RejectReason::as_str);
        check(Input::ALL, Input::as_str);
        for &v in Severity::ALL {
            assert_eq!(Severity::parse(v.as_str()), Some(v));
        }
    }
}
