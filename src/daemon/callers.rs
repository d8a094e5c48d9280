//! The caller shard: calling-number state (Wangiri sources) for every partition of the process, and
//! the rules that read it.
//!
//! A calling number rings subscribers of every partition, so its state cannot live in one. Each
//! partition's worker reports every usage record it processes, in order: the records the shard needs
//! in full (`pipeline::Handover`), the others as progress (how far the partition got, and the newest
//! event time). The shard merges the partitions with the same aligner as everything else
//! (`source::align`, one lane per partition): a record is taken only once no partition can still
//! report an earlier one, so the shard takes them in the same order whatever the timing, and a
//! redelivered alert id carries the same content.
//!
//! A record the shard needs is an MT call that gives its calling number state, or a record of a
//! subscriber rule reading calling-number alerts (`alerted("wangiri_inbound", …)` in the Wangiri
//! callback rule, `rules::placement`), which runs here with the account facts its partition took:
//! at its place in the merge every call before it in event time is applied, as in a replay.
//!
//! **Durability.** The shard snapshots its store, alert memory and where its merge stands in each
//! partition (`LanePosition`); commits of a usage partition never pass what its durable snapshot
//! covers (`Tracker::set_shard_cap`). After a restart, records below a lane's position are skipped.
//! Without a usable snapshot it is rebuilt from the rebuild window like a partition.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::durability::checkpoint::{self, CallerState, EncodedSnapshot, LanePosition};
use crate::durability::snapshot::{self, Position, SnapshotKind};
use crate::pipeline::{Handover, Scope};
use crate::record::{Input, UsageRecord};
use crate::rules::RuleSources;
use crate::sink::{Origin, Output, Outputs};
use crate::source::align::Aligner;
use crate::telemetry::metrics::WorkerView;

use super::worker::{self, WorkerContext};

/// What the shard is told.
pub enum ShardMessage {
    /// Usage partitions assigned to this process (before any of their records is reported).
    Assign {
        partitions: Vec<i32>,
    },
    /// Usage partitions revoked: what they reported and the shard has not applied is dropped (their
    /// next owner reads it again).
    Revoke {
        partitions: Vec<i32>,
    },
    /// What partitions processed since their last report (one message per worker batch).
    Reports(Vec<LaneReport>),
    Reload(Arc<RuleSources>),
    /// Snapshot now (a revoke); `done` is told when it is durable.
    Snapshot {
        done: Option<SyncSender<bool>>,
    },
}

/// A partition's processed usage, in order, and where it stands now.
pub struct LaneReport {
    pub partition: i32,
    pub items: Vec<FeedItem>,
    pub head: LaneHead,
}

/// One thing a partition reports, in offset order.
pub enum FeedItem {
    /// Usage records before `next` were processed, none of them a call the shard keeps; the newest
    /// of them at `time`.
    Progress { next: i64, time: Option<i64> },
    /// A record the shard needs whole. `emit`: its alerts are sent (not re-read from already
    /// committed input). `admitted`: the partition's state accepted it (on time, not a duplicate);
    /// false when it was re-read from what the partition's restored snapshot already holds, and the
    /// shard judges a call's lateness itself (see `Shard::late`).
    Record {
        offset: i64,
        time: i64,
        handover: Box<Handover>,
        emit: bool,
        admitted: bool,
    },
}

/// Where a partition's usage stands after a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneHead {
    /// The next record to be processed.
    pub next: i64,
    /// Its event time, when it is already read.
    pub time: Option<i64>,
    /// Nothing more to process: the usage end offset is reached and the queue is empty.
    pub ended: bool,
}

struct Waiting {
    handover: Box<Handover>,
    emit: bool,
    /// Not judged by its partition: the lane's running maximum event time before it.
    unjudged_after: Option<i64>,
}

struct Shard<'a> {
    ctx: WorkerContext,
    pipeline: crate::pipeline::Pipeline,
    merge: Aligner<(i64, Waiting)>,
    /// Where the merge stood in each partition it has seen (kept when a partition leaves, for the
    /// snapshot and in case it comes back).
    lanes: BTreeMap<i32, LanePosition>,
    outputs: Outputs<'a>,
    dirty: bool,
}

pub fn run(ctx: WorkerContext, rx: Receiver<ShardMessage>, restored: Option<CallerState>) {
    let interval = Duration::from_secs(ctx.config.durability.snapshot_interval.0.max(1) as u64);
    let mut pipeline = ctx.pipeline(Scope::CallingNumbers);
    let mut lanes = BTreeMap::new();
    if let Some(state) = restored {
        pipeline.restore(state.store, state.memory);
        lanes = state.lanes;
    }
    let sinks = ctx.outputs.clone();
    let mut shard = Shard {
        outputs: Outputs::new(sinks.iter().map(|o| o.as_ref() as &dyn Output).collect()),
        ctx,
        pipeline,
        merge: Aligner::default(),
        lanes,
        dirty: false,
    };
    let mut next_view = Instant::now();
    let mut next_snapshot = Instant::now() + interval;
    loop {
        if shard.ctx.abort.load(Ordering::Relaxed) {
            return;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ShardMessage::Assign { partitions }) => shard.assign(&partitions),
            Ok(ShardMessage::Revoke { partitions }) => shard.revoke(&partitions),
            Ok(ShardMessage::Reports(reports)) => {
                for r in reports {
                    shard.feed(r.partition, r.items, r.head);
                }
                shard.apply();
                // Positions moved: the next snapshot lets this partition's commits move too.
                shard.dirty = true;
            }
            Ok(ShardMessage::Reload(sources)) => {
                let _ = shard.pipeline.reload_rules(&sources);
            }
            Ok(ShardMessage::Snapshot { done }) => {
                shard.snapshot(done);
                next_snapshot = Instant::now() + interval;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if !shard.ctx.abort.load(Ordering::Relaxed) {
                    shard.snapshot(None);
                }
                return;
            }
        }
        if shard.dirty && Instant::now() >= next_snapshot {
            shard.snapshot(None);
            next_snapshot = Instant::now() + interval;
        }
        if Instant::now() >= next_view {
            next_view = Instant::now() + Duration::from_secs(1);
            let mut view = WorkerView::default();
            worker::add_to_view(&mut view, &shard.pipeline);
            worker::store_view(&shard.ctx, view);
        }
    }
}

impl Shard<'_> {
    fn assign(&mut self, partitions: &[i32]) {
        for &p in partitions {
            let at = self.lanes.get(&p).copied().unwrap_or(LanePosition {
                next: 0,
                high: i64::MIN,
            });
            self.merge.open(p as u32, at.high, at.next);
        }
    }

    fn revoke(&mut self, partitions: &[i32]) {
        for &p in partitions {
            if let Some((next, high)) = self.merge.resume_point(p as u32) {
                self.lanes.insert(p, LanePosition { next, high });
            }
            self.merge.close(p as u32);
        }
        // The others may have waited for these.
        self.apply();
    }

    fn feed(&mut self, partition: i32, items: Vec<FeedItem>, head: LaneHead) {
        let id = partition as u32;
        if !self.merge.is_open(id) {
            // Reported before a revoke reached the shard: the next owner reads it again.
            return;
        }
        let applied = self.lanes.get(&partition).map_or(i64::MIN, |l| l.next);
        for item in items {
            match item {
                FeedItem::Progress { next, time } => self.merge.advance(id, next, time),
                FeedItem::Record { offset, .. } if offset < applied => {
                    // Already in the restored state.
                    self.skip(partition, offset);
                    self.merge.advance(id, offset + 1, None);
                }
                FeedItem::Record {
                    offset,
                    time,
                    handover,
                    emit,
                    admitted,
                } => {
                    let unjudged_after = (!admitted).then(|| self.merge.high(id)).flatten();
                    self.merge.push(
                        id,
                        offset,
                        Some(time),
                        (
                            offset,
                            Waiting {
                                handover,
                                emit,
                                unjudged_after,
                            },
                        ),
                    )
                }
            }
        }
        self.merge.advance(id, head.next, head.time);
        self.merge.set_ended(id, head.ended);
    }

    /// Takes every record the merge can release.
    fn apply(&mut self) {
        while let Some((id, _, (offset, waiting))) = self.merge.pop() {
            let partition = id as i32;
            let Waiting {
                mut handover,
                emit,
                unjudged_after,
            } = waiting;
            if handover.call && unjudged_after.is_some_and(|high| self.late(&handover.record, high))
            {
                handover.call = false;
            }
            if !handover.call && handover.facts.is_none() {
                self.skip(partition, offset);
                continue;
            }
            // Late and duplicate verdicts of copies are the partition's business, not dead
            // letters.
            self.pipeline.take_over(*handover);
            self.dirty = true;
            let alerts = self.pipeline.take_alerts();
            if emit {
                worker::send_alerts(
                    &mut self.outputs,
                    &self.ctx.metrics,
                    alerts,
                    Origin::record(Input::Usage, partition, offset),
                );
            } else {
                self.ctx
                    .metrics
                    .snapshots
                    .outputs_suppressed
                    .fetch_add(alerts.len() as u64, Ordering::Relaxed);
            }
            // The worker's hold on the offset ends now that the alerts are with the sinks.
            self.release_hold(partition, offset);
        }
    }

    /// Whether the partition rejected this call as late when it first read it, judged as its state
    /// did: the call ended before the newest usage time of the partition before it (`high`, which
    /// the shard follows per lane) minus the allowed lateness. A call re-read from what a restored
    /// partition snapshot holds comes without the partition's verdict; without this check the
    /// shard would count a ring after a restart that it did not count before.
    fn late(&self, r: &UsageRecord, high: i64) -> bool {
        let lateness = self.ctx.config.state.allowed_lateness.0;
        high != i64::MIN && r.event_start.utc + (r.duration_s as i64) < high - lateness
    }

    /// A record not taken (already in the restored state, or a call late for its partition):
    /// counted, and its offset no longer held.
    fn skip(&self, partition: i32, offset: i64) {
        self.ctx
            .metrics
            .snapshots
            .records_skipped
            .fetch_add(1, Ordering::Relaxed);
        self.release_hold(partition, offset);
    }

    /// Ends the worker's hold on a call's offset (snapshots off; see `worker::process`).
    fn release_hold(&self, partition: i32, offset: i64) {
        if self.ctx.snapshots.is_none() {
            self.ctx.tracker.ack(Input::Usage, partition, offset, true);
        }
    }

    /// Encodes the shard's state and hands it to the writer.
    fn snapshot(&mut self, done: Option<SyncSender<bool>>) {
        let Some(sink) = &self.ctx.snapshots else {
            if let Some(d) = done {
                let _ = d.send(true);
            }
            return;
        };
        let started = Instant::now();
        // Where each open lane stands now; closed ones keep where they stood when they closed.
        for p in 0..self.merge.lane_count() as u32 {
            if let Some((next, high)) = self.merge.resume_point(p) {
                self.lanes.insert(p as i32, LanePosition { next, high });
            }
        }
        let topic = self.ctx.config.kafka.topic(crate::record::Input::Usage);
        let positions = self
            .lanes
            .iter()
            .map(|(&p, at)| Position {
                topic: topic.to_string(),
                partition: p,
                next: at.next,
            })
            .collect();
        // Commits of an assigned partition may go as far as what this snapshot holds.
        let covers = self
            .lanes
            .iter()
            .filter(|(&p, _)| self.merge.is_open(p as u32))
            .map(|(&p, at)| (Input::Usage, p, at.next - 1))
            .collect();
        let lanes = &self.lanes;
        let encoded = self.pipeline.with_state(|store, memory| {
            let header = checkpoint::header(SnapshotKind::Callers, positions, store);
            let payload = checkpoint::CallerStateRef {
                store,
                memory,
                lanes,
            };
            snapshot::encode(&header, &payload)
        });
        match encoded {
            Ok(bytes) => {
                self.dirty = false;
                let _ = sink.send(EncodedSnapshot {
                    link: None,
                    bytes,
                    covers,
                    started,
                    done,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "Caller shard state not encodable; no snapshot.");
                if let Some(d) = done {
                    let _ = d.send(false);
                }
            }
        }
    }
}
