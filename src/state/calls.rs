//! Open calls: the partial records of one long call made into one call.
//!
//! A switch cuts a long call (or data session) into partial records (TS 32.298 `causeForRecClosing`
//! partialRecord / timeLimit; TAP `partialTypeIndicator` F/I/L). Counted as records, one 90-minute
//! call in three parts is three calls; cumulative parts (each with the total so far) count its
//! minutes 1 + 2 + 3 times over and overlap one another, so the line looks as if it held three calls
//! at once. Records that carry a `call_ref` are therefore applied as parts of their call:
//!
//! - the call is counted once, by the first of its parts to arrive (whichever that is);
//! - each part adds what it adds to the call: its own duration, volume and charge, or, for a
//!   cumulative part, what it has beyond the largest total applied so far (so a late or repeated
//!   cumulative part adds nothing);
//! - the call keeps one span for concurrency, the union of its parts' spans, extended in place.
//!
//! So a call is visible to the rules from its first part on, with what it has cost so far: an IRSF
//! call running for 90 minutes alerts at its first 30-minute cut, not when it ends.
//!
//! What is remembered per open call is small (an `OpenCall`, keyed by line, record kind and
//! `call_ref`) and is part of the store's snapshots and deltas. A part that starts more than
//! `state.max_call_duration` after its call's latest end is a call of its own, decided from the
//! records' times alone (`is_same_call`); the store forgets a call only once no part that is not
//! late could still belong to it (`is_over`), so forgetting never changes a result.

use serde::{Deserialize, Serialize};

use crate::record::{Money, UsageRecord};

use super::entity::{Contribution, Span};

/// What the parts of one call applied so far add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenCall {
    /// The span applied for concurrency (answered outgoing voice only).
    pub span: Option<Span>,
    /// Seconds (voice) or bytes (data) applied.
    pub units: u64,
    pub charge: Money,
    /// The latest end (start + duration) of any part: the call is forgotten once the watermark
    /// passes it.
    pub ends: i64,
}

/// The key of a call: its line, its kind (type and direction: a voice call reference and a data
/// session's charging id may collide, and so may the two legs of one call) and its reference (unique
/// per switch, not across every switch).
pub fn key(r: &UsageRecord, call_ref: &str) -> u64 {
    let mut bytes = Vec::with_capacity(10 + call_ref.len());
    bytes.extend_from_slice(&r.served.msisdn.key().to_le_bytes());
    bytes.push(r.record_type as u8);
    bytes.push(r.direction.map_or(u8::MAX, |d| d as u8));
    bytes.extend_from_slice(call_ref.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// A part that starts this long after the latest end of its call's parts is a call of its own
/// (a feed reusing a reference): decided from the records' times alone, never from when the store
/// last swept, so every thread and instance counts alike.
pub fn is_same_call(open: &OpenCall, r: &UsageRecord, max_call_s: i64) -> bool {
    r.event_start.utc <= open.ends + max_call_s
}

/// Whether an open call can be forgotten at watermark `w`: no part that is not late can still be
/// one of its parts (a record lasts at most a week, `UsageRecord::validate`).
pub fn is_over(open: &OpenCall, w: i64, max_call_s: i64) -> bool {
    open.ends + max_call_s + MAX_RECORD_S < w
}

const MAX_RECORD_S: i64 = 7 * 86_400;

/// Turns a part's contribution (computed as if it were a whole record) into what it adds to its
/// call, given what the call's earlier parts applied; returns the call after it.
pub fn apply_part(
    open: Option<&OpenCall>,
    r: &UsageRecord,
    c: &mut Contribution,
    max_call_s: i64,
) -> OpenCall {
    let ends = r.event_start.utc + r.duration_s as i64;
    let Some(open) = open.filter(|o| is_same_call(o, r, max_call_s)) else {
        return OpenCall {
            span: c.call,
            units: c.units,
            charge: c.charge,
            ends,
        };
    };
    c.count = 0;
    let (units, charge) = if r.cumulative {
        // The call's totals so far: add only what goes beyond what was applied.
        let units = c.units.max(open.units);
        let charge = c.charge.max(open.charge);
        c.units = units - open.units;
        c.charge = charge - open.charge;
        (units, charge)
    } else {
        (open.units.saturating_add(c.units), open.charge + c.charge)
    };
    // One call, one span: the union of its parts', clipped like any call's
    // (`state.max_call_duration`).
    let span = match (open.span, c.call) {
        (Some(a), Some(b)) => {
            let start = a.start.min(b.start);
            Some(Span {
                start,
                end: a.end.max(b.end).min(start + max_call_s),
            })
        }
        (a, b) => a.or(b),
    };
    c.replaces = open.span.filter(|_| span != open.span);
    c.call = span.filter(|_| span != open.span);
    OpenCall {
        span,
        units,
        charge,
        ends: open.ends.max(ends),
    }
}
