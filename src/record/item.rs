//! A record on its way into the pipeline: which input it came from, where in it, and what it decoded
//! to. Files and Kafka both produce these; the pipeline consumes them without knowing the source.

use super::{AccountEvent, Reject, UsageRecord};

/// The two inputs every mode reads: usage records (CDRs) and account events. In the daemon each is a
/// topic, co-partitioned with the other; in `replay` each is a file. The daemon's partitions read a
/// third topic of their own making, `Calls` (`repartition::calls`): the calls and callbacks of the calling
/// numbers the partition keeps, from every partition. It is no input of the user's: `ALL` leaves it
/// out, `LANES` (a daemon partition's topics) has it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    Usage,
    Events,
    Calls,
}

impl Input {
    /// The inputs users write.
    pub const ALL: &'static [Input] = &[Input::Usage, Input::Events];
    /// The topics a daemon partition reads, in index order.
    pub const LANES: [Input; 3] = [Input::Usage, Input::Events, Input::Calls];

    pub fn as_str(self) -> &'static str {
        match self {
            Input::Usage => "usage",
            Input::Events => "events",
            Input::Calls => "calls",
        }
    }

    pub fn parse(s: &str) -> Option<Input> {
        match s {
            "usage" => Some(Input::Usage),
            "events" => Some(Input::Events),
            _ => None,
        }
    }

    /// The setting naming its topic.
    pub fn setting(self) -> &'static str {
        match self {
            Input::Usage => "kafka.usage_topic",
            Input::Events => "kafka.events_topic",
            Input::Calls => "the calls topic (<kafka.group_id>-calls-by-number)",
        }
    }

    /// Index into per-input arrays (`[usage, events, calls]`).
    pub fn index(self) -> usize {
        match self {
            Input::Usage => 0,
            Input::Events => 1,
            Input::Calls => 2,
        }
    }
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded record of either input.
#[derive(Clone)]
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
