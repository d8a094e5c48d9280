//! At-least-once offset accounting: an input offset may be committed only when every message produced
//! because of it — alerts to department topics, dead letters — and because of every earlier record of
//! its partition has been acknowledged by the broker.
//!
//! Per input partition: the offsets whose produced messages are still unacknowledged (with a count),
//! and the highest offset fully processed. The committable offset is just below the oldest pending
//! one, or the highest processed when nothing is pending. Offsets of one partition are processed in
//! order by its one worker, so "below the oldest pending" covers every earlier record.
//!
//! With state snapshots on (`durability.dir`), more bounds apply, because a restart resumes the
//! state from its snapshot and re-reads Kafka from the committed offset:
//! - **cap**: the last offset the partition's durable snapshot covers. Commits never pass it, so a
//!   record whose effect is not in any snapshot is always read again after a crash.
//!
//! Used by every sink (`super::Output`): the same at-least-once contract whatever the destination.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ahash::AHashMap;

pub use crate::record::Input;

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
    /// Last offset covered by a durable snapshot (snapshots on).
    cap: Option<i64>,
    /// The group generation of the current assignment: a checkpoint of an earlier assignment that
    /// becomes durable late (its revoke gave up waiting for it) must not raise this one's cap.
    generation: Option<i32>,
}

#[derive(Default)]
pub struct Tracker {
    parts: Mutex<AHashMap<(Input, i32), Partition>>,
    /// Acknowledgements wake snapshot writers waiting for delivery.
    acked: Condvar,
    /// Snapshots are on: commits wait for them (`cap`).
    durable: bool,
}

impl Tracker {
    /// A tracker for a daemon with snapshots on: nothing is committable beyond a durable snapshot
    pub fn durable() -> Self {
        Tracker {
            durable: true,
            ..Default::default()
        }
    }

    /// A partition assigned to this process: forget what an earlier assignment left, and start from the
    /// group's committed offset (`next`: the next offset to read). That offset counts as stored and as
    /// covered, so commits never move backwards, even while a rebuild re-reads older records.
    pub fn start(&self, input: Input, partition: i32, next: Option<i64>) {
        let mut parts = self.parts.lock().expect("tracker lock");
        let p = parts.entry((input, partition)).or_default();
        *p = Partition::default();
        if let Some(n) = next {
            p.stored = Some(n - 1);
            p.cap = Some(n - 1);
        }
    }

    /// A partition the group never committed, starting at `first`: that start is committable at once
    /// (nothing before it is needed), so the group has a commit before the first snapshot.
    pub fn start_new(&self, input: Input, partition: i32, first: i64) {
        let mut parts = self.parts.lock().expect("tracker lock");
        let p = parts.entry((input, partition)).or_default();
        *p = Partition::default();
        p.processed = Some(first - 1);
        p.cap = Some(first - 1);
    }

    /// A partition restored from a durable snapshot that covers it up to `next - 1` but has no
    /// commit (one lost to a rebalance, or expired): what the snapshot covers is processed and may
    /// be committed at once. Without
    /// this a partition with nothing new to read would never be committed.
    pub fn start_restored(&self, input: Input, partition: i32, next: i64) {
        let mut parts = self.parts.lock().expect("tracker lock");
        let p = parts.entry((input, partition)).or_default();
        *p = Partition::default();
        p.processed = Some(next - 1);
        p.cap = Some(next - 1);
    }

    /// A durable snapshot covers the partition up to `last` (inclusive).
    pub fn set_cap(&self, input: Input, partition: i32, last: i64) {
        let mut parts = self.parts.lock().expect("tracker lock");
        let p = parts.entry((input, partition)).or_default();
        p.cap = Some(p.cap.map_or(last, |c| c.max(last)));
    }

    /// The partition is owned under group generation `generation` (after `start*`).
    pub fn own(&self, input: Input, partition: i32, generation: i32) {
        let mut parts = self.parts.lock().expect("tracker lock");
        parts.entry((input, partition)).or_default().generation = Some(generation);
    }

    /// A durable checkpoint written under `generation` covers the partition up to `last`: raises
    /// the cap only if that is the current assignment's generation.
    pub fn set_cap_of(&self, input: Input, partition: i32, last: i64, generation: i32) {
        let mut parts = self.parts.lock().expect("tracker lock");
        if let Some(p) = parts.get_mut(&(input, partition)) {
            if p.generation == Some(generation) {
                p.cap = Some(p.cap.map_or(last, |c| c.max(last)));
            }
        }
    }

    /// Waits until every message produced for offsets up to `upto` is acknowledged; false on timeout
    /// or if one of them failed for good.
    pub fn wait_delivered(
        &self,
        input: Input,
        partition: i32,
        upto: i64,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut parts = self.parts.lock().expect("tracker lock");
        loop {
            let Some(p) = parts.get(&(input, partition)) else {
                return true;
            };
            if p.failed.is_some_and(|f| f <= upto) {
                return false;
            }
            if p.pending.keys().next().is_none_or(|&o| o > upto) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            parts = self
                .acked
                .wait_timeout(parts, left.min(Duration::from_millis(100)))
                .expect("tracker lock")
                .0;
        }
    }

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
                self.acked.notify_all();
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
            if self.durable {
                match p.cap {
                    Some(cap) => upto = upto.min(cap),
                    None => continue,
                }
            }
            // -1 is committable: storing it commits offset 0, a new partition's start.
            if p.stored.is_none_or(|s| upto > s) && upto >= -1 {
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

    /// Regression: a partition restored from a snapshot without a commit (the commit at a revoke
    /// lost to the next rebalance) and with nothing new to read was never committed.
    #[test]
    fn a_partition_restored_without_a_commit_commits_what_its_snapshot_covers() {
        let t = Tracker::durable();
        let (u, e) = (Input::Usage, Input::Events);
        t.start(u, 1, None);
        t.start(e, 1, None);
        t.start_restored(u, 1, 4343);
        t.start_restored(e, 1, 472);
        let mut c = t.committable();
        c.sort();
        assert_eq!(c, [(u, 1, 4342), (e, 1, 471)]);
    }

    #[test]
    fn with_snapshots_commits_wait_for_the_snapshot() {
        let t = Tracker::durable();
        let u = Input::Usage;
        t.start(u, 0, Some(10));
        for o in 10..20 {
            t.processed(u, 0, o);
        }
        assert!(
            t.committable().is_empty(),
            "nothing past the committed 10 is in a snapshot"
        );
        t.set_cap(u, 0, 15);
        assert_eq!(t.committable(), [(u, 0, 15)], "capped by the snapshot");
        t.stored(u, 0, 15);
        t.set_cap(u, 0, 19);
        assert_eq!(t.committable(), [(u, 0, 19)]);
        t.stored(u, 0, 19);
        // A checkpoint of another assignment (generation) does not move the cap; one of this
        // assignment does, and none creates a partition.
        t.own(u, 0, 7);
        for o in 20..30 {
            t.processed(u, 0, o);
        }
        t.set_cap_of(u, 0, 29, 6);
        t.set_cap_of(u, 1, 29, 7);
        assert!(t.committable().is_empty(), "{:?}", t.committable());
        t.set_cap_of(u, 0, 25, 7);
        assert_eq!(t.committable(), [(u, 0, 25)]);
        t.stored(u, 0, 25);
        t.set_cap(u, 0, 29);
        t.stored(u, 0, 29);

        // Delivery waits see acknowledgements; a permanent failure ends them.
        t.add(u, 0, 21);
        t.processed(u, 0, 21);
        assert!(t.wait_delivered(u, 0, 20, Duration::ZERO));
        assert!(!t.wait_delivered(u, 0, 21, Duration::from_millis(10)));
        t.ack(u, 0, 21, true);
        assert!(t.wait_delivered(u, 0, 21, Duration::ZERO));
        t.add(u, 0, 22);
        t.ack(u, 0, 22, false);
        assert!(!t.wait_delivered(u, 0, 22, Duration::from_secs(5)));
    }
}
