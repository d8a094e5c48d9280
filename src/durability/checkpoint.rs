//! Durable state: each partition's pipeline states (lines and accounts, calling numbers), checkpointed to the store
//! (`durability::store`: a directory or S3) with the input offsets they reflect, as chains of a base
//! and deltas (`durability::layout`), and the rules that keep Kafka's committed offsets consistent
//! with them.
//!
//! **The invariant.** For every input partition, committed offset C ≤ S, the next offset of its last
//! durable snapshot, and a snapshot is written only once every alert and dead letter of the records it
//! covers is acknowledged. So after a crash the state resumes from S and Kafka from C: records in
//! [C, S) are read again but skipped (their effect and their output are already in the snapshot and
//! on the broker), records from S on are processed normally, and alerts of records whose output was
//! not acknowledged are emitted again with the same deterministic ids.
//!
//! **Why checkpoints and not a changelog topic** (Kafka Streams). A changelog write per state update
//! would multiply broker traffic by the updates per record (≈2); a delta every
//! `durability.snapshot_interval` writes each changed entity once however often it changed, and the
//! input topics already are the log that replays what came after. A partition that moves to a
//! machine reaching the same store is restored from its chain; one whose chain is unusable is
//! rebuilt by re-reading `durability.rebuild_window` of input (outputs suppressed below C).
//!
//! **Calling numbers** are partitioned like everything else (`repartition::calls`): a partition's
//! checkpoint holds its share of them beside its lines and accounts, and the position of its calls
//! topic beside those of its inputs.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alert::memory::{AlertMemory, MemoryDelta, MemoryDeltaRef};
use crate::record::Input;
use crate::sink::ack::Tracker;
use crate::state::delta::{StoreDelta, StoreDeltaRef};
use crate::state::WindowStore;
use crate::telemetry::metrics::Metrics;

use super::layout::{Chain, Checkpoints, Link};
use super::snapshot::{Header, Loaded, Position, SnapshotError, SnapshotKind};

/// A partition's state as written (borrowed from its pipelines, no copy).
#[derive(Serialize)]
pub struct PartitionStateRef<'a> {
    pub store: &'a WindowStore,
    pub memory: &'a AlertMemory,
    /// The event-time alignment's running maximum per input (`[usage, events]`) at the snapshot's
    /// positions, so the merge resumes exactly where it was (`source::align`).
    pub highs: [i64; 2],
    /// The calling numbers of the partition's share of the calls topic, when they are tracked
    /// (`repartition::calls`).
    pub calls: Option<CallsStateRef<'a>>,
}

/// A partition's state as read back. Same field order as `PartitionStateRef`.
#[derive(Serialize, Deserialize)]
pub struct PartitionState {
    pub store: WindowStore,
    pub memory: AlertMemory,
    pub highs: [i64; 2],
    pub calls: Option<CallsState>,
}

#[derive(Serialize)]
pub struct CallsStateRef<'a> {
    pub store: &'a WindowStore,
    pub memory: &'a AlertMemory,
    pub seen: &'a BTreeMap<u32, i64>,
}

/// A partition's calling numbers: their state, the alert memory of the rules run beside them
/// (calling-number rules, and subscriber rules reading their alerts), and per source partition the
/// position of the last record applied (a copy the sequencer releases again is recognised).
#[derive(Serialize, Deserialize)]
pub struct CallsState {
    pub store: WindowStore,
    pub memory: AlertMemory,
    pub seen: BTreeMap<u32, i64>,
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

/// A partition's changes since its last durable checkpoint, as written (`durability::layout`).
#[derive(Serialize)]
pub struct PartitionDeltaRef<'a> {
    pub store: StoreDeltaRef<'a>,
    pub memory: MemoryDeltaRef<'a>,
    pub highs: [i64; 2],
    pub calls: Option<CallsDeltaRef<'a>>,
}

#[derive(Serialize)]
pub struct CallsDeltaRef<'a> {
    pub store: StoreDeltaRef<'a>,
    pub memory: MemoryDeltaRef<'a>,
    /// Whole: one entry per source partition.
    pub seen: &'a BTreeMap<u32, i64>,
}

/// A delta as read back. Same field order as `PartitionDeltaRef`.
#[derive(Deserialize)]
pub struct PartitionDelta {
    pub store: StoreDelta,
    pub memory: MemoryDelta,
    pub highs: [i64; 2],
    pub calls: Option<CallsDelta>,
}

#[derive(Deserialize)]
pub struct CallsDelta {
    pub store: StoreDelta,
    pub memory: MemoryDelta,
    pub seen: BTreeMap<u32, i64>,
}

/// Where a partition's chain stands, as the writer tells its worker (read at the next checkpoint).
#[derive(Debug)]
pub struct ChainProgress {
    /// The newest durable checkpoint of this owner (`-1`: none yet): the next delta's parent.
    pub durable: AtomicI64,
    /// The newest checkpoint the writer has finished with, durable or not: while it is behind the
    /// newest sent, one is in flight.
    pub settled: AtomicI64,
}

impl Default for ChainProgress {
    fn default() -> Self {
        ChainProgress {
            durable: AtomicI64::new(-1),
            settled: AtomicI64::new(-1),
        }
    }
}

/// An encoded snapshot on its way to the writer.
pub struct EncodedSnapshot {
    /// Where in its partition's chain (generation, sequence, parent), and the progress to report
    /// to.
    pub link: (Link, Arc<ChainProgress>),
    pub bytes: Vec<u8>,
    /// Per input partition, the last offset the snapshot covers.
    pub covers: Vec<(Input, i32, i64)>,
    /// When encoding started, for the write-time figure.
    pub started: Instant,
    /// Told whether the snapshot became durable (revoke and shutdown wait for it).
    pub done: Option<SyncSender<bool>>,
}

/// The writer thread: waits until a snapshot's outputs are acknowledged, writes it to the store,
/// then lets commits advance to it (the partition's cap).
pub fn spawn_writer(
    checkpoints: Arc<Checkpoints>,
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
                let ok = write_job(&checkpoints, &tracker, &metrics, delivery_timeout, &job);
                let (link, progress) = &job.link;
                if ok {
                    progress.durable.store(link.seq as i64, Ordering::SeqCst);
                }
                progress.settled.store(link.seq as i64, Ordering::SeqCst);
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
    checkpoints: &Checkpoints,
    tracker: &Tracker,
    metrics: &Metrics,
    delivery_timeout: Duration,
    job: &EncodedSnapshot,
) -> bool {
    let (link, progress) = &job.link;
    let key = link.key();
    if let Some(parent) = link.parent {
        // A delta holds the changes since its parent: on any other checkpoint it would be wrong.
        let durable = progress.durable.load(Ordering::SeqCst);
        if durable != parent as i64 {
            tracing::warn!(key, durable, "Delta not written: its parent is not the newest durable checkpoint; the next checkpoint covers its changes.");
            return false;
        }
    }
    for &(input, partition, last) in &job.covers {
        if !tracker.wait_delivered(input, partition, last, delivery_timeout) {
            tracing::warn!(
                key,
                ?input,
                partition,
                "Snapshot not written: alerts of the records it covers are not acknowledged yet; \
                 the next one will try again (commits wait meanwhile)."
            );
            return false;
        }
    }
    let s = &metrics.snapshots;
    if let Err(e) = checkpoints.store.put(&key, job.bytes.clone()) {
        tracing::error!(error = %e, "Checkpoint not written; commits wait for the next one.");
        let _ = s.failing_since_ms.compare_exchange(
            0,
            crate::telemetry::metrics::now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        *s.last_error.lock().expect("metrics lock") = Some(e.to_string());
        return false;
    }
    s.failing_since_ms.store(0, Ordering::Relaxed);
    if link.parent.is_none() {
        checkpoints.remove_before(link);
    }
    for &(input, partition, last) in &job.covers {
        tracker.set_cap_of(input, partition, last, link.generation);
    }
    s.written.fetch_add(1, Ordering::Relaxed);
    s.bytes_written
        .fetch_add(job.bytes.len() as u64, Ordering::Relaxed);
    match link.parent {
        None => &s.bases_written,
        Some(_) => &s.deltas_written,
    }
    .fetch_add(1, Ordering::Relaxed);
    s.last_write_us
        .store(job.started.elapsed().as_micros() as u64, Ordering::Relaxed);
    tracing::debug!(key, bytes = job.bytes.len(), "Checkpoint written.");
    true
}

/// Reads the newest checkpoint of a chain: its header says what the chain covers.
pub fn read_newest(checkpoints: &Checkpoints, chain: &Chain) -> Result<Loaded, SnapshotError> {
    read(checkpoints, chain.newest())
}

/// Reads and verifies the checkpoint stored under `key` (named by its key in errors), and checks
/// that it holds `kind`.
pub fn read_key(
    checkpoints: &Checkpoints,
    key: &str,
    kind: SnapshotKind,
) -> Result<Loaded, SnapshotError> {
    let path = std::path::PathBuf::from(key);
    let loaded = match checkpoints.store.get(key) {
        Ok(Some(bytes)) => Loaded::from_bytes(&path, bytes)?,
        Ok(None) => return Err(SnapshotError::Missing(path)),
        Err(e) => {
            return Err(SnapshotError::Io {
                path,
                source: std::io::Error::other(e.to_string()),
            })
        }
    };
    if loaded.header.kind != kind {
        return Err(SnapshotError::Incompatible {
            path,
            why: format!("holds {:?}, not {kind:?}", loaded.header.kind),
        });
    }
    Ok(loaded)
}

fn read(checkpoints: &Checkpoints, link: &Link) -> Result<Loaded, SnapshotError> {
    read_key(
        checkpoints,
        &link.key(),
        SnapshotKind::Partition(link.partition),
    )
}

/// Restores a chain: its base, then each delta in order. `newest` is the chain's newest
/// checkpoint, already read (`read_newest`). Returns the state and the size read.
pub fn restore_chain(
    checkpoints: &Checkpoints,
    chain: &Chain,
    newest: &Loaded,
) -> Result<(PartitionState, usize), SnapshotError> {
    let mut bytes = newest.size();
    let base = if chain.links.len() == 1 {
        return Ok((newest.payload::<PartitionState>()?, bytes));
    } else {
        read(checkpoints, &chain.links[0])?
    };
    bytes += base.size();
    let mut state = base.payload::<PartitionState>()?;
    drop(base);
    let last = chain.links.len() - 1;
    for (i, link) in chain.links.iter().enumerate().skip(1) {
        let loaded;
        let delta = if i == last {
            newest
        } else {
            loaded = read(checkpoints, link)?;
            bytes += loaded.size();
            &loaded
        };
        let d = delta.payload::<PartitionDelta>()?;
        state.store.apply_delta(d.store);
        state.memory.apply_delta(d.memory);
        state.highs = d.highs;
        if let (Some(s), Some(d)) = (&mut state.calls, d.calls) {
            s.store.apply_delta(d.store);
            s.memory.apply_delta(d.memory);
            s.seen = d.seen;
        }
    }
    Ok((state, bytes))
}

/// How a partition's re-read records are treated after an assignment, per topic (`[usage, events,
/// calls]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadBounds {
    /// Records below this offset are already in the restored state: skipped (`None`: apply all).
    pub apply_from: [Option<i64>; 3],
    /// Records below this offset were committed before: their alerts and dead letters were delivered,
    /// so recomputed ones are not sent again (`None`: send all).
    pub emit_from: [Option<i64>; 3],
}

impl ReadBounds {
    pub fn applies(&self, input: Input, offset: i64) -> bool {
        self.apply_from[input.index()].is_none_or(|s| offset >= s)
    }

    pub fn emits(&self, input: Input, offset: i64) -> bool {
        self.emit_from[input.index()].is_none_or(|c| offset >= c)
    }
}
