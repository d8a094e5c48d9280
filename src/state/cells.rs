//! Per-entity time-bucketed aggregates that roll up to coarser buckets as they age.
//!
//! A window of length `w` needs buckets no coarser than `w / 30` near its start, and windows run from
//! 10 minutes to 35 days. Classic tiered rings (every record added to every tier) cost 4 cells per record
//! and a full ring per idle entity. Here a record lives in exactly **one** cell, whose resolution depends on
//! its age: 20 s while younger than 1 h, 2 min until 8 h, 16 min until 72 h, 2 h after that. At age `a` the
//! resolution is ≤ a / 30 for every a ≥ 10 min, so a window boundary at age `w` always falls in a bucket of
//! at most w / 30 (the only error, documented below). Cells are kept sorted by start; an entity with ten
//! records a day holds ~ten 24-byte cells and nothing else.
//!
//! **Window semantics.** A window `(end − w, end]` includes every cell that overlaps it: a record up to one
//! bucket (≤ w / 30) older than the window start may be counted, never one that is younger missed. For
//! fraud detection the conservative side is the right one, and tests state the boundary explicitly.

use crate::classify::{ClassFilter, RecordClass};
use crate::record::time::MIN_UTC;
use crate::record::Money;

/// Seconds per tick, the finest bucket.
pub const TICK_S: i64 = 20;

/// (resolution in ticks, the age in seconds below which a cell keeps that resolution).
const TIERS: [(u32, i64); 4] = [
    (1, 3_600),
    (6, 8 * 3_600),
    (48, 72 * 3_600),
    (360, i64::MAX),
];
/// The coarsest bucket, in seconds: how far a cell can stretch past its start.
pub const MAX_BUCKET_S: i64 = 360 * TICK_S;

const TICK_BITS: u32 = 28;
const TICK_MASK: u32 = (1 << TICK_BITS) - 1;
const COUNT_SHIFT: u32 = 10;
const CLASS_MASK: u32 = (1 << COUNT_SHIFT) - 1;
const MAX_COUNT: u32 = u32::MAX >> COUNT_SHIFT;

/// Converts a UTC instant to ticks since 2000-01-01 (the decoder rejects earlier times).
#[inline]
pub fn tick_of(utc: i64) -> u32 {
    ((utc - MIN_UTC).max(0) / TICK_S) as u32
}

#[inline]
pub fn utc_of(tick: u32) -> i64 {
    MIN_UTC + tick as i64 * TICK_S
}

fn tier_for_age(age_s: i64) -> u32 {
    TIERS
        .iter()
        .position(|&(_, limit)| age_s < limit)
        .unwrap_or(TIERS.len() - 1) as u32
}

/// 24 bytes: bucket start + tier, class + count, and the three sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    /// tier (2 bits) << 28 | tick of the bucket start (28 bits: good until year 2170).
    key: u32,
    /// count (22 bits, saturating at 4,194,303 per cell) << 10 | class (10 bits).
    meta: u32,
    /// Seconds for voice, bytes for data, 0 for SMS: one field, because a class has one record type.
    units: u64,
    charge: i64,
}

impl Cell {
    pub fn tick(&self) -> u32 {
        self.key & TICK_MASK
    }
    fn tier(&self) -> u32 {
        self.key >> TICK_BITS
    }
    pub fn class(&self) -> RecordClass {
        RecordClass((self.meta & CLASS_MASK) as u16)
    }
    pub fn count(&self) -> u32 {
        self.meta >> COUNT_SHIFT
    }
    fn start_s(&self) -> i64 {
        utc_of(self.tick())
    }
    fn end_s(&self) -> i64 {
        self.start_s() + TIERS[self.tier() as usize].0 as i64 * TICK_S
    }
    fn sort_key(&self) -> u64 {
        ((self.tick() as u64) << 32) | ((self.meta & CLASS_MASK) << 2 | self.tier()) as u64
    }
    fn add(&mut self, count: u32, units: u64, charge: i64) {
        let c = (self.count() + count).min(MAX_COUNT);
        self.meta = (c << COUNT_SHIFT) | (self.meta & CLASS_MASK);
        self.units = self.units.saturating_add(units);
        self.charge = self.charge.saturating_add(charge);
    }
}

/// Sums over a window for one filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WindowSums {
    pub count: u64,
    /// Voice seconds.
    pub duration_s: u64,
    /// Data bytes (up + down).
    pub bytes: u64,
    pub charge: Money,
}

impl std::ops::AddAssign for WindowSums {
    fn add_assign(&mut self, o: WindowSums) {
        self.count = self.count.saturating_add(o.count);
        self.duration_s = self.duration_s.saturating_add(o.duration_s);
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.charge += o.charge;
    }
}

/// The sorted cells of one entity.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Cells {
    cells: Vec<Cell>,
}

impl Cells {
    /// Adds one record at `at` (UTC seconds); `now` is the entity's newest event time, which sets the
    /// resolution a late record lands in.
    pub fn add(
        &mut self,
        at: i64,
        now: i64,
        class: RecordClass,
        count: u32,
        units: u64,
        charge: Money,
    ) {
        let tier = tier_for_age(now - at);
        let res = TIERS[tier as usize].0;
        let tick = tick_of(at) / res * res;
        let probe = Cell {
            key: (tier << TICK_BITS) | tick,
            meta: class.0 as u32,
            units: 0,
            charge: 0,
        };
        let key = probe.sort_key();
        // Records arrive mostly in time order: check the tail before searching.
        let pos = match self.cells.last() {
            Some(last) if last.sort_key() < key => Err(self.cells.len()),
            _ => self.cells.binary_search_by_key(&key, Cell::sort_key),
        };
        match pos {
            Ok(i) => self.cells[i].add(count, units, charge.micros()),
            Err(i) => {
                super::reserve_tight(&mut self.cells);
                let mut c = probe;
                c.add(count, units, charge.micros());
                self.cells.insert(i, c);
            }
        }
    }

    /// Rolls cells up to the resolution their age allows and drops those older than `retention_s`.
    pub fn compact(&mut self, now: i64, retention_s: i64) {
        let oldest = now - retention_s;
        self.cells.retain(|c| c.end_s() > oldest);
        let mut changed = false;
        for c in &mut self.cells {
            let want = tier_for_age(now - c.start_s());
            if want > c.tier() {
                let res = TIERS[want as usize].0;
                c.key = (want << TICK_BITS) | (c.tick() / res * res);
                changed = true;
            }
        }
        if changed {
            self.cells.sort_unstable_by_key(Cell::sort_key);
            self.cells.dedup_by(|later, kept| {
                if later.sort_key() == kept.sort_key() {
                    kept.add(later.count(), later.units, later.charge);
                    true
                } else {
                    false
                }
            });
        }
        if self.cells.capacity() > 2 * self.cells.len() + 4 {
            self.cells.shrink_to_fit();
        }
    }

    /// Sums of the cells matching `filter` that overlap `(end − window_s, end]`.
    pub fn sum(&self, filter: &ClassFilter, window_s: i64, end: i64) -> WindowSums {
        let start = end - window_s;
        let mut s = WindowSums::default();
        let mut charge = 0i64;
        for c in self.cells.iter().rev() {
            if c.start_s() > end {
                continue;
            }
            if c.start_s() + MAX_BUCKET_S <= start {
                break; // sorted by start: nothing earlier can reach into the window
            }
            if c.end_s() <= start || !filter.matches(c.class()) {
                continue;
            }
            s.count = s.count.saturating_add(c.count() as u64);
            charge = charge.saturating_add(c.charge);
            match c.class().bits() & 3 {
                0 => s.duration_s = s.duration_s.saturating_add(c.units),
                2 => s.bytes = s.bytes.saturating_add(c.units),
                _ => {}
            }
        }
        s.charge = Money(charge);
        s
    }

    /// Charges of every class in cells starting at or after `from`.
    pub fn charges_since(&self, from: i64) -> Money {
        let sum = self
            .cells
            .iter()
            .rev()
            .take_while(|c| c.start_s() >= from)
            .fold(0i64, |a, c| a.saturating_add(c.charge));
        Money(sum)
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.cells.capacity() * std::mem::size_of::<Cell>()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Cell> {
        self.cells.iter()
    }

    pub fn clear(&mut self) {
        self.cells = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{ANSWERED, INTERNATIONAL};
    use crate::record::{Direction, RecordType};

    const T0: i64 = 1_795_000_000; // 2026-11-18
    fn voice_mo(flags: u16) -> RecordClass {
        RecordClass::new(RecordType::Voice, Some(Direction::Mo), flags)
    }

    #[test]
    fn cell_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Cell>(), 24);
    }

    #[test]
    fn sums_by_filter_and_window() {
        let mut c = Cells::default();
        let intl = voice_mo(INTERNATIONAL | ANSWERED);
        let dom = voice_mo(ANSWERED);
        c.add(T0, T0, intl, 1, 120, Money(2_000_000));
        c.add(T0 + 600, T0 + 600, dom, 1, 60, Money(0));
        c.add(T0 + 1200, T0 + 1200, intl, 1, 30, Money(500_000));
        let all = ClassFilter::all();
        let f = ClassFilter::parse("voice.mo.international").unwrap();
        let s = c.sum(&f, 3600, T0 + 1200);
        assert_eq!(
            (s.count, s.duration_s, s.charge),
            (2, 150, Money(2_500_000))
        );
        assert_eq!(c.sum(&all, 3600, T0 + 1200).count, 3);
        // 10-minute window ending at T0+1200 covers (T0+600, T0+1200]: the cell at T0+600 overlaps its start.
        assert_eq!(c.sum(&all, 600, T0 + 1200).count, 2);
        // A start 1 s after that record still falls in its 20 s bucket: counted (the documented error).
        assert_eq!(c.sum(&all, 599, T0 + 1200).count, 2);
        // A start at the bucket's end excludes it.
        assert_eq!(c.sum(&all, 580, T0 + 1200).count, 1);
        // Nothing after `end` is counted.
        assert_eq!(c.sum(&all, 3600, T0 + 599).count, 1);
    }

    #[test]
    fn rollup_keeps_totals_and_merges_cells() {
        let mut c = Cells::default();
        let class = voice_mo(ANSWERED);
        for i in 0..180 {
            c.add(T0 + i * 20, T0 + i * 20, class, 1, 10, Money(1));
        }
        assert_eq!(c.len(), 180);
        let now = T0 + 10 * 86_400;
        c.compact(now, 35 * 86_400);
        // One hour of 20 s cells, ten days old, rolls into 2 h buckets: at most two of them.
        assert!(c.len() <= 2, "{}", c.len());
        let s = c.sum(&ClassFilter::all(), 35 * 86_400, now);
        assert_eq!((s.count, s.duration_s, s.charge), (180, 1800, Money(180)));
        c.compact(T0 + 40 * 86_400, 35 * 86_400);
        assert!(c.is_empty(), "retention drops old cells");
    }

    #[test]
    fn boundary_error_is_at_most_one_thirtieth_of_the_window() {
        // One record per minute over 40 days; after compaction every window from 10 min to 35 days
        // counts its true number of records, within w/30 worth of records (one per minute).
        let mut c = Cells::default();
        let class = voice_mo(ANSWERED);
        let days = 40;
        let now = T0 + days * 86_400;
        for m in 0..(days * 1440) {
            let t = T0 + m * 60;
            c.add(t, t, class, 1, 1, Money(0));
            if m % 600 == 0 {
                c.compact(t, 36 * 86_400);
            }
        }
        c.compact(now, 36 * 86_400);
        for w in [
            600,
            1800,
            3600,
            4 * 3600,
            86_400,
            3 * 86_400,
            7 * 86_400,
            30 * 86_400,
            35 * 86_400,
        ] {
            let got = c.sum(&ClassFilter::all(), w, now).count as i64;
            let truth = w / 60;
            assert!(
                got >= truth && got <= truth + w / 60 / 30 + 1,
                "window {w}: {got} vs {truth}"
            );
        }
        // Sparse: 57,600 records (one a minute for 40 days) fit in at most 60 cells for the last hour
        // (20 s buckets), 210 for 1–8 h (2 min), 240 for 8–72 h (16 min) and 444 for 72 h–36 d (2 h).
        assert!(c.len() <= 60 + 210 + 240 + 444, "{}", c.len());
    }
}
