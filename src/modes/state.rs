//! `state`: read and edit the checkpoint store (`durability.dir`, or a `durability.store` URL given
//! as `--dir`) of a **stopped** daemon — inspect
//! one entity as the daemon last saved it, export its raw state, list the snapshots, or clear one
//! subscriber or account (a number recycled to a new customer, a test account) without discarding a
//! whole partition and paying its rebuild from Kafka.
//!
//! **Why against a stopped daemon.** A running daemon holds its state in memory and replaces its
//! snapshots on its own schedule. Reading is safe at any time (a snapshot is replaced by a rename,
//! never rewritten in place) but shows the last snapshot, not the live state. Editing is not: the
//! daemon still has the entity in memory and its next snapshot would bring it back. So `clear` takes
//! the directory's `LOCK`, which a running daemon holds, refuses without it, and keeps it until the
//! rewritten snapshot is in place.
//!
//! Snapshots are read one at a time and dropped once looked at: a partition's state can be large, and
//! the entity is usually in one of them. One that cannot be read (corrupt, incompatible, holding
//! another partition than its name says) is named with the reason on stderr and skipped; `clear`
//! never rewrites a checkpoint it could not read. Subscribers and accounts live in each partition's
//! newest chain (`partition-N/gG/…`, a base and its deltas, read as one; `clear` writes a new base
//! after it),
//! calling numbers in the partition of the number (its calls lane's state, `repartition::calls`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::classify::ClassFilter;
use crate::durability::checkpoint::{self, PartitionState};
use crate::durability::layout::{self, Chain, Checkpoints, Link, LockError};
use crate::durability::snapshot::{self, Header, Loaded, SnapshotError, SnapshotKind};
use crate::durability::store::Store;
use crate::modes::inspect::{self, Target, WindowSpec};
use crate::record::EventTime;
use crate::state::WindowStore;

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("the state directory {0} does not exist")]
    NoDir(PathBuf),
    #[error("reading the state directory {path}")]
    ListDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no checkpoints (partition-N/gG/…, callers.<instance>.snap) in {0}: is it the daemon's durability.dir or durability.store?"
    )]
    Empty(PathBuf),
    #[error("{what} is in none of the {read} readable snapshot(s) in {dir}{}", unreadable_note(.unreadable))]
    NotFound {
        what: String,
        dir: PathBuf,
        read: usize,
        unreadable: usize,
    },
    #[error("refusing to clear: {0} is in use by a running cdrguard (its LOCK is held); stop the daemon first")]
    InUse(PathBuf),
    #[error("refusing to clear: cannot lock {dir}")]
    Lock { dir: PathBuf, source: anyhow::Error },
    #[error("only subscribers (--msisdn) and accounts (--account) can be cleared, not a {0}")]
    NotClearable(&'static str),
    #[error("encoding {path}")]
    Encode {
        path: PathBuf,
        source: postcard::Error,
    },
    #[error("the rewritten snapshot does not read back, so the file is left as it was")]
    Verify(#[source] SnapshotError),
    #[error("writing {path} (the previous snapshot stays in place)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building the report")]
    Report(#[source] anyhow::Error),
    #[error("writing the output")]
    Output(#[from] std::io::Error),
}

fn unreadable_note(n: &usize) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} could not be read, see above)"),
    }
}

/// What `state inspect` shows: windows and filters, as of when.
pub struct ReportOptions {
    /// Windows end here; default the snapshot's newest event time. State after it is not taken out
    /// (a snapshot cannot un-apply records); windows simply end there.
    pub at: Option<EventTime>,
    pub windows: Vec<WindowSpec>,
    pub filters: Vec<ClassFilter>,
    pub json: bool,
}

/// `state inspect`: the `inspect` report of the entity from every snapshot that holds it, each
/// preceded by the snapshot's header (JSON: one document per snapshot, with a `snapshot` key).
pub fn inspect(
    dir: &Path,
    target: &Target,
    opts: &ReportOptions,
    out: &mut dyn Write,
) -> Result<(), StateDirError> {
    let cp = open(dir, false)?;
    let mut first = true;
    for_each_holding(&cp, dir, target, "skipped", |s| {
        let store = s.store_for(target);
        let at = opts
            .at
            .unwrap_or_else(|| EventTime::from_utc(s.default_as_of()));
        let mut report = inspect::report(store, &[], target, at, &opts.windows, &opts.filters)
            .map_err(StateDirError::Report)?;
        inspect::add_decisions(&mut report, s.memory_for(target));
        if opts.json {
            /// The report with the snapshot it comes from.
            #[derive(serde::Serialize)]
            struct Document<'a> {
                #[serde(flatten)]
                report: &'a inspect::Report,
                snapshot: Value,
            }
            let doc = Document {
                report: &report,
                snapshot: s.header_json(),
            };
            serde_json::to_writer_pretty(&mut *out, &doc).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            if !first {
                writeln!(out)?;
            }
            write!(out, "{}", s.header_text())?;
            write!(out, "{}", inspect::render_text(&report))?;
        }
        first = false;
        Ok(())
    })
}

/// `state export`: the entity's raw state as JSON, one document per snapshot that holds it: the
/// entity's windows as stored, its account (ledger, lines) and the account's pending timers.
pub fn export(dir: &Path, target: &Target, out: &mut dyn Write) -> Result<(), StateDirError> {
    let cp = open(dir, false)?;
    for_each_holding(&cp, dir, target, "skipped", |s| {
        let store = s.store_for(target);
        let (entity, account) = match target {
            Target::Subscriber(n) => {
                let e = store.subscriber(*n);
                (e, e.and_then(|e| store.account_of(e)))
            }
            Target::Account(id) => (None, store.account(id)),
            Target::CallingNumber(n) => (store.calling_number(*n), None),
            Target::Imei(n) => (store.imei(*n), None),
        };
        let (kind, key) = describe(target);
        let mut timers: Vec<_> = account
            .map(|a| store.pending_timers(&a.id).collect())
            .unwrap_or_default();
        timers.sort();
        let v = json!({
            "snapshot": s.header_json(),
            "entity": {"type": kind, "key": key},
            "account_id": account.map(|a| a.id.as_str()),
            "state": entity,
            "account": account,
            "timers_pending": timers,
        });
        serde_json::to_writer_pretty(&mut *out, &v).map_err(std::io::Error::from)?;
        writeln!(out)?;
        Ok(())
    })
}

/// `state export --all`: one JSON array with every snapshot's header (unreadable ones with their
/// error). Only headers are decoded: the checksum is verified, the payload is not decoded.
pub fn list(dir: &Path, out: &mut dyn Write) -> Result<(), StateDirError> {
    let cp = open(dir, false)?;
    let entries = entries(&cp, dir)?;
    if entries.is_empty() {
        eprintln!("note: {}", StateDirError::Empty(dir.to_path_buf()));
    }
    let mut rows = Vec::new();
    for entry in entries {
        let key = entry.key();
        let path = shown(&cp, &key);
        let row = match read_newest(&cp, &entry) {
            Ok(l) => {
                let mut row = header_json(&path, &l.header, l.size());
                let Entry::Partition(chain) = &entry;
                row["generation"] = json!(chain.generation);
                row["checkpoints"] = json!(chain.links.len());
                row
            }
            Err(e) => {
                eprintln!("warning: {e}");
                json!({"file": path.display().to_string(), "error": e.to_string(), "reason": e.reason()})
            }
        };
        rows.push(row);
    }
    serde_json::to_writer_pretty(&mut *out, &rows).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// `state clear`: removes a subscriber or an account from every snapshot that holds it and rewrites
/// each atomically, holding the directory's lock throughout.
pub fn clear(dir: &Path, target: &Target, out: &mut dyn Write) -> Result<(), StateDirError> {
    match target {
        Target::Subscriber(_) | Target::Account(_) => {}
        Target::CallingNumber(_) => return Err(StateDirError::NotClearable("calling number")),
        Target::Imei(_) => return Err(StateDirError::NotClearable("device (IMEI)")),
    }
    // Held until this function returns, so that no daemon starts on the directory mid-rewrite.
    // An object store cannot be locked: every daemon using it must be stopped (README).
    let cp = open(dir, true)?;
    for_each_holding(
        &cp,
        dir,
        target,
        "not checked and left as it is",
        |mut s| {
            let file = s.path.display().to_string();
            let before = s.payload.store.size();
            let store = &mut s.payload.store;
            let what = match target {
                Target::Subscriber(n) => {
                    let account = store
                        .subscriber(*n)
                        .and_then(|e| store.account_of(e))
                        .map(|a| format!("; account {} keeps its ledger and other lines", a.id))
                        .unwrap_or_default();
                    store.remove_subscriber(*n);
                    format!("subscriber {n} (its windows and locations{account})")
                }
                Target::Account(id) => {
                    let timers = store.pending_timers(id).count();
                    let lines = store.account(id).map_or(0, |a| a.lines.len());
                    store.remove_account(id);
                    format!(
                    "account {id} (its ledger, {timers} pending timer(s), and the link of its {lines} \
                     line(s), which keep their own windows)"
                )
                }
                _ => unreachable!("checked above"),
            };
            let after = store.size();
            // Same kind and positions: the state still reflects the same input, minus this entity.
            let mut header = checkpoint::header(s.header.kind, s.header.positions.clone(), store);
            header.calling_numbers = s.header.calling_numbers;
            let bytes =
                snapshot::encode(&header, &s.payload).map_err(|source| StateDirError::Encode {
                    path: s.path.clone(),
                    source,
                })?;
            // Read the new bytes back before they replace a good checkpoint: the daemon will trust
            // them.
            Loaded::from_bytes(&s.path, bytes.clone())
                .and_then(|l| decode(l, &s.entry))
                .map_err(StateDirError::Verify)?;
            // A partition gets a new base after its chain (the daemon restores the newest), which
            // makes the chain before it useless.
            let Entry::Partition(chain) = &s.entry;
            let key = Link {
                seq: chain.newest().seq + 1,
                parent: None,
                ..*chain.newest()
            }
            .key();
            cp.store
                .put(&key, bytes)
                .map_err(|e| StateDirError::Write {
                    path: s.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            cp.remove_before(&Link {
                seq: chain.newest().seq + 1,
                parent: None,
                ..*chain.newest()
            });
            writeln!(
            out,
            "Removed {what} from {file}: subscribers {} → {}, accounts {} → {}. Alert cooldowns \
             remembered for it are kept.",
            before.subscribers, after.subscribers, before.accounts, after.accounts
        )?;
            Ok(())
        },
    )
}

/// A checkpoint read and decoded (a partition's: its whole chain).
struct Snapshot {
    entry: Entry,
    path: PathBuf,
    header: Header,
    bytes: usize,
    payload: PartitionState,
}

impl Snapshot {
    /// The store holding `target`: a calling number lives with the partition's calls
    /// (`repartition::calls`), everything else with its lines and accounts.
    fn store_for(&self, target: &Target) -> &WindowStore {
        match (target, &self.payload.calls) {
            (Target::CallingNumber(_), Some(calls)) => &calls.store,
            _ => &self.payload.store,
        }
    }

    /// The alert memory beside `store_for(target)`.
    fn memory_for(&self, target: &Target) -> &crate::alert::memory::AlertMemory {
        match (target, &self.payload.calls) {
            (Target::CallingNumber(_), Some(calls)) => &calls.memory,
            _ => &self.payload.memory,
        }
    }

    /// "As of" when none is given: the newest event time in the state; a store that has seen no
    /// usage (account events do not move event time) falls back to when the snapshot was written.
    fn default_as_of(&self) -> i64 {
        self.payload
            .store
            .newest_event_time()
            .unwrap_or(self.header.written_ms.div_euclid(1000))
    }

    fn header_json(&self) -> Value {
        header_json(&self.path, &self.header, self.bytes)
    }

    fn header_text(&self) -> String {
        let h = &self.header;
        let positions: Vec<String> = h
            .positions
            .iter()
            .map(|p| format!("{}[{}] {}", p.topic, p.partition, p.next))
            .collect();
        format!(
            "snapshot {} ({}, {} bytes)\n  written {} · newest event {} · next offsets {}\n  \
             holds {} subscribers, {} accounts, {} calling numbers\n\n",
            self.path.display(),
            kind_label(h.kind),
            self.bytes,
            EventTime::from_utc(h.written_ms.div_euclid(1000)),
            h.newest_event_time
                .map_or("-".to_string(), |t| EventTime::from_utc(t).to_string()),
            if positions.is_empty() {
                "-".to_string()
            } else {
                positions.join(", ")
            },
            h.subscribers,
            h.accounts,
            h.calling_numbers
        )
    }
}

fn kind_label(kind: SnapshotKind) -> String {
    match kind {
        SnapshotKind::Partition(p) => format!("partition {p}"),
        SnapshotKind::Callers => "caller shard".to_string(),
    }
}

fn header_json(path: &Path, h: &Header, bytes: usize) -> Value {
    let (kind, partition) = match h.kind {
        SnapshotKind::Partition(p) => ("partition", Some(p)),
        SnapshotKind::Callers => ("callers", None),
    };
    json!({
        "file": path.display().to_string(),
        "kind": kind,
        "partition": partition,
        // The next offset to read per input partition: everything before it is in the state.
        "positions": h.positions,
        "written_at": EventTime::from_utc(h.written_ms.div_euclid(1000)),
        "newest_event_time": h.newest_event_time.map(EventTime::from_utc),
        "subscribers": h.subscribers,
        "accounts": h.accounts,
        "calling_numbers": h.calling_numbers,
        "bytes": bytes,
    })
}

/// The entity type and key, as `inspect` names them.
fn describe(t: &Target) -> (&'static str, String) {
    match t {
        Target::Subscriber(n) => ("subscriber", n.to_string()),
        Target::Account(id) => ("account", id.clone()),
        Target::CallingNumber(n) => ("calling_number", n.to_string()),
        Target::Imei(n) => ("imei", n.to_string()),
    }
}

fn holds(store: &WindowStore, t: &Target) -> bool {
    match t {
        Target::Subscriber(n) => store.subscriber(*n).is_some(),
        Target::Account(id) => store.account(id).is_some(),
        Target::CallingNumber(n) => store.calling_number(*n).is_some(),
        Target::Imei(n) => store.imei(*n).is_some(),
    }
}

/// What `state` reads: per partition its newest generation's chain (what a restart restores
/// when it covers the commits), by partition number. (The caller shards of earlier versions are
/// not read: their calling numbers now live in the partitions.)
enum Entry {
    Partition(Chain),
}

impl Entry {
    fn key(&self) -> String {
        let Entry::Partition(chain) = self;
        chain.newest().key()
    }
}

/// `dir` is a directory, or a store URL (`file://…`, `s3://bucket/prefix`; S3 settings from the
/// environment).
fn open(dir: &Path, exclusive: bool) -> Result<Checkpoints, StateDirError> {
    let text = dir.to_string_lossy();
    let store = if text.starts_with("s3://") || text.starts_with("file://") {
        Store::open(&text, Path::new(""), &Default::default()).map_err(|source| {
            StateDirError::Lock {
                dir: dir.to_path_buf(),
                source,
            }
        })?
    } else {
        // Before locking: locking creates the LOCK file, which would hide a typo.
        exists(dir)?;
        Store::dir(dir)
    };
    if let (true, Some(local)) = (exclusive, store.local_dir()) {
        exists(local)?;
    }
    Checkpoints::open_for_tools(store, exclusive).map_err(|e| match e {
        LockError::InUse(d) => StateDirError::InUse(d),
        LockError::Io(source) => StateDirError::Lock {
            dir: dir.to_path_buf(),
            source,
        },
    })
}

fn shown(cp: &Checkpoints, key: &str) -> PathBuf {
    match cp.store.local_dir() {
        Some(root) => root.join(key),
        None => PathBuf::from(format!("{}/{key}", cp.store.describe())),
    }
}

fn entries(cp: &Checkpoints, dir: &Path) -> Result<Vec<Entry>, StateDirError> {
    let (links, _) = cp.contents().map_err(|e| StateDirError::ListDir {
        path: dir.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let partitions: std::collections::BTreeSet<i32> = links.iter().map(|l| l.partition).collect();
    let out: Vec<Entry> = partitions
        .into_iter()
        .filter_map(|p| layout::chains(&links, p).into_iter().next())
        .map(Entry::Partition)
        .collect();
    Ok(out)
}

fn read_newest(cp: &Checkpoints, entry: &Entry) -> Result<Loaded, SnapshotError> {
    let Entry::Partition(chain) = entry;
    checkpoint::read_newest(cp, chain)
}

/// Reads a checkpoint whole (a partition's chain applied).
fn read_entry(cp: &Checkpoints, entry: Entry) -> Result<Snapshot, SnapshotError> {
    let newest = read_newest(cp, &entry)?;
    let path = shown(cp, &entry.key());
    let Entry::Partition(chain) = &entry;
    let (payload, bytes) = checkpoint::restore_chain(cp, chain, &newest)?;
    Ok(Snapshot {
        entry,
        path,
        header: newest.header,
        bytes,
        payload,
    })
}

fn exists(dir: &Path) -> Result<(), StateDirError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StateDirError::ListDir {
            path: dir.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(StateDirError::NoDir(dir.to_path_buf()))
        }
        Err(source) => Err(StateDirError::ListDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// A checkpoint must hold what its name says; the daemon rejects one that does not.
fn check_kind(loaded: &Loaded, entry: &Entry) -> Result<(), SnapshotError> {
    let Entry::Partition(chain) = entry;
    let expected = SnapshotKind::Partition(chain.newest().partition);
    if loaded.header.kind == expected {
        return Ok(());
    }
    Err(SnapshotError::Incompatible {
        path: loaded.path.clone(),
        why: format!(
            "holds {}, not what its name says",
            kind_label(loaded.header.kind)
        ),
    })
}

/// Decodes rewritten bytes, as `read_entry` would (a check before they replace a checkpoint).
fn decode(loaded: Loaded, entry: &Entry) -> Result<(), SnapshotError> {
    check_kind(&loaded, entry)?;
    match loaded.header.kind {
        SnapshotKind::Partition(_) => loaded.payload::<PartitionState>().map(drop),
        SnapshotKind::Callers => Err(SnapshotError::Incompatible {
            path: loaded.path.clone(),
            why: "an earlier version's caller shard".into(),
        }),
    }
}

/// Reads each checkpoint in turn and hands those holding `target` to `each`; unreadable ones are
/// named on stderr with the reason and `skipped` (what happens to them). Not found anywhere is an
/// error.
fn for_each_holding(
    cp: &Checkpoints,
    dir: &Path,
    target: &Target,
    skipped: &str,
    mut each: impl FnMut(Snapshot) -> Result<(), StateDirError>,
) -> Result<(), StateDirError> {
    let entries = entries(cp, dir)?;
    if entries.is_empty() {
        return Err(StateDirError::Empty(dir.to_path_buf()));
    }
    let (mut read, mut unreadable, mut found) = (0, 0, 0);
    for entry in entries {
        match read_entry(cp, entry) {
            Ok(s) => {
                read += 1;
                if holds(s.store_for(target), target) {
                    found += 1;
                    each(s)?;
                }
            }
            Err(e) => {
                unreadable += 1;
                eprintln!("warning: {e}; {skipped}");
            }
        }
    }
    if found == 0 {
        let (kind, key) = describe(target);
        return Err(StateDirError::NotFound {
            what: format!("{} {key}", kind.replace('_', " ")),
            dir: dir.to_path_buf(),
            read,
            unreadable,
        });
    }
    if unreadable > 0 {
        eprintln!(
            "warning: {unreadable} snapshot(s) could not be read (above); they may hold it too"
        );
    }
    Ok(())
}
