//! State: per-entity sliding-window features, account ledgers and event-time timers.

mod cells;
pub(crate) mod changes;
mod calls;
mod dedup;
pub mod delta;
mod distinct;
mod entity;
mod ledger;
mod store;
mod timers;

use crate::classify::ClassFilter;

/// Window features of one entity, or of an account's lines read together: what `inspect` shows and
/// rules will ask. Windows are `(end − window_s, end]` (see `cells` for the bucket rule).
pub trait Features {
    fn sum(&self, filter: &ClassFilter, window_s: i64, end: i64) -> WindowSums;
    fn distinct_numbers(&self, filter: &ClassFilter, window_s: i64, end: i64) -> u32;
    fn distinct_cells(&self, filter: &ClassFilter, window_s: i64, end: i64) -> u32;
}

pub use cells::{Cells, WindowSums, MAX_BUCKET_S, TICK_S};
pub use delta::{StoreDelta, StoreDeltaRef};
pub use distinct::SeenKind;
pub use entity::{Entity, Fix, Limits, Span};
pub use ledger::{InvoiceState, Ledger, PaymentState};
pub use store::{
    tracks_caller, Account, AccountUsage, Outcome, StoreCounters, StoreSize, WindowStore,
};
pub use timers::{Timer, TimerKind};

/// Grows `v` by half (at least 2) with an exact reservation before it would reallocate: per-entity
/// vectors are many and small, and doubling leaves a quarter of their bytes unused on average.
pub(crate) fn reserve_tight<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 2).max(2));
    }
}
