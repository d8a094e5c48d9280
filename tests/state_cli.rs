//! `cdrguard state inspect|export|clear` against snapshot directories written here without Kafka:
//! stores fed with a few records, encoded and written exactly as the daemon's checkpoint does.

use std::path::Path;
use std::process::{Command, Stdio};

use cdrguard::alert::memory::AlertMemory;
use cdrguard::config::Config;
use cdrguard::durability::checkpoint::{self, CallsStateRef, PartitionState, PartitionStateRef};
use cdrguard::durability::layout::{self, Checkpoints, Link};
use cdrguard::durability::snapshot::{self, Loaded, Position, SnapshotKind};
use cdrguard::durability::store::Store;
use cdrguard::record::Number;
use cdrguard::state::{Outcome, WindowStore};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cdrguard");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn voice(id: &str, dir: &str, t: &str, msisdn: &str, account: &str, other: &str) -> String {
    format!(
        r#"{{"record_id":"{id}","record_type":"voice","direction":"{dir}","event_start":"{t}","duration_s":60,"answered":true,"served":{{"msisdn":"{msisdn}","account_id":"{account}"}},"other_party":{{"number":"{other}"}},"charge":{{"amount":"1.50","currency":"EUR"}}}}"#
    )
}

const INVOICE: &str = r#"{"event_id":"inv-1","event_type":"invoice_issued","occurred_at":"2026-11-01T00:00:00Z","account_id":"A-1","invoice":{"invoice_id":"INV-1","due_date":"2026-11-15","amount_due":"80.00"}}"#;

/// Feeds NDJSON usage lines (and account events first) to `store`; every record must be accepted.
fn feed(store: &mut WindowStore, events: &[&str], usage: &[String]) {
    feed_as(store, events, usage, false)
}

/// `calls`: as a partition's calls lane applies MT calls (calling-number state only).
fn feed_as(store: &mut WindowStore, events: &[&str], usage: &[String], calls: bool) {
    let (cfg, _) = Config::load(None).unwrap();
    let decoder = cfg.decoder();
    let classifier = cfg.classifier(Path::new(ROOT)).unwrap();
    for e in events {
        let e = decoder.account_event(e.as_bytes()).unwrap();
        assert_eq!(store.apply_event(&e), Outcome::Accepted);
    }
    for line in usage {
        let r = decoder.usage(line.as_bytes()).unwrap();
        let class = classifier.classify(&r);
        let outcome = match calls {
            true => store.apply_call(&r, class),
            false => store.apply_usage(&r, class),
        };
        assert_eq!(outcome, Outcome::Accepted);
    }
}

fn positions(p: i32, usage_next: i64) -> Vec<Position> {
    vec![
        Position {
            topic: "usage".into(),
            partition: p,
            next: usage_next,
        },
        Position {
            topic: "account-events".into(),
            partition: p,
            next: 1,
        },
    ]
}

fn write_partition(
    dir: &Path,
    p: i32,
    store: &WindowStore,
    calls: Option<&WindowStore>,
    usage_next: i64,
) {
    let mut header =
        checkpoint::header(SnapshotKind::Partition(p), positions(p, usage_next), store);
    header.calling_numbers += calls.map_or(0, |c| c.size().calling_numbers as u64);
    let memory = AlertMemory::default();
    let seen = Default::default();
    let state = PartitionStateRef {
        store,
        memory: &memory,
        highs: [i64::MIN; 2],
        calls: calls.map(|store| CallsStateRef {
            store,
            memory: &memory,
            seen: &seen,
        }),
    };
    let bytes = snapshot::encode(&header, &state).unwrap();
    let path = partition_path(dir, p);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    snapshot::write_atomic(&path, &bytes).unwrap();
}

/// partition-0: subscribers …01 (3 MO calls) and …02 (1) on account A-1, which has an invoice and so a
/// pending overdue timer, and …03 (1) on A-2. partition-1: …04 on A-3, and among its calling
/// numbers the international number that rang …01.
fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = Config::load(None).unwrap();
    let mut partition_cfg = cfg.state.clone();
    // As the daemon runs: calling numbers live in a partition's calls state only.
    partition_cfg.calling_numbers = cdrguard::config::CallingNumbers::Off;

    let mut p0 = WindowStore::new(partition_cfg.clone());
    let t = "2026-11-10T10:00:00Z";
    let usage = vec![
        voice("u1", "mo", t, "33600000001", "A-1", "33611111111"),
        voice(
            "u2",
            "mo",
            "2026-11-10T10:05:00Z",
            "33600000001",
            "A-1",
            "33611111112",
        ),
        voice(
            "u3",
            "mo",
            "2026-11-10T10:10:00Z",
            "33600000001",
            "A-1",
            "33611111113",
        ),
        voice("u4", "mo", t, "33600000002", "A-1", "33611111111"),
        voice("u5", "mo", t, "33600000003", "A-2", "33611111111"),
    ];
    feed(&mut p0, &[INVOICE], &usage);
    write_partition(dir.path(), 0, &p0, None, 5);

    let mut p1 = WindowStore::new(partition_cfg);
    feed(
        &mut p1,
        &[],
        &[voice("u6", "mo", t, "33600000004", "A-3", "33611111111")],
    );
    let mut callers_cfg = cfg.state.clone();
    callers_cfg.allowed_lateness = callers_cfg.max_window;
    let mut callers = WindowStore::new(callers_cfg);
    feed_as(
        &mut callers,
        &[],
        &[voice("m1", "mt", t, "33600000001", "A-1", "447700900123")],
        true,
    );
    write_partition(dir.path(), 1, &p1, Some(&callers), 1);
    dir
}

/// Partition `p`'s newest checkpoint; before there is one, where a daemon of group generation 1
/// writes its first base.
fn partition_path(dir: &Path, p: i32) -> std::path::PathBuf {
    let cp = Checkpoints::open_for_tools(Store::dir(dir), false).unwrap();
    let (links, _) = cp.contents().unwrap();
    let newest = match layout::chains(&links, p).first() {
        Some(c) => *c.newest(),
        None => Link {
            partition: p,
            generation: 1,
            seq: 1,
            parent: None,
        },
    };
    dir.join(newest.key())
}

fn d(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().unwrap()
}

fn row<'a>(report: &'a Value, filter: &str, window: &str) -> &'a Value {
    report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["filter"] == filter && r["window"] == window)
        .unwrap_or_else(|| panic!("no row {filter} {window} in {report}"))
}

fn load_partition(dir: &Path, p: i32) -> (Loaded, PartitionState) {
    let loaded = Loaded::read(&partition_path(dir, p)).unwrap();
    let state = loaded.payload::<PartitionState>().unwrap();
    (loaded, state)
}

#[test]
fn inspect_shows_the_subscribers_windows_and_the_snapshot_header() {
    let dir = state_dir();
    let args = [
        "state",
        "inspect",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000001",
        "--window",
        "1h",
        "--window",
        "24h",
        "--filter",
        "voice.mo",
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("partition-0/g1/00000000000000000001.base (partition 0"),
        "{out}"
    );
    assert!(out.contains("usage[0] 5, account-events[0] 1"), "{out}");
    assert!(out.contains("holds 3 subscribers, 2 accounts"), "{out}");
    assert!(
        out.contains("subscriber 33600000001 (account A-1)"),
        "{out}"
    );
    assert!(out.contains("account A-1"), "{out}");

    let (code, out, err) = run(&[&args[..], &["--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    for w in ["1h", "24h"] {
        let r = row(&v, "voice.mo", w);
        assert_eq!(r["count"], 3, "{r}");
        assert_eq!(r["duration_s"], 180, "{r}");
        assert_eq!(r["distinct_numbers"], 3, "{r}");
    }
    // As of the newest event time when no --at is given.
    assert_eq!(v["as_of"], "2026-11-10T10:10:00Z");
    assert_eq!(v["snapshot"]["kind"], "partition");
    assert_eq!(v["snapshot"]["partition"], 0);
    assert_eq!(v["snapshot"]["positions"][0]["next"], 5);
    assert_eq!(v["snapshot"]["subscribers"], 3);
    assert_eq!(v["snapshot"]["newest_event_time"], "2026-11-10T10:10:00Z");
    assert_eq!(v["account"]["timers_pending"].as_array().unwrap().len(), 1);

    // --at moves the end of the windows: at 10:06 the 10-minute window holds the first two calls.
    let (code, out, err) = run(&[
        "state",
        "inspect",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000001",
        "--window",
        "10m",
        "--filter",
        "voice.mo",
        "--at",
        "2026-11-10T10:06:00Z",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(row(&v, "voice.mo", "10m")["count"], 2);
}

#[test]
fn inspect_finds_calling_numbers_in_their_partition() {
    let dir = state_dir();
    let (code, out, err) = run(&[
        "state",
        "inspect",
        "--dir",
        d(&dir),
        "--calling-number",
        "447700900123",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["snapshot"]["kind"], "partition");
    assert_eq!(v["entity"]["type"], "calling_number");
    assert_eq!(row(&v, "all", "24h")["count"], 1);
}

#[test]
fn export_prints_the_raw_state_with_the_account_ledger_and_timers() {
    let dir = state_dir();
    let (code, out, err) = run(&["state", "export", "--dir", d(&dir), "--account", "A-1"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["snapshot"]["file"]
        .as_str()
        .unwrap()
        .ends_with("partition-0/g1/00000000000000000001.base"));
    let ledger = &v["account"]["ledger"];
    assert_eq!(ledger["invoices"][0]["invoice_id"], "INV-1");
    assert_eq!(ledger["invoices"][0]["amount_due"], "80.00");
    // Usage after the invoice is unbilled: 4 calls at 1.50.
    assert_eq!(ledger["unbilled"], "6.00");
    assert_eq!(v["account"]["lines"].as_array().unwrap().len(), 2);
    let timers = v["timers_pending"].as_array().unwrap();
    assert_eq!(timers.len(), 1);
    assert_eq!(timers[0]["at"], "2026-11-22T00:00:00Z");
    assert!(v["state"].is_null(), "an account has no windows of its own");

    let (code, out, err) = run(&[
        "state",
        "export",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000003",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["account_id"], "A-2");
    assert_eq!(v["state"]["first_seen"], v["state"]["last_seen"]);
    assert!(!v["state"]["cells"]["cells"].as_array().unwrap().is_empty());
}

#[test]
fn export_all_lists_every_snapshot() {
    let dir = state_dir();
    let (code, out, err) = run(&["state", "export", "--dir", d(&dir), "--all"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    let summary: Vec<(String, u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["subscribers"].as_u64().unwrap(),
                r["accounts"].as_u64().unwrap(),
                r["calling_numbers"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("partition".into(), 3, 2, 0), ("partition".into(), 1, 1, 1)]
    );
    assert!(rows.iter().all(|r| r["bytes"].as_u64().unwrap() > 0));
}

#[test]
fn clear_removes_one_subscriber_and_leaves_a_valid_snapshot() {
    let dir = state_dir();
    let (code, out, err) = run(&[
        "state",
        "clear",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000001",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Removed subscriber 33600000001"), "{out}");
    assert!(out.contains("partition-0/g1/"), "{out}");
    assert!(out.contains("subscribers 3 → 2"), "{out}");

    let (code, _, err) = run(&[
        "state",
        "inspect",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000001",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("subscriber 33600000001 is in none of the 2 readable snapshot(s)"),
        "{err}"
    );
    for other in ["33600000002", "33600000003", "33600000004"] {
        let (code, _, err) = run(&["state", "inspect", "--dir", d(&dir), "--msisdn", other]);
        assert_eq!(code, 0, "{other}: {err}");
    }

    // The rewritten file passes the daemon's checks, with the same offsets and updated counts.
    let (loaded, state) = load_partition(dir.path(), 0);
    assert_eq!(loaded.header.positions, positions(0, 5));
    assert_eq!(loaded.header.subscribers, 2);
    assert_eq!(loaded.header.accounts, 2);
    let store = state.store;
    assert!(store
        .subscriber(Number::parse("33600000001").unwrap())
        .is_none());
    let a1 = store.account("A-1").unwrap();
    assert_eq!(a1.lines, vec![Number::parse("33600000002").unwrap()]);
    assert_eq!(a1.ledger.invoices.len(), 1, "the account keeps its ledger");
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("tmp"))
            .count(),
        0,
        "no temporary file left"
    );

    let (code, _, err) = run(&[
        "state",
        "clear",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000001",
    ]);
    assert_eq!(code, 1, "clearing twice: nothing to remove");
    assert!(err.contains("is in none"), "{err}");
}

#[test]
fn clear_removes_an_account_and_its_timers_but_not_its_lines() {
    let dir = state_dir();
    let (code, out, err) = run(&["state", "clear", "--dir", d(&dir), "--account", "A-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Removed account A-1"), "{out}");
    assert!(out.contains("1 pending timer(s)"), "{out}");
    let (_, state) = load_partition(dir.path(), 0);
    let store = state.store;
    assert!(store.account("A-1").is_none());
    assert_eq!(store.pending_timers("A-1").count(), 0);
    let line = store
        .subscriber(Number::parse("33600000001").unwrap())
        .unwrap();
    assert!(store.account_of(line).is_none());
    assert_eq!(store.size().subscribers, 3);
}

#[test]
fn clear_is_refused_while_a_daemon_holds_the_directory() {
    let dir = state_dir();
    let before = std::fs::read(partition_path(dir.path(), 0)).unwrap();
    let lock = Checkpoints::open(Store::dir(dir.path()), "test").unwrap();
    let (code, _, err) = run(&[
        "state",
        "clear",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000001",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("refusing to clear") && err.contains("in use"),
        "{err}"
    );
    let after = std::fs::read(partition_path(dir.path(), 0)).unwrap();
    assert_eq!(before, after, "the snapshot is untouched");
    // Reading does not need the lock.
    let (code, _, err) = run(&[
        "state",
        "inspect",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000001",
    ]);
    assert_eq!(code, 0, "{err}");
    drop(lock);
    let (code, _, err) = run(&[
        "state",
        "clear",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000001",
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_corrupt_snapshot_is_named_skipped_and_never_rewritten() {
    let dir = state_dir();
    let path = partition_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    // Other snapshots still answer; the damaged one is named with the reason.
    let (code, _, err) = run(&[
        "state",
        "inspect",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000001",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("corrupt snapshot") && err.contains("partition-1/g1/"),
        "{err}"
    );
    assert!(err.contains("checksum mismatch"), "{err}");

    let (code, _, err) = run(&[
        "state",
        "export",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000004",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("(1 could not be read, see above)"), "{err}");

    let (code, _, err) = run(&[
        "state",
        "clear",
        "--dir",
        d(&dir),
        "--msisdn",
        "33600000004",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("partition-1/g1/") && err.contains("left as it is"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "not rewritten");

    let (code, out, err) = run(&["state", "export", "--dir", d(&dir), "--all"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[1]["reason"], "corrupt");
}

#[test]
fn a_missing_directory_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let m = missing.to_str().unwrap();
    for args in [
        &["state", "inspect", "--dir", m, "--msisdn", "33600000001"][..],
        &["state", "export", "--dir", m, "--all"],
        &["state", "clear", "--dir", m, "--account", "A-1"],
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains("does not exist"), "{args:?}: {err}");
    }
    assert!(!missing.exists());

    // A directory without snapshots (a wrong path) says so.
    let (code, _, err) = run(&["state", "inspect", "--dir", d(&dir), "--account", "A-1"]);
    assert_eq!(code, 1);
    assert!(err.contains("no checkpoints"), "{err}");
}
