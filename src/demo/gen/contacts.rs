//! Who talks to whom: each line's contact book, recomputed from a hash instead of stored.
//!
//! Real call graphs are narrow: a line calls a handful of numbers again and again (family, colleagues,
//! a few friends) and strangers now and then. Drawing a fresh random number per call would give every
//! heavy user hundreds of distinct callees a day, which is exactly what SIM-box and SMS-farm rules look
//! for. Entry `k` of a line's book is a pure function of (seed, line, k), so books cost no memory.

use fastrand::Rng;

use super::dist::mix;
use super::numbering::NumberPlan;
use super::population::Population;
use crate::record::{Money, Number};

/// Odd constant that spreads small integers over 64 bits before mixing.
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

/// How many of an account's other lines are in a line's book (a big company's lines call a few
/// colleagues, not all twenty).
const COLLEAGUES: u32 = 4;

fn book(seed: u64, line: u32) -> u64 {
    mix(seed ^ mix(line as u64 ^ SPREAD))
}

/// Someone in the home country from the line's book: the account's other lines first, then other
/// subscribers of the network, other operators' mobiles and landlines.
pub fn at_home(seed: u64, line: u32, pop: &Population, plan: &NumberPlan, rng: &mut Rng) -> Number {
    let book = book(seed, line);
    let size = 6 + book % 40;
    // Squaring a uniform draw favours the first entries: a few numbers take most of the calls.
    let k = (size as f64 * rng.f64().powi(2)) as u64;
    let mut entry = Rng::with_seed(mix(book ^ (k + 1).wrapping_mul(SPREAD)));
    let lines = &pop.accounts[pop.lines[line as usize].account as usize].lines;
    let others = lines.len() as u32 - 1;
    if k < others.min(COLLEAGUES) as u64 {
        return pop.lines[other_than(line, lines.start, others, &mut entry) as usize].msisdn;
    }
    let n = pop.lines.len() as u32;
    match entry.u8(0..100) {
        0..=49 if n > 1 => pop.lines[other_than(line, 0, n - 1, &mut entry) as usize].msisdn,
        0..=84 => plan.home_mobile(&mut entry),
        _ => plan.home_fixed(&mut entry),
    }
}

/// Where the line forwards calls: another line of its account if it has one, else its own landline.
/// Fixed per line, as a configured forward is.
pub fn forward_target(seed: u64, line: u32, pop: &Population, plan: &NumberPlan) -> Number {
    let mut entry = Rng::with_seed(mix(book(seed, line) ^ SPREAD));
    let lines = &pop.accounts[pop.lines[line as usize].account as usize].lines;
    let others = lines.len() as u32 - 1;
    if others > 0 {
        pop.lines[other_than(line, lines.start, others, &mut entry) as usize].msisdn
    } else {
        plan.home_fixed(&mut entry)
    }
}

/// One of the line's 1–3 contacts abroad (relatives, a business partner), with the per-minute rate.
pub fn abroad(seed: u64, line: u32, plan: &NumberPlan, rng: &mut Rng) -> (Number, Money) {
    let book = book(seed, line);
    let count = 1 + (book >> 8) % 3;
    let k = rng.u64(0..count);
    let mut entry = Rng::with_seed(mix(!book ^ (k + 1).wrapping_mul(SPREAD)));
    plan.foreign(&mut entry)
}

/// A uniform pick among `count` lines starting at `first`, skipping `me` (which must be in the range
/// `first..=first + count` when it matters).
fn other_than(me: u32, first: u32, count: u32, rng: &mut Rng) -> u32 {
    let j = first + rng.u32(0..count);
    if j >= me {
        j + 1
    } else {
        j
    }
}
