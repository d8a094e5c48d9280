//! The window state of one keyed entity: a subscriber, an account's usage, a calling number or an IMEI.

use crate::classify::{ClassFilter, RecordClass};
use crate::record::Money;

use super::cells::{Cells, WindowSums};
use super::distinct::{DistinctSet, SeenKind};
use super::Features;

/// A position fix from a record's location block.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Fix {
    pub at: i64,
    pub lat: f32,
    pub lon: f32,
}

/// A voice call's time span, for overlap (simultaneous calls from one identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Span {
    pub start: i64,
    pub end: i64,
}

/// State of one entity. Every part is empty (no heap) until used: an entity with one record costs
/// the struct plus one cell, one or two distinct entries.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Entity {
    pub cells: Cells,
    pub distinct: DistinctSet,
    /// Spans of answered outgoing voice calls, kept for `allowed_lateness` after they end.
    pub calls: Vec<Span>,
    /// The two most recent fixes by event time: `[previous, last]`.
    pub fixes: [Option<Fix>; 2],
    pub first_seen: i64,
    /// Newest event time applied.
    pub last_seen: i64,
    /// When this entity's cells are next rolled up (entity event time).
    pub next_compaction: i64,
    /// Slot of the subscriber's account in the store (`NO_ACCOUNT` when unknown).
    pub account: u32,
}

pub const NO_ACCOUNT: u32 = u32::MAX;

/// What one record contributes to an entity.
pub struct Contribution {
    pub at: i64,
    pub class: RecordClass,
    pub units: u64,
    pub charge: Money,
    pub other: Option<u32>,
    pub cell: Option<u32>,
    pub call: Option<Span>,
    pub fix: Option<Fix>,
}

/// How often (entity event time) cells are rolled up. Rolling later only keeps finer cells for longer,
/// and the finest tier lasts an hour, so hourly is enough (every 10 min cost a pass per light user's record).
const COMPACTION_EVERY_S: i64 = 3600;

impl Entity {
    pub fn new(at: i64) -> Self {
        Entity {
            first_seen: at,
            last_seen: at,
            next_compaction: at + COMPACTION_EVERY_S,
            account: NO_ACCOUNT,
            ..Default::default()
        }
    }

    pub fn apply(&mut self, c: &Contribution, limits: &Limits) {
        self.first_seen = self.first_seen.min(c.at);
        self.last_seen = self.last_seen.max(c.at);
        self.cells
            .add(c.at, self.last_seen, c.class, c.units, c.charge);
        if let Some(h) = c.other {
            self.distinct.add(SeenKind::Number, h, c.class, c.at);
        }
        if let Some(h) = c.cell {
            self.distinct.add(SeenKind::Cell, h, c.class, c.at);
        }
        if let Some(span) = c.call {
            super::reserve_tight(&mut self.calls);
            self.calls.push(span);
        }
        if let Some(fix) = c.fix {
            // Keep the two latest fixes by event time, whatever the arrival order: "consecutive" is by
            // event time, so an out-of-order record can become the previous fix but never the last.
            match self.fixes {
                [_, Some(last)] if fix.at >= last.at => self.fixes = [Some(last), Some(fix)],
                [None, Some(_)] => self.fixes[0] = Some(fix),
                [Some(prev), Some(_)] if fix.at > prev.at => self.fixes[0] = Some(fix),
                [_, None] => self.fixes[1] = Some(fix),
                _ => {}
            }
        }
        if self.last_seen >= self.next_compaction {
            self.compact(self.last_seen, limits);
        }
    }

    /// Rolls up cells, drops what no window can ask for any more.
    pub fn compact(&mut self, now: i64, limits: &Limits) {
        self.cells.compact(now, limits.retention_s);
        self.distinct.prune(now - limits.distinct_horizon_s);
        let keep_from = now - limits.allowed_lateness_s;
        self.calls.retain(|s| s.end >= keep_from);
        if self.calls.is_empty() {
            self.calls = Vec::new();
        }
        self.next_compaction = now + COMPACTION_EVERY_S;
    }

    /// The most calls in progress at one instant within `[from, to)`: a call overlapping two others is
    /// three at once whatever order the records arrived in.
    pub fn max_concurrent_calls(&self, from: i64, to: i64) -> usize {
        let mut edges: Vec<(i64, i32)> = self
            .calls
            .iter()
            .filter(|s| s.start < to.max(from + 1) && s.end > from)
            .flat_map(|s| [(s.start.max(from), 1), (s.end, -1)])
            .collect();
        // Ends sort before starts at the same instant: back-to-back calls do not overlap.
        edges.sort_unstable();
        let (mut open, mut most) = (0i32, 0i32);
        for (_, d) in edges {
            open += d;
            most = most.max(open);
        }
        most as usize
    }

    /// Calls in progress at `at` (start ≤ at < end).
    pub fn open_calls(&self, at: i64) -> usize {
        self.calls
            .iter()
            .filter(|s| s.start <= at && at < s.end)
            .count()
    }

    pub fn heap_bytes(&self) -> usize {
        self.cells.heap_bytes()
            + self.distinct.heap_bytes()
            + self.calls.capacity() * std::mem::size_of::<Span>()
    }

    pub fn is_idle(&self, now: i64, limits: &Limits) -> bool {
        self.last_seen + limits.retention_s < now
    }
}

/// The retention limits every entity applies (from `StateConfig`).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub retention_s: i64,
    pub distinct_horizon_s: i64,
    pub allowed_lateness_s: i64,
}

impl Features for Entity {
    fn sum(&self, filter: &ClassFilter, window_s: i64, end: i64) -> WindowSums {
        self.cells.sum(filter, window_s, end)
    }

    fn distinct_numbers(&self, filter: &ClassFilter, window_s: i64, end: i64) -> u32 {
        self.distinct.count(SeenKind::Number, filter, window_s, end)
    }

    fn distinct_cells(&self, filter: &ClassFilter, window_s: i64, end: i64) -> u32 {
        self.distinct.count(SeenKind::Cell, filter, window_s, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_calls_count_overlaps_whatever_the_arrival_order() {
        let mut e = Entity::new(0);
        // Arrived in end order: C, B, A; A 0–30, B 5–35, C 10–40 overlap on 10–30. D starts as A ends.
        for (start, end) in [(10, 40), (5, 35), (0, 30), (30, 50)] {
            e.calls.push(Span { start, end });
        }
        assert_eq!(e.max_concurrent_calls(0, 30), 3);
        assert_eq!(e.max_concurrent_calls(30, 50), 3, "B, C and D at 30–35");
        assert_eq!(e.max_concurrent_calls(40, 50), 1);
        assert_eq!(e.max_concurrent_calls(100, 100), 0);
    }
}
