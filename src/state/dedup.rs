//! Duplicate detection by record id within an event-time horizon.
//!
//! Mediation resends and Kafka redelivery repeat record ids. Two generations of 64-bit fingerprints: a
//! lookup probes both, and when the newest event time passes the current generation's start + horizon,
//! the older generation is dropped. Every id is remembered for at least one horizon and at most two, at
//! ~10 bytes each, with no per-entry timestamps to scan. Fingerprints use fixed seeds so that a restart
//! (and a snapshot, later) sees the same values. Collision odds at 10⁶ ids: ~3 × 10⁻⁸ per day.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// The fingerprints are already uniformly distributed: hashing them again would waste time.
fn fingerprint_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(0x6364_7267, 0x7561_7264, 0x6475_7065, 0x6b65_7973)
}

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

/// Snapshotted as the two fingerprint sets and the generation start; the hasher has fixed seeds.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Dedup {
    current: FingerprintSet,
    previous: FingerprintSet,
    generation_start: Option<i64>,
    horizon_s: i64,
    #[serde(skip, default = "fingerprint_hasher")]
    hasher: ahash::RandomState,
}

impl Dedup {
    pub fn new(horizon_s: i64) -> Self {
        Dedup {
            current: FingerprintSet::default(),
            previous: FingerprintSet::default(),
            generation_start: None,
            horizon_s,
            hasher: ahash::RandomState::with_seeds(
                0x6364_7267,
                0x7561_7264,
                0x6475_7065,
                0x6b65_7973,
            ),
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
        let fp = self.hasher.hash_one((domain, id));
        if self.previous.contains(&fp) {
            return true;
        }
        !self.current.insert(fp)
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
