//! `replay --threads N`: the input split by account over N workers, as the daemon splits its
//! partitions, with the alerts of a one-thread replay.
//!
//! ```text
//!                      ┌─► worker 0 (lines and accounts, Scope::Lines) ──┐ alerts, rejects,
//! reader: decode, merge ┼─► worker 1                                    ─┼─► collector (this thread):
//! in event time, key    └─► worker N-1                                  ──┘   calls lane (Scope::
//!                                                                             CallingNumbers), output
//! ```
//!
//! - **Reader**: decodes both files merged in event time, as a one-thread replay reads
//!   them, numbers each line (`seq`) and sends it to the worker of its account: `served.account_id`,
//!   else the account the line was last seen on (account events and usage records naming one, as the
//!   state attributes a line), else the msisdn.
//! - **Workers**: one pipeline each, owning their accounts' lines and accounts (`Scope::Lines`).
//! - **Collector**: merges what the workers did by `seq`, runs the calling numbers' lane on the
//!   records they hand over (MT calls, Wangiri callbacks) in input order, and writes alerts and
//!   dead letters.
//!
//! **Why the alerts are the same.** A record's lines, account and device state live in one worker
//! and see that account's records in input order. What a partition of the daemon does not share is
//! event time: its watermark is its own. Here every batch carries each move of the newest usage
//! time in its span, with the line that made it, and a worker steps through them between its own
//! lines: lateness, timers and dedup horizons move exactly as in one thread, and a timer fires at the
//! line where one thread fires it. Calling numbers see every partition's calls in input order, the
//! order of one thread. Alerts come out in input order; those of the same line (a timer due for
//! several accounts at once) by alert id, so the file is the same for every N.
//!
//! **Where it differs from one thread** (as the daemon's partitions do):
//! - a line whose first records name no account, and that no account event named yet, is placed by
//!   its msisdn; when a later record names its account, the account's worker sees the line from
//!   then on, and the usage before stays with the msisdn's worker (one thread moves the line's
//!   earlier usage into the account);
//! - a record id is de-duplicated within its account's worker, so two records sharing an id on
//!   different accounts are both kept;
//! - a line that moves to another account leaves its subscriber windows in the old account's
//!   worker (one thread keeps one subscriber and moves it);
//! - the reader moves the clock on every usage record not dated in the future, before its worker
//!   judges it: a resend that turns out a duplicate or a conflict, and is newer than everything
//!   before it, moves the clock here and not in one thread;
//! - a usage record stamped after the real time (`future`) is judged against each thread's clock;
//! - the summary's per-rule p99 is the highest of the threads'.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use anyhow::Context;
use compact_str::CompactString;

use crate::pipeline::{Counts, Handover, Pipeline, Scope, Verdict};
use crate::record::{Alert, Decoded, Input, Item, Reject};
use crate::rules::RulesReport;
use crate::sink::{AlertFile, DeadLetterFile, Origin, Outputs, Rejected, ShadowFile};
use crate::source::FileSource;
use crate::state::{StoreCounters, StoreSize};
use crate::telemetry::{peak_rss_bytes, Progress};

use super::backtest::{AlertTally, InputVolume, Tally};
use super::replay::{open_out, ReplayOptions, ReplayReport, Setup};

/// Lines read between two flushes of every worker's batch: how far the workers can drift apart,
/// and so how much the collector holds before it can write.
const BATCH_LINES: u64 = 2048;
/// Batches in flight per worker before the reader waits.
const QUEUED_BATCHES: usize = 4;

/// What the reader sends a worker.
struct Batch {
    /// Every line up to this `seq` has been read: the worker reports it back when done.
    upto: u64,
    lines: Vec<Line>,
    /// Raw bytes of the batch's lines (`Line::raw` ranges into it).
    raws: Vec<u8>,
    /// Every step of the newest usage time within the batch's span of lines, `(seq, t)` in order:
    /// the same list for every worker.
    clocks: Arc<Vec<(u64, i64)>>,
}

/// A line of the input.
struct Line {
    seq: u64,
    input: Input,
    line: u64,
    raw: (usize, usize),
    truncated: u64,
    item: Result<Item, Reject>,
}
/// What a worker did with a batch.
struct Done {
    worker: usize,
    upto: u64,
    entries: Vec<(u64, Entry)>,
}

enum Entry {
    Alert(Alert),
    Reject {
        input: Input,
        line: u64,
        raw: Vec<u8>,
        truncated: u64,
        reject: Reject,
    },
    Handover(Handover),
}

/// A worker's part of the summary.
struct Part {
    counts: Counts,
    store: StoreCounters,
    size: StoreSize,
    rules: Option<RulesReport>,
}

/// Runs a replay over `threads` workers, writing alerts to `opts.out` (stdout when `None`).
pub fn run(opts: &ReplayOptions, threads: usize) -> anyhow::Result<ReplayReport> {
    run_to(opts, threads, &mut open_out(opts)?)
}

/// Runs a replay over `threads` workers, writing alerts (NDJSON) to `out`.
pub fn run_to(
    opts: &ReplayOptions,
    threads: usize,
    out: &mut dyn Write,
) -> anyhow::Result<ReplayReport> {
    anyhow::ensure!(threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(
        !opts.watch_rules,
        "--threads runs a whole replay: it cannot be combined with --watch-rules"
    );
    // `inspect --at` and rule test cases run one thread.
    anyhow::ensure!(
        opts.cutoff.is_none() && !opts.keep_fired && !opts.shadow_in_alerts,
        "a cutoff, kept timers or shadow alerts with the alerts are one-thread options"
    );
    let setup = Setup::load(opts)?;
    if setup.candidate.is_some() {
        anyhow::bail!("--threads does not run a candidate library (--shadow-rules) yet: replay it in one thread");
    }
    let mut source = FileSource::open(&opts.usage, opts.events.as_deref(), setup.cfg.decoder())?;
    let names = source.names();
    let dead_letter = DeadLetterFile::new(
        setup.dead_letter_path(opts),
        setup.cfg.input.dead_letter_file_max_mib << 20,
    );
    let alerts = AlertFile::new(out);
    let shadow = setup.shadow_file(opts);
    let tally = AlertTally::default();
    let mut volume = opts.tally.then(InputVolume::default);
    let mut progress = Progress::new(opts.progress);
    let started = Instant::now();
    let skew = setup.cfg.state.max_future_skew.0;

    let (parts, calls_part) = std::thread::scope(|s| -> anyhow::Result<_> {
        // Bounded: a slow collector (its calls lane, a slow output) holds the workers back instead
        // of their results piling up.
        let (done_tx, done_rx) = mpsc::sync_channel::<Done>(threads * QUEUED_BATCHES);
        let mut to_workers = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for w in 0..threads {
            let (tx, rx) = mpsc::sync_channel::<Batch>(QUEUED_BATCHES);
            to_workers.push(tx);
            let done_tx = done_tx.clone();
            let setup = &setup;
            handles.push(s.spawn(move || work(w, setup, rx, done_tx)));
        }
        drop(done_tx);
        let names = &names;
        let source = &mut source;
        let progress = &mut progress;
        let volume = volume.as_mut();
        let reader = s.spawn(move || read(source, names, to_workers, skew, progress, volume));
        let sinks = Sinks {
            alerts: &alerts,
            shadow: &shadow,
            dead_letter: &dead_letter,
            tally: opts.tally.then_some(&tally),
        };
        let calls_part = collect(&setup, threads, done_rx, sinks, names);
        let read = reader.join().expect("the replay reader panicked");
        let worked: Vec<Result<Part, Ended>> = handles
            .into_iter()
            .map(|h| h.join().expect("a replay worker panicked"))
            .collect();
        // One failure stops the others, which then report `Stopped`: the error to show is the
        // one that started it — the output's, else a worker's, else the input's.
        let calls_part = calls_part?;
        let mut parts = Vec::with_capacity(threads);
        for w in worked {
            match w {
                Ok(p) => parts.push(p),
                Err(Ended::Failed(e)) => return Err(e),
                Err(Ended::Stopped(_)) => {}
            }
        }
        match read {
            Err(Ended::Failed(e)) => return Err(e),
            Err(Ended::Stopped(s)) => return Err(s.into()),
            Ok(()) if parts.len() < threads => return Err(Stopped.into()),
            Ok(()) => {}
        }
        Ok((parts, calls_part))
    })?;
    progress.done();

    let mut counts = Counts::default();
    let mut store = StoreCounters::default();
    let mut size = StoreSize::default();
    let mut rules = Vec::new();
    for p in parts.into_iter().chain(std::iter::once(calls_part)) {
        add_counts(&mut counts, &p.counts);
        add_store(&mut store, &p.store);
        add_size(&mut size, &p.size);
        rules.extend(p.rules);
    }
    Ok(ReplayReport {
        feedback: None,
        candidate: None,
        counts,
        blank_lines: source.blank_lines,
        store,
        size,
        alerts: alerts.written(),
        shadow_alerts: shadow.written(),
        shadow_out: (shadow.written() > 0).then(|| shadow.path().to_path_buf()),
        rules: RulesReport::merge(rules),
        elapsed: started.elapsed(),
        peak_rss_bytes: peak_rss_bytes(),
        dead_letter: dead_letter
            .path()
            .filter(|_| dead_letter.written() > 0)
            .map(Path::to_path_buf),
        dead_letters_dropped: dead_letter.dropped(),
        tally: volume.map(|volume| Tally {
            volume,
            alerts: tally.into_alerts(),
        }),
    })
}

/// The reader: decodes, keys and sends every line to its worker, with the clock.
fn read(
    source: &mut FileSource,
    names: &[String],
    to_workers: Vec<SyncSender<Batch>>,
    max_future_skew: i64,
    progress: &mut Progress,
    mut volume: Option<&mut InputVolume>,
) -> Result<(), Ended> {
    let n = to_workers.len();
    let mut batches: Vec<Batch> = (0..n).map(|_| new_batch()).collect();
    let mut clocks: Vec<(u64, i64)> = Vec::new();
    let mut newest: Option<i64> = None;
    let mut line_accounts: AHashMap<u64, CompactString> = AHashMap::new();
    let wall_clock = crate::pipeline::wall_clock_now();
    let mut seq = 0u64;
    let send = |batches: &mut Vec<Batch>, clocks: &mut Vec<(u64, i64)>, upto: u64| {
        let shared = Arc::new(std::mem::take(clocks));
        for (w, tx) in to_workers.iter().enumerate() {
            let mut b = std::mem::replace(&mut batches[w], new_batch());
            b.upto = upto;
            b.clocks = shared.clone();
            // A worker that stopped has failed; its error comes from its join.
            if tx.send(b).is_err() {
                return Err(Ended::Stopped(Stopped));
            }
        }
        Ok(())
    };
    loop {
        let Some(d) = source
            .next_decoded()
            .map_err(|e| Ended::Failed(anyhow::Error::from(e).context("reading the input")))?
        else {
            break;
        };
        seq += 1;
        if let (Some(v), Ok(item)) = (volume.as_deref_mut(), &d.item) {
            v.add(item);
        }
        let Decoded {
            source: name,
            line,
            raw,
            truncated,
            item,
        } = d;
        let w = match &item {
            Ok(item) => {
                let key = key(item, &mut line_accounts);
                (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % n as u64) as usize
            }
            Err(_) => (seq % n as u64) as usize,
        };
        if let Ok(Item::Usage(r)) = &item {
            let t = r.event_start.utc;
            if newest.is_none_or(|c| t > c) && t <= wall_clock + max_future_skew {
                newest = Some(t);
                clocks.push((seq, t));
            }
        }
        let b = &mut batches[w];
        let start = b.raws.len();
        b.raws.extend_from_slice(raw);
        b.lines.push(Line {
            seq,
            input: if names.first().is_some_and(|u| u == name) {
                Input::Usage
            } else {
                Input::Events
            },
            line,
            raw: (start, b.raws.len()),
            truncated,
            item,
        });
        if seq.is_multiple_of(BATCH_LINES) {
            send(&mut batches, &mut clocks, seq)?;
            progress.tick(seq, source.progress());
        }
    }
    send(&mut batches, &mut clocks, seq)?;
    Ok(())
}

/// A peer thread stopped: the error worth reporting is its own (`run_to` picks it).
#[derive(Debug, thiserror::Error)]
#[error("a replay thread stopped early")]
struct Stopped;

fn new_batch() -> Batch {
    Batch {
        upto: 0,
        lines: Vec::with_capacity(BATCH_LINES as usize),
        raws: Vec::new(),
        clocks: Arc::default(),
    }
}

/// The key that places a record: its account, else its line's last known account, else its line.
fn key(item: &Item, line_accounts: &mut AHashMap<u64, CompactString>) -> CompactString {
    match item {
        Item::Event(e) => {
            if let Some(m) = e.msisdn {
                line_accounts.insert(m.key(), e.account_id.clone());
            }
            e.account_id.clone()
        }
        Item::Usage(r) => {
            let line = r.served.msisdn;
            match &r.served.account_id {
                Some(a) => {
                    line_accounts.insert(line.key(), a.clone());
                    a.clone()
                }
                None => match line_accounts.get(&line.key()) {
                    Some(a) => a.clone(),
                    None => CompactString::from(line.to_string()),
                },
            }
        }
    }
}

/// A worker: its accounts' lines and accounts, the records it is sent in input order.
///
/// Before each of its lines, it steps the clock through every move of the newest usage time at the
/// lines before (the other workers'), each at its own line, and after its last line through the
/// rest of the batch's: a timer then fires at the line where one thread fires it, so its alerts
/// come out at the same place in the file whatever N (and its own line's move is its record's,
/// applied when the record is, as one thread does).
fn work(
    worker: usize,
    setup: &Setup,
    rx: Receiver<Batch>,
    done: SyncSender<Done>,
) -> Result<Part, Ended> {
    let mut pipeline = setup.pipeline(Scope::Lines)?;
    let mut last_clock = None;
    for batch in rx {
        let mut entries = Vec::new();
        let mut clocks = batch.clocks.iter().copied().peekable();
        let mut step_to =
            |before: u64, pipeline: &mut Pipeline, entries: &mut Vec<(u64, Entry)>| {
                while let Some((seq, t)) = clocks.next_if(|&(seq, _)| seq < before) {
                    last_clock = Some(t);
                    pipeline.advance_idle(t);
                    entries.extend(
                        pipeline
                            .take_alerts()
                            .into_iter()
                            .map(|a| (seq, Entry::Alert(a))),
                    );
                }
            };
        for l in batch.lines {
            step_to(l.seq, &mut pipeline, &mut entries);
            let raw = &batch.raws[l.raw.0..l.raw.1];
            let d = Decoded {
                source: "",
                line: l.line,
                raw,
                truncated: l.truncated,
                item: l.item,
            };
            if let Verdict::Reject(reject) = pipeline.process(d) {
                entries.push((
                    l.seq,
                    Entry::Reject {
                        input: l.input,
                        line: l.line,
                        raw: raw.to_vec(),
                        truncated: l.truncated,
                        reject,
                    },
                ));
            }
            if let Some(h) = pipeline.take_handover() {
                entries.push((l.seq, Entry::Handover(h)));
            }
            entries.extend(
                pipeline
                    .take_alerts()
                    .into_iter()
                    .map(|a| (l.seq, Entry::Alert(a))),
            );
        }
        step_to(u64::MAX, &mut pipeline, &mut entries);
        let done_batch = Done {
            worker,
            upto: batch.upto,
            entries,
        };
        if done.send(done_batch).is_err() {
            return Err(Ended::Stopped(Stopped));
        }
    }
    // The end: as one thread, windows close at the newest usage time of the whole input.
    if let Some(t) = last_clock {
        pipeline.advance_idle(t);
    }
    pipeline.finish();
    let entries = pipeline
        .take_alerts()
        .into_iter()
        .map(|a| (u64::MAX, Entry::Alert(a)))
        .collect();
    let _ = done.send(Done {
        worker,
        upto: u64::MAX,
        entries,
    });
    Ok(part(&pipeline))
}

/// Why a thread ended early: its own failure, or a peer's (reported by the peer).
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error(transparent)]
    Stopped(Stopped),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

fn part(p: &Pipeline) -> Part {
    let store = p.store.borrow();
    Part {
        counts: p.counts.clone(),
        store: store.counters.clone(),
        size: store.size(),
        rules: p.rules.as_ref().map(RulesReport::of),
    }
}

/// Where the collector writes.
struct Sinks<'a, 'w> {
    alerts: &'a AlertFile<&'w mut dyn Write>,
    shadow: &'a ShadowFile,
    dead_letter: &'a DeadLetterFile,
    /// The back-test tally (`--report`, `--labels`).
    tally: Option<&'a AlertTally>,
}

/// The collector: merges the workers' results by line, runs the calling numbers on what they hand
/// over, and writes alerts and dead letters in input order.
fn collect(
    setup: &Setup,
    threads: usize,
    rx: Receiver<Done>,
    sinks: Sinks<'_, '_>,
    names: &[String],
) -> anyhow::Result<Part> {
    let mut calls = setup.pipeline(Scope::CallingNumbers)?;
    let mut outputs = Outputs::new(match sinks.tally {
        Some(t) => vec![sinks.alerts, sinks.shadow, sinks.dead_letter, t],
        None => vec![sinks.alerts, sinks.shadow, sinks.dead_letter],
    });
    let mut queues: Vec<VecDeque<(u64, Entry)>> = (0..threads).map(|_| VecDeque::new()).collect();
    let mut upto = vec![0u64; threads];
    let mut group: Vec<(u64, Entry)> = Vec::new();
    let mut finished = false;
    for done in rx {
        queues[done.worker].extend(done.entries);
        upto[done.worker] = done.upto;
        let safe = upto.iter().copied().min().unwrap_or(0);
        if safe == u64::MAX && !finished {
            // Every worker is done: the calling numbers close their windows at their end too.
            drain(
                &mut queues,
                u64::MAX - 1,
                &mut calls,
                &mut group,
                &mut outputs,
                names,
            )?;
            calls.finish();
            for a in calls.take_alerts() {
                group.push((u64::MAX, Entry::Alert(a)));
            }
            finished = true;
        }
        drain(
            &mut queues,
            safe,
            &mut calls,
            &mut group,
            &mut outputs,
            names,
        )?;
    }
    outputs.flush(std::time::Duration::ZERO)?;
    let mut p = part(&calls);
    // The calls lane's lines are the workers' handovers, counted there already.
    p.counts = Counts::default();
    p.store = StoreCounters {
        evicted_entities: p.store.evicted_entities,
        ..StoreCounters::default()
    };
    // So are the usage records its rules ran on (their evaluations are the lane's own).
    if let Some(r) = &mut p.rules {
        r.counters.usage_records = 0;
        r.counters.usage_without_rules = 0;
    }
    Ok(p)
}

/// Writes everything of lines up to `safe`, line by line: the workers' rejects, then the alerts of
/// the line (the calling numbers' included, after running their lane on the line's handover), by id.
fn drain(
    queues: &mut [VecDeque<(u64, Entry)>],
    safe: u64,
    calls: &mut Pipeline,
    group: &mut Vec<(u64, Entry)>,
    outputs: &mut Outputs<'_>,
    names: &[String],
) -> anyhow::Result<()> {
    loop {
        let next = queues
            .iter()
            .filter_map(|q| q.front().map(|(s, _)| *s))
            .min();
        let line = match next {
            Some(s) if s <= safe => s,
            _ => break,
        };
        for q in queues.iter_mut() {
            while q.front().is_some_and(|(s, _)| *s == line) {
                group.push(q.pop_front().expect("front"));
            }
        }
        write_group(group, calls, outputs, names)?;
    }
    if safe == u64::MAX && !group.is_empty() {
        write_group(group, calls, outputs, names)?;
    }
    Ok(())
}

fn write_group(
    group: &mut Vec<(u64, Entry)>,
    calls: &mut Pipeline,
    outputs: &mut Outputs<'_>,
    names: &[String],
) -> anyhow::Result<()> {
    let mut alerts = Vec::new();
    for (_, e) in group.drain(..) {
        match e {
            Entry::Alert(a) => alerts.push(a),
            Entry::Handover(h) => {
                // Rejects of the calls lane are the partition's to report (`take_over`).
                calls.take_over(h);
                alerts.extend(calls.take_alerts());
            }
            Entry::Reject {
                input,
                line: position,
                raw,
                truncated,
                reject,
            } => {
                let rejected = Rejected {
                    source: &names[input.index().min(names.len() - 1)],
                    partition: None,
                    position,
                    key: &[],
                    raw: &raw,
                    truncated,
                    reject: &reject,
                };
                if let Some((_, e)) = outputs.reject(&rejected, Origin::Untracked).pop() {
                    return Err(e).context("writing the dead-letter file");
                }
            }
        }
    }
    alerts.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
    for a in &alerts {
        if let Some((_, e)) = outputs.alert(a, Origin::Untracked).pop() {
            return Err(e).context("writing alerts");
        }
    }
    Ok(())
}

fn add_counts(to: &mut Counts, c: &Counts) {
    to.lines += c.lines;
    to.usage_accepted += c.usage_accepted;
    to.events_accepted += c.events_accepted;
    to.duplicates += c.duplicates;
    to.after_cutoff += c.after_cutoff;
    for (r, n) in &c.rejected {
        *to.rejected.entry(*r).or_default() += n;
    }
    for (r, n) in &c.repaired {
        *to.repaired.entry(*r).or_default() += n;
    }
}

fn add_store(to: &mut StoreCounters, c: &StoreCounters) {
    to.usage_applied += c.usage_applied;
    to.events_applied += c.events_applied;
    to.duplicates += c.duplicates;
    to.conflicts += c.conflicts;
    to.late += c.late;
    to.timers_fired += c.timers_fired;
    to.timers_cancelled += c.timers_cancelled;
    to.evicted_entities += c.evicted_entities;
    to.future += c.future;
    to.calls_clipped += c.calls_clipped;
    for (w, n) in &c.ledger_warnings {
        *to.ledger_warnings.entry(w.clone()).or_default() += n;
    }
}

fn add_size(to: &mut StoreSize, z: &StoreSize) {
    to.subscribers += z.subscribers;
    to.accounts += z.accounts;
    to.calling_numbers += z.calling_numbers;
    to.imeis += z.imeis;
    to.cells += z.cells;
    to.distinct_entries += z.distinct_entries;
    to.timers_pending += z.timers_pending;
    to.dedup_ids += z.dedup_ids;
    to.entity_bytes += z.entity_bytes;
    to.account_bytes += z.account_bytes;
    to.dedup_bytes += z.dedup_bytes;
    to.estimated_bytes += z.estimated_bytes;
}
