//! A record on its way into the pipeline: which input it came from, where in it, and what it decoded
//! to. Files and Kafka both produce these; the pipeline consumes them without knowing the source.

use super::{AccountEvent, Reject, UsageRecord};

/// The two inputs every mode reads: usage records (CDRs) and account events. In the daemon each is a
/// topic, co-partitioned with the other; in `replay` each is a file.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    Usage,
    Events,
}

wire_names!(Input { Usage => "usage", Events => "events" });

impl Input {
    /// Index into per-input arrays (`[usage, events]`).
    pub fn index(self) -> usize {
        match self {
            Input::Usage => 0,
            Input::Events => 1,
        }
    }
}

/// A decoded record of either input.
pub enum Item {
    Usage(UsageRecord),
    Event(AccountEvent),
}

impl Item {
    /// Event time (UTC seconds).
    pub fn time(&self) -> i64 {
        match self {
            Item::Usage(r) => r.event_start.utc,
            Item::Event(e) => e.occurred_at.utc,
        }
    }
}

/// One decoded line or message, with where it came from; `raw` borrows the source's buffer, so the
/// dead-letter path can keep the original bytes without a copy per record.
pub struct Decoded<'a> {
    /// File name or topic.
    pub source: &'a str,
    /// Line number or offset.
    pub line: u64,
    pub raw: &'a [u8],
    /// Bytes of the line beyond what was kept (oversized lines).
    pub truncated: u64,
    pub item: Result<Item, Reject>,
}
