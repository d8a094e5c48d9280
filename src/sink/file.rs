//! Files: alerts as NDJSON (one object per line, as on the Kafka topics), and the dead-letter file —
//! every rejected line, with its original bytes, where it came from and why.
//!
//! Dead letters are one JSON object per line: `{"source","line","reason","field","detail","raw"}`;
//! `raw` is the original text, or `raw_base64` when the bytes are not UTF-8 (they are kept exactly
//! either way). The file is created on the first reject, so a clean run leaves no empty file behind.
//!
//! Writes are synchronous: a file sink acknowledges by returning, and its errors stop a replay.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::record::{Alert, Mode, Reject};

use super::{Origin, Output, Rejected, SinkError};

/// Alerts to a writer, one JSON object per line: those of live rules (shadow alerts go to the
/// `ShadowFile`, never here).
pub struct AlertFile<W: Write> {
    out: RefCell<W>,
    written: std::cell::Cell<u64>,
    /// Shadow alerts too (`cdrguard test`: a candidate rule is tested before it is promoted).
    shadow: bool,
}

impl<W: Write> AlertFile<W> {
    pub fn new(out: W) -> Self {
        AlertFile {
            out: RefCell::new(out),
            written: Default::default(),
            shadow: false,
        }
    }

    /// Every alert, shadow rules' included.
    pub fn with_shadow(out: W) -> Self {
        AlertFile {
            shadow: true,
            ..AlertFile::new(out)
        }
    }

    /// Alerts written.
    pub fn written(&self) -> u64 {
        self.written.get()
    }
}

impl<W: Write> Output for AlertFile<W> {
    fn name(&self) -> &'static str {
        "file"
    }

    fn alert(&self, alert: &Alert, body: &[u8], _: Origin) -> Result<(), SinkError> {
        if alert.mode == Mode::Shadow && !self.shadow {
            return Ok(());
        }
        let mut out = self.out.borrow_mut();
        out.write_all(body)?;
        out.write_all(b"\n")?;
        self.written.set(self.written.get() + 1);
        Ok(())
    }

    fn flush(&self, _: Duration) -> Result<(), SinkError> {
        Ok(self.out.borrow_mut().flush()?)
    }
}

/// The alerts of shadow rules (`RULE.mode: "shadow"`), one JSON object per line, in a file of their
/// own created on the first one: a replay's alert file, like a department topic, never holds them.
pub struct ShadowFile {
    path: PathBuf,
    out: RefCell<Option<BufWriter<File>>>,
    written: std::cell::Cell<u64>,
}

impl ShadowFile {
    pub fn new(path: PathBuf) -> Self {
        ShadowFile {
            path,
            out: RefCell::new(None),
            written: Default::default(),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Shadow alerts written.
    pub fn written(&self) -> u64 {
        self.written.get()
    }
}

impl Output for ShadowFile {
    fn name(&self) -> &'static str {
        "shadow file"
    }

    fn alert(&self, alert: &Alert, body: &[u8], _: Origin) -> Result<(), SinkError> {
        if alert.mode != Mode::Shadow {
            return Ok(());
        }
        let mut out = self.out.borrow_mut();
        let out = match &mut *out {
            Some(w) => w,
            None => out.insert(BufWriter::new(File::create(&self.path)?)),
        };
        out.write_all(body)?;
        out.write_all(b"\n")?;
        self.written.set(self.written.get() + 1);
        Ok(())
    }

    fn flush(&self, _: Duration) -> Result<(), SinkError> {
        match &mut *self.out.borrow_mut() {
            Some(w) => Ok(w.flush()?),
            None => Ok(()),
        }
    }
}

#[derive(Serialize)]
struct Entry<'a> {
    source: &'a str,
    line: u64,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
    /// Bytes of an oversized line that were not kept.
    #[serde(skip_serializing_if = "is_zero")]
    raw_truncated_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub struct DeadLetterFile {
    path: Option<PathBuf>,
    out: RefCell<Option<BufWriter<File>>>,
    written: std::cell::Cell<u64>,
    /// Bytes written, and the most it may hold: garbage input (a binary file replayed by mistake)
    /// must not fill the disk with its dead letters.
    bytes: std::cell::Cell<u64>,
    max_bytes: u64,
    /// Rejects not written because the file reached `max_bytes`.
    dropped: std::cell::Cell<u64>,
}

impl DeadLetterFile {
    /// Without a path, rejects are counted but not written (inspect). At most `max_bytes` are
    /// written.
    pub fn new(path: Option<PathBuf>, max_bytes: u64) -> Self {
        DeadLetterFile {
            path,
            out: RefCell::new(None),
            written: Default::default(),
            bytes: Default::default(),
            max_bytes,
            dropped: Default::default(),
        }
    }

    /// Rejects not written: the file reached its cap (`input.dead_letter_file_max_mib`).
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        self.written.get()
    }

    pub fn write(
        &self,
        source: &str,
        line: u64,
        raw: &[u8],
        truncated: u64,
        reject: &Reject,
    ) -> io::Result<()> {
        let mut out = self.out.borrow_mut();
        let out = match (&mut *out, &self.path) {
            (Some(o), _) => o,
            (None, None) => return Ok(()),
            (slot @ None, Some(path)) => {
                let f = File::create(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                slot.insert(BufWriter::new(f))
            }
        };
        let text = std::str::from_utf8(raw).ok();
        let entry = Entry {
            source,
            line,
            reason: reject.reason.as_str(),
            field: reject.field.as_deref(),
            detail: &reject.detail,
            raw: text,
            raw_base64: if text.is_none() {
                Some(base64(raw))
            } else {
                None
            },
            raw_truncated_bytes: truncated,
        };
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        if self.bytes.get() + line.len() as u64 > self.max_bytes {
            if self.dropped.get() == 0 {
                tracing::warn!(
                    path = %self.path.as_deref().unwrap_or(std::path::Path::new("")).display(),
                    max_mib = self.max_bytes >> 20,
                    "Dead-letter file full (input.dead_letter_file_max_mib): further rejects are counted, not written."
                );
            }
            self.dropped.set(self.dropped.get() + 1);
            return Ok(());
        }
        out.write_all(&line)?;
        self.bytes.set(self.bytes.get() + line.len() as u64);
        self.written.set(self.written.get() + 1);
        Ok(())
    }
}

impl Output for DeadLetterFile {
    fn name(&self) -> &'static str {
        "dead_letter_file"
    }

    fn alert(&self, _: &Alert, _: &[u8], _: Origin) -> Result<(), SinkError> {
        Ok(())
    }

    fn reject(&self, r: &Rejected<'_>, _: Origin) -> Result<(), SinkError> {
        Ok(self.write(r.source, r.position, r.raw, r.truncated, r.reject)?)
    }

    fn flush(&self, _: Duration) -> Result<(), SinkError> {
        match &mut *self.out.borrow_mut() {
            Some(o) => Ok(o.flush()?),
            None => Ok(()),
        }
    }
}

/// Standard base64 with padding (RFC 4648); rejects are rare, so no crate for it.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
