//! Snapshot files: one partition's state with the input offsets it reflects.
//!
//! ```text
//!  "CDRGSNAP" | format u32 | header length u32 | header | payload | CRC-32 of everything after the magic
//! ```
//!
//! Header and payload are postcard (serde, compact varints, not self-describing): the state is plain
//! owned data, so serde derives are all it needs, and numbers, money and times take their packed binary
//! forms (`is_human_readable` is false). The format number is checked before anything is decoded, so a
//! snapshot from another version is reported as incompatible, never misread; the checksum catches a
//! torn or bit-flipped file. Files are written whole to a temporary name, synced, renamed over the old
//! one and the directory synced: a crash leaves the previous snapshot or the new one, never half of one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"CDRGSNAP";

/// Bumped whenever the encoding of any snapshotted type changes. 3: stores keep gap marks. 4: the
/// caller shard runs the rules reading its alerts (no process-wide flags; partitions keep the
/// account facts they handed over). 5: stores count clipped calls. 6: the dedup memory keeps a
/// content digest beside each id, and stores count conflicting duplicates. 7: account events'
/// digests are of their JSON form (their skipped optional blocks made postcard forms ambiguous).
/// 8: timers keep their scheduling sequence (a delta's timers must keep their order among a base's),
/// and checkpoints are chains of a base and deltas (`durability::layout`). 9: a partition keeps its
/// share of the calling numbers (`repartition::calls`); no caller shard. 10: the alert memory keeps
/// the alerts it issued, analysts' decisions and snoozes (`alert::feedback`). 11: stores keep the
/// open calls of partial records (`state::calls`).
pub const FORMAT: u32 = 11;

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// The state of one partition number (of both input topics).
    Partition(i32),
    /// An earlier version's caller shard (calling numbers of one process): no longer written or
    /// read; its calling numbers now live in the partitions.
    Callers,
}

/// The next offset to read of one input partition: everything before it is in the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    pub kind: SnapshotKind,
    pub positions: Vec<Position>,
    /// Wall-clock time of writing (ms since the epoch).
    pub written_ms: i64,
    /// Newest event time in the state (UTC seconds), for operators.
    pub newest_event_time: Option<i64>,
    pub subscribers: u64,
    pub accounts: u64,
    pub calling_numbers: u64,
}

impl Header {
    pub fn next(&self, topic: &str, partition: i32) -> Option<i64> {
        self.positions
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)
            .map(|p| p.next)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no snapshot at {0}")]
    Missing(PathBuf),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt snapshot {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("incompatible snapshot {path}: {why}")]
    Incompatible { path: PathBuf, why: String },
}

impl SnapshotError {
    /// A short reason for metrics and logs: `missing`, `io`, `corrupt`, `incompatible`.
    pub fn reason(&self) -> &'static str {
        match self {
            SnapshotError::Missing(_) => "missing",
            SnapshotError::Io { .. } => "io",
            SnapshotError::Corrupt { .. } => "corrupt",
            SnapshotError::Incompatible { .. } => "incompatible",
        }
    }
}

/// Encodes a snapshot in memory (the worker's part: CPU only; the file is written elsewhere).
pub fn encode<T: Serialize>(header: &Header, payload: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    let header = postcard::to_stdvec(header)?;
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    let mut out = postcard::to_io(payload, out)?;
    let crc = crc32fast::hash(&out[MAGIC.len()..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Writes `bytes` to `path` atomically and durably: temporary file, fsync, rename, fsync of the
/// directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A snapshot file read and verified: checksum, magic and format checked, header decoded.
pub struct Loaded {
    pub path: PathBuf,
    pub header: Header,
    bytes: Vec<u8>,
    payload_at: usize,
}

impl Loaded {
    pub fn read(path: &Path) -> Result<Loaded, SnapshotError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::Missing(path.to_path_buf()))
            }
            Err(source) => {
                return Err(SnapshotError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Loaded::from_bytes(path, bytes)
    }

    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Loaded, SnapshotError> {
        let corrupt = |why: String| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            why,
        };
        if bytes.len() < MAGIC.len() + 12 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt(
                "not a cdrguard snapshot (bad magic or too short)".into(),
            ));
        }
        let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if format != FORMAT {
            return Err(SnapshotError::Incompatible {
                path: path.to_path_buf(),
                why: format!("format {format}, this build reads format {FORMAT}"),
            });
        }
        let body_end = bytes.len() - 4;
        let stored = u32::from_le_bytes(bytes[body_end..].try_into().expect("4 bytes"));
        let actual = crc32fast::hash(&bytes[MAGIC.len()..body_end]);
        if stored != actual {
            return Err(corrupt(format!(
                "checksum mismatch (stored {stored:08x}, computed {actual:08x}): torn or damaged file"
            )));
        }
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
        let payload_at = 16 + header_len;
        if payload_at > body_end {
            return Err(corrupt(format!("header length {header_len} past the end")));
        }
        let header: Header = postcard::from_bytes(&bytes[16..payload_at])
            .map_err(|e| corrupt(format!("header: {e}")))?;
        Ok(Loaded {
            path: path.to_path_buf(),
            header,
            bytes,
            payload_at,
        })
    }

    /// Decodes the payload. A failure here, after the checksum matched, means the writer and the
    /// reader disagree on the layout: reported as incompatible.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, SnapshotError> {
        let body_end = self.bytes.len() - 4;
        postcard::from_bytes(&self.bytes[self.payload_at..body_end]).map_err(|e| {
            SnapshotError::Incompatible {
                path: self.path.clone(),
                why: format!("payload does not decode: {e}"),
            }
        })
    }

    pub fn size(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            kind: SnapshotKind::Partition(3),
            positions: vec![Position {
                topic: "usage".into(),
                partition: 3,
                next: 42,
            }],
            written_ms: 1,
            newest_event_time: Some(5),
            subscribers: 1,
            accounts: 0,
            calling_numbers: 0,
        }
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.snap");
        let payload = (vec![1u64, 2, 3], "state".to_string());
        let bytes = encode(&header(), &payload).unwrap();
        write_atomic(&path, &bytes).unwrap();
        let loaded = Loaded::read(&path).unwrap();
        assert_eq!(loaded.header.next("usage", 3), Some(42));
        assert_eq!(loaded.payload::<(Vec<u64>, String)>().unwrap(), payload);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );

        // One flipped bit anywhere is caught by the checksum.
        let mut bad = bytes.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x10;
        let e = Loaded::from_bytes(&path, bad).err().unwrap();
        assert_eq!(e.reason(), "corrupt", "{e}");
        // Torn write: the file ends early.
        let e = Loaded::from_bytes(&path, bytes[..bytes.len() - 7].to_vec())
            .err()
            .unwrap();
        assert_eq!(e.reason(), "corrupt", "{e}");
        // Another format version is named as such.
        let mut other = bytes.clone();
        other[8] = 99;
        let e = Loaded::from_bytes(&path, other).err().unwrap();
        assert_eq!(e.reason(), "incompatible", "{e}");
        assert!(e.to_string().contains("format 99"), "{e}");
        let e = Loaded::read(&dir.path().join("none.snap")).err().unwrap();
        assert_eq!(e.reason(), "missing");
    }
}
