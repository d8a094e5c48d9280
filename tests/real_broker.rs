//! The daemon as a process of its own against a real Kafka-protocol broker (tansu, another program
//! than the client library): it joins a consumer group, consumes, raises the stories' alerts, stops
//! on SIGTERM with everything snapshotted and committed.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::kafka::{parse, snapshot_stores, stories, Read};
use common::process::{log_tail, write_config, DaemonProcess};
use common::tansu::*;

fn alert_topics(cfg: &cdrguard::config::Config) -> Vec<String> {
    let t = &cfg.kafka.alert_topics;
    vec![
        t.fraud.clone(),
        t.collections.clone(),
        t.key_accounts.clone(),
        t.care.clone(),
    ]
}

/// The tests here run one at a time: each runs a broker and a daemon process and streams input live,
/// and two at once on two cores fall behind the stream (a backlog across partitions is what reorders
/// a Wangiri callback before its wave, see below).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// (rule, entity) of every alert read.
fn rule_entities(messages: &[Read]) -> BTreeSet<(String, String)> {
    messages
        .iter()
        .map(parse)
        .map(|a| (a.rule.id, a.entity.key))
        .collect()
}

#[test]
fn the_daemon_runs_against_a_real_broker() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let k = Tansu::start(2);
    let (usage, events, labels) = stories(31);
    let total = usage.iter().chain(&events).filter(|&&b| b == b'\n').count() as u64;
    let state = k.dir.path().join("state");
    let config = k.dir.path().join("cdrguard.toml");
    write_config(&k.daemon_config(&state), &config);
    // A backlog on two partitions, on the broker before the daemon reads it: the partitions' records
    // are merged in event time (the calls topic evaluates a Wangiri callback once the wave's rings
    // in the other partition are in). Records produced while the daemon reads are merged as
    // they become visible, which a replay cannot reproduce.
    let produced = k.produce(&usage, &events);
    let mut daemon = DaemonProcess::spawn(&config, &k.dir.path().join("daemon.log"));
    assert!(
        daemon.wait_for_log("Assignment prepared.", 1, Duration::from_secs(60)),
        "the daemon joined its group"
    );
    eprintln!(
        "broker up, input produced, daemon assigned its partitions: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Every story's alert arrives on the department topics.
    let topics = alert_topics(&k.cfg);
    let mut reader = k.reader(&topics.iter().map(String::as_str).collect::<Vec<_>>());
    let want: BTreeSet<(String, String)> = labels
        .iter()
        .map(|l| (l.rule.clone(), l.entity.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let complete = loop {
        let done = reader.read_until(Duration::from_secs(1), |m| {
            want.is_subset(&rule_entities(m))
        });
        if done || daemon.try_wait().is_some() || Instant::now() > deadline {
            break done;
        }
    };
    let seen = rule_entities(&reader.messages);
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(
        complete,
        "{} alert messages, daemon {:?}; story alerts missing: {missing:#?}",
        reader.messages.len(),
        daemon.try_wait()
    );
    assert_eq!(produced, total);
    eprintln!(
        "{} story alerts in, {:.1} s",
        want.len(),
        started.elapsed().as_secs_f64()
    );
    for m in &reader.messages {
        let a = parse(m);
        assert_eq!(m.key, a.entity.key.as_bytes(), "keyed by entity");
        assert_eq!(m.headers["cdrguard.rule"], a.rule.id, "headers kept");
    }

    // It commits everything it read while running (snapshots every second)...
    assert!(
        k.wait_committed(total, Duration::from_secs(60)),
        "{} of {total} records committed",
        k.committed_total()
    );
    // ...and on SIGTERM drains, snapshots each partition and exits 0.
    daemon.sigterm();
    let status = daemon.wait(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    eprintln!("stopped, {:.1} s", started.elapsed().as_secs_f64());
    let kc = &k.cfg.kafka;
    for topic in [&kc.usage_topic, &kc.events_topic] {
        assert_eq!(
            k.committed(&kc.group_id, topic),
            k.end_offsets(topic),
            "{topic}: committed offsets are the end of each partition"
        );
    }
    assert_eq!(k.committed_total() as u64, total);
    assert_eq!(snapshot_stores(&state).len(), 2, "a snapshot per partition");
}

/// The crash test: a backlog with known alerts, the daemon SIGKILLed at random points ten times while
/// it works through it, restarted each time on its state directory, then left to finish. The input is
/// on the broker before the daemon reads it: records produced while it reads are merged as they become
/// visible, which a replay cannot reproduce.
#[test]
fn ten_sigkills_lose_no_alert_and_count_no_record_twice() {
    const KILLS: usize = 10;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let k = Tansu::start(2);
    let (usage, events, _) = common::kafka::stories_sized(51, 1_500, 40_000);
    let (expected, features, at) = common::kafka::replay_state(&usage, &events);
    let lines = usage.iter().chain(&events).filter(|&&b| b == b'\n').count() as u64;
    let state = k.dir.path().join("state");
    let config = k.dir.path().join("cdrguard.toml");
    write_config(&k.daemon_config(&state), &config);
    let log = k.dir.path().join("daemon.log");

    // Bad records first: they must reach the dead-letter topic exactly as often as they exist.
    let bad: [&[u8]; 3] = [b"{not json", b"{\"record_id\":\"x\"}", b"\xff\xfe"];
    let raw = cdrguard::demo::embedded::input_producer(
        &Default::default(),
        &k.brokers,
        std::path::Path::new(""),
    )
    .unwrap();
    for b in bad {
        raw.send(
            rdkafka::producer::BaseRecord::to(&k.cfg.kafka.usage_topic)
                .key("k")
                .payload(b),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    rdkafka::producer::Producer::flush(&raw, Duration::from_secs(10)).unwrap();
    let total = lines + bad.len() as u64;
    assert_eq!(k.produce(&usage, &events), lines);

    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut daemon = DaemonProcess::spawn(&config, &log);
    let mut kills = Vec::new();
    for kill in 0..KILLS {
        daemon.expect_assigned(kill);
        let after = Duration::from_millis(rng.u64(300..4000));
        std::thread::sleep(after);
        daemon.kill_and_restart(&config);
        kills.push((after, k.committed_total()));
    }
    assert!(
        k.wait_committed(total, Duration::from_secs(120)),
        "{} of {total} records committed after the last restart:\n{}",
        k.committed_total(),
        log_tail(&log, 30)
    );
    // The calls topic trails the inputs: every alert is out before the daemon stops.
    let _ = k.alerts(&k.cfg, &expected, Duration::from_secs(180));
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(30)).success());

    // Every expected alert at least once, each id always with the same content, nothing else.
    let topics = alert_topics(&k.cfg);
    let mut reader = k.reader(&topics.iter().map(String::as_str).collect::<Vec<_>>());
    let copies: usize = expected.values().map(|a| a.departments.len()).sum();
    reader.read_until(Duration::from_secs(30), |m| m.len() >= copies);
    reader.read_until(Duration::from_secs(2), |_| false);
    let by_id = common::kafka::alerts_by_id(&reader.messages);
    common::kafka::assert_alerts_of_replay(&expected, &by_id, &String::new);

    // The dead-letter topic holds each bad record (once or more: at least once).
    let mut dlq = k.reader(&[&k.cfg.kafka.dead_letter_topic]);
    dlq.read_until(Duration::from_secs(20), |m| m.len() >= bad.len());
    dlq.read_until(Duration::from_secs(1), |_| false);
    let dead: BTreeSet<&String> = dlq
        .messages
        .iter()
        .map(|m| &m.headers["cdrguard.source.offset"])
        .collect();
    assert_eq!(dead.len(), bad.len(), "every bad record dead-lettered");

    // No record counted twice (or missed) in any window: the final state is a clean replay's.
    common::kafka::assert_same_state(&state, &features, at);

    let text = std::fs::read_to_string(&log).unwrap();
    let count = |needle: &str| text.matches(needle).count();
    let kill_points: Vec<String> = kills
        .iter()
        .map(|(after, c)| format!("{:.1}s/{c}", after.as_secs_f64()))
        .collect();
    eprintln!(
        "crash test summary: {KILLS} SIGKILLs (after assignment / records committed at the kill: {}); \
         {total} input records ({} bad), all committed; {} alert messages read, {} distinct alerts = \
         the {} of a clean replay, {} redelivered copies, none with other content; {} dead letters for {} \
         bad records; {} subscribers' features equal to the replay's; partition starts: {} from a snapshot, {} \
         rebuilt, {} new; {:.0} s in all",
        kill_points.join(" "),
        bad.len(),
        reader.messages.len(),
        by_id.len(),
        expected.len(),
        reader.messages.len() - copies,
        dlq.messages.len(),
        bad.len(),
        features.len(),
        count("Partition state restored from its snapshot."),
        count("No usable snapshot"),
        count("Partition new to the group") / 2,
        started.elapsed().as_secs_f64()
    );
}

/// The same input produced three ways — keyed by account as the README asks, by the line's msisdn,
/// not keyed at all — through a real broker with four partitions: with `kafka.usage_keyed_by` and
/// `events_keyed_by` saying how, each gives exactly the alerts of a replay (ids and contents). The
/// daemon creates its internal topics on the broker itself. Keyed by msisdn with the default
/// (`account`), every usage record is reported mis-keyed (each names its account), once.
#[test]
fn input_keyed_three_ways_gives_the_alerts_of_a_replay_through_a_real_broker() {
    use cdrguard::config::KeyedBy;
    use common::kafka::{alerts_by_id, replayed};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (usage, events, _) = stories(47);
    let want: std::collections::BTreeMap<String, serde_json::Value> = replayed(&usage, &events)
        .into_iter()
        .map(|(id, a)| (id, comparable(serde_json::to_value(a).unwrap())))
        .collect();
    // Traffic without stories (no late or duplicate record: each is applied, so each counts).
    let (plain_usage, plain_events) = {
        let gen = cdrguard::demo::gen::GenConfig {
            subscribers: 400,
            records: 8_000,
            days: 4,
            seed: 47,
            ..Default::default()
        };
        let (mut u, mut e) = (Vec::new(), Vec::new());
        cdrguard::demo::gen::generate(&gen, &mut u, &mut e).unwrap();
        (u, e)
    };
    // Every record names its account, but for the inbound roamers' (known by their IMSI alone:
    // no account, keyed by the line whichever way, so never mis-keyed).
    let lines = || plain_usage.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let names_account = |l: &[u8]| l.windows(14).any(|w| w == b"\"account_id\":\"");
    let named = lines().filter(|l| names_account(l)).count();
    for l in lines().filter(|l| !names_account(l)) {
        let text = String::from_utf8_lossy(l);
        assert!(
            text.contains(r#""served":{"imsi":"#) && !text.contains("msisdn"),
            "{text}"
        );
    }
    assert!(named > 7_900 && named < lines().count(), "{named}");
    // (usage produced keyed by, configured as, events keyed by)
    for (produced, usage_by, events_by) in [
        (KeyedBy::Account, KeyedBy::Account, KeyedBy::Account),
        (KeyedBy::Msisdn, KeyedBy::Msisdn, KeyedBy::Account),
        (KeyedBy::Any, KeyedBy::Any, KeyedBy::Any),
        (KeyedBy::Msisdn, KeyedBy::Account, KeyedBy::Account),
    ] {
        let label =
            format!("usage keyed by {produced:?} read as {usage_by:?}, events by {events_by:?}");
        let started = Instant::now();
        let mut k = Tansu::start(4);
        k.cfg.kafka.usage_keyed_by = produced;
        k.cfg.kafka.events_keyed_by = events_by;
        match produced != usage_by {
            true => k.produce(&plain_usage, &plain_events),
            false => k.produce(&usage, &events),
        };
        k.cfg.kafka.usage_keyed_by = usage_by;
        let state = k.dir.path().join("state");
        let config = k.dir.path().join("cdrguard.toml");
        let mut cfg = k.daemon_config(&state);
        let metrics = format!("127.0.0.1:{}", common::free_port());
        cfg.daemon.metrics_address = metrics.clone();
        write_config(&cfg, &config);
        if produced != usage_by {
            // Read as keyed by account: mis-keyed records, each counted once, and alerts lost.
            let log = k.dir.path().join("daemon.log");
            let mut daemon = DaemonProcess::spawn(&config, &log);
            let line = format!(
                "cdrguard_input_miskeyed_total{{topic=\"{}\"}} {named}",
                k.cfg.kafka.usage_topic
            );
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut last = String::new();
            while !last.contains(&line) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                last = common::http_get(&metrics, "/metrics").1;
            }
            daemon.sigterm();
            let status = daemon.wait(Duration::from_secs(30));
            assert!(
                last.contains(&line),
                "{label}: {line} in\n{last}\n{}",
                log_tail(&log, 20)
            );
            let events_line = format!(
                "cdrguard_input_miskeyed_total{{topic=\"{}\"}} 0",
                k.cfg.kafka.events_topic
            );
            assert!(last.contains(&events_line), "{label}: {events_line}");
            assert!(status.success(), "{label}: exit status {status}");
            eprintln!("{label}: {named} records reported mis-keyed");
            continue;
        }
        let log = k.dir.path().join("daemon.log");
        let mut daemon = DaemonProcess::spawn(&config, &log);
        let topics = alert_topics(&k.cfg);
        let mut reader = k.reader(&topics.iter().map(String::as_str).collect::<Vec<_>>());
        let deadline = Instant::now() + Duration::from_secs(180);
        while alerts_by_id(&reader.messages).len() < want.len()
            && daemon.try_wait().is_none()
            && Instant::now() < deadline
        {
            reader.read_until(Duration::from_secs(1), |_| false);
        }
        // Anything extra would come right behind.
        reader.read_until(Duration::from_secs(3), |_| false);
        daemon.sigterm();
        let status = daemon.wait(Duration::from_secs(30));
        let got: std::collections::BTreeMap<String, serde_json::Value> =
            alerts_by_id(&reader.messages)
                .into_iter()
                .map(|(id, v)| (id, comparable(v)))
                .collect();
        eprintln!(
            "{label}: {} alerts of {} in {:.1} s",
            got.len(),
            want.len(),
            started.elapsed().as_secs_f64()
        );
        let missing: Vec<_> = want.keys().filter(|id| !got.contains_key(*id)).collect();
        let extra: Vec<_> = got.keys().filter(|id| !want.contains_key(*id)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{label}: missing {missing:?}, extra {extra:?}\n{}",
            log_tail(&log, 30)
        );
        for (id, a) in &want {
            assert_eq!(&got[id], a, "{label}: alert {id}");
        }
        assert!(status.success(), "{label}: exit status {status}");
    }
}

/// An alert as compared with a replay's: without `detected_at` (wall clock) and `mode`.
fn comparable(mut v: serde_json::Value) -> serde_json::Value {
    let o = v.as_object_mut().unwrap();
    o.remove("detected_at");
    o.remove("mode");
    v
}
