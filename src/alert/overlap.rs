//! The overlap of a candidate library's alerts with the live library's (`rules.shadow_dir`), per
//! rule id in both: raised by both, by the live rule only, by the candidate only.
//!
//! Two alerts of one rule id on one entity are the same finding when their trigger times are
//! within the live rule's cooldown of each other: a candidate with a lower threshold fires on the
//! second call where the live rule fires on the third, and an analyst comparing them wants "both
//! caught it", not one of each. An alert waits a cooldown for its partner; unmatched by then (or
//! at the end of the input) it counts for its side alone. Each alert matches at most one.

use std::collections::BTreeMap;

/// Counts of one rule id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Overlap {
    pub both: u64,
    pub live_only: u64,
    pub shadow_only: u64,
}

impl Overlap {
    pub fn add(&mut self, o: &Overlap) {
        self.both += o.both;
        self.live_only += o.live_only;
        self.shadow_only += o.shadow_only;
    }
}

/// An alert waiting for its partner: trigger time, live side, how long it waits.
type Waiting = (i64, bool, i64);

pub struct OverlapTracker {
    /// (rule, entity) → alerts not matched yet, oldest first.
    waiting: BTreeMap<(String, String), Vec<Waiting>>,
    /// Counts since the last `take`.
    counted: BTreeMap<String, Overlap>,
    /// The soonest any waiting alert's window ends: `expire` has nothing to do before (it runs
    /// after every record).
    soonest: i64,
}

impl Default for OverlapTracker {
    fn default() -> Self {
        OverlapTracker {
            waiting: BTreeMap::new(),
            counted: BTreeMap::new(),
            soonest: i64::MAX,
        }
    }
}

impl OverlapTracker {
    /// An alert of `rule` on `entity` at `t`, from the live library or the candidate; `window`:
    /// the live rule's cooldown.
    pub fn alert(&mut self, rule: &str, entity: &str, t: i64, live: bool, window: i64) {
        let key = (rule.to_string(), entity.to_string());
        let list = self.waiting.entry(key).or_default();
        if let Some(i) = list
            .iter()
            .position(|&(u, side, w)| side != live && (t - u).abs() < w.max(window).max(1))
        {
            list.remove(i);
            if list.is_empty() {
                self.waiting.remove(&(rule.to_string(), entity.to_string()));
            }
            self.counted.entry(rule.to_string()).or_default().both += 1;
        } else {
            list.push((t, live, window));
            self.soonest = self.soonest.min(t.saturating_add(window.max(1)));
        }
    }

    /// Alerts whose partner can no longer come (`now` is past their window) count alone; all of
    /// them with `now = i64::MAX` (end of input).
    pub fn expire(&mut self, now: i64) {
        if self.waiting.is_empty() || now < self.soonest {
            return;
        }
        let mut soonest = i64::MAX;
        let counted = &mut self.counted;
        self.waiting.retain(|(rule, _), list| {
            list.retain(|&(t, live, w)| {
                if now.saturating_sub(t) < w.max(1) {
                    soonest = soonest.min(t.saturating_add(w.max(1)));
                    return true;
                }
                let o = counted.entry(rule.clone()).or_default();
                match live {
                    true => o.live_only += 1,
                    false => o.shadow_only += 1,
                }
                false
            });
            !list.is_empty()
        });
        self.soonest = soonest;
    }

    /// The counts since the last call.
    pub fn take(&mut self) -> BTreeMap<String, Overlap> {
        std::mem::take(&mut self.counted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_within_the_cooldown_match_once_and_the_rest_count_alone() {
        let mut o = OverlapTracker::default();
        // Candidate at 100, live at 200 on the same entity: both.
        o.alert("r", "e", 100, false, 3600);
        o.alert("r", "e", 200, true, 3600);
        // Live alone on another entity; a candidate on it too late.
        o.alert("r", "f", 100, true, 3600);
        o.alert("r", "f", 100 + 3600, false, 3600);
        // Another rule's candidate.
        o.alert("s", "e", 100, false, 60);
        o.expire(1000);
        let got = o.take();
        assert_eq!(got["r"].both, 1);
        assert_eq!(got["s"].shadow_only, 1);
        o.expire(i64::MAX);
        let got = o.take();
        assert_eq!(
            got["r"],
            Overlap {
                both: 0,
                live_only: 1,
                shadow_only: 1
            }
        );
    }
}
