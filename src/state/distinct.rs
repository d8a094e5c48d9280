//! Distinct counts over windows: other-party numbers and cells an entity has seen.
//!
//! For each (kind, value fingerprint, class) we keep only the last time it was seen: a value is in a
//! window exactly when its last sighting in that class is. A sorted `Vec` of 12-byte entries beats
//! roaring bitmaps and sketches here (see PERF_NOTES: a few dozen random 32-bit hashes per subscriber cost
//! 90–150 B each in roaring, 12 B here) and counts exactly. Entries older than the distinct horizon are
//! dropped, so a SIM box's thousands of callees cost memory only for as long as a rule can ask.

use crate::classify::{ClassFilter, RecordClass};

use super::cells::{tick_of, utc_of};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SeenKind {
    /// The other party's number (for a calling-number entity: the subscriber it rang).
    Number = 0,
    /// The serving cell.
    Cell = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Seen {
    hash: u32,
    /// Tick (20 s) of the last sighting.
    tick: u32,
    /// kind (bit 15) | class (10 bits).
    tag: u16,
}

impl Seen {
    fn key(&self) -> u64 {
        ((self.tag as u64 >> 15) << 48) | ((self.hash as u64) << 16) | (self.tag as u64 & 0x3ff)
    }
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DistinctSet {
    seen: Vec<Seen>,
}

impl DistinctSet {
    pub fn add(&mut self, kind: SeenKind, hash: u32, class: RecordClass, at: i64) {
        let e = Seen {
            hash,
            tick: tick_of(at),
            tag: ((kind as u16) << 15) | class.0,
        };
        match self.seen.binary_search_by_key(&e.key(), Seen::key) {
            Ok(i) => self.seen[i].tick = self.seen[i].tick.max(e.tick),
            Err(i) => {
                super::reserve_tight(&mut self.seen);
                self.seen.insert(i, e)
            }
        }
    }

    /// Number of distinct values of `kind` with a sighting of a matching class in `(end − window_s, end]`.
    pub fn count(&self, kind: SeenKind, filter: &ClassFilter, window_s: i64, end: i64) -> u32 {
        // Same overlap rule as the cell sums: a sighting's 20 s bucket overlapping the window counts.
        let (from, to) = (tick_of(end - window_s), tick_of(end));
        let mut n = 0;
        let mut last: Option<u32> = None;
        let lo = self.seen.partition_point(|s| (s.tag >> 15) < kind as u16);
        for s in &self.seen[lo..] {
            if (s.tag >> 15) != kind as u16 {
                break;
            }
            if s.tick >= from
                && s.tick <= to
                && filter.matches(RecordClass(s.tag & 0x3ff))
                && last != Some(s.hash)
            {
                n += 1;
                last = Some(s.hash);
            }
        }
        n
    }

    /// Appends the fingerprints `count` would count (not de-duplicated), for unions across entities.
    pub fn collect(
        &self,
        kind: SeenKind,
        filter: &ClassFilter,
        window_s: i64,
        end: i64,
        out: &mut Vec<u32>,
    ) {
        let (from, to) = (tick_of(end - window_s), tick_of(end));
        let lo = self.seen.partition_point(|s| (s.tag >> 15) < kind as u16);
        for s in self.seen[lo..]
            .iter()
            .take_while(|s| (s.tag >> 15) == kind as u16)
        {
            if s.tick >= from && s.tick <= to && filter.matches(RecordClass(s.tag & 0x3ff)) {
                out.push(s.hash);
            }
        }
    }

    pub fn prune(&mut self, oldest: i64) {
        let t = tick_of(oldest);
        self.seen.retain(|s| s.tick >= t);
        if self.seen.capacity() > 2 * self.seen.len() + 4 {
            self.seen.shrink_to_fit();
        }
    }

    /// The time of the last sighting of `hash` as `kind` in any class (e.g. "did this subscriber ever call
    /// that number").
    pub fn last_seen(&self, kind: SeenKind, hash: u32) -> Option<i64> {
        self.seen
            .iter()
            .filter(|s| (s.tag >> 15) == kind as u16 && s.hash == hash)
            .map(|s| utc_of(s.tick))
            .max()
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.seen.capacity() * std::mem::size_of::<Seen>()
    }

    pub fn clear(&mut self) {
        self.seen = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{ANSWERED, INTERNATIONAL};
    use crate::record::{Direction, RecordType};

    #[test]
    fn counts_distinct_values_per_window_and_filter() {
        let t0 = 1_795_000_000;
        let intl = RecordClass::new(
            RecordType::Voice,
            Some(Direction::Mo),
            INTERNATIONAL | ANSWERED,
        );
        let dom = RecordClass::new(RecordType::Voice, Some(Direction::Mo), ANSWERED);
        let mut d = DistinctSet::default();
        d.add(SeenKind::Number, 1, intl, t0);
        d.add(SeenKind::Number, 1, intl, t0 + 100); // same number again: still one
        d.add(SeenKind::Number, 2, dom, t0 + 200);
        d.add(SeenKind::Number, 2, intl, t0 + 300); // same number in two classes: one
        d.add(SeenKind::Cell, 7, dom, t0 + 300);
        let all = ClassFilter::all();
        assert_eq!(d.count(SeenKind::Number, &all, 3600, t0 + 300), 2);
        assert_eq!(
            d.count(
                SeenKind::Number,
                &ClassFilter::parse("domestic").unwrap(),
                3600,
                t0 + 300
            ),
            1
        );
        assert_eq!(d.count(SeenKind::Cell, &all, 3600, t0 + 300), 1);
        // A window that starts after number 1's last sighting excludes it.
        assert_eq!(d.count(SeenKind::Number, &all, 150, t0 + 300), 1);
        d.prune(t0 + 250);
        assert_eq!(d.len(), 2);
        assert_eq!(std::mem::size_of::<Seen>(), 12);
    }
}
