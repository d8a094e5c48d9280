//! What the checkpoint store holds and who may write what: chains of checkpoints per partition,
//! fenced by consumer-group generation; and, on a local
//! directory, the locks that keep `state clear` away from running daemons.
//!
//! ```text
//!  partition-<p>/g<generation>/<seq>.base                 the whole state of partition p
//!  partition-<p>/g<generation>/<seq>.delta-<parent>       what changed since checkpoint <parent>
//!  callers.<instance>.snap                                an earlier version's caller shard (listed,
//!                                                         not read)
//!  LOCK, callers.<instance>.lock                          (a directory only)
//! ```
//!
//! **Incremental.** A full checkpoint of 1M subscribers is hundreds of MB; uploading it every
//! interval would make the checkpoint bandwidth grow with the state, not with the traffic. So a
//! partition writes a base, then deltas holding only the entities changed since the previous
//! durable checkpoint (`state::delta`), and a new base once the deltas add up to half a base (so a
//! restore reads at most 1.5 bases). Flink's incremental RocksDB checkpoints make the same trade.
//! A chain is found from the names alone: each delta names its parent, and it is usable only if
//! its parents lead to a base.
//!
//! **Fencing: ownership comes from the group, not from a lock.** An owner writes only under its own
//! group generation and removes older generations only after a base of its own is durable, so a
//! stale owner — a paused process that wakes after its partitions moved — can neither overwrite the
//! new owner's checkpoints nor remove them. Which chain a new owner restores is decided against the
//! committed offsets (`pick`): only the group's current member can commit, and it commits only what
//! its own durable checkpoint covers. The local `LOCK` is an optimisation for one machine (it keeps
//! `state clear` from editing under a running daemon), not the guarantee.
//!
//! Earlier versions kept a caller shard per process, named by the instance (`durability.instance`);
//! its calling numbers now live in the partitions (`repartition::calls`). The instance name and its
//! lock on a directory remain, naming the daemon; its old snapshot is listed, never read.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::Context;

use super::store::{Store, StoreError};

/// One checkpoint of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    pub partition: i32,
    pub generation: i32,
    /// Increasing within an owner; taken from the clock (µs) so that it also increases across the
    /// restarts of a process outside a group (generation -1), where names could otherwise repeat.
    pub seq: u64,
    /// The durable checkpoint this delta applies to; `None`: a base.
    pub parent: Option<u64>,
}

impl Link {
    pub fn key(&self) -> String {
        let Link {
            partition: p,
            generation: g,
            seq,
            parent,
        } = *self;
        match parent {
            None => format!("partition-{p}/g{g}/{seq:020}.base"),
            Some(parent) => format!("partition-{p}/g{g}/{seq:020}.delta-{parent:020}"),
        }
    }
}

/// A usable chain: a base and the deltas on it, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub generation: i32,
    pub links: Vec<Link>,
}

impl Chain {
    pub fn newest(&self) -> &Link {
        self.links.last().expect("a chain has a base")
    }
}

/// What a key in the store says it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    Checkpoint(Link),
    /// `callers.<instance>.snap`
    Callers(String),
}

/// Parses a key (temporary, set-aside and lock files are not checkpoints).
pub fn parse(key: &str) -> Option<Named> {
    if let Some(instance) = key
        .strip_prefix("callers.")
        .and_then(|s| s.strip_suffix(".snap"))
    {
        return (!instance.is_empty() && !instance.contains('/'))
            .then(|| Named::Callers(instance.to_string()));
    }
    let rest = key.strip_prefix("partition-")?;
    let (p, rest) = rest.split_once("/g")?;
    let (g, name) = rest.split_once('/')?;
    let (seq, kind) = name.split_once('.')?;
    let parent = match kind {
        "base" => None,
        _ => Some(kind.strip_prefix("delta-")?.parse().ok()?),
    };
    (seq.len() == 20).then_some(())?;
    Some(Named::Checkpoint(Link {
        partition: p.parse().ok()?,
        generation: g.parse().ok()?,
        seq: seq.parse().ok()?,
        parent,
    }))
}

/// Partition `p`'s usable chains, newest generation first: per generation, the newest checkpoint
/// whose parents lead to a base. A broken chain (a parent removed by a newer owner's clean-up, or
/// never written) is passed over for an older complete one.
pub fn chains(links: &[Link], p: i32) -> Vec<Chain> {
    let mut mine: Vec<Link> = links.iter().copied().filter(|l| l.partition == p).collect();
    mine.sort();
    let mut generations: Vec<i32> = mine.iter().map(|l| l.generation).collect();
    generations.dedup();
    let mut out = Vec::new();
    for g in generations.into_iter().rev() {
        let of_g: Vec<Link> = mine.iter().copied().filter(|l| l.generation == g).collect();
        let find = |seq: u64| of_g.iter().find(|l| l.seq == seq).copied();
        for newest in of_g.iter().rev() {
            let mut chain = vec![*newest];
            let mut at = *newest;
            let complete = loop {
                match at.parent {
                    None => break true,
                    Some(parent) if parent < at.seq => match find(parent) {
                        Some(l) => {
                            chain.push(l);
                            at = l;
                        }
                        None => break false,
                    },
                    Some(_) => break false,
                }
            };
            if complete {
                chain.reverse();
                out.push(Chain {
                    generation: g,
                    links: chain,
                });
                break;
            }
        }
    }
    out
}

/// Which of a partition's chains a new owner restores, given each one's next offsets (`[usage,
/// events, calls]`, newest generation first) and the group's committed offsets: the newest generation
/// whose checkpoint covers every committed offset — its owner, or one before it, made the commits —
/// else the one furthest ahead (the new owner then re-reads from it, with outputs below the commits
/// suppressed: slower, never a loss).
pub fn pick<const N: usize>(
    candidates: &[[Option<i64>; N]],
    committed: [Option<i64>; N],
) -> Option<usize> {
    let covers = |s: &[Option<i64>; N]| {
        (0..N).all(|i| match (s[i], committed[i]) {
            (Some(s), Some(c)) => s >= c,
            (None, Some(_)) => false,
            _ => true,
        })
    };
    candidates.iter().position(covers).or_else(|| {
        (0..candidates.len()).max_by_key(|&k| {
            let s = candidates[k];
            (
                s.iter()
                    .map(|o| o.unwrap_or(-1))
                    .fold(0i64, i64::saturating_add),
                std::cmp::Reverse(k),
            )
        })
    })
}

/// The checkpoint store as the daemon and `state` use it.
pub struct Checkpoints {
    pub store: Store,
    /// The directory's `LOCK` (shared by daemons, exclusive for `state clear`); none on an object
    /// store.
    _lock: Option<File>,
    /// This daemon's instance name and, on a directory, its lock.
    instance: Option<(String, Option<File>)>,
}

/// Why a store could not be opened for editing.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the state directory {0} is in use (its LOCK is held)")]
    InUse(std::path::PathBuf),
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

fn check_instance(instance: &str) -> anyhow::Result<()> {
    if instance.is_empty()
        || !instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        anyhow::bail!(
            "durability.instance {instance:?}: letters, digits, '-', '_' and '.' only, not empty"
        );
    }
    Ok(())
}

impl Checkpoints {
    /// A daemon's view. On a directory: the `LOCK` held shared (other daemons may share it), and
    /// this instance's name locked. On an object store no lock is possible: instance names must
    /// differ by configuration (the default is the host name).
    pub fn open(store: Store, instance: &str) -> anyhow::Result<Checkpoints> {
        check_instance(instance)?;
        let Some(root) = store.local_dir().map(Path::to_path_buf) else {
            return Ok(Checkpoints {
                store,
                _lock: None,
                instance: Some((instance.to_string(), None)),
            });
        };
        std::fs::create_dir_all(&root)
            .with_context(|| format!("creating the state directory {}", root.display()))?;
        let lock = lock_file(&root.join("LOCK"))?;
        if lock.try_lock_shared().is_err() {
            anyhow::bail!(
                "the state directory {} is locked by `cdrguard state clear`; start again when it is done",
                root.display()
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
        Ok(Checkpoints {
            store,
            _lock: Some(lock),
            instance: Some((instance.to_string(), Some(mine))),
        })
    }

    /// The `state` command's view. On a directory with `exclusive`, the `LOCK` is held
    /// exclusively, so no daemon runs on it.
    pub fn open_for_tools(store: Store, exclusive: bool) -> Result<Checkpoints, LockError> {
        let lock = match store.local_dir() {
            Some(root) if exclusive => {
                let lock = lock_file(&root.join("LOCK"))?;
                if lock.try_lock().is_err() {
                    return Err(LockError::InUse(root.to_path_buf()));
                }
                Some(lock)
            }
            _ => None,
        };
        Ok(Checkpoints {
            store,
            _lock: lock,
            instance: None,
        })
    }

    /// Every checkpoint in the store, and the instances with a caller-shard snapshot of an earlier
    /// version.
    pub fn contents(&self) -> Result<(Vec<Link>, Vec<String>), StoreError> {
        let mut links = Vec::new();
        let mut callers = Vec::new();
        for (key, _) in self.store.list()? {
            match parse(&key) {
                Some(Named::Checkpoint(l)) => links.push(l),
                Some(Named::Callers(i)) => callers.push(i),
                None => {}
            }
        }
        Ok((links, callers))
    }

    /// Partition `p`'s checkpoints (one listing of its folder).
    pub fn partition_links(&self, p: i32) -> Result<Vec<Link>, StoreError> {
        Ok(self
            .store
            .list_under(&format!("partition-{p}"))?
            .into_iter()
            .filter_map(|(key, _)| match parse(&key) {
                Some(Named::Checkpoint(l)) if l.partition == p => Some(l),
                _ => None,
            })
            .collect())
    }

    /// Partition `p`'s usable chains, newest generation first.
    pub fn partition_chains(&self, p: i32) -> Result<Vec<Chain>, StoreError> {
        Ok(chains(&self.partition_links(p)?, p))
    }

    /// Once the base `base` is durable: removes what it makes useless — older generations of the
    /// partition, and older checkpoints of its own generation. Never a later generation's: that
    /// belongs to a newer owner. Failures are logged; the next base tries again.
    pub fn remove_before(&self, base: &Link) {
        let links = match self.partition_links(base.partition) {
            Ok(links) => links,
            Err(e) => {
                tracing::warn!(error = %e, "Listing checkpoints to remove old ones failed.");
                return;
            }
        };
        for l in links {
            let older = l.partition == base.partition
                && (l.generation < base.generation
                    || (l.generation == base.generation && l.seq < base.seq));
            if older {
                if let Err(e) = self.store.delete(&l.key()) {
                    tracing::warn!(error = %e, "Could not remove an old checkpoint.");
                }
            }
        }
    }

    /// The key an earlier version gave this daemon's caller-shard snapshot.
    pub fn callers_key(&self) -> String {
        let instance = self.instance.as_ref().map_or("", |(i, _)| i.as_str());
        format!("callers.{instance}.snap")
    }

    /// Moves an unusable checkpoint aside (kept for a post-mortem) so that it is not read again.
    /// On an object store it stays where it is (the next base of a newer owner removes it).
    pub fn set_aside(&self, key: &str) {
        let Some(root) = self.store.local_dir() else {
            tracing::warn!(
                store = self.store.describe(),
                key,
                "Unusable checkpoint left in place; a newer owner's base will remove it."
            );
            return;
        };
        let path = root.join(key);
        let to = path.with_extension(format!(
            "{}.rejected-{}",
            path.extension().and_then(|e| e.to_str()).unwrap_or(""),
            crate::telemetry::metrics::now_ms()
        ));
        match std::fs::rename(&path, &to) {
            Ok(()) => {
                tracing::warn!(from = %path.display(), to = %to.display(), "Unusable checkpoint set aside.")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Could not set the unusable checkpoint aside.")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(p: i32, g: i32, seq: u64, parent: Option<u64>) -> Link {
        Link {
            partition: p,
            generation: g,
            seq,
            parent,
        }
    }

    #[test]
    fn names_say_partition_generation_and_parent() {
        for l in [
            link(7, 12, 3, None),
            link(7, -1, 40, Some(39)),
            link(0, 0, 0, None),
        ] {
            assert_eq!(parse(&l.key()), Some(Named::Checkpoint(l)), "{}", l.key());
        }
        assert_eq!(
            link(7, 12, 3, Some(1)).key(),
            "partition-7/g12/00000000000000000003.delta-00000000000000000001"
        );
        assert_eq!(
            parse("callers.host-a.snap"),
            Some(Named::Callers("host-a".into()))
        );
        for not in [
            "partition-7.g12.snap",
            "partition-7/g12/00000000000000000003.base.rejected-1",
            "partition-7/g12/00000000000000000003.base.tmp-4",
            "partition-7/g12/3.base",
            "callers..snap",
            "callers.a.lock",
            "LOCK",
        ] {
            assert_eq!(parse(not), None, "{not}");
        }
    }

    #[test]
    fn a_chain_runs_from_the_newest_checkpoint_back_to_a_base() {
        let links = [
            link(1, 4, 1, None),
            link(1, 4, 2, Some(1)),
            link(1, 4, 3, Some(2)),
            // Generation 5: a base, then a delta whose parent was removed (a broken chain).
            link(1, 5, 8, None),
            link(1, 5, 10, Some(9)),
            link(2, 5, 1, None),
        ];
        let got = chains(&links, 1);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].generation, 5);
        assert_eq!(
            got[0].links,
            [link(1, 5, 8, None)],
            "the broken delta is passed over"
        );
        assert_eq!(got[1].links, links[..3]);
        assert_eq!(got[1].newest().seq, 3);
        assert!(chains(&links, 3).is_empty());
        // A delta alone is no chain.
        assert!(chains(&[link(1, 1, 2, Some(1))], 1).is_empty());
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
    fn a_base_removes_older_checkpoints_of_its_partition_only() {
        let tmp = tempfile::tempdir().unwrap();
        let cp = Checkpoints::open(Store::dir(tmp.path()), "a").unwrap();
        let all = [
            link(1, 3, 1, None),
            link(1, 5, 2, None),
            link(1, 5, 3, Some(2)),
            link(1, 5, 4, None),
            link(1, 8, 9, None),
            link(2, 1, 1, None),
        ];
        for l in all {
            cp.store.put(&l.key(), b"x".to_vec()).unwrap();
        }
        // The owner of generation 5 (stale: 8 exists) cleans up behind itself only.
        cp.remove_before(&link(1, 5, 4, None));
        let mut left = cp.contents().unwrap().0;
        left.sort();
        assert_eq!(left, [all[3], all[4], all[5]]);
    }

    #[test]
    fn daemons_share_a_directory_but_not_an_instance_name_and_clear_waits_for_them() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Checkpoints::open(Store::dir(tmp.path()), "a").unwrap();
        let _b = Checkpoints::open(Store::dir(tmp.path()), "b").unwrap();
        let again = Checkpoints::open(Store::dir(tmp.path()), "a")
            .err()
            .unwrap();
        assert!(again.to_string().contains("durability.instance"), "{again}");
        assert!(matches!(
            Checkpoints::open_for_tools(Store::dir(tmp.path()), true),
            Err(LockError::InUse(_))
        ));
        assert!(Checkpoints::open_for_tools(Store::dir(tmp.path()), false).is_ok());
        assert_eq!(a.callers_key(), "callers.a.snap");
        drop(a);
        drop(_b);
        assert!(Checkpoints::open_for_tools(Store::dir(tmp.path()), true).is_ok());
    }
}
