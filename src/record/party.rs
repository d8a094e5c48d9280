//! The numbered parties of a usage record: the served line, the other party, the forward target.
//!
//! Each is read from the wire as the text the feed wrote and made canonical by `Decoder::usage`
//! through `record::numbering`, which needs the deployment's numbering plan (serde cannot carry it).
//! The written form is kept when it differs from the canonical digits: the evidence shows what the
//! feed said, and `gen` can write every form through the same types.
//!
//! Serialised two ways: JSON writes the number as the feed wrote it; the binary form behind the
//! dedup digest (`state::dedup`) writes canonical keys only, byte for byte what it was before numbers
//! were normalised. So digests already in snapshots stay valid, and a resend in another notation is
//! the same record, not a conflict.

use compact_str::CompactString;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::numbering::{NumberKind, Numbering, TypeOfNumber};
use super::repair::{Repair, Repairs};
use super::Number;

/// The served line. `msisdn` is canonical E.164 once decoded; before, a placeholder, with the text
/// in `msisdn_written`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "ServedWire")]
pub struct Served {
    pub msisdn: Number,
    pub imsi: Option<Number>,
    pub imei: Option<Number>,
    pub account_id: Option<CompactString>,
    /// As the feed wrote the msisdn, when that is not its canonical digits.
    pub msisdn_written: Option<CompactString>,
    /// The IMEI as a feed writes it (an IMEISV), for `gen` to write; decoding never sets it.
    pub imei_written: Option<CompactString>,
    /// A bad IMSI or IMEI dropped on reading, for `normalise` to note on the record.
    pub dropped: Repairs,
}

#[derive(Deserialize)]
struct ServedWire {
    #[serde(default)]
    msisdn: Option<CompactString>,
    #[serde(default)]
    imsi: Option<CompactString>,
    #[serde(default)]
    imei: Option<CompactString>,
    #[serde(default)]
    account_id: Option<CompactString>,
}

/// IMSI and IMEI need no numbering plan: read here, where serde hands them over, with nothing kept
/// or allocated per record; a bad one is dropped and noted.
impl From<ServedWire> for Served {
    fn from(w: ServedWire) -> Self {
        let mut dropped = Repairs::default();
        let imsi = w.imsi.as_deref().and_then(|t| {
            let n = imsi(t);
            dropped.note_if(n.is_none(), Repair::ImsiDropped);
            n
        });
        let imei = w.imei.as_deref().and_then(|t| {
            let n = imei(t);
            dropped.note_if(n.is_none(), Repair::ImeiDropped);
            n
        });
        Served {
            msisdn: Number::from_key(0),
            imsi,
            imei,
            account_id: w.account_id,
            msisdn_written: w.msisdn,
            imei_written: None,
            dropped,
        }
    }
}

impl Served {
    pub fn new(msisdn: Number) -> Self {
        Served {
            msisdn,
            imsi: None,
            imei: None,
            account_id: None,
            msisdn_written: None,
            imei_written: None,
            dropped: Repairs::default(),
        }
    }

    /// The served number must be a line: E.164 after normalisation, or, without an MSISDN, the
    /// IMSI. A bad IMSI or IMEI is an optional field gone wrong: dropped and noted in `repairs`, the
    /// record kept (unless the IMSI was all there was to name the line).
    pub(crate) fn normalise(
        &mut self,
        plan: &Numbering,
        repairs: &mut Repairs,
    ) -> Result<(), (&'static str, String)> {
        for r in std::mem::take(&mut self.dropped).iter() {
            repairs.note_if(true, r);
        }
        let Some(text) = self.msisdn_written.take() else {
            // No MSISDN: an inbound roamer in a TAP file, or a data session of a SIM known only by
            // its IMSI. The line is keyed by the IMSI, apart from every phone number.
            return match self.imsi {
                Some(imsi) => {
                    self.msisdn = imsi.as_imsi_line();
                    Ok(())
                }
                None => Err((
                    "served.msisdn",
                    "missing field `msisdn` (required unless served.imsi names the line)".into(),
                )),
            };
        };
        let n = plan
            .normalise_line(&text)
            .map_err(|why| ("served.msisdn", format!("invalid number {text:?}: {why}")))?;
        match (n.kind, n.number) {
            (NumberKind::E164, Some(number)) => {
                self.msisdn = number;
                self.msisdn_written = differs(text, number);
                Ok(())
            }
            (kind, _) => Err((
                "served.msisdn",
                format!("{text:?} is {kind}, and a served line needs an E.164 number"),
            )),
        }
    }
}

impl Serialize for Served {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let human = s.is_human_readable();
        let mut st = s.serialize_struct("Served", 4)?;
        match &self.msisdn_written {
            Some(w) if human => st.serialize_field("msisdn", w.as_str())?,
            // A line known by its IMSI was written without an MSISDN.
            None if human && self.msisdn.is_imsi_line() => st.skip_field("msisdn")?,
            _ => st.serialize_field("msisdn", &self.msisdn)?,
        }
        st.serialize_field("imsi", &self.imsi)?;
        // The IMEI as written (an IMEISV) when `gen` set one; the canonical key otherwise.
        match self.imei_written.as_deref() {
            Some(w) if human => st.serialize_field("imei", w)?,
            _ => st.serialize_field("imei", &self.imei)?,
        }
        st.serialize_field("account_id", &self.account_id)?;
        st.end()
    }
}

/// The other party. `number` and `kind` are set at decode; `number` is `None` when the party is
/// absent, withheld or alphanumeric.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "PartyWire")]
pub struct OtherParty {
    pub number: Option<Number>,
    pub kind: NumberKind,
    /// As the feed wrote it, when that is not the canonical digits.
    pub written: Option<CompactString>,
    pub type_of_number: Option<TypeOfNumber>,
}

#[derive(Deserialize)]
struct PartyWire {
    #[serde(default)]
    number: Option<CompactString>,
    #[serde(default)]
    type_of_number: Option<TypeOfNumber>,
}

impl From<PartyWire> for OtherParty {
    fn from(w: PartyWire) -> Self {
        OtherParty {
            number: None,
            kind: NumberKind::E164,
            written: w.number,
            type_of_number: w.type_of_number,
        }
    }
}

impl OtherParty {
    pub fn of(number: Number) -> Self {
        OtherParty {
            number: Some(number),
            ..OtherParty::default()
        }
    }

    pub(crate) fn normalise(&mut self, plan: &Numbering) -> Result<(), (&'static str, String)> {
        (self.number, self.kind, self.written) =
            normalise_party(plan, self.written.take(), self.type_of_number)
                .map_err(|why| ("other_party.number", why))?;
        Ok(())
    }
}

impl Serialize for OtherParty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            let mut st = s.serialize_struct("OtherParty", 1)?;
            st.serialize_field("number", &digest_key(self.number, self.kind, &self.written))?;
            return st.end();
        }
        let mut st = s.serialize_struct("OtherParty", 2)?;
        match &self.written {
            Some(w) => st.serialize_field("number", w.as_str())?,
            None => st.serialize_field("number", &self.number)?,
        }
        if let Some(t) = self.type_of_number {
            st.serialize_field("type_of_number", &t)?;
        }
        st.end()
    }
}

/// Where the served line forwarded a call; normalised like the other party.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "ForwardingWire")]
pub struct Forwarding {
    pub forwarded_to_number: Option<Number>,
    pub kind: NumberKind,
    pub written: Option<CompactString>,
}

#[derive(Deserialize)]
struct ForwardingWire {
    #[serde(default)]
    forwarded_to_number: Option<CompactString>,
}

impl From<ForwardingWire> for Forwarding {
    fn from(w: ForwardingWire) -> Self {
        Forwarding {
            forwarded_to_number: None,
            kind: NumberKind::E164,
            written: w.forwarded_to_number,
        }
    }
}

impl Forwarding {
    pub(crate) fn normalise(&mut self, plan: &Numbering) -> Result<(), (&'static str, String)> {
        (self.forwarded_to_number, self.kind, self.written) =
            normalise_party(plan, self.written.take(), None)
                .map_err(|why| ("forwarding.forwarded_to_number", why))?;
        Ok(())
    }
}

impl Serialize for Forwarding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let human = s.is_human_readable();
        let mut st = s.serialize_struct("Forwarding", 1)?;
        match &self.written {
            Some(w) if human => st.serialize_field("forwarded_to_number", w.as_str())?,
            _ if human => st.serialize_field("forwarded_to_number", &self.forwarded_to_number)?,
            _ => st.serialize_field(
                "forwarded_to_number",
                &digest_key(self.forwarded_to_number, self.kind, &self.written),
            )?,
        }
        st.end()
    }
}

/// An IMSI: 6 to 15 digits (MCC, MNC and at least one digit of MSIN; TS 23.003 §2.2).
fn imsi(text: &str) -> Option<Number> {
    (text.len() >= 6 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| Number::parse(text).ok())
        .flatten()
}

/// A handset's identity: TAC and serial number, the first 14 digits. A 15-digit IMEI adds a check
/// digit and a 16-digit IMEISV a software version (TS 23.003 §6.2): neither names another handset,
/// so both are cut to 14 and the three forms of one handset are one key. Shorter digit strings are
/// kept as they are (test feeds use them).
fn imei(text: &str) -> Option<Number> {
    if !text.bytes().all(|b| b.is_ascii_digit()) || text.is_empty() || text.len() > 16 {
        return None;
    }
    Number::parse(&text[..text.len().min(14)]).ok()
}

type Party = (Option<Number>, NumberKind, Option<CompactString>);

/// A party as the feed wrote it → (canonical number, kind, the written text when it differs). An
/// absent party stays absent (kind `e164`, no number), as before normalisation existed.
fn normalise_party(
    plan: &Numbering,
    written: Option<CompactString>,
    ton: Option<TypeOfNumber>,
) -> Result<Party, String> {
    let Some(text) = written else {
        return Ok((None, NumberKind::E164, None));
    };
    let n = plan
        .normalise(&text, ton)
        .map_err(|why| format!("invalid number {text:?}: {why}"))?;
    let kept = match n.number {
        Some(number) => differs(text, number),
        None => Some(text),
    };
    Ok((n.number, n.kind, kept))
}

/// The written text, unless it is exactly the canonical digits (the common case keeps nothing).
fn differs(text: CompactString, number: Number) -> Option<CompactString> {
    let same =
        text.len() == number.digits() && Number::parse(&text).is_ok_and(|parsed| parsed == number);
    (!same).then_some(text)
}

/// The key a party contributes to the dedup digest: an E.164 number's packed key unchanged (so the
/// digest of every record that was valid before kinds existed is the same), the kind in bits the
/// packed key never uses for the others.
fn digest_key(
    number: Option<Number>,
    kind: NumberKind,
    written: &Option<CompactString>,
) -> Option<u64> {
    const KIND_SHIFT: u32 = 60;
    match kind {
        NumberKind::E164 => number.map(Number::key),
        NumberKind::ShortCode => number.map(|n| n.key() | 1 << KIND_SHIFT),
        NumberKind::Alphanumeric => {
            let text = written.as_deref().unwrap_or("");
            Some((xxhash_rust::xxh3::xxh3_64(text.as_bytes()) & ((1 << 54) - 1)) | 2 << KIND_SHIFT)
        }
        NumberKind::Withheld => Some(3 << KIND_SHIFT),
    }
}
