//! State: per-entity sliding-window features, account ledgers and event-time timers.

mod cells;
mod dedup;
mod distinct;
mod entity;
mod ledger;
mod store;
mod timers;

pub use cells::{Cells, WindowSums, MAX_BUCKET_S, TICK_S};
pub use distinct::SeenKind;
pub use entity::{Entity, Fix, Limits, Span};
pub use ledger::{InvoiceState, Ledger, PaymentState};
pub use store::{Account, Outcome, StoreCounters, StoreSize, WindowStore};
pub use timers::{Timer, TimerKind};
