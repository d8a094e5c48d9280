//! State snapshots at scale: not a criterion bench — one measured run, printed.
//!
//! 1. **Cost**: one partition's state holding 1M subscribers (5M generated usage records and their
//!    account events applied, 4 days): bytes on disk, time to encode, to write durably (temp file,
//!    fsync, rename), to read and verify, and to decode.
//! 2. **Restart**: that snapshot in a daemon's state directory, the daemon started against the mock
//!    cluster, and the time until it is consuming again: until a record produced after its start has
//!    been read and dead-lettered (a malformed one, so that no rule is needed to see it), compared
//!    with the same start on an empty state directory.
//!
//! 3. **Incremental**: the same state with 5% of its subscribers touched by the input that
//!    follows: the delta's bytes against the full snapshot's, and the time to restore base + delta
//!    from a checkpoint store (`durability::layout`).
//!
//! `cargo bench --bench snapshot` (`CDRGUARD_BENCH_SUBSCRIBERS=100000` for a smaller state).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cdrguard::alert::memory::AlertMemory;
use cdrguard::config::{Config, Secs};
use cdrguard::daemon::{self, Control, RunOptions};
use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::durability::checkpoint::{
    self, PartitionDeltaRef, PartitionState, PartitionStateRef,
};
use cdrguard::durability::layout::{self, Checkpoints, Link};
use cdrguard::durability::snapshot::{self, Loaded, Position, SnapshotKind};
use cdrguard::durability::store::Store;
use cdrguard::pipeline::{Pipeline, PipelineOptions};
use cdrguard::record::EventTime;
use cdrguard::record::{Decoded, Item};
use cdrguard::state::WindowStore;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A store with `subscribers` subscribers, built the way the daemon builds one (decode, classify,
/// apply), without rules; and the last tenth of the usage, held back (section 3 applies it).
fn build_state(cfg: &Config, subscribers: u32) -> (Pipeline, Vec<u8>) {
    let now = cdrguard::telemetry::metrics::now_ms() / 1000;
    let gen = GenConfig {
        seed: 11,
        subscribers,
        records: subscribers as u64 * 5,
        start: EventTime {
            utc: (now - 4 * 86_400) / 60 * 60,
            offset_min: 60,
        },
        days: 4,
        ..GenConfig::default()
    };
    let t = Instant::now();
    let (mut u, mut e) = (Vec::new(), Vec::new());
    generate(&gen, &mut u, &mut e).unwrap();
    eprintln!(
        "snapshot bench: generated {:.0} MiB of input in {:.1} s",
        (u.len() + e.len()) as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let classifier = cfg.classifier(Path::new(ROOT)).unwrap();
    let mut p = Pipeline::new(PipelineOptions::new(classifier, cfg.state.clone())).unwrap();
    let decoder = cfg.decoder();
    // Events first (activations, limits, invoices), then usage: the order does not matter for size.
    let tenth = u.len() - u.len() / 10;
    let cut = tenth + u[tenth..].iter().position(|&b| b == b'\n').unwrap_or(0) + 1;
    let held = u.split_off(cut.min(u.len()));
    for (lines, usage) in [(&e, false), (&u, true)] {
        for (i, l) in lines.split(|&b| b == b'\n').enumerate() {
            if l.is_empty() {
                continue;
            }
            let item = if usage {
                decoder.usage(l).map(Item::Usage)
            } else {
                decoder.account_event(l).map(Item::Event)
            };
            p.process(Decoded {
                source: "bench",
                line: i as u64,
                raw: l,
                truncated: 0,
                item,
            });
        }
    }
    drop((u, e));
    eprintln!(
        "snapshot bench: state built in {:.1} s ({} usage, {} events applied)",
        t.elapsed().as_secs_f64(),
        p.counts.usage_accepted,
        p.counts.events_accepted
    );
    (p, held)
}

/// Section 3: a base, 5% of the subscribers touched, a delta; restored from a store.
fn incremental(cfg: &Config, p: &mut Pipeline, held: &[u8], subscribers: u32) {
    let base_link = Link {
        partition: 0,
        generation: 1,
        seq: 1,
        parent: None,
    };
    let delta_link = Link {
        seq: 2,
        parent: Some(1),
        ..base_link
    };
    let header = |store: &WindowStore| {
        checkpoint::header(
            SnapshotKind::Partition(0),
            vec![Position {
                topic: cfg.kafka.usage_topic.clone(),
                partition: 0,
                next: 0,
            }],
            store,
        )
    };
    let t = Instant::now();
    let full = p.with_state_mut(|store, memory| {
        store.track_changes(true);
        memory.track_changes(true);
        store.seal_changes(1);
        memory.seal_changes(1);
        snapshot::encode(
            &header(store),
            &PartitionStateRef {
                store,
                memory,
                highs: [i64::MIN; 2],
                calls: None,
            },
        )
        .unwrap()
    });
    let full_encode = t.elapsed();
    p.with_state_mut(|store, memory| {
        store.changes_durable(1);
        memory.changes_durable(1);
    });
    // The input that follows, until 5% of the subscribers have been touched.
    let decoder = cfg.decoder();
    let mut touched = std::collections::HashSet::new();
    let mut applied = 0u64;
    for (i, l) in held.split(|&b| b == b'\n').enumerate() {
        if l.is_empty() {
            continue;
        }
        let item = decoder.usage(l).map(Item::Usage);
        if let Ok(Item::Usage(r)) = &item {
            touched.insert(r.served.msisdn);
        }
        p.process(Decoded {
            source: "bench",
            line: i as u64,
            raw: l,
            truncated: 0,
            item,
        });
        applied += 1;
        if touched.len() as u32 >= subscribers / 20 {
            break;
        }
    }
    let t = Instant::now();
    let delta = p.with_state_mut(|store, memory| {
        store.seal_changes(2);
        memory.seal_changes(2);
        snapshot::encode(
            &header(store),
            &PartitionDeltaRef {
                store: store.delta(),
                memory: memory.delta(),
                highs: [i64::MIN; 2],
                calls: None,
            },
        )
        .unwrap()
    });
    let delta_encode = t.elapsed();
    let (full_len, delta_len) = (full.len(), delta.len());
    let expected = p.store.borrow().size().subscribers;
    println!(
        "incremental checkpoint: {} subscribers touched by {applied} records ({:.1}%): delta {:.1} MiB \
         = {:.1}% of the full {:.1} MiB; encode {:.2} s (full {:.2} s)",
        touched.len(),
        touched.len() as f64 * 100.0 / expected.max(1) as f64,
        delta_len as f64 / 1048576.0,
        delta_len as f64 * 100.0 / full_len as f64,
        full_len as f64 / 1048576.0,
        delta_encode.as_secs_f64(),
        full_encode.as_secs_f64(),
    );
    // A directory, and the store named by CDRGUARD_BENCH_STORE (e.g. s3://bench/run with the AWS_*
    // variables of an S3 server) when set.
    let dir = tempfile::tempdir_in(Path::new(ROOT).join("target")).unwrap();
    let mut stores = vec![Store::dir(dir.path())];
    if let Ok(url) = std::env::var("CDRGUARD_BENCH_STORE") {
        stores.push(Store::open(&url, Path::new(""), &Default::default()).unwrap());
    }
    for store in stores {
        let cp = Checkpoints::open_for_tools(store, false).unwrap();
        let t = Instant::now();
        cp.store.put(&base_link.key(), full.clone()).unwrap();
        let full_write = t.elapsed();
        let t = Instant::now();
        cp.store.put(&delta_link.key(), delta.clone()).unwrap();
        let delta_write = t.elapsed();
        let t = Instant::now();
        let (links, _) = cp.contents().unwrap();
        let chain = layout::chains(&links, 0).remove(0);
        assert_eq!(chain.links, [base_link, delta_link]);
        let newest = checkpoint::read_newest(&cp, &chain).unwrap();
        let (state, read) = checkpoint::restore_chain(&cp, &chain, &newest).unwrap();
        let restore = t.elapsed();
        assert_eq!(state.store.size().subscribers, expected);
        drop(state);
        println!(
            "  store {}: write the delta {:.2} s (the full {:.2} s); restore base + delta ({:.1} MiB \
             read, decoded, applied) {:.2} s",
            cp.store.describe(),
            delta_write.as_secs_f64(),
            full_write.as_secs_f64(),
            read as f64 / 1048576.0,
            restore.as_secs_f64()
        );
        cp.store.delete(&base_link.key()).unwrap();
        cp.store.delete(&delta_link.key()).unwrap();
    }
}

fn main() {
    let subscribers: u32 = std::env::var("CDRGUARD_BENCH_SUBSCRIBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut cfg = Config::default();
    cfg.daemon.metrics_address = String::new();
    cfg.daemon.idle_watermark_after = Secs(0);
    cfg.state.max_future_skew = Secs(3650 * 86_400);
    cfg.demo.partitions = 1;
    let (mut p, held) = build_state(&cfg, subscribers);
    incremental(&cfg, &mut p, &held, subscribers);
    drop(held);
    let store = std::mem::replace(
        &mut *p.store.borrow_mut(),
        WindowStore::new(cfg.state.clone()),
    );
    drop(p);
    let size = store.size();
    println!(
        "state: {} subscribers, {} accounts, {} calling numbers, {} cells; estimated {:.0} MiB in memory; process RSS {:.0} MiB",
        size.subscribers,
        size.accounts,
        size.calling_numbers,
        size.cells,
        size.estimated_bytes as f64 / 1048576.0,
        rss_mib()
    );

    // 1. Cost.
    let memory = AlertMemory::default();
    let positions = vec![Position {
        topic: cfg.kafka.usage_topic.clone(),
        partition: 0,
        next: 0,
    }];
    let t = Instant::now();
    let header = checkpoint::header(SnapshotKind::Partition(0), positions, &store);
    let bytes = snapshot::encode(
        &header,
        &PartitionStateRef {
            store: &store,
            memory: &memory,
            highs: [i64::MIN; 2],
            calls: None,
        },
    )
    .unwrap();
    let encode = t.elapsed();
    let dir = tempfile::tempdir_in(Path::new(ROOT).join("target")).unwrap();
    // Where a daemon of generation 1 writes its first base: section 2 restarts on it.
    let base = Link {
        partition: 0,
        generation: 1,
        seq: 1,
        parent: None,
    };
    let path = dir.path().join(base.key());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let t = Instant::now();
    snapshot::write_atomic(&path, &bytes).unwrap();
    let write = t.elapsed();
    drop(bytes);
    drop(store);
    let t = Instant::now();
    let loaded = Loaded::read(&path).unwrap();
    let read = t.elapsed();
    let t = Instant::now();
    let state: PartitionState = loaded.payload().unwrap();
    let decode = t.elapsed();
    let on_disk = loaded.size();
    drop(loaded);
    assert_eq!(state.store.size().subscribers, size.subscribers);
    drop(state);
    println!(
        "snapshot of {} subscribers: {:.1} MiB on disk ({} bytes per subscriber); encode {:.2} s, write+fsync+rename {:.2} s, read+verify {:.2} s, decode {:.2} s",
        size.subscribers,
        on_disk as f64 / 1048576.0,
        on_disk / size.subscribers.max(1),
        encode.as_secs_f64(),
        write.as_secs_f64(),
        read.as_secs_f64(),
        decode.as_secs_f64()
    );

    // 2. Restart: time until a record produced after the start is consumed, with and without the
    //    snapshot to restore.
    let empty = tempfile::tempdir().unwrap();
    let with_snapshot = format!("a {}-subscriber snapshot", size.subscribers);
    for (label, state_dir) in [
        ("an empty state", empty.path()),
        (with_snapshot.as_str(), dir.path()),
    ] {
        let broker = cdrguard::demo::embedded::start(&cfg).unwrap();
        let brokers = broker.bootstrap.clone();
        let producer = cdrguard::demo::embedded::input_producer(
            &Default::default(),
            &brokers,
            std::path::Path::new(""),
        )
        .unwrap();
        producer
            .send(
                BaseRecord::to(&cfg.kafka.usage_topic)
                    .key("k")
                    .payload("{not json"),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "restart-reader")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        reader.subscribe(&[&cfg.kafka.dead_letter_topic]).unwrap();
        let control = Control::default();
        let started = Instant::now();
        let run_cfg = cfg.clone();
        let c = control.clone();
        let state_dir = state_dir.to_path_buf();
        let daemon = std::thread::spawn(move || {
            daemon::run(
                run_cfg,
                Path::new(ROOT),
                &brokers,
                RunOptions {
                    rules_dir: Path::new(ROOT).join("rules"),
                    watch_rules: false,
                    sighup: false,
                    status: false,
                    control: c,
                    state_dir: Some(state_dir),
                },
            )
        });
        let mut consuming = None;
        while started.elapsed() < Duration::from_secs(300) {
            if let Some(Ok(_)) = reader.poll(Duration::from_millis(20)) {
                consuming = Some(started.elapsed());
                break;
            }
        }
        control.stop.store(true, Ordering::Relaxed);
        let stopped = Instant::now();
        daemon.join().unwrap().unwrap();
        println!(
            "restart with {label}: consuming again (first record dead-lettered) {:.2} s after start (group join included); graceful stop with snapshot {:.2} s",
            consuming.map_or(f64::NAN, |d| d.as_secs_f64()),
            stopped.elapsed().as_secs_f64()
        );
        drop(broker);
    }
}
