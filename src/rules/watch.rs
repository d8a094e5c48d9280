//! Watching the rule library: a background thread re-reads the folder every `interval` and on SIGHUP,
//! and hands the text of a changed library to the worker that owns the engine (which compiles it and
//! swaps, or keeps the old set).
//!
//! Polling a content hash rather than subscribing to file-system events: the library is a few dozen
//! small files (reading them costs well under a millisecond), polling works the same on every file
//! system, container volume and editor save strategy (write in place, rename over, delete + create),
//! and a burst of saves becomes one reload of the final content rather than a reload per event.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::library::{LibraryError, RuleSources};

/// Why a new library was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadCause {
    Changed,
    Sighup,
}

pub struct RuleWatcher {
    rx: mpsc::Receiver<(ReloadCause, Result<RuleSources, LibraryError>)>,
    stop: Arc<AtomicBool>,
}

impl RuleWatcher {
    /// Starts watching `dir`, whose current content has `version`. SIGHUP forces a reload when
    /// `sighup` is set (a process should register it once: the daemon or a watching replay).
    pub fn spawn(
        dir: PathBuf,
        version: String,
        interval: Duration,
        sighup: bool,
    ) -> std::io::Result<Self> {
        let hup = Arc::new(AtomicBool::new(false));
        if sighup {
            signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
        }
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("rule-watch".into())
            .spawn(move || {
                let mut last = version;
                let mut next = Instant::now() + interval;
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50).min(interval));
                    let cause = if hup.swap(false, Ordering::Relaxed) {
                        ReloadCause::Sighup
                    } else if Instant::now() >= next {
                        next = Instant::now() + interval;
                        ReloadCause::Changed
                    } else {
                        continue;
                    };
                    let read = RuleSources::read(&dir);
                    let send = match (&read, cause) {
                        (_, ReloadCause::Sighup) => true,
                        (Ok(s), _) => s.version != last,
                        // A folder that vanished mid-save: report once per distinct failure.
                        (Err(_), _) => last != "unreadable",
                    };
                    last = match &read {
                        Ok(s) => s.version.clone(),
                        Err(_) => "unreadable".into(),
                    };
                    if send && tx.send((cause, read)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(RuleWatcher { rx, stop })
    }

    /// A library read since the last call, if any (the newest when several are waiting).
    pub fn poll(&self) -> Option<(ReloadCause, Result<RuleSources, LibraryError>)> {
        self.rx.try_iter().last()
    }

    /// Waits up to `timeout` for the next read (tests).
    pub fn wait(
        &self,
        timeout: Duration,
    ) -> Option<(ReloadCause, Result<RuleSources, LibraryError>)> {
        self.rx.recv_timeout(timeout).ok()
    }
}

impl Drop for RuleWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
