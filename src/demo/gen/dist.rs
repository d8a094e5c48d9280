//! The few distributions the traffic model needs, on top of `fastrand`'s uniform draws.

use fastrand::Rng;

/// Standard normal (Box–Muller, one value of the pair kept: simpler than caching the other, and cheap).
pub fn normal(rng: &mut Rng) -> f64 {
    // 1 - f64() lies in (0, 1], so ln never sees 0.
    let u1 = 1.0 - rng.f64();
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Log-normal given by its median: call lengths and session volumes are products of many small factors.
pub fn log_normal(rng: &mut Rng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

/// Pareto with scale 1: a few lines make much of the traffic, most make little.
pub fn pareto(rng: &mut Rng, alpha: f64) -> f64 {
    (1.0 - rng.f64()).powf(-1.0 / alpha)
}

pub fn chance(rng: &mut Rng, p: f64) -> bool {
    rng.f64() < p
}

/// An index drawn with probability proportional to `weights` (short tables: a linear scan).
pub fn weighted(rng: &mut Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut x = rng.u32(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// SplitMix64's finaliser: turns structured inputs (seed, line, slot) into unrelated-looking seeds, so
/// per-line facts such as a contact book can be recomputed on demand instead of stored.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Rounds to 5 decimals (~1 m): coordinates as a network inventory would list them, and short to print.
pub fn round5(x: f64) -> f64 {
    (x * 1e5).round() / 1e5
}
