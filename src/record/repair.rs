//! Optional fields a record arrived with in a form cdrguard cannot use.
//!
//! A record whose IMEI has 17 digits or whose latitude is 123° still says who called whom, when and
//! for how much: rejecting it for an optional field would lose what every rule needs. The decoder
//! drops such a field, keeps the record, and notes it here; the pipeline counts the notes by field
//! (`replay` summary `repaired`, metric `cdrguard_fields_dropped_total{field}`), so a feed that
//! sends bad identities is seen at once without losing its calls.

/// What was dropped from one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Repair {
    /// `served.imsi`: not 6 to 15 digits.
    #[serde(rename = "served.imsi")]
    ImsiDropped,
    /// `served.imei`: not 1 to 16 digits (a 16-digit IMEISV is kept as its IMEI).
    #[serde(rename = "served.imei")]
    ImeiDropped,
    /// `location`: a latitude or longitude out of range; the position is dropped, the cell kept.
    #[serde(rename = "location.lat_lon")]
    PositionDropped,
}

wire_names!(Repair {
    ImsiDropped => "served.imsi",
    ImeiDropped => "served.imei",
    PositionDropped => "location.lat_lon",
});

/// The set of repairs of one record: a bit per `Repair`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repairs(u8);

impl Repairs {
    pub fn note_if(&mut self, cond: bool, r: Repair) {
        if cond {
            self.0 |= 1 << r as u8;
        }
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Repair> {
        Repair::ALL
            .iter()
            .copied()
            .filter(move |r| self.0 & (1 << *r as u8) != 0)
    }
}
