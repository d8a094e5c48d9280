//! Helpers shared by the rule-engine integration tests: small rule libraries in temp folders, usage
//! records as NDJSON, and replays through the real pipeline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cdrguard::modes::replay::{self, ReplayOptions, ReplayReport, RulesChoice};
use cdrguard::pipeline::Pipeline;
use cdrguard::record::Alert;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Copies files into `dir` (relative path → content), creating folders.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// One MO voice call as NDJSON.
pub fn voice_mo(id: &str, start: &str, msisdn: &str, other: &str, duration_s: u32) -> String {
    format!(
        r#"{{"record_id":"{id}","record_type":"voice","direction":"mo","event_start":"{start}","duration_s":{duration_s},"served":{{"msisdn":"{msisdn}"}},"other_party":{{"number":"{other}"}}}}"#
    )
}

/// Replays `usage` (and `events`) with the library in `rules`; returns the report, the pipeline and
/// the alerts written.
pub fn replay_with(
    rules: &Path,
    usage: &Path,
    events: Option<&Path>,
    config: Option<&Path>,
) -> (ReplayReport, Pipeline, Vec<Alert>) {
    let opts = ReplayOptions {
        usage: usage.to_path_buf(),
        events: events.map(Path::to_path_buf),
        no_dead_letter: true,
        config: config.map(Path::to_path_buf),
        rules: RulesChoice::Dir(rules.to_path_buf()),
        ..Default::default()
    };
    let mut out = Vec::new();
    let (report, pipeline) = replay::run_to(&opts, &mut out).unwrap();
    let alerts = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (report, pipeline, alerts)
}

/// The replay's summary (`--summary-json`) validates against docs/schema/replay-summary.schema.json.
pub fn assert_summary_valid(report: &ReplayReport) {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("docs/schema/replay-summary.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let summary = serde_json::to_value(replay::Summary {
        report,
        labels: None,
    })
    .unwrap();
    let v = jsonschema::draft202012::new(&schema).unwrap();
    let errors: Vec<String> = v.iter_errors(&summary).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{summary:#}");
}

/// Copies a folder tree (a rule library to edit in a test).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}
/// The ```toml blocks of the README section that starts with `heading`.
pub fn readme_toml(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = &readme[readme
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} in README"))..];
    let section = &section[heading.len()..];
    let end = section.find("\n## ").unwrap_or(section.len());
    let section = &section[..end];
    section
        .split("```toml\n")
        .skip(1)
        .map(|b| b[..b.find("```").unwrap()].to_string())
        .collect()
}

pub mod chromium;
pub mod kafka;
pub mod process;
pub mod s3;
pub mod secured;
pub mod tansu;

/// A port nobody listens on now (a server binds it a moment later; a lost race is retried).
/// `GET` on a daemon's metrics address: (status line, body); empty before it listens.
pub fn http_get(address: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(address) else {
        return (String::new(), String::new());
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `committed()` passes what it was at the call, or reaches `total`, or `timeout`: a
/// daemon has made progress (a commit follows a snapshot).
pub fn wait_for_progress(committed: impl Fn() -> i64, total: u64, timeout: std::time::Duration) {
    let before = committed();
    let deadline = std::time::Instant::now() + timeout;
    while committed() <= before
        && (committed() as u64) < total
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A test daemon's config with snapshots every second and a crashed member noticed in seconds.
pub fn durable(cfg: &cdrguard::config::Config) -> cdrguard::config::Config {
    use cdrguard::config::Secs;
    let mut cfg = cfg.clone();
    cfg.durability.snapshot_interval = Secs(1);
    cfg.durability.delivery_timeout = Secs(10);
    // Not the default 45 s.
    cfg.kafka
        .options
        .insert("session.timeout.ms".into(), "6000".into());
    cfg
}
