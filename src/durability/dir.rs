//! The checkpoint directory of one daemon: snapshot paths, a lock so two daemons never share it, and
//! a place to set unusable snapshots aside.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The snapshot directory of one daemon, locked while it runs.
pub struct CheckpointDir {
    pub root: PathBuf,
    _lock: File,
}

impl CheckpointDir {
    pub fn open(root: &Path) -> anyhow::Result<CheckpointDir> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating the state directory {}", root.display()))?;
        let lock_path = root.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            anyhow::bail!(
                "the state directory {} is in use by another cdrguard process (its LOCK is held); \
                 give each daemon its own durability.dir",
                root.display()
            );
        }
        Ok(CheckpointDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn partition(&self, p: i32) -> PathBuf {
        partition_path(&self.root, p)
    }

    pub fn callers(&self) -> PathBuf {
        self.root.join("callers.snap")
    }

    /// Moves an unusable snapshot aside (kept for a post-mortem) so that it is not read again.
    pub fn set_aside(&self, path: &Path) {
        let to = path.with_extension(format!("rejected-{}", crate::telemetry::metrics::now_ms()));
        match std::fs::rename(path, &to) {
            Ok(()) => {
                tracing::warn!(from = %path.display(), to = %to.display(), "Unusable snapshot set aside.")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Could not set the unusable snapshot aside.")
            }
        }
    }
}

pub fn partition_path(root: &Path, p: i32) -> PathBuf {
    root.join(format!("partition-{p}.snap"))
}
