//! Offsets a partition skipped: records that were in the input log but are gone before the daemon read
//! them (retention, deleted records, a broker's size limit) or a log that went back (a recreated
//! topic). Found by comparing the offset expected with the offset received (`detect`); counted,
//! logged, and marked in the state of the partition concerned (`GapMark`).

use serde::{Deserialize, Serialize};

use super::Input;

/// Why offsets were skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GapReason {
    /// The next offset was below the log's start: the records were deleted (retention by time or
    /// size, `DeleteRecords`, the embedded broker's limit) before they were read.
    Deleted,
    /// The log restarted below the next offset: the topic was recreated or truncated. How many
    /// records the old log still had is unknown.
    Rewound,
    /// The broker delivered a later offset although the records before it were still in its log.
    /// Only said of cdrguard's own topics (`detect`'s `contiguous`), whose offsets have no holes:
    /// a broker fault (tansu 0.6 does this when a fetch starts inside a record batch).
    Skipped,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Deleted => "deleted",
            GapReason::Rewound => "rewound",
            GapReason::Skipped => "skipped",
        }
    }
}

/// A jump in one input partition's offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetGap {
    pub input: Input,
    pub partition: i32,
    /// The offset expected next.
    pub expected: i64,
    /// The offset received.
    pub received: i64,
    pub reason: GapReason,
}

impl OffsetGap {
    /// Offsets jumped over (0 for a rewind: what the old log held past `expected` is unknown).
    pub fn skipped(&self) -> u64 {
        (self.received - self.expected).max(0) as u64
    }
}

/// Whether receiving `received` when `expected` was next skipped records. `log_start` is the
/// partition's first offset as the broker last reported it. A jump that starts at or above the log
/// start skipped nothing: transaction markers and compacted-away records take offsets and are never
/// delivered. A jump from below it means the expected record was deleted, and the consumer's offset
/// reset skipped everything up to what it received. `contiguous`: a topic cdrguard writes itself
/// (idempotent producer, no transactions, never compacted), where any jump lost records.
pub fn detect(
    input: Input,
    partition: i32,
    expected: i64,
    received: i64,
    log_start: Option<i64>,
    contiguous: bool,
) -> Option<OffsetGap> {
    let deleted = log_start.is_some_and(|low| low > expected);
    let reason = if received < expected {
        GapReason::Rewound
    } else if received > expected && deleted {
        GapReason::Deleted
    } else if received > expected && contiguous {
        GapReason::Skipped
    } else {
        return None;
    };
    Some(OffsetGap {
        input,
        partition,
        expected,
        received,
        reason,
    })
}

/// What a partition's state keeps of a gap: which offsets, and the event-time span whose windows
/// may miss records (between the newest record before the gap and the first after it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapMark {
    pub input: Input,
    pub partition: i32,
    /// First offset skipped.
    pub from: i64,
    /// First offset read after the gap.
    pub to: i64,
    pub reason: GapReason,
    /// Event time (UTC seconds) of the newest record before the gap, if any.
    pub after: Option<i64>,
    /// Event time of the first record after it.
    pub before: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jumps_from_below_the_log_start_and_rewinds_are_gaps() {
        let u = Input::Usage;
        // In order: nothing.
        assert_eq!(detect(u, 0, 10, 10, Some(0), false), None);
        // A transaction marker at 10: the log still starts below, nothing lost.
        assert_eq!(detect(u, 0, 10, 11, Some(0), false), None);
        // Retention moved the log start to 7401 past the expected 100; the reset went to 11102
        // (where the cache said the log began when it reset): every offset from 100 is gone.
        let g = detect(u, 3, 100, 11_102, Some(7_401), false).unwrap();
        assert_eq!((g.reason, g.skipped()), (GapReason::Deleted, 11_002));
        // A recreated topic starts again at 0.
        let g = detect(u, 3, 5_000, 0, Some(0), false).unwrap();
        assert_eq!((g.reason, g.skipped()), (GapReason::Rewound, 0));
        // Log start unknown: a jump is not called a loss.
        assert_eq!(detect(u, 0, 10, 20, None, false), None);
    }

    #[test]
    fn on_a_topic_cdrguard_writes_any_jump_is_a_loss() {
        let c = Input::Calls;
        assert_eq!(detect(c, 7, 9, 9, Some(0), true), None);
        // Still in the log from 0, yet 9..57 never came (a fetch that started inside a batch).
        let g = detect(c, 7, 9, 57, Some(0), true).unwrap();
        assert_eq!((g.reason, g.skipped()), (GapReason::Skipped, 48));
        let g = detect(c, 7, 9, 57, None, true).unwrap();
        assert_eq!(g.reason, GapReason::Skipped);
        // Deleted and rewound are told apart as on any topic.
        let g = detect(c, 7, 9, 57, Some(30), true).unwrap();
        assert_eq!(g.reason, GapReason::Deleted);
        let g = detect(c, 7, 9, 0, Some(0), true).unwrap();
        assert_eq!(g.reason, GapReason::Rewound);
    }
}
