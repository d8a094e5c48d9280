//! Distinct counts over windows: other-party numbers and cells an entity has seen.
//!
//! For each (kind, value fingerprint, class) we keep only the last time it was seen: a value is in a
//! window exactly when its last sighting in that class is. Entries older than the distinct horizon are
//! dropped, so a SIM box's thousands of callees cost memory only for as long as a rule can ask.
//!
//! Two representations, because the two common cases pull in opposite directions:
//! - **Small** (almost every subscriber: a few dozen contacts): one `Vec` of 12-byte entries sorted by
//!   key. Cheaper than roaring bitmaps or sketches here (PERF_NOTES: a few dozen random 32-bit hashes
//!   cost 90–150 B each in roaring, 12 B here) and exact.
//! - **Large** (past 512 entries: a Wangiri caller ringing 10⁵ subscribers, a SIM box): sorted inserts
//!   would move the whole vector per record (measured 28 µs per call during a wave). Instead a log
//!   ordered by last sighting plus a hash index: an insert appends (superseded entries become
//!   tombstones, compacted when they are half the log), and a windowed count walks only the entries
//!   inside the window, from the newest back.

use ahash::AHashMap;

use crate::classify::{ClassFilter, RecordClass};

use super::cells::{tick_of, utc_of};

/// Above this many entries a set switches to the large representation; below a quarter of it, back.
const LARGE_FROM: usize = 512;
/// Tombstone flag in `Seen::tag` (bit 14; bit 15 is the kind, bits 0–9 the class).
const DEAD: u16 = 1 << 14;

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
    /// kind (bit 15) | tombstone (bit 14, large sets) | class (10 bits).
    tag: u16,
}

impl Seen {
    fn key(&self) -> u64 {
        ((self.tag as u64 >> 15) << 48) | ((self.hash as u64) << 16) | (self.tag as u64 & 0x3ff)
    }

    fn kind(&self) -> u16 {
        self.tag >> 15
    }

    fn class(&self) -> RecordClass {
        RecordClass(self.tag & 0x3ff)
    }

    fn dead(&self) -> bool {
        self.tag & DEAD != 0
    }
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DistinctSet {
    /// Small representation, sorted by key; empty while `large` is in use.
    seen: Vec<Seen>,
    large: Option<Box<LargeSet>>,
}

/// Entries in order of last sighting, with an index from key to the live entry.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct LargeSet {
    log: Vec<Seen>,
    index: AHashMap<u64, u32>,
    dead: usize,
}

impl LargeSet {
    fn from_entries(mut log: Vec<Seen>) -> Self {
        log.sort_by_key(|s| s.tick);
        let mut set = LargeSet {
            log,
            index: AHashMap::new(),
            dead: 0,
        };
        set.reindex();
        set
    }

    fn reindex(&mut self) {
        self.log.retain(|s| !s.dead());
        self.dead = 0;
        self.index.clear();
        for (i, s) in self.log.iter().enumerate() {
            self.index.insert(s.key(), i as u32);
        }
    }

    fn add(&mut self, e: Seen) {
        let key = e.key();
        if let Some(&pos) = self.index.get(&key) {
            if self.log[pos as usize].tick >= e.tick {
                return;
            }
            self.log[pos as usize].tag |= DEAD;
            self.dead += 1;
        }
        // Keep tick order: a late sighting goes a few places back; positions after it shift.
        let mut at = self.log.len();
        while at > 0 && self.log[at - 1].tick > e.tick {
            at -= 1;
        }
        self.log.insert(at, e);
        for j in at..self.log.len() {
            let s = self.log[j];
            if !s.dead() {
                self.index.insert(s.key(), j as u32);
            }
        }
        if self.dead > self.log.len() / 2 {
            self.reindex();
        }
    }

    /// Calls `f` with the hash of every live entry of `kind` matching `filter` seen in `[from, to]`.
    fn walk(
        &self,
        kind: SeenKind,
        filter: &ClassFilter,
        from: u32,
        to: u32,
        mut f: impl FnMut(u32),
    ) {
        for s in self.log.iter().rev() {
            if s.tick < from {
                break;
            }
            if s.tick <= to && !s.dead() && s.kind() == kind as u16 && filter.matches(s.class()) {
                f(s.hash);
            }
        }
    }

    fn prune(&mut self, oldest: u32) {
        let k = self.log.partition_point(|s| s.tick < oldest);
        if k > 0 {
            self.log.drain(..k);
            self.reindex();
        }
    }
}

impl DistinctSet {
    pub fn add(&mut self, kind: SeenKind, hash: u32, class: RecordClass, at: i64) {
        let e = Seen {
            hash,
            tick: tick_of(at),
            tag: ((kind as u16) << 15) | class.0,
        };
        if let Some(large) = &mut self.large {
            large.add(e);
            return;
        }
        match self.seen.binary_search_by_key(&e.key(), Seen::key) {
            Ok(i) => self.seen[i].tick = self.seen[i].tick.max(e.tick),
            Err(i) => {
                super::reserve_tight(&mut self.seen);
                self.seen.insert(i, e);
                if self.seen.len() > LARGE_FROM {
                    self.large = Some(Box::new(LargeSet::from_entries(std::mem::take(
                        &mut self.seen,
                    ))));
                }
            }
        }
    }

    /// Number of distinct values of `kind` with a sighting of a matching class in `(end − window_s, end]`.
    pub fn count(&self, kind: SeenKind, filter: &ClassFilter, window_s: i64, end: i64) -> u32 {
        // Same overlap rule as the cell sums: a sighting's 20 s bucket overlapping the window counts.
        let (from, to) = (tick_of(end - window_s), tick_of(end));
        if let Some(large) = &self.large {
            let mut hashes = Vec::new();
            large.walk(kind, filter, from, to, |h| hashes.push(h));
            hashes.sort_unstable();
            hashes.dedup();
            return hashes.len() as u32;
        }
        let mut n = 0;
        let mut last: Option<u32> = None;
        let lo = self.seen.partition_point(|s| s.kind() < kind as u16);
        for s in self.seen[lo..]
            .iter()
            .take_while(|s| s.kind() == kind as u16)
        {
            if s.tick >= from && s.tick <= to && filter.matches(s.class()) && last != Some(s.hash) {
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
        if let Some(large) = &self.large {
            large.walk(kind, filter, from, to, |h| out.push(h));
            return;
        }
        let lo = self.seen.partition_point(|s| s.kind() < kind as u16);
        for s in self.seen[lo..]
            .iter()
            .take_while(|s| s.kind() == kind as u16)
        {
            if s.tick >= from && s.tick <= to && filter.matches(s.class()) {
                out.push(s.hash);
            }
        }
    }

    pub fn prune(&mut self, oldest: i64) {
        let t = tick_of(oldest);
        if let Some(large) = &mut self.large {
            large.prune(t);
            if large.index.len() < LARGE_FROM / 4 {
                let mut small: Vec<Seen> = large.log.drain(..).filter(|s| !s.dead()).collect();
                small.sort_by_key(Seen::key);
                self.seen = small;
                self.large = None;
            }
            return;
        }
        self.seen.retain(|s| s.tick >= t);
        if self.seen.capacity() > 2 * self.seen.len() + 4 {
            self.seen.shrink_to_fit();
        }
    }

    /// The time of the last sighting of `hash` as `kind` in any class (e.g. "did this subscriber ever call
    /// that number").
    pub fn last_seen(&self, kind: SeenKind, hash: u32) -> Option<i64> {
        let entries = self.large.as_ref().map_or(&self.seen[..], |l| &l.log[..]);
        entries
            .iter()
            .filter(|s| !s.dead() && s.kind() == kind as u16 && s.hash == hash)
            .map(|s| utc_of(s.tick))
            .max()
    }

    pub fn len(&self) -> usize {
        self.large
            .as_ref()
            .map_or(self.seen.len(), |l| l.index.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn heap_bytes(&self) -> usize {
        let large = self.large.as_ref().map_or(0, |l| {
            std::mem::size_of::<LargeSet>()
                + l.log.capacity() * std::mem::size_of::<Seen>()
                + l.index.capacity() * 13
        });
        self.seen.capacity() * std::mem::size_of::<Seen>() + large
    }

    pub fn clear(&mut self) {
        *self = DistinctSet::default();
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

    /// Both representations give the same answers: the same random sightings (late ones included) into a
    /// set that stays small and one forced large, then counts over many windows and filters.
    #[test]
    fn large_and_small_sets_agree() {
        let t0 = 1_795_000_000;
        let mut rng = fastrand::Rng::with_seed(5);
        let classes = [
            RecordClass::new(RecordType::Voice, Some(Direction::Mt), 0),
            RecordClass::new(RecordType::Voice, Some(Direction::Mt), INTERNATIONAL),
            RecordClass::new(RecordType::Sms, Some(Direction::Mo), ANSWERED),
        ];
        let sightings: Vec<(u32, RecordClass, i64)> = (0..3000)
            .map(|i| {
                (
                    rng.u32(0..400),
                    classes[rng.usize(0..3)],
                    t0 + i * 30 - rng.i64(0..600),
                )
            })
            .collect();
        let mut small = DistinctSet::default();
        let mut large = DistinctSet {
            large: Some(Box::default()),
            ..Default::default()
        };
        // `small` stays in the small form by construction: sorted inserts without the switch.
        for &(h, c, at) in &sightings {
            let e = Seen {
                hash: h,
                tick: tick_of(at),
                tag: c.0,
            };
            match small.seen.binary_search_by_key(&e.key(), Seen::key) {
                Ok(i) => small.seen[i].tick = small.seen[i].tick.max(e.tick),
                Err(i) => small.seen.insert(i, e),
            }
            large.add(SeenKind::Number, h, c, at);
        }
        assert!(large.large.is_some() && small.large.is_none());
        assert_eq!(small.len(), large.len());
        let end = t0 + 3000 * 30;
        for filter in ["all", "voice.mt", "international", "sms"] {
            let f = ClassFilter::parse(filter).unwrap();
            for w in [600, 3600, 6 * 3600, 86_400] {
                for back in [0, 1800, 20_000] {
                    let e = end - back;
                    assert_eq!(
                        small.count(SeenKind::Number, &f, w, e),
                        large.count(SeenKind::Number, &f, w, e),
                        "{filter} {w} {back}"
                    );
                }
            }
        }
        for p in [t0 + 20_000, t0 + 60_000] {
            small.prune(p);
            large.prune(p);
            let f = ClassFilter::all();
            assert_eq!(
                small.count(SeenKind::Number, &f, 86_400, end),
                large.count(SeenKind::Number, &f, 86_400, end)
            );
        }
    }

    #[test]
    fn a_growing_set_switches_to_the_large_form_and_back() {
        let t0 = 1_795_000_000;
        let c = RecordClass::new(RecordType::Voice, Some(Direction::Mt), 0);
        let mut d = DistinctSet::default();
        for i in 0..(LARGE_FROM as u32 + 10) {
            d.add(SeenKind::Number, i, c, t0 + i as i64);
        }
        assert!(d.large.is_some());
        assert_eq!(
            d.count(SeenKind::Number, &ClassFilter::all(), 3600, t0 + 600),
            LARGE_FROM as u32 + 10
        );
        d.prune(t0 + 500);
        assert!(d.large.is_none(), "shrank back to the small form");
        assert_eq!(d.len(), LARGE_FROM + 10 - 500);
    }
}
