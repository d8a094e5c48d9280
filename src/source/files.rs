//! Files (and stdin): usage records and account events as NDJSON, merged in event time by the same
//! aligner as a Kafka partition's two topics (`align`). Each file is decoded one line ahead, so every
//! lane always has a head or has ended and the merge never waits. No reordering buffer: inputs need only
//! be sorted within the allowed lateness, exactly as on Kafka.

use std::path::Path;

use crate::record::{Decoded, Decoder, Input, Item, Reject, RejectReason};

use super::align::Aligner;
use super::ndjson::LineReader;

/// Lane of each input in the merge: account events rank first at equal times.
pub fn lane(input: Input) -> u32 {
    match input {
        Input::Events => 0,
        Input::Usage => 1,
        Input::Calls => 2,
    }
}

struct File {
    input: Input,
    reader: LineReader,
}

pub struct FileSource {
    files: Vec<File>,
    merge: Aligner<Result<Item, Reject>>,
    decoder: Decoder,
    pub blank_lines: u64,
}

impl FileSource {
    pub fn open(usage: &Path, events: Option<&Path>, decoder: Decoder) -> std::io::Result<Self> {
        // Keep a little more than the limit so an oversized record is dead-lettered with its start.
        let keep = decoder.max_record_bytes.saturating_mul(4).max(1 << 20);
        let mut readers = vec![(Input::Usage, LineReader::open(usage, keep)?)];
        if let Some(e) = events {
            readers.push((Input::Events, LineReader::open(e, keep)?));
        }
        Ok(Self::from_readers(readers, decoder))
    }

    pub fn from_readers(readers: Vec<(Input, LineReader)>, decoder: Decoder) -> Self {
        let mut merge = Aligner::with_lanes(2);
        // An input not given is an input that has ended.
        for input in Input::ALL {
            merge.set_ended(lane(*input), true);
        }
        let files = readers
            .into_iter()
            .map(|(input, reader)| {
                merge.set_ended(lane(input), false);
                File { input, reader }
            })
            .collect();
        FileSource {
            files,
            merge,
            decoder,
            blank_lines: 0,
        }
    }

    /// Reads the next line of every file whose lane is empty, so that each has a head or has ended.
    fn fill(&mut self) -> std::io::Result<()> {
        for f in &mut self.files {
            let id = lane(f.input);
            while self.merge.queued(id) == 0 && !self.merge.is_ended(id) {
                if !f.reader.next_line()? {
                    self.merge.set_ended(id, true);
                } else if f.reader.is_blank() {
                    self.blank_lines += 1;
                } else {
                    let r = &f.reader;
                    let item = if r.truncated > 0 {
                        // Too long to have been kept whole: reject on the full length.
                        let len = r.buf.len() as u64 + r.truncated;
                        Err(Reject::new(
                            RejectReason::Oversized,
                            None,
                            format!(
                                "{len} bytes exceeds the limit of {} bytes",
                                self.decoder.max_record_bytes
                            ),
                        ))
                    } else {
                        match f.input {
                            Input::Usage | Input::Calls => {
                                self.decoder.usage(&r.buf).map(Item::Usage)
                            }
                            Input::Events => self.decoder.account_event(&r.buf).map(Item::Event),
                        }
                    };
                    let time = item.as_ref().ok().map(Item::time);
                    self.merge.push(id, r.line as i64, time, item);
                }
            }
        }
        Ok(())
    }

    /// The next line in event-time order, or `None` at the end of every input. Its raw bytes are the
    /// reader's current line: each lane holds at most one line, the one not yet returned.
    pub fn next_decoded(&mut self) -> std::io::Result<Option<Decoded<'_>>> {
        self.fill()?;
        let Some((id, _, item)) = self.merge.pop() else {
            return Ok(None);
        };
        let f = self
            .files
            .iter()
            .find(|f| lane(f.input) == id)
            .expect("a lane per file");
        Ok(Some(Decoded {
            source: f.reader.name(),
            line: f.reader.line,
            raw: &f.reader.buf,
            truncated: f.reader.truncated,
            item,
        }))
    }

    /// The input files' names: usage first, then events if given.
    pub fn names(&self) -> Vec<String> {
        self.files
            .iter()
            .map(|f| f.reader.name().to_string())
            .collect()
    }

    /// Fraction of input bytes consumed, when sizes are known.
    pub fn progress(&self) -> Option<f64> {
        let (mut done, mut total) = (0u64, 0u64);
        for f in &self.files {
            let (d, t) = f.reader.progress();
            done += d;
            total += t?;
        }
        (total > 0).then(|| done as f64 / total as f64)
    }
}
