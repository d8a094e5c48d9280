//! `cdrguard run` as a process of its own, for the tests that kill it (SIGKILL) and restart it: against
//! tansu, or against the mock cluster of the test process (any process can reach its address).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cdrguard::config::Config;

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes `cfg` as a TOML file the daemon reads, and checks it reads back.
pub fn write_config(cfg: &Config, path: &Path) {
    let text = toml::to_string(cfg).unwrap();
    std::fs::write(path, &text).unwrap();
    if let Err(e) = Config::load(Some(path)) {
        panic!("{} does not load back: {e:#}\n{text}", path.display());
    }
}

/// `cdrguard run` as a process of its own against a broker: killed (SIGKILL) on drop if still
/// running. Every start appends to one log file, printed when a test fails.
pub struct DaemonProcess {
    child: Child,
    log: PathBuf,
}

impl DaemonProcess {
    /// Starts `cdrguard run --config <config> --rules <repo>/rules`, logging to `log` (appended).
    pub fn spawn(config: &Path, log: &Path) -> DaemonProcess {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        writeln!(out, "=== cdrguard run --config {}", config.display()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cdrguard"))
            .args([
                "--log",
                &std::env::var("CDRGUARD_TEST_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
                "run",
                "--config",
            ])
            .arg(config)
            .arg("--rules")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
            .env_remove("CDRGUARD_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        DaemonProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks for a graceful stop (drain, deliver, snapshot, commit), as an orchestrator does.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Pauses it (SIGSTOP), as a machine that stalls (GC, swap, a hung disk) looks to the group.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused daemon (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// Kills it at once (SIGKILL: no drain, no snapshot, no commit) and reaps it.
    pub fn sigkill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for it to exit; panics (after killing it) if it is still running after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            if Instant::now() >= deadline {
                self.sigkill();
                panic!("the daemon did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log (of every start so far) has `count` lines containing `needle`, e.g.
    /// `"Assignment prepared."`; false on timeout or if the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().lines().filter(|l| l.contains(needle)).count() >= count {
                return true;
            }
            if self.try_wait().is_some() || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until start number `run` (from 0) has joined its group; panics with the log's tail.
    /// (Its group's: "Partitions assigned." is also logged by the calls sequencer's own group.)
    pub fn expect_assigned(&mut self, run: usize) {
        assert!(
            self.wait_for_log("Assignment prepared.", run + 1, Duration::from_secs(60)),
            "run {run} joined its group:\n{}",
            log_tail(&self.log, 30)
        );
    }

    /// SIGKILLs it and starts it again with the same config and log.
    pub fn kill_and_restart(&mut self, config: &Path) {
        self.sigkill();
        *self = DaemonProcess::spawn(config, &self.log.clone());
    }

    /// Everything logged by every start so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.sigkill();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log {} (last lines) ---\n{}",
                self.log.display(),
                log_tail(&self.log, 60)
            );
        }
    }
}
