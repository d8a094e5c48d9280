//! A real S3-compatible server process for the checkpoint-store tests: moto's server (PyPI
//! `moto[server]`), a Python process that speaks the S3 REST API and keeps objects in memory.
//!
//! Why moto: it installs from PyPI in about 30 s (`pip` into a venv, no compiler), starts in about
//! a second, and implements the S3 calls `object_store` makes (put, get, list v2, delete) with the
//! same XML and error codes as AWS. Garage or MinIO would test the same calls and take minutes to
//! build or a binary from outside the package registries.
//!
//! Found at `$MOTO_SERVER`, else `${CDRGUARD_TOOLS:-~/.cache/cdrguard-tools}/moto/bin/moto_server`
//! (`.ci/run` installs it there; a test installs it on first use if it is missing).

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MOTO_VERSION: &str = "5.2.6";

fn tools() -> PathBuf {
    match std::env::var_os("CDRGUARD_TOOLS") {
        Some(t) => PathBuf::from(t),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/cdrguard-tools")
        }
    }
}

fn executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The moto server binary, installed into the cache if missing. Panics with how to install it:
/// these tests must not pass by not running.
pub fn moto_binary() -> PathBuf {
    if let Some(m) = std::env::var_os("MOTO_SERVER") {
        let m = PathBuf::from(m);
        assert!(
            executable(&m),
            "MOTO_SERVER={} is not executable",
            m.display()
        );
        return m;
    }
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let venv = tools().join("moto");
    let bin = venv.join("bin/moto_server");
    if executable(&bin) {
        return bin;
    }
    eprintln!(
        "moto not found: installing moto[server]=={MOTO_VERSION} into {}",
        venv.display()
    );
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", &format!("moto[server]=={MOTO_VERSION}")])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok && executable(&bin),
        "could not install moto's S3 server: python3 -m venv {0} && {0}/bin/pip install \
         'moto[server]=={MOTO_VERSION}' (or set MOTO_SERVER)",
        venv.display()
    );
    bin
}

/// A running S3 server with one bucket; killed on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub bucket: String,
    log: PathBuf,
}

impl S3Server {
    /// Starts the server on a free port and creates `bucket`.
    pub fn start(bucket: &str, log_dir: &Path) -> S3Server {
        let bin = moto_binary();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = log_dir.join(format!("moto-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let mut s = S3Server {
            child,
            port,
            bucket: bucket.to_string(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("moto_server exited: {status}\n{}", s.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen\n{}",
                s.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let created = ureq::put(&format!("{}/{bucket}", s.endpoint())).send_empty();
        assert!(created.is_ok(), "creating the bucket: {created:?}");
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The daemon's `durability.store` and `store_options` for this server (moto accepts any
    /// credentials; they are set so that the AWS credential chain does not go looking for a role).
    pub fn configure(&self, cfg: &mut cdrguard::config::Config, prefix: &str) {
        let d = &mut cfg.durability;
        d.store = format!("s3://{}/{prefix}", self.bucket);
        for (k, v) in [
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".to_string()),
            ("aws_region", "us-east-1".to_string()),
            ("aws_access_key_id", "test".to_string()),
            ("timeout", "5s".to_string()),
        ] {
            d.store_options.insert(k.to_string(), v);
        }
    }

    /// The secret half of the test credentials, which the configuration refuses to hold.
    pub fn env(&self) -> [(&'static str, &'static str); 1] {
        [("AWS_SECRET_ACCESS_KEY", "test")]
    }

    /// Every key in the bucket under `prefix`, through the S3 API (list v2).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let body = ureq::get(&format!(
            "{}/{}?list-type=2&prefix={prefix}",
            self.endpoint(),
            self.bucket
        ))
        .call()
        .expect("listing the bucket")
        .body_mut()
        .read_to_string()
        .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// Stops answering (SIGSTOP): the store is down for whoever calls it.
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

impl Drop for S3Server {
    fn drop(&mut self) {
        signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
