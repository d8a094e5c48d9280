//! The one header every message of a repartition stage's topic carries (`crate::repartition`):
//! which source partition (lane) it comes from, its position there, and its merge key's event
//! time — or, for a marker (no payload), how far its lane has come. Here, with the sources, because
//! the workers read it off the by-account topics as they read any input.

use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::rules::engine::AccountFacts;
use crate::source::align::Key;

/// The header's name.
pub const NAME: &str = "cdrguard-lane";

const MARK: u8 = 1;
const ENDED: u8 = 2;
const LEN: usize = 4 + 8 + 8 + 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneHeader {
    /// The source partition.
    pub lane: u32,
    /// A record: its offset in the source partition. A marker: the next offset to come there.
    pub seq: i64,
    /// The source partition's running maximum event time at this point (UTC seconds): the record's
    /// merge key (`source::align`), or a marker's bound.
    pub time: i64,
    flags: u8,
}

impl LaneHeader {
    pub fn record(lane: u32, seq: i64, time: i64) -> Self {
        LaneHeader {
            lane,
            seq,
            time,
            flags: 0,
        }
    }

    /// Nothing of `lane` before `seq` is still to come, and nothing after it is keyed below `time`;
    /// `ended`: its source had nothing more when this was written.
    pub fn marker(lane: u32, seq: i64, time: i64, ended: bool) -> Self {
        LaneHeader {
            lane,
            seq,
            time,
            flags: MARK | if ended { ENDED } else { 0 },
        }
    }

    pub fn is_marker(&self) -> bool {
        self.flags & MARK != 0
    }

    pub fn ended(&self) -> bool {
        self.flags & ENDED != 0
    }

    /// The record's place in the merge.
    pub fn key(&self) -> Key {
        Key {
            time: self.time,
            lane: self.lane,
            seq: self.seq,
        }
    }

    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(&self.lane.to_be_bytes());
        b[4..12].copy_from_slice(&self.seq.to_be_bytes());
        b[12..20].copy_from_slice(&self.time.to_be_bytes());
        b[20] = self.flags;
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LEN {
            return None;
        }
        Some(LaneHeader {
            lane: u32::from_be_bytes(b[..4].try_into().ok()?),
            seq: i64::from_be_bytes(b[4..12].try_into().ok()?),
            time: i64::from_be_bytes(b[12..20].try_into().ok()?),
            flags: b[20],
        })
    }

    pub fn to_headers(&self) -> OwnedHeaders {
        OwnedHeaders::new_with_capacity(1).insert(Header {
            key: NAME,
            value: Some(&self.encode()[..]),
        })
    }

    /// The header of a consumed message, if it has one.
    pub fn of<H: Headers>(headers: Option<&H>) -> Option<Self> {
        headers?
            .iter()
            .find(|h| h.key == NAME)
            .and_then(|h| Self::decode(h.value?))
    }
}

/// The header of a calls-topic message (`repartition::calls`): what its record is handed over for.
const HANDED: &str = "cdrguard-handover";

/// What a record is handed over to the calling numbers for, beside its raw line.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Handed {
    /// An MT call that gives its calling number state.
    pub call: bool,
    /// It triggers subscriber rules that read calling-number alerts: its account as its partition
    /// saw it then.
    pub facts: Option<AccountFacts>,
}

impl Handed {
    pub fn add_to(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let value = serde_json::to_vec(self).expect("plain data serialises");
        headers.insert(Header {
            key: HANDED,
            value: Some(&value),
        })
    }

    /// The header of a consumed message, if it has a readable one.
    pub fn of<H: Headers>(headers: Option<&H>) -> Option<Self> {
        headers?
            .iter()
            .find(|h| h.key == HANDED)
            .and_then(|h| serde_json::from_slice(h.value?).ok())
    }
}

/// A merge key as commit metadata (`time:lane:seq`), and back.
pub fn key_to_metadata(k: Key) -> String {
    format!("{}:{}:{}", k.time, k.lane, k.seq)
}

pub fn key_from_metadata(s: &str) -> Option<Key> {
    let mut it = s.split(':');
    let k = Key {
        time: it.next()?.parse().ok()?,
        lane: it.next()?.parse().ok()?,
        seq: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_metadata_round_trip() {
        for h in [
            LaneHeader::record(7, 1234, 1_700_000_000),
            LaneHeader::marker(0, 0, i64::MIN, true),
            LaneHeader::marker(u32::MAX, -1, i64::MAX, false),
        ] {
            assert_eq!(LaneHeader::decode(&h.encode()), Some(h));
            assert_eq!(key_from_metadata(&key_to_metadata(h.key())), Some(h.key()));
        }
        assert!(LaneHeader::marker(1, 2, 3, true).ended());
        assert!(!LaneHeader::record(1, 2, 3).is_marker());
        assert_eq!(LaneHeader::decode(b"short"), None);
        assert_eq!(key_from_metadata("1:2"), None);
        assert_eq!(key_from_metadata("1:2:3:4"), None);
        let handed = Handed {
            call: true,
            facts: Some(AccountFacts {
                id: Some("A1".into()),
                segment: None,
                credit_limit: true,
                overdue: false,
            }),
        };
        let headers = handed.add_to(LaneHeader::record(1, 2, 3).to_headers());
        assert_eq!(Handed::of(Some(&headers)), Some(handed));
        assert_eq!(
            LaneHeader::of(Some(&headers)),
            Some(LaneHeader::record(1, 2, 3))
        );
    }
}
