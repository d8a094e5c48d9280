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
    /// Spans of answered outgoing voice calls, kept for `allowed_lateness` after they end, sorted
    /// by (start, end).
    pub calls: Vec<Span>,
    /// The calls' ends, sorted: with `calls`, how many are in progress at an instant is two binary
    /// searches. Not in snapshots: rebuilt from `calls` (`sync_ends`) after a restore.
    #[serde(skip)]
    ends: Vec<i64>,
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
    /// Records counted: 1, or 0 for a later part of a call already counted (`state::calls`).
    pub count: u32,
    pub units: u64,
    pub charge: Money,
    pub other: Option<u32>,
    pub cell: Option<u32>,
    pub call: Option<Span>,
    /// The span an earlier part of the same call applied, which `call` extends.
    pub replaces: Option<Span>,
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
            .add(c.at, self.last_seen, c.class, c.count, c.units, c.charge);
        if let Some(h) = c.other {
            self.distinct.add(SeenKind::Number, h, c.class, c.at);
        }
        if let Some(h) = c.cell {
            self.distinct.add(SeenKind::Cell, h, c.class, c.at);
        }
        if let Some(old) = c.replaces {
            self.sync_ends();
            if let Ok(at) = self
                .calls
                .binary_search_by_key(&(old.start, old.end), |s| (s.start, s.end))
            {
                self.calls.remove(at);
                if let Ok(at) = self.ends.binary_search(&old.end) {
                    self.ends.remove(at);
                }
            }
        }
        if let Some(span) = c.call {
            self.sync_ends();
            let at = self
                .calls
                .partition_point(|s| (s.start, s.end) <= (span.start, span.end));
            super::reserve_tight(&mut self.calls);
            self.calls.insert(at, span);
            let at = self.ends.partition_point(|&e| e <= span.end);
            super::reserve_tight(&mut self.ends);
            self.ends.insert(at, span.end);
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
        self.ends.retain(|&e| e >= keep_from);
        if self.ends.is_empty() {
            self.ends = Vec::new();
        }
        self.next_compaction = now + COMPACTION_EVERY_S;
    }

    /// Sorts restored calls (older snapshots kept them in arrival order) and rebuilds their ends.
    fn sync_ends(&mut self) {
        if self.ends.len() != self.calls.len() {
            self.calls.sort_unstable_by_key(|s| (s.start, s.end));
            self.ends = self.calls.iter().map(|s| s.end).collect();
            self.ends.sort_unstable();
        }
    }

    /// The most calls in progress at one instant within `[from, to)`: a call overlapping two others is
    /// three at once whatever order the records arrived in. The count only rises at a start, so the
    /// most is at `from` or at a start within the span: O((k + 1) log n) for k calls starting during
    /// it, instead of sorting every open call per record (quadratic in a long-lived open set).
    pub fn max_concurrent_calls(&self, from: i64, to: i64) -> usize {
        if self.ends.len() != self.calls.len() {
            return self.max_concurrent_calls_by_scan(from, to);
        }
        let to = to.max(from + 1);
        // In progress at t: started at or before t, not ended at or before t.
        let at = |t: i64| {
            self.calls.partition_point(|s| s.start <= t) - self.ends.partition_point(|&e| e <= t)
        };
        let first = self.calls.partition_point(|s| s.start <= from);
        let last = self.calls.partition_point(|s| s.start < to);
        self.calls[first..last.max(first)]
            .iter()
            .map(|s| at(s.start))
            .fold(at(from), usize::max)
    }

    /// The same by sorting the span edges: for calls restored from a snapshot and not yet synced.
    fn max_concurrent_calls_by_scan(&self, from: i64, to: i64) -> usize {
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
            + self.ends.capacity() * std::mem::size_of::<i64>()
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
    /// Call spans are clipped to this length (`state.max_call_duration`).
    pub max_call_s: i64,
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
        // Arrived in end order: C, B, A; A 0–30, B 5–35, C 10–40 overlap on 10–30. D starts as A ends.
        // E has no length. As applied (sorted, with ends), and as restored (arrival order, no ends).
        let spans = [(10, 40), (5, 35), (0, 30), (30, 50), (20, 20)];
        let mut applied = Entity::new(0);
        let mut restored = Entity::new(0);
        let limits = Limits {
            retention_s: 1 << 40,
            distinct_horizon_s: 3600,
            allowed_lateness_s: 3600,
            max_call_s: 86_400,
        };
        for (start, end) in spans {
            let c = Contribution {
                at: start,
                class: RecordClass::default(),
                count: 1,
                units: end as u64 - start as u64,
                charge: Money::ZERO,
                other: None,
                cell: None,
                call: Some(Span { start, end }),
                replaces: None,
                fix: None,
            };
            applied.apply(&c, &limits);
            restored.calls.push(Span { start, end });
        }
        for e in [&applied, &restored] {
            assert_eq!(e.max_concurrent_calls(0, 30), 3);
            assert_eq!(e.max_concurrent_calls(30, 50), 3, "B, C and D at 30–35");
            assert_eq!(e.max_concurrent_calls(40, 50), 1);
            assert_eq!(e.max_concurrent_calls(100, 100), 0);
            assert_eq!(
                e.max_concurrent_calls(20, 20),
                3,
                "a point inside A, B and C"
            );
            assert_eq!(e.max_concurrent_calls(35, 40), 2);
        }
        // Both ways agree on every window.
        for from in -5..60 {
            for len in 0..30 {
                assert_eq!(
                    applied.max_concurrent_calls(from, from + len),
                    applied.max_concurrent_calls_by_scan(from, from + len),
                    "[{from}, {})",
                    from + len
                );
            }
        }
    }
}
