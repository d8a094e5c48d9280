//! Duplicate detection by record id within an event-time horizon.
//!
//! Mediation resends and Kafka redelivery repeat record ids. Two generations of 64-bit fingerprints: a
//! lookup probes both, and when the newest event time passes the current generation's start + horizon,
//! the older generation is dropped. Every id is remembered for at least one horizon and at most two, at
//! ~13 bytes each, with no per-entry timestamps to scan. Collision odds at 10⁶ ids: ~3 × 10⁻⁸ per day.
//!
//! Beside each id, a 32-bit digest of the content it was first seen with: a second record with the
//! same id and other content is not a resend but a conflict (an exporter reusing ids, two sources
//! sharing an id space), dead-lettered with reason `conflicting_duplicate` so that somebody looks,
//! where a plain duplicate is only counted. The digest is of the decoded record, not of its bytes: a
//! resend by another exporter instance with other key order, spacing or number formatting is the
//! same record. Usage records are digested in their postcard form (every field, in order, none
//! skipped: unambiguous, and cheap at one per record); account events in their JSON form, because
//! their optional blocks are skipped when absent and only the field names then tell
//! `payment.invoice_id` from `payment.reversed_payment_id`.
//!
//! Fingerprints and digests are XXH3-64, a specified algorithm whose output is the same on every
//! machine and crate version (fixed-seed ahash is not: it changes with CPU features), because they
//! are written to state snapshots that another machine may load after a restore or a partition move.
//! A digest depends on the records' shape: a field added to `UsageRecord` or `AccountEvent` changes
//! every digest, and resends of records digested before would read as conflicts — so such a change
//! bumps the snapshot `FORMAT` (the pinned digests in the tests fail until it does).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// The fingerprints are already uniformly distributed: hashing them again would waste time.
#[derive(Default)]
pub struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A fingerprint as two halves, so that an entry with its digest takes 12 bytes, not 16 (a `u64`
/// key would align the pair to 8). Serialised as the `u64` (a map key any format can write).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint([u32; 2]);

impl Fingerprint {
    fn new(fp: u64) -> Self {
        Fingerprint([(fp >> 32) as u32, fp as u32])
    }
    fn get(self) -> u64 {
        u64::from(self.0[0]) << 32 | u64::from(self.0[1])
    }
}

impl Hash for Fingerprint {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.get());
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Fingerprint::new)
    }
}

type SeenIds = HashMap<Fingerprint, u32, BuildHasherDefault<Identity>>;

/// The fingerprint of a record id; `domain` keeps usage and event ids apart.
pub fn fingerprint(domain: u8, id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), 0x6364_7267_0000_0000 | domain as u64)
}

/// The digest of a usage record's content (its postcard serialisation, made on the stack for any
/// record of ordinary size).
pub fn usage_digest(record: &crate::record::UsageRecord) -> u32 {
    let mut buf = [0_u8; 1024];
    let digest = match postcard::to_slice(record, &mut buf) {
        Ok(bytes) => xxhash_rust::xxh3::xxh3_64(bytes),
        Err(_) => xxhash_rust::xxh3::xxh3_64(&postcard::to_allocvec(record).unwrap_or_default()),
    };
    digest as u32
}

/// The digest of an account event's content (its JSON form: field names included), written into a
/// buffer kept by the thread: a fresh vector per event cost a third of the digest in reallocation.
pub fn event_digest(event: &crate::record::AccountEvent) -> u32 {
    thread_local! {
        static JSON: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    JSON.with_borrow_mut(|json| {
        json.clear();
        if serde_json::to_writer(&mut *json, event).is_err() {
            json.clear();
        }
        xxhash_rust::xxh3::xxh3_64(json) as u32
    })
}

/// What the dedup memory knew of a record id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not seen within the horizon: remembered now.
    New,
    /// Seen with the same content: a resend or a redelivery.
    Again,
    /// Seen with other content: two records share the id. The first is kept.
    Conflict,
}

/// One change to the dedup memory, in the journal an incremental checkpoint carries: replayed in
/// order on the restored memory, the journal gives the same generations. (The memory changes with
/// every record, so per-key tombstones would not pay: its change is best told as what happened.)
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DedupOp {
    /// An id seen for the first time: its fingerprint and content digest went into the current
    /// generation.
    Insert { fingerprint: u64, digest: u32 },
    /// A generation began at `start`: the current one became the previous, the previous was dropped.
    /// (The very first generation too: both are empty then.)
    Generation { start: i64 },
}

/// Snapshotted as the two generations and the generation start.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Dedup {
    current: SeenIds,
    previous: SeenIds,
    generation_start: Option<i64>,
    horizon_s: i64,
}

impl Dedup {
    pub fn new(horizon_s: i64) -> Self {
        Dedup {
            current: SeenIds::default(),
            previous: SeenIds::default(),
            generation_start: None,
            horizon_s,
        }
    }

    /// Records `id` (namespaced by `domain`, so a usage record and an account event may share an id)
    /// with its `content` digest, and says whether and how it was seen before. What changed is
    /// appended to `journal`, if given (incremental checkpoints).
    pub fn check_and_insert(
        &mut self,
        domain: u8,
        id: &str,
        content: u32,
        newest_event_time: i64,
        mut journal: Option<&mut Vec<DedupOp>>,
    ) -> Seen {
        let start = match self.generation_start {
            Some(start) => start,
            None => {
                self.begin_generation(newest_event_time, journal.as_deref_mut());
                newest_event_time
            }
        };
        if newest_event_time >= start + self.horizon_s {
            self.begin_generation(newest_event_time, journal.as_deref_mut());
        }
        let fp = Fingerprint::new(fingerprint(domain, id));
        let first = match self.previous.get(&fp) {
            Some(&first) => first,
            None => match self.current.entry(fp) {
                std::collections::hash_map::Entry::Occupied(e) => *e.get(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(content);
                    if let Some(j) = journal {
                        j.push(DedupOp::Insert {
                            fingerprint: fp.get(),
                            digest: content,
                        });
                    }
                    return Seen::New;
                }
            },
        };
        if first == content {
            Seen::Again
        } else {
            Seen::Conflict
        }
    }

    fn begin_generation(&mut self, start: i64, journal: Option<&mut Vec<DedupOp>>) {
        self.previous = std::mem::take(&mut self.current);
        self.generation_start = Some(start);
        if let Some(j) = journal {
            // Two starts in one journal: whatever preceded the first is forgotten by the second, so
            // a checkpoint stuck in flight for hours does not grow it past two generations.
            if let Some(first) = j
                .iter()
                .rposition(|op| matches!(op, DedupOp::Generation { .. }))
            {
                j.drain(..first);
            }
            j.push(DedupOp::Generation { start });
        }
    }

    /// Replays a journal written by `check_and_insert` (restoring an incremental checkpoint).
    pub fn replay<'a>(&mut self, journal: impl IntoIterator<Item = &'a DedupOp>) {
        for op in journal {
            match *op {
                DedupOp::Insert {
                    fingerprint,
                    digest,
                } => {
                    self.current
                        .entry(Fingerprint::new(fingerprint))
                        .or_insert(digest);
                }
                DedupOp::Generation { start } => self.begin_generation(start, None),
            }
        }
    }

    /// Both generations sorted, and the generation start: for comparing two memories whose hash maps
    /// iterate in different orders.
    #[cfg(test)]
    pub fn canonical(&self) -> Vec<u8> {
        let sorted = |m: &SeenIds| {
            let mut v: Vec<(u64, u32)> = m.iter().map(|(k, d)| (k.get(), *d)).collect();
            v.sort_unstable();
            v
        };
        let generations = (
            sorted(&self.current),
            sorted(&self.previous),
            self.generation_start,
        );
        postcard::to_stdvec(&generations).expect("encodes")
    }

    /// A restored snapshot takes the configured horizon, which may have changed since it was written.
    pub fn set_horizon(&mut self, horizon_s: i64) {
        self.horizon_s = horizon_s;
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn heap_bytes(&self) -> usize {
        (self.current.capacity() + self.previous.capacity())
            * (std::mem::size_of::<(Fingerprint, u32)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests of the records in the tests below: pinned, see `usage_digest`.
    const USAGE_PIN: u32 = 1_412_405_483;
    const EVENT_PIN: u32 = 2_843_496_030;

    #[test]
    fn fingerprints_are_the_same_on_every_machine() {
        // Pinned values: a change here makes every snapshot's dedup memory useless.
        const FP_R1: u64 = 5_139_448_733_320_615_440;
        assert_eq!(fingerprint(0, "r1"), FP_R1);
        assert_ne!(fingerprint(0, "r1"), fingerprint(1, "r1"));
    }

    #[test]
    fn remembers_for_at_least_the_horizon() {
        let mut d = Dedup::new(86_400);
        let t0 = 1_795_000_000;
        let seen =
            |d: &mut Dedup, domain, id, t| d.check_and_insert(domain, id, 7, t, None) != Seen::New;
        assert!(!seen(&mut d, 0, "r1", t0));
        assert!(seen(&mut d, 0, "r1", t0 + 10));
        assert!(!seen(&mut d, 1, "r1", t0 + 10), "other domain");
        assert!(!seen(&mut d, 0, "r2", t0 + 86_400)); // rotates; r1 now in previous
        assert!(seen(&mut d, 0, "r1", t0 + 86_400 + 5));
        assert!(!seen(&mut d, 0, "r3", t0 + 2 * 86_400)); // rotates again; r1 forgotten
        assert!(!seen(&mut d, 0, "r1", t0 + 2 * 86_400 + 5));
        assert!(
            seen(&mut d, 0, "r2", t0 + 2 * 86_400 + 5),
            "r2 kept one more horizon"
        );
    }

    #[test]
    fn the_same_id_with_other_content_is_a_conflict_in_either_generation() {
        let mut d = Dedup::new(86_400);
        let t0 = 1_795_000_000;
        assert_eq!(d.check_and_insert(0, "r1", 1, t0, None), Seen::New);
        assert_eq!(d.check_and_insert(0, "r1", 1, t0 + 1, None), Seen::Again);
        assert_eq!(d.check_and_insert(0, "r1", 2, t0 + 2, None), Seen::Conflict);
        // The first content stays the reference: the conflicting copy is not remembered.
        assert_eq!(d.check_and_insert(0, "r1", 1, t0 + 3, None), Seen::Again);
        assert_eq!(d.check_and_insert(0, "r2", 5, t0 + 86_400, None), Seen::New); // r1 now previous
        assert_eq!(
            d.check_and_insert(0, "r1", 2, t0 + 86_401, None),
            Seen::Conflict
        );
        assert_eq!(
            d.check_and_insert(0, "r1", 1, t0 + 86_402, None),
            Seen::Again
        );
    }

    #[test]
    fn the_digest_is_of_the_decoded_content_not_of_the_bytes() {
        let decoder = crate::record::Decoder::default();
        let a = r#"{"record_id":"r1","record_type":"voice","direction":"mo","event_start":"2026-12-01T10:00:00Z","duration_s":60,"served":{"msisdn":"33612345678"},"charge":{"amount":"1.50"}}"#;
        // Same record: other key order, spacing and number formatting.
        let b = r#"{ "served": {"msisdn": "33612345678"}, "record_type": "voice", "record_id": "r1",
                    "direction": "mo", "duration_s": 60, "event_start": "2026-12-01T10:00:00Z",
                    "charge": {"amount": "1.5"} }"#;
        let c = a.replace("\"duration_s\":60", "\"duration_s\":61");
        let digest = |s: &str| usage_digest(&decoder.usage(s.as_bytes()).unwrap());
        assert_eq!(digest(a), digest(b));
        assert_ne!(digest(a), digest(&c));
        // Pinned: a change means the record's shape changed. Bump the snapshot FORMAT, then the pin.
        assert_eq!(
            digest(a),
            USAGE_PIN,
            "usage digest changed: bump snapshot FORMAT"
        );
    }

    #[test]
    fn events_that_differ_only_in_which_optional_block_they_carry_differ() {
        let decoder = crate::record::Decoder::default();
        let event = |payment: &str| {
            let text = format!(
                r#"{{"event_id":"e1","event_type":"payment_received","occurred_at":"2026-12-01T10:00:00Z","account_id":"A-1","payment":{{{payment}}},"amount":{{"value":"5.00"}}}}"#
            );
            event_digest(&decoder.account_event(text.as_bytes()).unwrap())
        };
        let by_invoice = event(r#""payment_id":"P1","invoice_id":"X""#);
        let by_reversal = event(r#""payment_id":"P1","reversed_payment_id":"X""#);
        assert_ne!(by_invoice, by_reversal);
        assert_eq!(
            by_invoice, EVENT_PIN,
            "event digest changed: bump snapshot FORMAT"
        );
    }

    /// A resend written in another notation (`record::numbering`) is the same record, not a conflict.
    #[test]
    fn notation_does_not_change_the_digest() {
        let d = crate::record::Decoder::default();
        let rec = |served: &str, other: &str| {
            let json = format!(
                r#"{{"record_id":"n1","record_type":"voice","direction":"mo","event_start":"2026-11-10T12:00:00+01:00","duration_s":60,"served":{{"msisdn":"{served}"}},"other_party":{{"number":"{other}"}}}}"#
            );
            usage_digest(&d.usage(json.as_bytes()).unwrap())
        };
        let plain = rec("33612345678", "33140000000");
        assert_eq!(rec("+33612345678", "0140000000"), plain);
        assert_eq!(rec("tel:+33612345678", "0033140000000"), plain);
        assert_ne!(rec("33612345678", "33140000001"), plain);
        assert_ne!(
            rec("33612345678", "anonymous"),
            rec("33612345678", "MYBANK")
        );
    }
}
