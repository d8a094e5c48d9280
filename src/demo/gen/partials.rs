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

/// The SDR rate `gen --tap` prices at: one `XDR` is this many micro-units of the home currency.
pub const TAP_XDR_RATE: i64 = 1_200_000;

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

/// A roaming record as a TAP file delivers it: priced in SDR (`XDR`, at `TAP_XDR_RATE`), and one in
/// three delivered 24 to 34 h after its call — within TAP's 36 h, past a 6 h watermark. Returns the
/// delivery time of a record to hold back. Read such data with `input.exchange_rates` (`XDR,1.20`)
/// and `state.roaming_allowed_lateness = "36h"` (and `dedup_horizon` as long).
pub fn tap(rec: &mut UsageRecord) -> Option<i64> {
    if !rec.roaming.is_roaming || rec.served.msisdn.is_imsi_line() {
        return None;
    }
    let eur = rec.charge.amount.micros() as i128;
    let xdr = (eur * 1_000_000 + TAP_XDR_RATE as i128 / 2) / TAP_XDR_RATE as i128;
    rec.charge.amount = Money(xdr as i64);
    rec.charge.currency = Some("XDR".into());
    let h = xxhash_rust::xxh3::xxh3_64(rec.record_id.as_bytes());
    h.is_multiple_of(3)
        .then(|| rec.event_start.utc + 24 * 3600 + (h >> 8) as i64 % (10 * 3600))
}
