//! Line reader for NDJSON files and stdin, bounded so that one runaway line (a missing newline in a
//! 10 GB file) cannot exhaust memory: bytes beyond `keep_bytes` are counted and skipped, and the record
//! is rejected as oversized by the decoder.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

pub struct LineReader {
    name: String,
    inner: Box<dyn BufRead + Send>,
    /// The current line, without its newline (and without a trailing `\r`).
    pub buf: Vec<u8>,
    /// 1-based number of the current line.
    pub line: u64,
    /// Bytes of the current line that did not fit in `buf`.
    pub truncated: u64,
    keep_bytes: usize,
    bytes_read: u64,
    total_bytes: Option<u64>,
    eof: bool,
}

impl LineReader {
    /// Opens a file, or stdin for `-`.
    pub fn open(path: &Path, keep_bytes: usize) -> io::Result<Self> {
        let (name, inner, total): (String, Box<dyn BufRead + Send>, Option<u64>) =
            if path == Path::new("-") {
                (
                    "stdin".into(),
                    Box::new(BufReader::with_capacity(1 << 20, io::stdin())),
                    None,
                )
            } else {
                let f = File::open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                let total = f.metadata().ok().map(|m| m.len());
                (
                    path.display().to_string(),
                    Box::new(BufReader::with_capacity(1 << 20, f)),
                    total,
                )
            };
        Ok(Self::from_reader(name, inner, keep_bytes, total))
    }

    pub fn from_reader(
        name: String,
        inner: Box<dyn BufRead + Send>,
        keep_bytes: usize,
        total_bytes: Option<u64>,
    ) -> Self {
        LineReader {
            name,
            inner,
            buf: Vec::with_capacity(1024),
            line: 0,
            truncated: 0,
            keep_bytes,
            bytes_read: 0,
            total_bytes,
            eof: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes consumed so far and the file size when known: progress.
    pub fn progress(&self) -> (u64, Option<u64>) {
        (self.bytes_read, self.total_bytes)
    }

    /// Advances to the next line; false at end of input. Blank lines are returned too (the caller
    /// counts them).
    pub fn next_line(&mut self) -> io::Result<bool> {
        self.buf.clear();
        self.truncated = 0;
        if self.eof {
            return Ok(false);
        }
        let mut any = false;
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                self.eof = true;
                break;
            }
            any = true;
            let (take, done) = match memchr_newline(chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let content = if done { &chunk[..take - 1] } else { chunk };
            let room = self.keep_bytes.saturating_sub(self.buf.len());
            let kept = content.len().min(room);
            self.buf.extend_from_slice(&content[..kept]);
            self.truncated += (content.len() - kept) as u64;
            self.inner.consume(take);
            self.bytes_read += take as u64;
            if done {
                break;
            }
        }
        if !any {
            return Ok(false);
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        // A UTF-8 byte-order mark (files saved by spreadsheet tools) would make the first record
        // undecodable.
        if self.line == 0 && self.buf.starts_with(b"\xEF\xBB\xBF") {
            self.buf.drain(..3);
        }
        self.line += 1;
        Ok(true)
    }

    /// True when the current line is empty or only whitespace.
    pub fn is_blank(&self) -> bool {
        self.truncated == 0 && self.buf.iter().all(u8::is_ascii_whitespace)
    }
}

/// SIMD search: ~10× faster than a byte loop over 500-byte records.
fn memchr_newline(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(s: &'static [u8], keep: usize) -> LineReader {
        LineReader::from_reader("t".into(), Box::new(s), keep, None)
    }

    #[test]
    fn splits_lines_and_handles_crlf_and_missing_final_newline() {
        let mut r = reader(b"a\r\n\nbc", 100);
        let mut lines = Vec::new();
        while r.next_line().unwrap() {
            lines.push((
                r.line,
                String::from_utf8(r.buf.clone()).unwrap(),
                r.is_blank(),
            ));
        }
        assert_eq!(
            lines,
            [
                (1, "a".into(), false),
                (2, "".into(), true),
                (3, "bc".into(), false)
            ]
        );
    }

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_dropped() {
        let mut r = reader(b"\xEF\xBB\xBF{\"a\":1}\n\xEF\xBB\xBF\n", 1024);
        assert!(r.next_line().unwrap());
        assert_eq!(r.buf, b"{\"a\":1}");
        assert!(r.next_line().unwrap());
        assert_eq!(r.buf, b"\xEF\xBB\xBF", "only at the start of the input");
    }

    #[test]
    fn bounds_a_runaway_line() {
        let mut r = reader(b"0123456789\nok\n", 4);
        assert!(r.next_line().unwrap());
        assert_eq!((r.buf.as_slice(), r.truncated), (&b"0123"[..], 6));
        assert!(r.next_line().unwrap());
        assert_eq!((r.buf.as_slice(), r.line), (&b"ok"[..], 2));
        assert!(!r.next_line().unwrap());
    }
}
