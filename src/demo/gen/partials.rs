//! Long calls written the way switches write them: as partial records.
//!
//! An MSC closes a partial record every so often during a long call (TS 32.298 `causeForRecClosing`
//! timeLimit). Some long background calls are written as such parts — cumulative ones, each with the
//! call's start and its totals so far, the last the whole call — so that the data exercise
//! `state::calls` as a real feed does. Cumulative parts share the call's start, so the file stays in
//! event-time order. The choice hangs on the record id, not the random stream: the traffic itself is
//! the same, only some calls take more lines.

use compact_str::format_compact;

use crate::record::{Money, Partial, RecordType, UsageRecord};

/// Calls at least this long may be cut.
const LONG_CALL_S: u32 = 20 * 60;
/// The switch's cut: one part per this much call.
const CUT_S: u32 = 10 * 60;

/// The record as written: itself, or its call's cumulative parts (the last one the record).
pub fn split(rec: UsageRecord) -> Vec<UsageRecord> {
    let h = xxhash_rust::xxh3::xxh3_64(rec.record_id.as_bytes());
    if rec.record_type != RecordType::Voice || rec.duration_s < LONG_CALL_S || !h.is_multiple_of(3)
    {
        return vec![rec];
    }
    let parts = rec.duration_s.div_ceil(CUT_S);
    let total = rec.charge.amount.micros();
    (1..=parts)
        .map(|seq| {
            let mut part = rec.clone();
            let secs = (seq * CUT_S).min(rec.duration_s);
            part.record_id = format_compact!("{}-p{seq}", rec.record_id);
            part.duration_s = secs;
            part.charge.amount = Money(total * secs as i64 / rec.duration_s as i64);
            part.call_ref = Some(rec.record_id.clone());
            part.seq = Some(seq);
            part.partial = Some(match seq {
                1 => Partial::First,
                s if s == parts => Partial::Last,
                _ => Partial::Intermediate,
            });
            part.cumulative = true;
            part
        })
        .collect()
}
