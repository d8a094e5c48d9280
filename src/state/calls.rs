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
//! What is remembered per open call is small (an `OpenCall`, keyed by line and `call_ref`) and is
//! part of the store's snapshots and deltas. A call is forgotten once the watermark has passed the
//! end of its latest part: a part arriving after that would be late anyway, unless it ends later
//! still, and then it is counted as a call of its own (the price of bounded memory).

use serde::{Deserialize, Serialize};

use crate::record::{Money, Number, UsageRecord};

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

/// The key of a call: its line and its reference (a reference is unique per switch, not across
/// lines of every switch).
pub fn key(line: Number, call_ref: &str) -> u64 {
    let mut buf = [0u8; 8 + 64];
    let n = call_ref.len().min(64);
    buf[..8].copy_from_slice(&line.key().to_le_bytes());
    buf[8..8 + n].copy_from_slice(&call_ref.as_bytes()[..n]);
    if call_ref.len() <= 64 {
        xxhash_rust::xxh3::xxh3_64(&buf[..8 + n])
    } else {
        let mut long = line.key().to_le_bytes().to_vec();
        long.extend_from_slice(call_ref.as_bytes());
        xxhash_rust::xxh3::xxh3_64(&long)
    }
}

/// Turns a part's contribution (computed as if it were a whole record) into what it adds to its
/// call, given what the call's earlier parts applied; returns the call after it.
pub fn apply_part(open: Option<&OpenCall>, r: &UsageRecord, c: &mut Contribution) -> OpenCall {
    let ends = r.event_start.utc + r.duration_s as i64;
    let Some(open) = open else {
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
        (open.units + c.units, open.charge + c.charge)
    };
    let span = match (open.span, c.call) {
        (Some(a), Some(b)) => Some(Span {
            start: a.start.min(b.start),
            end: a.end.max(b.end),
        }),
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
