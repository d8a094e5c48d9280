//! Merge usage records and account events by event time.
//!
//! Each input is decoded one line ahead; the input whose head is earliest goes next (account events
//! first on ties, so an invoice stamped at the same instant as a call is on the ledger when the call is
//! rated against it). Rejected lines have no trustworthy time and go out as soon as they are read. No
//! reordering buffer: inputs need only be sorted within the allowed lateness, exactly as on Kafka.

use std::path::Path;

use crate::record::{AccountEvent, Decoder, Reject, UsageRecord};

use super::ndjson::LineReader;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Usage,
    Events,
}

pub enum Item {
    Usage(UsageRecord),
    Event(AccountEvent),
}

impl Item {
    pub fn time(&self) -> i64 {
        match self {
            Item::Usage(r) => r.event_start.utc,
            Item::Event(e) => e.occurred_at.utc,
        }
    }
}

/// One decoded line, with where it came from; the raw bytes stay in the input's buffer until the next
/// line is read, so the dead-letter path can keep them without a copy per record.
pub struct Decoded<'a> {
    pub source: &'a str,
    pub line: u64,
    pub raw: &'a [u8],
    /// Bytes of the line beyond what was kept (oversized lines).
    pub truncated: u64,
    pub item: Result<Item, Reject>,
}

struct Input {
    kind: InputKind,
    reader: LineReader,
    head: Option<Result<Item, Reject>>,
    done: bool,
}

pub struct MergedSource {
    inputs: Vec<Input>,
    decoder: Decoder,
    pub blank_lines: u64,
    current: Option<usize>,
}

impl MergedSource {
    pub fn open(usage: &Path, events: Option<&Path>, decoder: Decoder) -> std::io::Result<Self> {
        // Keep a little more than the limit so an oversized record is dead-lettered with its start.
        let keep = decoder.max_record_bytes.saturating_mul(4).max(1 << 20);
        let mut inputs = vec![Input {
            kind: InputKind::Usage,
            reader: LineReader::open(usage, keep)?,
            head: None,
            done: false,
        }];
        if let Some(e) = events {
            inputs.push(Input {
                kind: InputKind::Events,
                reader: LineReader::open(e, keep)?,
                head: None,
                done: false,
            });
        }
        Ok(MergedSource {
            inputs,
            decoder,
            blank_lines: 0,
            current: None,
        })
    }

    pub fn from_readers(readers: Vec<(InputKind, LineReader)>, decoder: Decoder) -> Self {
        let inputs = readers
            .into_iter()
            .map(|(kind, reader)| Input {
                kind,
                reader,
                head: None,
                done: false,
            })
            .collect();
        MergedSource {
            inputs,
            decoder,
            blank_lines: 0,
            current: None,
        }
    }

    /// The next line in event-time order, or `None` at the end of every input.
    pub fn next_decoded(&mut self) -> std::io::Result<Option<Decoded<'_>>> {
        if let Some(i) = self.current.take() {
            self.inputs[i].head = None;
        }
        for input in &mut self.inputs {
            while input.head.is_none() && !input.done {
                if !input.reader.next_line()? {
                    input.done = true;
                } else if input.reader.is_blank() {
                    self.blank_lines += 1;
                } else {
                    let r = &input.reader;
                    let item = if r.truncated > 0 {
                        // Too long to have been kept whole: reject on the full length.
                        let len = r.buf.len() as u64 + r.truncated;
                        Err(Reject::new(
                            crate::record::RejectReason::Oversized,
                            None,
                            format!(
                                "{len} bytes exceeds the limit of {} bytes",
                                self.decoder.max_record_bytes
                            ),
                        ))
                    } else {
                        match input.kind {
                            InputKind::Usage => self.decoder.usage(&r.buf).map(Item::Usage),
                            InputKind::Events => {
                                self.decoder.account_event(&r.buf).map(Item::Event)
                            }
                        }
                    };
                    input.head = Some(item);
                }
            }
        }
        let pick = self
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(i, inp)| inp.head.as_ref().map(|h| (i, inp.kind, h)))
            .min_by_key(|(_, kind, h)| match h {
                Err(_) => (i64::MIN, 0),
                Ok(item) => (item.time(), if *kind == InputKind::Events { 0 } else { 1 }),
            })
            .map(|(i, _, _)| i);
        let Some(i) = pick else { return Ok(None) };
        self.current = Some(i);
        let input = &mut self.inputs[i];
        let item = match input.head.as_mut() {
            Some(h) => std::mem::replace(
                h,
                Err(Reject::new(
                    crate::record::RejectReason::InvalidJson,
                    None,
                    "consumed",
                )),
            ),
            None => unreachable!("picked a head"),
        };
        Ok(Some(Decoded {
            source: input.reader.name(),
            line: input.reader.line,
            raw: &input.reader.buf,
            truncated: input.reader.truncated,
            item,
        }))
    }

    /// Fraction of input bytes consumed, when sizes are known.
    pub fn progress(&self) -> Option<f64> {
        let (mut done, mut total) = (0u64, 0u64);
        for i in &self.inputs {
            let (d, t) = i.reader.progress();
            done += d;
            total += t?;
        }
        (total > 0).then(|| done as f64 / total as f64)
    }
}
