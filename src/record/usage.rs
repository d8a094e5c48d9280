//! The usage record (a CDR after mediation): wire shape and the compact decoded form.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::object::object;
pub use super::party::{Forwarding, OtherParty, Served};
use super::{EventTime, Money, Number, NumberKind, Repair, Repairs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordType {
    Voice,
    Sms,
    Data,
}

wire_names!(RecordType { Voice => "voice", Sms => "sms", Data => "data" });

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Mobile originated: the served subscriber placed the call / sent the SMS.
    Mo,
    /// Mobile terminated: the served subscriber received it.
    Mt,
    /// The call was forwarded by the served subscriber's line to `forwarding.forwarded_to_number`.
    Forwarded,
}

wire_names!(Direction { Mo => "mo", Mt => "mt", Forwarded => "forwarded" });

/// Which part of a long call a partial record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partial {
    First,
    Intermediate,
    Last,
}

wire_names!(Partial { First => "first", Intermediate => "intermediate", Last => "last" });

/// A decoded usage record. Numbers are packed, money is exact, optional blocks have their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub record_id: CompactString,
    pub record_type: RecordType,
    /// Present for voice and SMS (the decoder enforces it), absent for data.
    pub direction: Option<Direction>,
    pub event_start: EventTime,
    #[serde(default)]
    pub duration_s: u32,
    #[serde(default = "yes")]
    pub answered: bool,
    #[serde(deserialize_with = "object")]
    pub served: Served,
    #[serde(default, deserialize_with = "object")]
    pub other_party: OtherParty,
    #[serde(default, deserialize_with = "object")]
    pub location: Location,
    #[serde(default, deserialize_with = "object")]
    pub roaming: Roaming,
    #[serde(default, deserialize_with = "object")]
    pub forwarding: Forwarding,
    #[serde(default, deserialize_with = "object")]
    pub volume: Volume,
    #[serde(default, deserialize_with = "object")]
    pub charge: Charge,
    /// The call this record is a part of, when the switch cut a long call into partial records
    /// (TS 32.298 `causeForRecClosing` partialRecord / timeLimit, TAP `partialTypeIndicator`): the
    /// same on every part of one call of one line. Absent on whole records. (Left out of the
    /// serialised form when absent, so the dedup digest of a whole record is what it was.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_ref: Option<CompactString>,
    /// The part's sequence number within its call: parts are told apart by (`call_ref`, `seq`),
    /// not by `record_id`, which some exporters repeat on every part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
    /// The part's `duration_s` and charge are the call's totals so far, not the part's own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cumulative: bool,
    /// Optional fields dropped at decode (`record::repair`).
    #[serde(skip)]
    pub repairs: Repairs,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Location {
    #[serde(default)]
    pub cell_id: Option<u64>,
    #[serde(default)]
    pub lat: Option<f64>,
    #[serde(default)]
    pub lon: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Roaming {
    #[serde(default)]
    pub is_roaming: bool,
    #[serde(default)]
    pub visited_plmn: Option<CompactString>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    #[serde(default)]
    pub bytes_up: u64,
    #[serde(default)]
    pub bytes_down: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "ChargeWire")]
pub struct Charge {
    pub amount: Money,
    pub currency: Option<CompactString>,
    /// The amount as priced, when the record was priced in another currency and converted at
    /// decode (`record::rates`); `amount` and `currency` are then the deployment's.
    #[serde(skip)]
    pub original: Option<Box<(Money, CompactString)>>,
    /// The record stated an amount (zero included). An unrated record may be priced from the
    /// cost table at decode (`record::costs`).
    #[serde(skip)]
    pub rated: bool,
}

#[derive(Deserialize)]
struct ChargeWire {
    /// Absent: unrated. `null` is no amount either way, and rejected as before.
    #[serde(default, deserialize_with = "present")]
    amount: Option<Money>,
    #[serde(default)]
    currency: Option<CompactString>,
}

impl Charge {
    /// A charge the record states (rated).
    pub fn stated(amount: Money, currency: Option<CompactString>) -> Charge {
        Charge {
            amount,
            currency,
            original: None,
            rated: true,
        }
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Money>, D::Error> {
    Money::deserialize(d).map(Some)
}

impl From<ChargeWire> for Charge {
    fn from(w: ChargeWire) -> Self {
        Charge {
            amount: w.amount.unwrap_or_default(),
            currency: w.currency,
            original: None,
            rated: w.amount.is_some(),
        }
    }
}

impl UsageRecord {
    /// The number a forwarded call went to: the forwarding block, else the other party.
    pub fn forwarded_to(&self) -> Option<Number> {
        self.forwarding
            .forwarded_to_number
            .or(match self.direction {
                Some(Direction::Forwarded) => self.other_party.number,
                _ => None,
            })
    }

    /// The number this record's traffic went to: for a forwarded call the forward target (the risk
    /// is where it was forwarded, not who called), else the other party.
    pub fn destination(&self) -> Option<Number> {
        if self.is_forwarded() {
            self.forwarded_to().or(self.other_party.number)
        } else {
            self.other_party.number
        }
    }

    /// `destination` with its kind (`record::numbering`).
    pub fn destination_party(&self) -> Option<(Number, NumberKind)> {
        let forward = &self.forwarding;
        if self.is_forwarded() {
            if let Some(n) = forward.forwarded_to_number {
                return Some((n, forward.kind));
            }
        }
        let other = &self.other_party;
        other.number.map(|n| (n, other.kind))
    }

    /// (canonical, as written) for each number the feed wrote in another form; no allocation when
    /// there is none, which is nearly always.
    pub fn written_numbers(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |number: Option<Number>,
                       kind: NumberKind,
                       written: &Option<compact_str::CompactString>| {
            if let Some(w) = written {
                // A sender name or a withheld party has no digits: named by its kind.
                let canonical = number.map_or_else(|| kind.to_string(), |n| n.to_string());
                if !out.iter().any(|(c, _)| *c == canonical) {
                    out.push((canonical, w.to_string()));
                }
            }
        };
        let (other, forward) = (&self.other_party, &self.forwarding);
        add(
            Some(self.served.msisdn),
            NumberKind::E164,
            &self.served.msisdn_written,
        );
        add(other.number, other.kind, &other.written);
        add(forward.forwarded_to_number, forward.kind, &forward.written);
        out
    }

    pub fn is_forwarded(&self) -> bool {
        self.direction == Some(Direction::Forwarded)
            || self.forwarding.forwarded_to_number.is_some()
    }

    pub fn bytes(&self) -> u64 {
        self.volume.bytes_up.saturating_add(self.volume.bytes_down)
    }

    /// A position outside the globe is dropped (the cell id stays): the record is still a call.
    pub(crate) fn repair_position(&mut self) {
        let l = &mut self.location;
        let bad = l.lat.is_some_and(|lat| !(-90.0..=90.0).contains(&lat))
            || l.lon.is_some_and(|lon| !(-180.0..=180.0).contains(&lon));
        if bad {
            (l.lat, l.lon) = (None, None);
        }
        self.repairs.note_if(bad, Repair::PositionDropped);
    }

    /// Checks that serde cannot express. Each error names its field path.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.record_id.is_empty() {
            return Err(("record_id", "must not be empty".into()));
        }
        if self.direction.is_none() && self.record_type != RecordType::Data {
            return Err((
                "direction",
                format!(
                    "missing field `direction` (required for {:?} records)",
                    self.record_type
                ),
            ));
        }
        if self.call_ref.is_none()
            && (self.seq.is_some() || self.partial.is_some() || self.cumulative)
        {
            return Err((
                "call_ref",
                "missing field `call_ref` (required with seq, partial or cumulative)".into(),
            ));
        }
        if self.call_ref.as_deref() == Some("") {
            return Err(("call_ref", "must not be empty".into()));
        }
        if self.charge.amount.is_negative() {
            return Err((
                "charge.amount",
                format!("negative charge {}", self.charge.amount),
            ));
        }
        if self.duration_s > 7 * 86_400 {
            return Err((
                "duration_s",
                format!("{} s is longer than a week", self.duration_s),
            ));
        }
        Ok(())
    }
}
