//! At-least-once offset accounting: an input offset may be committed only when every message produced
//! because of it — alerts to department topics, dead letters — and because of every earlier record of
//! its partition has been acknowledged by the broker.
//!
//! Per input partition: the offsets whose produced messages are still unacknowledged (with a count),
//! and the highest offset fully processed. The committable offset is just below the oldest pending
//! one, or the highest processed when nothing is pending. Offsets of one partition are processed in
//! order by its one worker, so "below the oldest pending" covers every earlier record.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ahash::AHashMap;

/// Which input topic: usage or account events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    Usage,
    Events,
}

#[derive(Default)]
struct Partition {
    /// Offset → messages produced for it and not yet acknowledged.
    pending: BTreeMap<i64, u32>,
    /// Highest offset whose processing finished (all its messages handed to the producer).
    processed: Option<i64>,
    /// Last offset handed to `store_offset`.
    stored: Option<i64>,
    /// A message for this offset failed for good: nothing at or after it may be committed.
    failed: Option<i64>,
}

#[derive(Default)]
pub struct Tracker {
    parts: Mutex<AHashMap<(Input, i32), Partition>>,
}

impl Tracker {
    /// One more message is about to be produced for `offset` (call before sending, so the ack cannot
    /// arrive first).
    pub fn add(&self, input: Input, partition: i32, offset: i64) {
        let mut parts = self.parts.lock().expect("tracker lock");
        *parts
            .entry((input, partition))
            .or_default()
            .pending
            .entry(offset)
            .or_default() += 1;
    }

    /// Everything for `offset` has been handed to the producer.
    pub fn processed(&self, input: Input, partition: i32, offset: i64) {
        let mut parts = self.parts.lock().expect("tracker lock");
        let p = parts.entry((input, partition)).or_default();
        p.processed = Some(p.processed.map_or(offset, |o| o.max(offset)));
    }

    /// The broker acknowledged one message for `offset` (or it failed for good: `ok` false).
    pub fn ack(&self, input: Input, partition: i32, offset: i64, ok: bool) {
        let mut parts = self.parts.lock().expect("tracker lock");
        let Some(p) = parts.get_mut(&(input, partition)) else {
            return;
        };
        if !ok {
            p.failed = Some(p.failed.map_or(offset, |f| f.min(offset)));
            return;
        }
        if let Some(n) = p.pending.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                p.pending.remove(&offset);
            }
        }
    }

    /// Offsets that may now be stored (the last fully delivered offset per partition), each reported
    /// as long as it is ahead of the last one `stored` confirmed.
    pub fn committable(&self) -> Vec<(Input, i32, i64)> {
        let mut parts = self.parts.lock().expect("tracker lock");
        let mut out = Vec::new();
        for (&(input, partition), p) in parts.iter_mut() {
            let Some(processed) = p.processed else {
                continue;
            };
            let mut upto = match p.pending.keys().next() {
                Some(&oldest) => (oldest - 1).min(processed),
                None => processed,
            };
            if let Some(f) = p.failed {
                upto = upto.min(f - 1);
            }
            if p.stored.is_none_or(|s| upto > s) && upto >= 0 {
                out.push((input, partition, upto));
            }
        }
        out
    }

    /// The consumer stored `offset`: report it again only when it advances. (A store that failed —
    /// a partition moving in a rebalance — is retried next time.)
    pub fn stored(&self, input: Input, partition: i32, offset: i64) {
        if let Some(p) = self
            .parts
            .lock()
            .expect("tracker lock")
            .get_mut(&(input, partition))
        {
            p.stored = Some(p.stored.map_or(offset, |s| s.max(offset)));
        }
    }

    /// Messages still waiting for an acknowledgement.
    pub fn in_flight(&self) -> u64 {
        let parts = self.parts.lock().expect("tracker lock");
        parts
            .values()
            .flat_map(|p| p.pending.values())
            .map(|&n| n as u64)
            .sum()
    }

    /// Forgets a partition (revoked): its records will be redelivered to the next owner from the
    /// last committed offset.
    pub fn forget(&self, input: Input, partition: i32) {
        self.parts
            .lock()
            .expect("tracker lock")
            .remove(&(input, partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_never_pass_an_unacknowledged_message() {
        let t = Tracker::default();
        let u = Input::Usage;
        // Offset 0: no output. Offset 1: two alerts. Offset 2: one dead letter.
        t.processed(u, 0, 0);
        t.add(u, 0, 1);
        t.add(u, 0, 1);
        t.processed(u, 0, 1);
        t.add(u, 0, 2);
        t.processed(u, 0, 2);
        assert_eq!(t.committable(), [(u, 0, 0)]);
        t.stored(u, 0, 0);
        assert!(t.committable().is_empty(), "reported once stored");
        t.ack(u, 0, 2, true);
        assert!(t.committable().is_empty(), "1 still pending");
        t.ack(u, 0, 1, true);
        assert!(t.committable().is_empty());
        t.ack(u, 0, 1, true);
        assert_eq!(t.committable(), [(u, 0, 2)]);
        // Not stored (the store failed): offered again.
        assert_eq!(t.committable(), [(u, 0, 2)]);
        t.stored(u, 0, 2);
        assert_eq!(t.in_flight(), 0);
        // A permanent failure holds the partition where it failed.
        t.add(u, 0, 3);
        t.processed(u, 0, 3);
        t.processed(u, 0, 4);
        t.ack(u, 0, 3, false);
        assert!(t.committable().is_empty());
    }
}
