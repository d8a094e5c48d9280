//! Several daemon processes in one consumer group, on a real broker (tansu) and a real S3 server
//! (moto), each with a local directory of its own: checkpoints in the shared store are what moves
//! with a partition, and the group generation fences a stale owner.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cdrguard::config::Config;
use common::kafka::{assert_alerts_of_replay, replay_state, split_in_time, stores_in};
use common::process::{log_tail, write_config, DaemonProcess};
use common::s3::S3Server;
use common::tansu::Tansu;

/// One test at a time: each runs a broker, an S3 server and daemon processes.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A daemon log's lines about partitions starting and moving, for failure messages.
fn starts(log: &std::path::Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            [
                "restored",
                "rebuil",
                "new to the group",
                "assigned",
                "revoked",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An instance named `name`: its config file (checkpoints in `s3`, a local directory of its own,
/// event time from the input only — a quiet stream's watermark following the wall clock would fire
/// timers a replay never reaches), its log file, its directory and the config.
fn instance(k: &Tansu, s3: &S3Server, name: &str) -> (PathBuf, PathBuf, PathBuf, Config) {
    let dir = k.dir.path().join(name);
    let mut cfg = k.daemon_config(&dir);
    s3.configure(&mut cfg, "cdrguard");
    cfg.durability.instance = name.to_string();
    cfg.daemon.idle_watermark_after = cdrguard::config::Secs(0);
    let path = k.dir.path().join(format!("{name}.toml"));
    write_config(&cfg, &path);
    (path, k.dir.path().join(format!("{name}.log")), dir, cfg)
}

/// The generation in a checkpoint key (`…/partition-<p>/g<generation>/…`).
fn generation(key: &str) -> Option<i32> {
    let rest = key.split("/g").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// A daemon paused (SIGSTOP) while it owns every partition is replaced: the group moves its
/// partitions to another instance, which restores them from the store. When the paused one wakes,
/// it still believes it owns them and checkpoints its stale state — under its old generation,
/// where the new owner never looks and which it had already cleared. Then both share the work.
/// At the end: the alerts and the state of one clean replay, nothing lost, nothing twice.
#[test]
fn a_paused_owner_that_wakes_after_its_partitions_moved_cannot_overwrite_the_new_owners_state() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    let started = Instant::now();
    let k = Tansu::start(4);
    let s3 = S3Server::start("cdrguard", k.dir.path());
    let (usage, events, _) = common::kafka::stories_sized(61, 2_000, 20_000);
    let (expected, features, at) = replay_state(&usage, &events);
    let total = usage.iter().chain(&events).filter(|&&b| b == b'\n').count() as u64;
    let [(usage_1, events_1), (usage_2, events_2)] = split_in_time(&usage, &events);

    let (config_a, log_a, _, cfg) = instance(&k, &s3, "a");
    let (config_b, log_b, _, _) = instance(&k, &s3, "b");

    // A owns everything and works through the first half.
    let first = k.produce(&usage_1, &events_1);
    let mut a = DaemonProcess::spawn(&config_a, &log_a);
    assert!(
        k.wait_committed(first, Duration::from_secs(120)),
        "a committed the first half:\n{}",
        log_tail(&log_a, 30)
    );
    let keys = s3.keys("cdrguard/partition-");
    let old: BTreeSet<i32> = keys.iter().filter_map(|k| generation(k)).collect();
    assert_eq!(old.len(), 1, "one generation so far: {keys:?}");
    let old = *old.iter().next().unwrap();

    // A stalls, and the second half arrives. B joins; once A's session times out, B gets every
    // partition and restores it from the store (A's local directory is not B's), then works
    // through the second half — on the broker before B reads it, so that B merges it as a replay
    // does (records arriving while a reader is at the end are merged as they become visible).
    a.pause();
    let paused = Instant::now();
    assert_eq!(k.produce(&usage_2, &events_2) + first, total);
    // B joins once A's session (6 s) has surely expired: tansu then gives B every partition at
    // once (a join while A still counts as a member left B with none until the test gave up).
    std::thread::sleep(Duration::from_secs(10).saturating_sub(paused.elapsed()));
    let mut b = DaemonProcess::spawn(&config_b, &log_b);
    assert!(
        b.wait_for_log(
            "Partition state restored from its snapshot.",
            4,
            Duration::from_secs(120)
        ),
        "b restored the four partitions from the store:\n{}",
        log_tail(&log_b, 30)
    );
    assert!(
        k.wait_committed(total, Duration::from_secs(120)),
        "b committed everything:\n{}",
        log_tail(&log_b, 30)
    );
    // B's bases are durable and have cleared A's generation.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys = s3.keys("cdrguard/partition-");
        let newer: BTreeSet<i32> = keys.iter().filter_map(|k| generation(k)).collect();
        if !newer.contains(&old) && newer.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b's bases never replaced a's: {keys:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A wakes. Watch the store meanwhile: A's stale checkpoints appear under its old generation.
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (seen, watching) = (seen.clone(), watching.clone());
        let url = s3.endpoint();
        let bucket = s3.bucket.clone();
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                if let Ok(mut r) = ureq::get(&format!(
                    "{url}/{bucket}?list-type=2&prefix=cdrguard/partition-"
                ))
                .call()
                {
                    let body = r.body_mut().read_to_string().unwrap_or_default();
                    let mut s = seen.lock().unwrap();
                    for key in body.split("<Key>").skip(1) {
                        if let Some(k) = key.split("</Key>").next() {
                            s.insert(k.to_string());
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    a.resume();
    // The group settles with both members: each restores what it gets from the newest
    // generation that covers the commits.
    assert!(
        a.wait_for_log(
            "Partition state restored from its snapshot.",
            1,
            Duration::from_secs(120)
        ),
        "a took partitions back after waking:\n{}",
        log_tail(&log_a, 40)
    );
    std::thread::sleep(Duration::from_secs(5));
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    let stale: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|k| generation(k) == Some(old))
        .cloned()
        .collect();
    assert!(
        !stale.is_empty(),
        "a, woken, checkpointed under its old generation {old} (the fencing case):\n{}",
        log_tail(&log_a, 40)
    );
    let log = std::fs::read_to_string(&log_a).unwrap();
    let restored_from: Vec<&str> = log
        .lines()
        // A's first start found nothing to restore: every such line is from after the wake.
        .filter(|l| l.contains("Partition state restored from its snapshot."))
        .collect();
    for l in &restored_from {
        assert!(
            !l.contains(&format!("from_generation={old} ")),
            "a restored its own stale generation: {l}"
        );
    }

    // The calls topic trails the inputs: every alert is out before anyone stops.
    let _ = k.alerts(&cfg, &expected, Duration::from_secs(180));
    a.sigterm();
    b.sigterm();
    assert!(
        a.wait(Duration::from_secs(60)).success(),
        "{}",
        log_tail(&log_a, 30)
    );
    assert!(
        b.wait(Duration::from_secs(60)).success(),
        "{}",
        log_tail(&log_b, 30)
    );

    // Every alert of a clean replay, each with one content, nothing else.
    let by_id = k.alerts(&cfg, &expected, Duration::from_secs(30));
    assert_alerts_of_replay(&expected, &by_id, &|| {
        format!("\n--- a:\n{}\n--- b:\n{}", starts(&log_a), starts(&log_b))
    });

    // The state in the store is the replay's: the stale checkpoints were never restored.
    let store = common::kafka::store_of(&cfg);
    common::kafka::assert_same_stores(stores_in(store), &features, at);
    eprintln!(
        "fencing test: generation {old} paused; {} stale checkpoint(s) written under it after the \
         wake ({:?}); a restored {} partition(s) from newer generations; {} alerts = a replay's; \
         {:.0} s",
        stale.len(),
        stale,
        restored_from.len(),
        by_id.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Three instances in one group on eight partitions, each with a local directory of its own: one
/// is SIGKILLed and its directory deleted, the survivors restore its partitions from the store (no
/// rebuild); then the group shrinks to one instance (a graceful leave) and grows back to three
/// (new processes, new empty directories). The backlog is on the broker before anyone reads it.
/// At the end: exactly the alerts of a clean replay, each with one content, and every subscriber's
/// features in the store equal to the replay's. Wangiri waves and their callbacks included: their
/// victims are subscribers of every partition, and each wave is counted whole in the partition of
/// its calling number (`repartition::calls`), whichever instance owns it.
#[test]
fn three_instances_lose_one_shrink_to_one_and_grow_back_with_state_from_the_store() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    let started = Instant::now();
    let k = Tansu::start(8);
    let s3 = S3Server::start("cdrguard", k.dir.path());
    let (usage, events, _) = common::kafka::stories_sized(73, 3_000, 40_000);
    let (expected, features, at) = replay_state(&usage, &events);
    for rule in ["wangiri_inbound", "wangiri_callback"] {
        assert!(
            expected.values().any(|a| a.rule.id == rule),
            "the input holds a {rule} story"
        );
    }
    let total = k.produce(&usage, &events);

    let mut run = 0;
    let mut spawn = |name: &str| {
        run += 1;
        let (path, log, dir, cfg) = instance(&k, &s3, &format!("{name}-{run}"));
        (DaemonProcess::spawn(&path, &log), dir, log, cfg)
    };
    let (mut a, _, log_a, cfg) = spawn("a");
    let (mut b, dir_b, log_b, _) = spawn("b");
    let (mut c, _, log_c, _) = spawn("c");
    let mut logs = vec![log_a.clone(), log_b.clone(), log_c.clone()];
    for (d, log) in [(&mut a, &log_a), (&mut b, &log_b), (&mut c, &log_c)] {
        assert!(
            d.wait_for_log("Assignment prepared.", 1, Duration::from_secs(60)),
            "{}",
            log_tail(log, 30)
        );
    }
    // B's machine is lost soon after the group settled, while the backlog is worked through:
    // killed, its directory gone. A and C restore its partitions from the store.
    std::thread::sleep(Duration::from_millis(1500));
    b.sigkill();
    std::fs::remove_dir_all(&dir_b).ok();
    let at_loss = k.committed_total();
    let assigned = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("Assignment prepared.")
            .count()
    };
    let before = assigned(&log_a);
    assert!(
        a.wait_for_log("Assignment prepared.", before + 1, Duration::from_secs(60)),
        "a took over b's partitions:\n{}",
        log_tail(&log_a, 30)
    );

    // Down to one: C leaves gracefully.
    c.sigterm();
    assert!(
        c.wait(Duration::from_secs(60)).success(),
        "{}",
        log_tail(&log_c, 30)
    );
    let at_one = k.committed_total();

    // Back to three: two new processes with empty directories.
    let (mut d, _, log_d, _) = spawn("d");
    let (mut e, _, log_e, _) = spawn("e");
    logs.extend([log_d.clone(), log_e.clone()]);
    assert!(
        k.wait_committed(total, Duration::from_secs(180)),
        "{} of {total} committed with three instances again:\n{}",
        k.committed_total(),
        log_tail(&log_d, 30)
    );
    // The calls topic trails the inputs by two hops, and a group that rebalances on a loaded
    // machine pauses them: every alert is out before anyone stops.
    let _ = k.alerts(&cfg, &expected, Duration::from_secs(180));
    for p in [&a, &d, &e] {
        p.sigterm();
    }
    for (p, log) in [(&mut a, &log_a), (&mut d, &log_d), (&mut e, &log_e)] {
        assert!(
            p.wait(Duration::from_secs(60)).success(),
            "{}",
            log_tail(log, 30)
        );
    }

    let by_id = k.alerts(&cfg, &expected, Duration::from_secs(30));
    let all_starts = || {
        logs.iter()
            .map(|l| format!("\n--- {}:\n{}", l.display(), starts(l)))
            .collect::<String>()
    };
    assert_alerts_of_replay(&expected, &by_id, &all_starts);
    common::kafka::assert_same_stores(stores_in(common::kafka::store_of(&cfg)), &features, at);

    // Partitions moved with their state: restored from the store, never rebuilt.
    let text: String = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect();
    let restored = text
        .matches("Partition state restored from its snapshot.")
        .count();
    assert!(
        restored >= 8,
        "partitions restored from the store: {restored}{}",
        all_starts()
    );
    assert_eq!(
        text.matches("No usable snapshot").count(),
        0,
        "no partition rebuilt:{}",
        all_starts()
    );
    eprintln!(
        "scale test: 8 partitions, {total} records; b lost at {at_loss} committed, down to one \
         instance at {at_one}, back to three; {restored} partition restores from the store, none \
         rebuilt; {} alerts = a replay's; {:.0} s",
        by_id.len(),
        started.elapsed().as_secs_f64()
    );
}
