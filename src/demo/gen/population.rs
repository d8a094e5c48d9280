//! Who is on the network: accounts, their lines, where each line lives and how busy it is.

use std::collections::HashSet;
use std::ops::Range;

use compact_str::{format_compact, CompactString};
use fastrand::Rng;

use super::clock::Profile;
use super::dist::{chance, mix, normal, pareto, round5, weighted};
use super::numbering::{number, NumberPlan};
use super::tariff::{visited_weights, VISITED};
use crate::record::{Money, Number, Segment};

/// Cells sit on a grid of 0.02° (~2 km) over mainland France; the eNodeB id is the grid square, so
/// neighbours share cells as they would in a real radio network.
const GRID: f64 = 0.02;
const LAT: Range<f64> = 43.0..50.0;
const LON: Range<f64> = -1.5..7.5;
const GRID_COLS: i64 = 450; // (7.5 - -1.5) / 0.02
const GRID_ROWS: i64 = 350; // (50 - 43) / 0.02

/// Where most people live, so that busy cells are busy (lat, lon, share).
const CITIES: [(f64, f64, u32); 8] = [
    (48.857, 2.352, 40), // Paris
    (45.764, 4.836, 10), // Lyon
    (43.297, 5.370, 10), // Marseille
    (43.605, 1.444, 8),  // Toulouse
    (44.838, -0.579, 7), // Bordeaux
    (43.710, 7.262, 6),  // Nice
    (43.611, 3.877, 6),  // Montpellier
    (47.322, 5.041, 3),  // Dijon
];

/// Type allocation codes of common handsets; the IMEI is TAC + 6-digit serial.
const TACS: [u64; 8] = [
    35_332_811, 35_391_110, 35_875_607, 35_290_611, 86_753_503, 35_467_211, 35_925_406,
    1_326_300, // 01326300: TACs may start with 0, `number` zero-pads
];

/// Share of records from travellers: lines abroad for the whole period. A line that flipped between
/// countries from one record to the next would be impossible travel.
const ROAMING_SHARE: f64 = 0.02;

#[derive(Clone, Copy, Debug)]
pub struct Cell {
    pub id: u64,
    pub lat: f64,
    pub lon: f64,
}

pub struct Line {
    pub msisdn: Number,
    pub imsi: Number,
    pub imei: Number,
    /// Index into `Population::accounts`.
    pub account: u32,
    /// Home cell first, then 1–3 nearby cells; abroad: 0–2 foreign cells.
    cells: [Cell; 4],
    cell_count: u8,
    /// Relative activity (Pareto): drives how many records the line gets.
    pub weight: f64,
    pub profile: Profile,
    /// Index into `tariff::VISITED` when the line is abroad for the whole period.
    pub visiting: Option<u8>,
    /// Domestic out-of-bundle rates; zero on unlimited plans (most lines).
    pub voice_per_min: Money,
    pub sms: Money,
    /// The regional MSC that switches the line's calls (from its home cell's area).
    pub msc: u8,
}

impl Line {
    pub fn cells(&self) -> &[Cell] {
        &self.cells[..self.cell_count as usize]
    }
}

pub struct Account {
    pub id: CompactString,
    pub segment: Segment,
    /// Indexes into `Population::lines`: an account's lines are contiguous.
    pub lines: Range<u32>,
}

impl Account {
    pub fn is_business(&self) -> bool {
        matches!(
            self.segment,
            Segment::Smb | Segment::Enterprise | Segment::Government
        )
    }
}

pub struct Population {
    pub lines: Vec<Line>,
    pub accounts: Vec<Account>,
}

impl Population {
    /// `records` is the number of usage records to come: travellers are picked by their expected share.
    pub fn build(
        rng: &mut Rng,
        subscribers: u32,
        records: u64,
        plan: &NumberPlan,
        tag: &str,
    ) -> Population {
        let n = subscribers as usize;
        let mut ids = Uniques::with_capacity(n);
        let mut lines = Vec::with_capacity(n);
        let mut accounts = Vec::with_capacity(n / 3 * 2 + 1);
        while lines.len() < n {
            let (segment, size) = account_shape(rng);
            let size = size.min((n - lines.len()) as u32);
            let first = lines.len() as u32;
            let account = Account {
                id: format_compact!("A-{tag}{}", accounts.len() + 1),
                segment,
                lines: first..first + size,
            };
            let profile = if account.is_business() {
                Profile::Business
            } else {
                Profile::Consumer
            };
            // A family shares a home and a company an office: the account's lines cluster.
            let (lat, lon) = home_area(rng);
            for _ in 0..size {
                let near = (lat + normal(rng) * 0.02, lon + normal(rng) * 0.03);
                let line = new_line(rng, plan, &mut ids, accounts.len() as u32, profile, near);
                lines.push(line);
            }
            accounts.push(account);
        }
        send_travellers(rng, &mut lines, records);
        Population { lines, accounts }
    }
}

/// Keeps identities unique: a duplicated MSISDN or IMEI would look like cloning to the rules.
struct Uniques {
    msisdns: HashSet<Number>,
    imsis: HashSet<Number>,
    imeis: HashSet<Number>,
}

impl Uniques {
    fn with_capacity(n: usize) -> Uniques {
        Uniques {
            msisdns: HashSet::with_capacity(n),
            imsis: HashSet::with_capacity(n),
            imeis: HashSet::with_capacity(n),
        }
    }
}

fn draw_unique(
    rng: &mut Rng,
    seen: &mut HashSet<Number>,
    mut f: impl FnMut(&mut Rng) -> Number,
) -> Number {
    loop {
        let n = f(rng);
        if seen.insert(n) {
            return n;
        }
    }
}

/// 70% single-line consumers, 25% families of 2–4, 5% businesses of 5–20; about 1% of private
/// accounts are VIPs, and a few businesses are public bodies.
fn account_shape(rng: &mut Rng) -> (Segment, u32) {
    let private = |rng: &mut Rng| {
        if chance(rng, 0.01) {
            Segment::Vip
        } else {
            Segment::Consumer
        }
    };
    match rng.u8(0..100) {
        0..=69 => (private(rng), 1),
        70..=94 => (private(rng), rng.u32(2..=4)),
        _ => {
            let segment = [Segment::Smb, Segment::Enterprise, Segment::Government]
                [weighted(rng, &[65, 30, 5])];
            (segment, rng.u32(5..=20))
        }
    }
}

fn home_area(rng: &mut Rng) -> (f64, f64) {
    if chance(rng, 0.6) {
        let (lat, lon, _) = CITIES[weighted(rng, &CITIES.map(|c| c.2))];
        (lat + normal(rng) * 0.12, lon + normal(rng) * 0.16)
    } else {
        (
            LAT.start + rng.f64() * (LAT.end - LAT.start),
            LON.start + rng.f64() * (LON.end - LON.start),
        )
    }
}

fn new_line(
    rng: &mut Rng,
    plan: &NumberPlan,
    ids: &mut Uniques,
    account: u32,
    profile: Profile,
    (lat, lon): (f64, f64),
) -> Line {
    let msisdn = draw_unique(rng, &mut ids.msisdns, |r| plan.home_mobile(r));
    let imsi = draw_unique(rng, &mut ids.imsis, |r| {
        number(20801 * 10u64.pow(10) + r.u64(0..10u64.pow(10)), 15)
    });
    let imei = draw_unique(rng, &mut ids.imeis, |r| {
        number(
            TACS[r.usize(0..TACS.len())] * 1_000_000 + r.u64(0..1_000_000),
            14,
        )
    });
    let gx = (((lon - LON.start) / GRID) as i64).clamp(0, GRID_COLS - 1);
    let gy = (((lat - LAT.start) / GRID) as i64).clamp(0, GRID_ROWS - 1);
    let mut cells = [site(gx, gy, rng.u8(1..=3)); 4];
    let mut cell_count = 1;
    // The cells a line also uses: work, shops, the neighbouring sector at home.
    let wanted = 1 + rng.usize(1..=3);
    while cell_count < wanted {
        let c = site(
            (gx + rng.i64(-2..=2)).clamp(0, GRID_COLS - 1),
            (gy + rng.i64(-2..=2)).clamp(0, GRID_ROWS - 1),
            rng.u8(1..=3),
        );
        if cells[..cell_count].iter().all(|x| x.id != c.id) {
            cells[cell_count] = c;
            cell_count += 1;
        }
    }
    // α = 1.3: median ~1.7, mean ~4 (capped), a top percentile 10–30× the median.
    let weight = pareto(rng, 1.3).min(60.0);
    // Most plans are unlimited; on the rest, domestic calls and SMS are paid per use.
    let voice_per_min = if chance(rng, 0.85) {
        Money::ZERO
    } else {
        Money(rng.i64(5..=35) * 10_000)
    };
    let sms = if chance(rng, 0.9) {
        Money::ZERO
    } else {
        Money(rng.i64(5..=10) * 10_000)
    };
    Line {
        msisdn,
        imsi,
        imei,
        account,
        cells,
        cell_count: cell_count as u8,
        weight,
        profile,
        visiting: None,
        voice_per_min,
        sms,
        msc: 1 + ((gx / 90 + gy / 70) % 4) as u8,
    }
}

/// A sector of the site in grid square (gx, gy): E-UTRAN cell id = eNodeB id × 256 + sector. Sites
/// stand somewhere inside their square (from a hash of the id, so every line sees the same spot).
fn site(gx: i64, gy: i64, sector: u8) -> Cell {
    let enb = (gy * GRID_COLS + gx) as u64;
    let h = mix(enb);
    let within = |bits: u64| (bits % 1000) as f64 / 1000.0;
    Cell {
        id: enb * 256 + sector as u64,
        lat: round5(LAT.start + (gy as f64 + within(h)) * GRID),
        lon: round5(LON.start + (gx as f64 + within(h >> 32)) * GRID),
    }
}

/// Sends random lines abroad until they carry ~2% of the expected records. Lines are visited in a
/// shuffled order and any line that would push the share past 3% is skipped, so one heavy user cannot
/// make roaming dominate (and tiny populations may get no traveller at all).
fn send_travellers(rng: &mut Rng, lines: &mut [Line], records: u64) {
    let n = lines.len() as f64;
    let total_weight: f64 = lines.iter().map(|l| l.weight).sum();
    let records = records as f64;
    // Every line gets one record first when there are enough, the rest by weight (see traffic).
    let (floor, by_weight) = if records >= n {
        (1.0, records - n)
    } else {
        (0.0, records)
    };
    let mut order: Vec<u32> = (0..lines.len() as u32).collect();
    rng.shuffle(&mut order);
    let weights = visited_weights();
    let mut share = 0.0;
    for i in order {
        if share >= ROAMING_SHARE * records {
            break;
        }
        let line = &mut lines[i as usize];
        let expected = floor + by_weight * line.weight / total_weight;
        if share + expected > 1.5 * ROAMING_SHARE * records {
            continue;
        }
        share += expected;
        let v = weighted(rng, &weights);
        line.visiting = Some(v as u8);
        // Roaming records often carry no location (NRTRDE); otherwise a cell of the visited network.
        line.cell_count = rng.u8(0..=2);
        let (lat, lon) = (VISITED[v].lat, VISITED[v].lon);
        for c in &mut line.cells[..line.cell_count as usize] {
            *c = Cell {
                id: rng.u64(1..1 << 28),
                lat: round5(lat + normal(rng) * 0.03),
                lon: round5(lon + normal(rng) * 0.04),
            };
        }
    }
}
