//! Sinks: where alerts and rejected records go, behind one trait so that a new destination is one file
//! and its config section.
//!
//! ```text
//!  pipeline ─► alerts ─► wire::encode (once) ─┬─► kafka    department topics, dead-letter topic
//!          └─► rejects ──────────────────────┼─► webhook  POST per department URL (daemon)
//!                                            └─► file     NDJSON alerts and dead letters (replay)
//!  every acknowledgement ─► ack::Tracker ─► the input offset may be committed
//! ```
//!
//! **The contract.** A sink takes a message with its `Origin` — the input record it comes from — and
//! calls `Tracker::add` for it before sending and `Tracker::ack` when the destination acknowledged it
//! (or failed for good). Offsets are committed only behind acknowledgements, so every sink gets the
//! same at-least-once guarantee; consumers de-duplicate by the deterministic alert id.

pub mod ack;
mod file;
pub mod kafka;
pub mod webhook;

use std::time::Duration;

pub use ack::Tracker;
pub use file::{base64, AlertFile, DeadLetterFile, ShadowFile};

use crate::record::{Alert, Input, Reject};

/// The input record a produced message comes from: its offset waits for the acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A record of an input partition (the daemon).
    Record {
        input: Input,
        partition: i32,
        offset: i64,
    },
    /// Nothing waits for it: a file line (replay), or a timer the wall clock fired on an idle
    /// partition.
    Untracked,
}

impl Origin {
    pub fn record(input: Input, partition: i32, offset: i64) -> Self {
        Origin::Record {
            input,
            partition,
            offset,
        }
    }
}

/// A record that did not make it into the state, with where it came from.
pub struct Rejected<'a> {
    /// File name or topic.
    pub source: &'a str,
    /// Kafka partition; `None` for a file.
    pub partition: Option<i32>,
    /// Line number or offset.
    pub position: u64,
    /// The message key (Kafka), kept on the dead letter.
    pub key: &'a [u8],
    pub raw: &'a [u8],
    /// Bytes of an oversized line that were not kept.
    pub truncated: u64,
    pub reject: &'a Reject,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("alert not encodable: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{0}")]
    Other(String),
}

/// A destination of alerts (and, for some, of dead letters).
pub trait Output {
    /// A short name for logs and metrics (`kafka`, `webhook`, `file`).
    fn name(&self) -> &'static str;

    /// Hands over an alert whose JSON is `body`; its origin's offset waits for the acknowledgement.
    fn alert(&self, alert: &Alert, body: &[u8], origin: Origin) -> Result<(), SinkError>;

    /// Hands over a rejected record (dead letter). Sinks without a dead-letter destination ignore it.
    fn reject(&self, rejected: &Rejected<'_>, origin: Origin) -> Result<(), SinkError> {
        let _ = (rejected, origin);
        Ok(())
    }

    /// Waits up to `timeout` for everything handed over to be acknowledged.
    fn flush(&self, timeout: Duration) -> Result<(), SinkError>;

    /// Messages handed over and not yet acknowledged.
    fn in_flight(&self) -> u64 {
        0
    }
}

/// Every output of a run. Each alert is encoded once and handed to each output.
pub struct Outputs<'a> {
    outputs: Vec<&'a dyn Output>,
    body: Vec<u8>,
}

impl<'a> Outputs<'a> {
    pub fn new(outputs: Vec<&'a dyn Output>) -> Self {
        Outputs {
            outputs,
            body: Vec::with_capacity(2048),
        }
    }

    /// Hands an alert to every output; the errors of those that refused it.
    pub fn alert(&mut self, alert: &Alert, origin: Origin) -> Vec<(&'static str, SinkError)> {
        self.body.clear();
        if let Err(e) = crate::alert::wire::encode(alert, &mut self.body) {
            return vec![("encode", e.into())];
        }
        let mut failed = Vec::new();
        for o in &self.outputs {
            if let Err(e) = o.alert(alert, &self.body, origin) {
                failed.push((o.name(), e));
            }
        }
        failed
    }

    /// Hands a rejected record to every output that keeps dead letters.
    pub fn reject(&self, r: &Rejected<'_>, origin: Origin) -> Vec<(&'static str, SinkError)> {
        self.outputs
            .iter()
            .filter_map(|o| o.reject(r, origin).err().map(|e| (o.name(), e)))
            .collect()
    }

    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let deadline = std::time::Instant::now() + timeout;
        for o in &self.outputs {
            o.flush(deadline.saturating_duration_since(std::time::Instant::now()))?;
        }
        Ok(())
    }

    pub fn in_flight(&self) -> u64 {
        self.outputs.iter().map(|o| o.in_flight()).sum()
    }
}
