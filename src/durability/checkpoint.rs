//! Durable state: each partition's pipeline state and the caller shard's, snapshotted to a local
//! directory with the input offsets they reflect, and the rules that keep Kafka's committed offsets
//! consistent with them.
//!
//! **The invariant.** For every input partition, committed offset C ≤ S, the next offset of its last
//! durable snapshot, and a snapshot is written only once every alert and dead letter of the records it
//! covers is acknowledged. So after a crash the state resumes from S and Kafka from C: records in
//! [C, S) are read again but skipped (their effect and their output are already in the snapshot and
//! on the broker), records from S on are processed normally, and alerts of records whose output was
//! not acknowledged are emitted again with the same deterministic ids.
//!
//! **Why local snapshots and not a changelog topic** (Kafka Streams, Flink's RocksDB backend). A
//! changelog write per state update would multiply broker traffic by the updates per record (≈2); a
//! snapshot every `durability.snapshot_interval` costs one sequential write of the state, and the
//! input topics already are the log that replays what came after. The price: a partition that moves
//! to a machine without its snapshot is rebuilt by re-reading `durability.rebuild_window` of input
//! (with outputs suppressed below C), not restored instantly; point the state directory at shared
//! storage to avoid that.
//!
//! **Caller shard.** Its state spans partitions, so it keeps per usage partition where its merge
//! stands (`LanePosition`), snapshots on its own schedule, and caps each usage partition's commits at
//! what its durable snapshot covers (`Tracker::set_shard_cap`). After a restart it skips what it had
//! applied. With no usable shard snapshot it is rebuilt like a partition: every usage partition is
//! re-read from the rebuild window (partitions skip what their own snapshots hold, the shard takes the
//! calls).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::alert::memory::AlertMemory;
use crate::record::Input;
use crate::rules::engine::AccountFacts;
use crate::sink::ack::Tracker;
use crate::state::WindowStore;
use crate::telemetry::metrics::Metrics;

use super::dir::CheckpointDir;
use super::snapshot::{self, Header, Position, SnapshotKind};

/// A partition's state as written (borrowed from its pipeline, no copy).
#[derive(Serialize)]
pub struct PartitionStateRef<'a> {
    pub store: &'a WindowStore,
    pub memory: &'a AlertMemory,
    /// The event-time alignment's running maximum per input (`[usage, events]`) at the snapshot's
    /// positions, so the merge resumes exactly where it was (`source::align`).
    pub highs: [i64; 2],
    /// Account facts of records handed to the caller shard's rules that its durable snapshot does
    /// not cover yet, by usage offset (`daemon::worker`).
    pub handed_over: &'a BTreeMap<i64, AccountFacts>,
}

/// A partition's state as read back. Same field order as `PartitionStateRef`.
#[derive(Serialize, Deserialize)]
pub struct PartitionState {
    pub store: WindowStore,
    pub memory: AlertMemory,
    pub highs: [i64; 2],
    pub handed_over: BTreeMap<i64, AccountFacts>,
}

/// Where the caller shard's merge stands in one usage partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanePosition {
    /// The next offset to apply: everything before it is in the state.
    pub next: i64,
    /// The partition's running maximum event time before `next`.
    pub high: i64,
}

#[derive(Serialize)]
pub struct CallerStateRef<'a> {
    pub store: &'a WindowStore,
    pub memory: &'a AlertMemory,
    pub lanes: &'a BTreeMap<i32, LanePosition>,
}

/// The caller shard's state: calling numbers, its alert memory (with the alerts of the subscriber
/// rules it runs), and where its merge stands in each usage partition.
#[derive(Serialize, Deserialize)]
pub struct CallerState {
    pub store: WindowStore,
    pub memory: AlertMemory,
    pub lanes: BTreeMap<i32, LanePosition>,
}

/// The header every snapshot of a store carries.
pub fn header(kind: SnapshotKind, positions: Vec<Position>, store: &WindowStore) -> Header {
    let size = store.size();
    Header {
        kind,
        positions,
        written_ms: crate::telemetry::metrics::now_ms(),
        newest_event_time: store.newest_event_time(),
        subscribers: size.subscribers as u64,
        accounts: size.accounts as u64,
        calling_numbers: size.calling_numbers as u64,
    }
}

/// An encoded snapshot on its way to the writer.
pub struct EncodedSnapshot {
    pub kind: SnapshotKind,
    /// The group generation of the owner (partitions; `durability::dir`).
    pub generation: i32,
    pub bytes: Vec<u8>,
    /// Per input partition, the last offset the snapshot covers.
    pub covers: Vec<(Input, i32, i64)>,
    /// When encoding started, for the write-time figure.
    pub started: Instant,
    /// Told whether the snapshot became durable (revoke and shutdown wait for it).
    pub done: Option<SyncSender<bool>>,
}

/// The writer thread: waits until a snapshot's outputs are acknowledged, writes it atomically, then
/// lets commits advance to it (partitions: the cap; the caller shard: its holds).
pub fn spawn_writer(
    dir: Arc<CheckpointDir>,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    delivery_timeout: Duration,
    abort: Arc<AtomicBool>,
    rx: Receiver<EncodedSnapshot>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("snapshot-writer".into())
        .spawn(move || {
            for job in rx {
                if abort.load(Ordering::Relaxed) {
                    return;
                }
                let ok = write_job(&dir, &tracker, &metrics, delivery_timeout, &job);
                if !ok {
                    metrics.snapshots.failed.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(done) = &job.done {
                    let _ = done.send(ok);
                }
            }
        })
}

fn write_job(
    dir: &CheckpointDir,
    tracker: &Tracker,
    metrics: &Metrics,
    delivery_timeout: Duration,
    job: &EncodedSnapshot,
) -> bool {
    let path = match job.kind {
        SnapshotKind::Partition(p) => dir.partition(p, job.generation),
        SnapshotKind::Callers => dir.callers(),
    };
    for &(input, partition, last) in &job.covers {
        if !tracker.wait_delivered(input, partition, last, delivery_timeout) {
            tracing::warn!(
                path = %path.display(),
                ?input,
                partition,
                "Snapshot not written: alerts of the records it covers are not acknowledged yet; \
                 the next one will try again (commits wait meanwhile)."
            );
            return false;
        }
    }
    if let Err(e) = snapshot::write_atomic(&path, &job.bytes) {
        tracing::error!(path = %path.display(), error = %e, "Snapshot not written; commits wait for the next one.");
        let s = &metrics.snapshots;
        let _ = s.failing_since_ms.compare_exchange(
            0,
            crate::telemetry::metrics::now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        *s.last_error.lock().expect("metrics lock") = Some(format!("{}: {e}", path.display()));
        return false;
    }
    metrics
        .snapshots
        .failing_since_ms
        .store(0, Ordering::Relaxed);
    if let SnapshotKind::Partition(p) = job.kind {
        dir.remove_older(p, job.generation);
    }
    for &(input, partition, last) in &job.covers {
        match job.kind {
            SnapshotKind::Partition(_) => tracker.set_cap(input, partition, last),
            SnapshotKind::Callers => tracker.set_shard_cap(partition, last),
        }
    }
    let s = &metrics.snapshots;
    s.written.fetch_add(1, Ordering::Relaxed);
    s.bytes_written
        .fetch_add(job.bytes.len() as u64, Ordering::Relaxed);
    s.last_write_us
        .store(job.started.elapsed().as_micros() as u64, Ordering::Relaxed);
    tracing::debug!(path = %path.display(), bytes = job.bytes.len(), "Snapshot written.");
    true
}

/// How a partition's re-read records are treated after an assignment, per input (`[usage, events]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadBounds {
    /// Records below this offset are already in the restored state: skipped (`None`: apply all).
    pub apply_from: [Option<i64>; 2],
    /// Records below this offset were committed before: their alerts and dead letters were delivered,
    /// so recomputed ones are not sent again (`None`: send all).
    pub emit_from: [Option<i64>; 2],
}

impl ReadBounds {
    pub fn applies(&self, input: Input, offset: i64) -> bool {
        self.apply_from[input.index()].is_none_or(|s| offset >= s)
    }

    pub fn emits(&self, input: Input, offset: i64) -> bool {
        self.emit_from[input.index()].is_none_or(|c| offset >= c)
    }
}
