//! A secured Kafka for tests: tansu with SCRAM users (its SQLite storage keeps them) behind stunnel,
//! a TLS terminator from Debian, with a CA and certificates the test makes with `openssl`. Clients
//! reach it as an operator's cluster: TLS with certificate and host-name verification, then
//! SASL/SCRAM; the broker advertises the TLS address, so every connection goes through TLS.
//!
//! tansu 0.6.0 has no TLS listener of its own, and it keeps SCRAM users only in its SQL storage
//! engines (the in-memory one accepts and forgets them): the broker is started once without
//! authentication to create the user and the topics, then again with `--authentication` on the
//! same database.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdrguard::config::{SaslConfig, TlsConfig};
use rdkafka::config::ClientConfig;

use super::free_port;
use super::process::log_tail;
use super::tansu::{Launch, Tansu};

pub const USER: &str = "cdrguard-test";
pub const PASSWORD: &str = "correct horse battery staple";

/// Runs `openssl` with `args` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package `openssl`) is needed to make the test certificates");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA certificate `<stem>.pem` with its key `<stem>.key`.
fn self_signed(dir: &Path, subject: &str, stem: &str) {
    let (key, pem) = (format!("{stem}.key"), format!("{stem}.pem"));
    let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &pem]);
    openssl(dir, &args);
}

/// A new P-256 key, unencrypted.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Makes `ca.pem` (the test CA), `server.pem`/`server.key` (signed by it, for 127.0.0.1 and
/// localhost) and `other-ca.pem` (a CA that signed nothing here) in `dir`.
pub fn certificates(dir: &Path) {
    self_signed(dir, "/CN=cdrguard test CA", "ca");
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(EC_KEY);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    self_signed(dir, "/CN=somebody else's CA", "other-ca");
}

/// stunnel accepting TLS on a port and forwarding to the broker; killed on drop.
pub struct Stunnel {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Stunnel {
    /// Terminates TLS on `port` with `dir/server.pem` and forwards to `127.0.0.1:to`.
    pub fn start(dir: &Path, port: u16, to: u16) -> Stunnel {
        let bin = ["stunnel4", "stunnel"]
            .into_iter()
            .find(|b| Command::new(b).arg("-version").output().is_ok())
            .expect("stunnel (Debian package `stunnel4`) is needed by the TLS tests; .ci/run installs it");
        let log = dir.join("stunnel.log");
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = 5\noutput = {log}\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{to}\ncert = {cert}\nkey = {key}\n",
                log = log.display(),
                cert = dir.join("server.pem").display(),
                key = dir.join("server.key").display(),
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut s = Stunnel { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("stunnel exited: {status}\n{}", log_tail(&s.log, 20));
            }
            assert!(
                Instant::now() < deadline,
                "stunnel did not listen on {port}\n{}",
                log_tail(&s.log, 20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- stunnel log ---\n{}", log_tail(&self.log, 20));
        }
    }
}

/// A broker reached over TLS + SCRAM-SHA-512, with the daemon's topics (`partitions` each for the
/// inputs). `broker.cfg.kafka` holds the client settings (CA, user, password file) and
/// `broker.brokers` the TLS address; the certificates are in `broker.dir`.
pub struct Secured {
    pub broker: Tansu,
    pub tls: Stunnel,
}

impl Secured {
    pub fn start(partitions: i32) -> Secured {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        std::fs::write(dir.path().join("kafka-password"), format!("{PASSWORD}\n")).unwrap();
        let (tls_port, broker_port) = (free_port(), free_port());
        // The broker tells clients to connect to the TLS address: stunnel is there first.
        let tls = Stunnel::start(dir.path(), tls_port, broker_port);
        let brokers = format!("127.0.0.1:{tls_port}");
        let tls_only = cdrguard::config::KafkaConfig {
            tls: Some(TlsConfig {
                ca: Some(dir.path().join("ca.pem")),
                ..Default::default()
            }),
            ..Default::default()
        };
        let with_sasl = cdrguard::config::KafkaConfig {
            sasl: Some(SaslConfig {
                mechanism: "SCRAM-SHA-512".into(),
                username: Some(USER.into()),
                password_file: Some(dir.path().join("kafka-password")),
                ..Default::default()
            }),
            ..tls_only.clone()
        };
        let client = |k: &cdrguard::config::KafkaConfig| -> ClientConfig {
            cdrguard::client::client_config(k, &brokers, Path::new("")).unwrap()
        };
        let launch = Launch {
            storage: Some("sqlite://tansu.db".into()),
            advertised_port: Some(tls_port),
            ready: Some(client(&tls_only)),
            ..Default::default()
        };
        // First without authentication: the user and the topics.
        let mut broker = Tansu::launch(launch.clone(), dir, Some(broker_port));
        let out = Command::new(super::tansu::tansu_binary())
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{broker_port}"))
            .args(["--mechanism", "scram512", USER, PASSWORD])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu user create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        broker.brokers = brokers.clone();
        broker.cfg.kafka.tls = tls_only.tls.clone();
        broker.create_daemon_topics(partitions);
        // Then with authentication required, on the same database and port.
        broker.cfg.kafka.sasl = with_sasl.sasl.clone();
        let mut broker = broker.relaunch(Launch {
            authentication: true,
            ready: Some(client(&with_sasl)),
            ..launch
        });
        broker.brokers = brokers;
        Secured { broker, tls }
    }
}
