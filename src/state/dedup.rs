//! Duplicate detection by record id within an event-time horizon.
//!
//! Mediation resends and Kafka redelivery repeat record ids. Two generations of 64-bit fingerprints: a
//! lookup probes both, and when the newest event time passes the current generation's start + horizon,
//! the older generation is dropped. Every id is remembered for at least one horizon and at most two, at
//! ~10 bytes each, with no per-entry timestamps to scan. Collision odds at 10⁶ ids: ~3 × 10⁻⁸ per day.
//!
//! Fingerprints are XXH3-64, a specified algorithm whose output is the same on every machine and
//! crate version (fixed-seed ahash is not: it changes with CPU features), because they are written to
//! state snapshots that another machine may load after a restore or a partition move.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// The fingerprints are already uniformly distributed: hashing them again would waste time.
#[derive(Default)]
pub struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type FingerprintSet = HashSet<u64, BuildHasherDefault<Identity>>;

/// The fingerprint of a record id; `domain` keeps usage and event ids apart.
pub fn fingerprint(domain: u8, id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), 0x6364_7267_0000_0000 | domain as u64)
}

/// Snapshotted as the two fingerprint sets and the generation start.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Dedup {
    current: FingerprintSet,
    previous: FingerprintSet,
    generation_start: Option<i64>,
    horizon_s: i64,
}

impl Dedup {
    pub fn new(horizon_s: i64) -> Self {
        Dedup {
            current: FingerprintSet::default(),
            previous: FingerprintSet::default(),
            generation_start: None,
            horizon_s,
        }
    }

    /// Records `id` (namespaced by `domain`, so a usage record and an account event may share an id)
    /// and returns whether it was already seen.
    pub fn check_and_insert(&mut self, domain: u8, id: &str, newest_event_time: i64) -> bool {
        let start = *self.generation_start.get_or_insert(newest_event_time);
        if newest_event_time >= start + self.horizon_s {
            self.previous = std::mem::take(&mut self.current);
            self.generation_start = Some(newest_event_time);
        }
        let fp = fingerprint(domain, id);
        if self.previous.contains(&fp) {
            return true;
        }
        !self.current.insert(fp)
    }

    /// A restored snapshot takes the configured horizon, which may have changed since it was written.
    pub fn set_horizon(&mut self, horizon_s: i64) {
        self.horizon_s = horizon_s;
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn heap_bytes(&self) -> usize {
        (self.current.capacity() + self.previous.capacity()) * 9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_the_same_on_every_machine() {
        // Pinned values: a change here makes every snapshot's dedup memory useless.
        const FP_R1: u64 = 5_139_448_733_320_615_440;
        assert_eq!(fingerprint(0, "r1"), FP_R1);
        assert_ne!(fingerprint(0, "r1"), fingerprint(1, "r1"));
    }

    #[test]
    fn remembers_for_at_least_the_horizon() {
        let mut d = Dedup::new(86_400);
        let t0 = 1_795_000_000;
        assert!(!d.check_and_insert(0, "r1", t0));
        assert!(d.check_and_insert(0, "r1", t0 + 10));
        assert!(!d.check_and_insert(1, "r1", t0 + 10), "other domain");
        assert!(!d.check_and_insert(0, "r2", t0 + 86_400)); // rotates; r1 now in previous
        assert!(d.check_and_insert(0, "r1", t0 + 86_400 + 5));
        assert!(!d.check_and_insert(0, "r3", t0 + 2 * 86_400)); // rotates again; r1 forgotten
        assert!(!d.check_and_insert(0, "r1", t0 + 2 * 86_400 + 5));
        assert!(
            d.check_and_insert(0, "r2", t0 + 2 * 86_400 + 5),
            "r2 kept one more horizon"
        );
    }
}
