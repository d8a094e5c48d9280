//! Usage records: who (by activity weight), when (diurnal), what (voice / SMS / data), with whom, where,
//! and what it cost.

use std::io::{self, Write};

use compact_str::{format_compact, CompactString};
use fastrand::Rng;

use super::clock::Clock;
use super::contacts;
use super::dist::{chance, log_normal, weighted};
use super::numbering::NumberPlan;
use super::partials;
use super::population::{Line, Population};
use super::tariff::{per_mb, per_minute, VisitedNetwork, SMS_INTERNATIONAL, VISITED};
use crate::record::{
    Charge, Direction, Forwarding, Location, Money, Number, OtherParty, RecordType, Roaming,
    Served, UsageRecord, Volume,
};

/// Voice, SMS, data, in percent of records.
const MIX: [u32; 3] = [45, 20, 35];
/// Share of voice and SMS placed by the served line (the rest it receives).
const MO_SHARE: f64 = 0.55;
/// Share of calls the line forwards (busy, no answer, unconditional).
const FORWARDED_SHARE: f64 = 0.005;
const ANSWERED_SHARE: f64 = 0.85;
/// Shares of voice calls to or from abroad and to high-risk ranges: enough for international rules to
/// have a baseline, far too little (and too scattered) to look like IRSF.
const INTERNATIONAL_VOICE: f64 = 0.05;
const HIGH_RISK_VOICE: f64 = 0.0005;
const INTERNATIONAL_SMS: f64 = 0.03;
/// Received SMS from short codes (one-time passwords, delivery notices).
const A2P_SMS: f64 = 0.15;
/// Calls and messages with someone outside the contact book (shops, call centres, wrong numbers).
const STRANGER_SHARE: f64 = 0.1;
/// Records without a location (mediation could not resolve the cell).
const NO_LOCATION: f64 = 0.03;

/// Writes `records` usage records as NDJSON, sorted by `event_start`, with the stories' records (sorted)
/// merged in. Some long calls take several lines (`partials`). Returns the lines written.
#[allow(clippy::too_many_arguments)]
pub fn write(
    rng: &mut Rng,
    records: u64,
    pop: &Population,
    plan: &NumberPlan,
    clock: &Clock,
    seed: u64,
    tag: &str,
    tap: bool,
    stories: &[UsageRecord],
    out: &mut dyn Write,
) -> io::Result<u64> {
    let slots = schedule(rng, records, pop, clock);
    let mut maker = Maker {
        pop,
        plan,
        clock,
        seed,
        tag,
        busy_until: vec![0; pop.lines.len()],
        seq: [0; 3],
    };
    let mut buf = Vec::with_capacity(1024);
    let mut write = |rec: &UsageRecord| -> io::Result<()> {
        buf.clear();
        serde_json::to_writer(&mut buf, rec)?;
        buf.push(b'\n');
        out.write_all(&buf)
    };
    // Stories (sorted) merge into the sorted background by event time.
    let mut told = stories.iter().peekable();
    let mut written = stories.len() as u64;
    // TAP records held back until their delivery time: (delivered at, order) → record.
    let mut held: std::collections::BTreeMap<(i64, u64), UsageRecord> = Default::default();
    for slot in slots {
        let rec = maker.record(rng, slot as u32, (slot >> 32) as u32);
        while let Some(s) = told.next_if(|s| s.event_start.utc <= rec.event_start.utc) {
            write(s)?;
        }
        while let Some(e) = held.first_entry() {
            if e.key().0 > rec.event_start.utc {
                break;
            }
            write(&e.remove())?;
        }
        for mut part in partials::split(rec) {
            written += 1;
            if tap {
                if let Some(delivered) = partials::tap(&mut part) {
                    held.insert((delivered, written), part);
                    continue;
                }
            }
            write(&part)?;
        }
    }
    for s in told {
        write(s)?;
    }
    for (_, rec) in held {
        write(&rec)?;
    }
    Ok(written)
}

/// Who and when for every record, sorted by time: `seconds after start << 32 | line`, 8 bytes a record
/// (8 MB for 10⁶). Sorting whole keys makes the order independent of the sort algorithm.
fn schedule(rng: &mut Rng, records: u64, pop: &Population, clock: &Clock) -> Vec<u64> {
    let n = pop.lines.len() as u64;
    let mut slots: Vec<u64> = Vec::with_capacity(records as usize);
    // Everyone appears at least once when there are enough records; the rest go by activity weight.
    if records >= n {
        slots.extend(0..n);
    }
    let mut total = 0.0;
    let cumulative: Vec<f64> = pop
        .lines
        .iter()
        .map(|l| {
            total += l.weight;
            total
        })
        .collect();
    while (slots.len() as u64) < records {
        let x = rng.f64() * total;
        let i = cumulative.partition_point(|&c| c <= x).min(n as usize - 1);
        slots.push(i as u64);
    }
    for slot in &mut slots {
        let line = &pop.lines[*slot as usize];
        *slot |= (clock.sample(rng, line.profile) as u64) << 32;
    }
    slots.sort_unstable();
    slots
}

struct Maker<'a> {
    pop: &'a Population,
    plan: &'a NumberPlan,
    clock: &'a Clock,
    seed: u64,
    tag: &'a str,
    /// Per line, seconds after start until which it is in a call: a line in a call misses the next one
    /// instead of holding two, which simultaneous-call rules would rightly flag.
    busy_until: Vec<u32>,
    /// Record sequence numbers per record type, for the record ids.
    seq: [u64; 3],
}

impl Maker<'_> {
    fn record(&mut self, rng: &mut Rng, line_idx: u32, t: u32) -> UsageRecord {
        let line = &self.pop.lines[line_idx as usize];
        let visiting = line.visiting.map(|v| &VISITED[v as usize]);
        let record_type =
            [RecordType::Voice, RecordType::Sms, RecordType::Data][weighted(rng, &MIX)];
        let seq = &mut self.seq[record_type as usize];
        *seq += 1;
        let record_id = match record_type {
            RecordType::Voice => format_compact!("msc{}-{}{:09}", line.msc, self.tag, *seq),
            RecordType::Sms => format_compact!("sms-{}{:09}", self.tag, *seq),
            RecordType::Data => format_compact!("pgw-{}{:09}", self.tag, *seq),
        };
        let mut rec = UsageRecord {
            record_id,
            record_type,
            direction: None,
            event_start: self.clock.at(t as i64),
            duration_s: 0,
            answered: true,
            served: Served {
                imsi: Some(line.imsi),
                imei: Some(line.imei),
                account_id: Some(self.pop.accounts[line.account as usize].id.clone()),
                ..Served::new(line.msisdn)
            },
            other_party: OtherParty::default(),
            location: location(rng, line),
            roaming: match visiting {
                Some(v) => Roaming {
                    is_roaming: true,
                    visited_plmn: Some(CompactString::const_new(v.plmn)),
                },
                None => Roaming::default(),
            },
            forwarding: Forwarding::default(),
            volume: Volume::default(),
            charge: Charge::stated(Money::ZERO, Some(CompactString::const_new("EUR"))),
            call_ref: None,
            seq: None,
            partial: None,
            cumulative: false,
            repairs: Default::default(),
        };
        match record_type {
            RecordType::Voice => self.voice(rng, line_idx, t, visiting, &mut rec),
            RecordType::Sms => self.sms(rng, line_idx, visiting, &mut rec),
            RecordType::Data => data(rng, visiting, &mut rec),
        }
        self.plan.vary_notation(&mut rec);
        inbound_roamer(&mut rec);
        rec
    }

    fn voice(
        &mut self,
        rng: &mut Rng,
        line_idx: u32,
        t: u32,
        visiting: Option<&VisitedNetwork>,
        rec: &mut UsageRecord,
    ) {
        let line = &self.pop.lines[line_idx as usize];
        let mut direction = if chance(rng, FORWARDED_SHARE) {
            Direction::Forwarded
        } else if chance(rng, MO_SHARE) {
            Direction::Mo
        } else {
            Direction::Mt
        };
        let u = rng.f64();
        let (party, abroad_rate) = {
            if u < HIGH_RISK_VOICE {
                self.plan.high_risk(rng).map_or_else(
                    || (self.plan.home_any(rng), None),
                    |(n, rate)| (n, Some(rate)),
                )
            } else if u < HIGH_RISK_VOICE + INTERNATIONAL_VOICE {
                let (n, rate) = contacts::abroad(self.seed, line_idx, self.plan, rng);
                (n, Some(rate))
            } else {
                (self.home_party(rng, line_idx), None)
            }
        };
        let busy = self.busy_until[line_idx as usize] > t;
        if busy && direction == Direction::Mo {
            // Nobody dials out mid-call; what reaches a busy line is a waiting call it does not take.
            direction = Direction::Mt;
        }
        let answered = !busy && chance(rng, ANSWERED_SHARE);
        let duration = if answered {
            // Median ~75 s; the clamp keeps the tail at half an hour, as a switch's partial records would.
            let secs = log_normal(rng, 75.0, 1.1).clamp(5.0, 1800.0);
            // An ordinary call to a satellite phone or a premium line is short: a long one is what
            // IRSF rules look for, and background traffic is fraud-free.
            if u < HIGH_RISK_VOICE {
                secs.min(300.0) as u32
            } else {
                secs as u32
            }
        } else {
            0
        };
        if answered && direction != Direction::Forwarded {
            self.busy_until[line_idx as usize] = t + duration;
        }
        if direction == Direction::Forwarded {
            // The caller stays the other party; the forward target goes in the forwarding block,
            // where the classifier looks for it.
            rec.forwarding.forwarded_to_number = Some(contacts::forward_target(
                self.seed, line_idx, self.pop, self.plan,
            ));
        }
        // Unanswered calls last 0 s, so whatever the rate they cost nothing.
        let rate = match (visiting, direction) {
            (Some(v), Direction::Mt) => v.voice_mt_per_min,
            (Some(v), _) => v.voice_mo_per_min.max(abroad_rate.unwrap_or(Money::ZERO)),
            (None, Direction::Mt) => Money::ZERO,
            // The forwarded leg is billed like a call the line placed to the (domestic) target.
            (None, Direction::Forwarded) => line.voice_per_min,
            (None, Direction::Mo) => abroad_rate.unwrap_or(line.voice_per_min),
        };
        rec.direction = Some(direction);
        rec.other_party.number = Some(party);
        rec.answered = answered;
        rec.duration_s = duration;
        rec.charge.amount = per_minute(rate, duration);
    }

    fn sms(
        &self,
        rng: &mut Rng,
        line_idx: u32,
        visiting: Option<&VisitedNetwork>,
        rec: &mut UsageRecord,
    ) {
        let line = &self.pop.lines[line_idx as usize];
        let direction = if chance(rng, MO_SHARE) {
            Direction::Mo
        } else {
            Direction::Mt
        };
        let (party, international) = if chance(rng, INTERNATIONAL_SMS) {
            (
                OtherParty::of(contacts::abroad(self.seed, line_idx, self.plan, rng).0),
                true,
            )
        } else if direction == Direction::Mt && chance(rng, A2P_SMS) {
            (self.plan.short_code_party(rng), false)
        } else {
            (OtherParty::of(self.home_party(rng, line_idx)), false)
        };
        rec.direction = Some(direction);
        rec.other_party = party;
        rec.charge.amount = match (direction, visiting) {
            (Direction::Mo, Some(v)) => v.sms_mo,
            (Direction::Mo, None) if international => SMS_INTERNATIONAL,
            (Direction::Mo, None) => line.sms,
            _ => Money::ZERO,
        };
    }

    /// Mostly the line's own contacts, sometimes a stranger.
    fn home_party(&self, rng: &mut Rng, line_idx: u32) -> Number {
        if chance(rng, STRANGER_SHARE) {
            self.plan.home_any(rng)
        } else {
            contacts::at_home(self.seed, line_idx, self.pop, self.plan, rng)
        }
    }
}

/// Some data sessions on the network are foreign SIMs', reported (as in TAP) by IMSI alone: no MSISDN,
/// no account. Chosen by record id, so the rest of the traffic is unchanged; a few dozen visitors.
fn inbound_roamer(rec: &mut UsageRecord) {
    let h = xxhash_rust::xxh3::xxh3_64(rec.record_id.as_bytes());
    if rec.record_type != RecordType::Data || rec.roaming.is_roaming || h % 1000 >= 5 {
        return;
    }
    let imsi = Number::parse(&format!("310260{:09}", (h >> 20) % 40)).expect("15 digits");
    rec.served = Served {
        imsi: Some(imsi),
        ..Served::new(imsi.as_imsi_line())
    };
    rec.roaming = Roaming {
        is_roaming: true,
        visited_plmn: Some(CompactString::const_new("20801")),
    };
    rec.charge.amount = Money::ZERO;
    // The session happened where the home line that made it was; a visitor is not there: no position.
    rec.location = Location::default();
}

fn data(rng: &mut Rng, visiting: Option<&VisitedNetwork>, rec: &mut UsageRecord) {
    let duration = rng.u32(60..=3600);
    // Volume grows with session length but far less than linearly (most of a long session is idle).
    let mut down = log_normal(rng, 4e6, 1.5) * (duration as f64 / 900.0).sqrt();
    if visiting.is_some() {
        // Travellers ration data they pay for.
        down /= 4.0;
    }
    let down = down.clamp(2e3, 3e9) as u64;
    let up = (down as f64 * (0.04 + rng.f64() * 0.2)) as u64;
    rec.duration_s = duration;
    rec.volume = Volume {
        bytes_up: up,
        bytes_down: down,
    };
    if let Some(v) = visiting {
        rec.charge.amount = per_mb(v.data_per_mb, up + down);
    }
}

/// Usually the home cell, otherwise one of the line's other cells; sometimes unknown.
fn location(rng: &mut Rng, line: &Line) -> Location {
    let cells = line.cells();
    if cells.is_empty() || chance(rng, NO_LOCATION) {
        return Location::default();
    }
    let c = if cells.len() == 1 || chance(rng, 0.6) {
        cells[0]
    } else {
        cells[rng.usize(1..cells.len())]
    };
    Location {
        cell_id: Some(c.id),
        lat: Some(c.lat),
        lon: Some(c.lon),
    }
}
