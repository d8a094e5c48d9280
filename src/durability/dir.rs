//! The checkpoint directory: snapshot paths, fencing by consumer-group generation, the locks that
//! keep `state clear` away from running daemons, and a place to set unusable snapshots aside.
//!
//! **Several daemons, one directory.** The directory may be shared (storage every instance of a
//! consumer group reaches, e.g. NFS), so that a partition moving to another instance is restored
//! from its snapshot instead of being rebuilt from the input. Ownership comes from the group, not
//! from a lock: a partition's snapshots are named by the group generation under which their owner
//! had it (`partition-<p>.g<generation>.snap`). An owner only ever writes its own generation's file
//! and removes older generations' files after its own is durable, so a stale owner — a paused
//! process that wakes after its partitions moved — can neither overwrite the new owner's snapshot
//! nor remove it. Which snapshot a new owner restores is decided against the committed offsets
//! (`pick`): only the group's current member can commit, and it commits only what its own durable
//! snapshot covers.
//!
//! The caller shard's state spans the partitions of one process: it is named by the instance
//! (`callers.<instance>.snap`, `durability.instance`), with a lock so that two daemons never share
//! one name. Daemons hold the directory's `LOCK` shared; `state clear`, which rewrites snapshots,
//! takes it exclusively and so refuses while any daemon runs on the directory.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The snapshot directory, locked (shared by daemons, exclusive for `state clear`) while in use.
pub struct CheckpointDir {
    pub root: PathBuf,
    _lock: File,
    /// The caller shard's snapshot name and its lock (daemons only).
    instance: Option<(String, File)>,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the state directory {0} is in use (its LOCK is held)")]
    InUse(PathBuf),
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

fn lock_file(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

impl CheckpointDir {
    /// A daemon's view: the `LOCK` held shared (other daemons may share the directory), and the
    /// caller shard's snapshot name locked for this instance.
    pub fn open(root: &Path, instance: &str) -> anyhow::Result<CheckpointDir> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating the state directory {}", root.display()))?;
        let lock = lock_file(&root.join("LOCK"))?;
        if lock.try_lock_shared().is_err() {
            anyhow::bail!(
                "the state directory {} is locked by `cdrguard state clear`; start again when it is done",
                root.display()
            );
        }
        if instance.is_empty()
            || !instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            anyhow::bail!(
                "durability.instance {instance:?}: letters, digits, '-', '_' and '.' only, not empty"
            );
        }
        let mine = lock_file(&root.join(format!("callers.{instance}.lock")))?;
        if mine.try_lock().is_err() {
            anyhow::bail!(
                "another cdrguard runs on the state directory {} as instance {instance:?}: give each \
                 daemon sharing a directory its own durability.instance",
                root.display()
            );
        }
        Ok(CheckpointDir {
            root: root.to_path_buf(),
            _lock: lock,
            instance: Some((instance.to_string(), mine)),
        })
    }

    /// The `state clear` view: the `LOCK` held exclusively, so no daemon runs on the directory.
    pub fn open_exclusive(root: &Path) -> Result<CheckpointDir, LockError> {
        let lock = lock_file(&root.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(LockError::InUse(root.to_path_buf()));
        }
        Ok(CheckpointDir {
            root: root.to_path_buf(),
            _lock: lock,
            instance: None,
        })
    }

    /// Where the owner of partition `p` under group generation `generation` writes its snapshot.
    pub fn partition(&self, p: i32, generation: i32) -> PathBuf {
        self.root.join(format!("partition-{p}.g{generation}.snap"))
    }

    /// The snapshots of partition `p`, newest generation first.
    pub fn partition_snapshots(&self, p: i32) -> Vec<(i32, PathBuf)> {
        let mut found: Vec<(i32, PathBuf)> = snapshot_names(&self.root)
            .into_iter()
            .filter_map(|(name, path)| match parse(&name) {
                Some(Named::Partition(q, g)) if q == p => Some((g, path)),
                _ => None,
            })
            .collect();
        found.sort_by_key(|s| std::cmp::Reverse(s.0));
        found
    }

    /// Removes partition `p`'s snapshots of generations before `generation`, once the snapshot of
    /// `generation` is durable. Never a later generation's: that belongs to a newer owner.
    pub fn remove_older(&self, p: i32, generation: i32) {
        for (g, path) in self.partition_snapshots(p) {
            if g < generation {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "Could not remove a snapshot of an older generation.");
                }
            }
        }
    }

    /// The caller shard's snapshot of this instance.
    pub fn callers(&self) -> PathBuf {
        let instance = self.instance.as_ref().map_or("", |(i, _)| i.as_str());
        self.root.join(format!("callers.{instance}.snap"))
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

/// What a file name in the directory says it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    /// `partition-<p>.g<generation>.snap`
    Partition(i32, i32),
    /// `callers.<instance>.snap`
    Callers(String),
}

/// Parses a snapshot's file name (set-aside `.rejected-*` and temporary `.tmp-*` files are not
/// snapshots).
pub fn parse(name: &str) -> Option<Named> {
    let stem = name.strip_suffix(".snap")?;
    if let Some(instance) = stem.strip_prefix("callers.") {
        return (!instance.is_empty()).then(|| Named::Callers(instance.to_string()));
    }
    let (p, g) = stem.strip_prefix("partition-")?.split_once(".g")?;
    Some(Named::Partition(p.parse().ok()?, g.parse().ok()?))
}

/// Every file name in `root` with its path (unreadable entries skipped).
pub fn snapshot_names(root: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .filter(|(name, _)| parse(name).is_some())
        .collect()
}

/// Which of a partition's snapshots a new owner restores, given each one's next offsets
/// (`[usage, events]`, newest generation first) and the group's committed offsets: the newest
/// generation whose snapshot covers every committed offset — its owner, or one before it, made the
/// commits — else the one furthest ahead (the new owner then re-reads from it, with outputs below
/// the commits suppressed: slower, never a loss).
pub fn pick(candidates: &[[Option<i64>; 2]], committed: [Option<i64>; 2]) -> Option<usize> {
    let covers = |s: &[Option<i64>; 2]| {
        (0..2).all(|i| match (s[i], committed[i]) {
            (Some(s), Some(c)) => s >= c,
            (None, Some(_)) => false,
            _ => true,
        })
    };
    candidates.iter().position(covers).or_else(|| {
        (0..candidates.len()).max_by_key(|&k| {
            let s = candidates[k];
            (
                s[0].unwrap_or(-1).saturating_add(s[1].unwrap_or(-1)),
                std::cmp::Reverse(k),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_partition_and_generation() {
        assert_eq!(parse("partition-7.g12.snap"), Some(Named::Partition(7, 12)));
        assert_eq!(parse("partition-7.g-1.snap"), Some(Named::Partition(7, -1)));
        assert_eq!(
            parse("callers.host-a.snap"),
            Some(Named::Callers("host-a".into()))
        );
        for not in [
            "partition-7.snap",
            "partition-7.g12.rejected-1",
            "partition-7.g12.tmp-4",
            "callers..snap",
            "LOCK",
        ] {
            assert_eq!(parse(not), None, "{not}");
        }
    }

    #[test]
    fn a_new_owner_restores_the_newest_generation_that_covers_the_commits() {
        // Newest first: generation 9 (the current owner, ahead), 8 (the previous one).
        let both = [[Some(120), Some(30)], [Some(100), Some(25)]];
        assert_eq!(pick(&both, [Some(110), Some(30)]), Some(0));
        // A stale owner (generation 8) woke and wrote past what generation 9 covers: generation 9
        // still covers the commits, and is preferred.
        let stale_ahead = [[Some(120), Some(30)], [Some(150), Some(40)]];
        assert_eq!(pick(&stale_ahead, [Some(110), Some(30)]), Some(0));
        // Generation 9 has not caught up with what 8 committed: 8 covers the commits.
        let behind = [[Some(90), Some(20)], [Some(100), Some(25)]];
        assert_eq!(pick(&behind, [Some(100), Some(25)]), Some(1));
        // None covers them (lost files): the furthest ahead, newest on a tie.
        assert_eq!(pick(&behind, [Some(500), Some(90)]), Some(1));
        assert_eq!(
            pick(&[[Some(5), None], [Some(5), None]], [Some(9), None]),
            Some(0)
        );
        // Nothing committed: the newest.
        assert_eq!(pick(&both, [None, None]), Some(0));
        assert_eq!(pick(&[], [None, None]), None);
    }

    #[test]
    fn an_owner_removes_older_generations_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open(tmp.path(), "a").unwrap();
        for g in [3, 5, 8] {
            std::fs::write(dir.partition(1, g), b"x").unwrap();
        }
        std::fs::write(dir.partition(2, 1), b"x").unwrap();
        // The owner of generation 5 (stale: 8 exists) cleans up behind itself only.
        dir.remove_older(1, 5);
        let left: Vec<i32> = dir.partition_snapshots(1).iter().map(|s| s.0).collect();
        assert_eq!(left, [8, 5]);
        dir.remove_older(1, 8);
        assert_eq!(dir.partition_snapshots(1).len(), 1);
        assert_eq!(
            dir.partition_snapshots(2).len(),
            1,
            "other partitions untouched"
        );
    }

    #[test]
    fn daemons_share_a_directory_but_not_an_instance_name_and_clear_waits_for_them() {
        let tmp = tempfile::tempdir().unwrap();
        let a = CheckpointDir::open(tmp.path(), "a").unwrap();
        let _b = CheckpointDir::open(tmp.path(), "b").unwrap();
        let again = CheckpointDir::open(tmp.path(), "a").err().unwrap();
        assert!(again.to_string().contains("durability.instance"), "{again}");
        assert!(matches!(
            CheckpointDir::open_exclusive(tmp.path()),
            Err(LockError::InUse(_))
        ));
        assert_eq!(a.callers(), tmp.path().join("callers.a.snap"));
        drop(a);
        drop(_b);
        assert!(CheckpointDir::open_exclusive(tmp.path()).is_ok());
    }
}
