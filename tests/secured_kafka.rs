//! cdrguard against a secured Kafka, as operators run it: TLS with certificate verification (a CA
//! the test makes; stunnel in front of tansu) and SASL/SCRAM-SHA-512 (tansu's own authentication),
//! configured through `kafka.tls` and `kafka.sasl` with the password in a file. The daemon runs end
//! to end over it, and `run --check` names what is wrong with a configuration before a start would.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cdrguard::config::Config;
use common::kafka::{parse, stories};
use common::process::{log_tail, write_config, DaemonProcess};
use common::secured::{Secured, PASSWORD};

/// One secured broker at a time: each is two processes (tansu, stunnel) and the tests stream into
/// them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `cdrguard run --check` with `config`; (exit code, stdout + stderr).
fn check(config: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdrguard"))
        .args(["run", "--check", "--config"])
        .arg(config)
        .arg("--rules")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
        .args(extra)
        .env_remove("CDRGUARD_LOG")
        .env_remove("CDRGUARD_BROKERS")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "--- run --check {} {}\n{text}",
        config.display(),
        extra.join(" ")
    );
    (out.status.code().unwrap_or(-1), text)
}

fn daemon_config(s: &Secured, name: &str) -> (Config, std::path::PathBuf) {
    let dir = s.broker.dir.path();
    let cfg = s.broker.daemon_config(&dir.join(format!("state-{name}")));
    (cfg, dir.join(format!("{name}.toml")))
}

#[test]
fn the_daemon_runs_over_tls_and_scram() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let s = Secured::start(2);
    let (cfg, config) = daemon_config(&s, "daemon");
    write_config(&cfg, &config);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("password_file") && !text.contains(PASSWORD),
        "{text}"
    );
    eprintln!(
        "secured broker up (TLS + SCRAM): {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (usage, events, labels) = stories(31);
    let total = usage.iter().chain(&events).filter(|&&b| b == b'\n').count() as u64;
    let produced = s.broker.produce(&usage, &events);
    assert_eq!(produced, total);
    let log = s.broker.dir.path().join("daemon.log");
    let mut daemon = DaemonProcess::spawn(&config, &log);
    daemon.expect_assigned(0);

    let k = &cfg.kafka.alert_topics;
    let mut reader = s
        .broker
        .reader(&[&k.fraud, &k.collections, &k.key_accounts, &k.care]);
    let want: BTreeSet<(String, String)> = labels
        .iter()
        .map(|l| (l.rule.clone(), l.entity.clone()))
        .collect();
    let seen = |m: &[common::kafka::Read]| -> BTreeSet<(String, String)> {
        m.iter()
            .map(parse)
            .map(|a| (a.rule.id, a.entity.key))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let complete = loop {
        let done = reader.read_until(Duration::from_secs(1), |m| want.is_subset(&seen(m)));
        if done || daemon.try_wait().is_some() || Instant::now() > deadline {
            break done;
        }
    };
    assert!(
        complete,
        "story alerts missing: {:?}\n{}",
        want.difference(&seen(&reader.messages)).collect::<Vec<_>>(),
        log_tail(&log, 30)
    );
    assert!(
        s.broker.wait_committed(total, Duration::from_secs(60)),
        "{} of {total} committed",
        s.broker.committed_total()
    );
    daemon.sigterm();
    let status = daemon.wait(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    let logged = daemon.log();
    assert!(
        logged.contains("sasl_ssl") && !logged.contains(PASSWORD),
        "the log says how it connects, never the password:\n{}",
        log_tail(&log, 30)
    );
    eprintln!(
        "{} story alerts over TLS + SCRAM, all committed, stopped: {:.1} s",
        want.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn run_check_names_each_problem_and_passes_a_good_configuration() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = Secured::start(2);
    let dir = s.broker.dir.path();
    let sasl = s.broker.cfg.kafka.sasl.clone().unwrap();
    let ca = s.broker.cfg.kafka.tls.clone().unwrap().ca.unwrap();

    // The README's TLS + SCRAM example, with this broker's address, CA, user and password file.
    let readme = common::readme_toml("### Secured Kafka").remove(0);
    let text = readme
        .replace(
            "kafka1.example.net:9093,kafka2.example.net:9093",
            &s.broker.brokers,
        )
        .replace("/etc/cdrguard/kafka-ca.pem", ca.to_str().unwrap())
        .replace(
            "/run/secrets/kafka-password",
            sasl.password_file.as_ref().unwrap().to_str().unwrap(),
        )
        .replace(
            "\"cdrguard\"\npassword",
            &format!("{:?}\npassword", common::secured::USER),
        );
    let config = dir.join("readme.toml");
    std::fs::write(
        &config,
        format!(
            "{text}\n[durability]\ndir = {:?}\n[daemon]\nmetrics_address = \"\"\n",
            dir.join("state-readme").display().to_string()
        ),
    )
    .unwrap();
    let (code, out) = check(&config, &[]);
    assert_eq!(code, 0, "{text}\n{out}");

    // A good configuration: every check passes, and says what it checked.
    let (good, config) = daemon_config(&s, "good");
    write_config(&good, &config);
    let (code, out) = check(&config, &["--metrics-address", "127.0.0.1:0"]);
    assert_eq!(code, 0, "{out}");
    for said in [
        "reached over sasl_ssl",
        "SCRAM-SHA-512",
        "2 partitions each",
        "output topics",
        "is writable",
        "can be bound",
        "configuration OK",
    ] {
        assert!(out.contains(said), "{said:?} in\n{out}");
    }
    assert!(!out.contains(PASSWORD), "{out}");

    // A CA that did not sign the broker's certificate.
    let mut wrong_ca = good.clone();
    wrong_ca.kafka.tls.as_mut().unwrap().ca = Some(dir.join("other-ca.pem"));
    let config = dir.join("wrong-ca.toml");
    write_config(&wrong_ca, &config);
    let t = Instant::now();
    let (code, out) = check(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PROBLEM  kafka.brokers")
            && out.contains("refused: ")
            && out.contains("certificate verify failed"),
        "{out}"
    );
    eprintln!("wrong CA named in {:.1} s", t.elapsed().as_secs_f64());

    // A wrong password.
    std::fs::write(dir.join("wrong-password"), "not the password\n").unwrap();
    let mut wrong_pw = good.clone();
    wrong_pw.kafka.sasl.as_mut().unwrap().password_file = Some(dir.join("wrong-password"));
    let config = dir.join("wrong-password.toml");
    write_config(&wrong_pw, &config);
    let (code, out) = check(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PROBLEM  kafka.brokers") && out.to_lowercase().contains("authentication"),
        "{out}"
    );

    // Nothing listening at the address given on the command line.
    let config = dir.join("good.toml");
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let (code, out) = check(&config, &["--brokers", &nowhere]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("PROBLEM  kafka.brokers: {nowhere} over sasl_ssl"))
            && out.contains("not reached within 10 s")
            && out.contains("Connection refused"),
        "{out}"
    );

    // Four problems at once, each named: a missing reference file, inputs partitioned unalike, a
    // state directory that cannot be created, a metrics port already taken.
    s.broker
        .create_topics(&[("usage.three", 3), ("events.two", 2)]);
    let mut bad = good.clone();
    bad.reference.high_risk_prefixes = Some("no-such-list.txt".into());
    bad.kafka.usage_topic = "usage.three".into();
    bad.kafka.events_topic = "events.two".into();
    bad.durability.dir = dir.join("kafka-password/state").display().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = dir.join("bad.toml");
    write_config(&bad, &config);
    let port = taken.local_addr().unwrap().to_string();
    let (code, out) = check(&config, &["--metrics-address", &port]);
    assert_eq!(code, 1, "{out}");
    for said in [
        "PROBLEM  reference.high_risk_prefixes:",
        "no-such-list.txt",
        "PROBLEM  kafka.usage_topic \"usage.three\" has 3 partitions and kafka.events_topic \"events.two\" has 2",
        "PROBLEM  durability.dir:",
        &format!("PROBLEM  daemon.metrics_address: {port} cannot be bound"),
        "4 problem(s)",
    ] {
        assert!(out.contains(said), "{said:?} in\n{out}");
    }
}
