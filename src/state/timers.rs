//! Event-time timers: "invoice due date + N days" fires when the watermark passes it, whether or not the
//! account produces any usage. A binary heap ordered by (time, sequence) gives a deterministic firing
//! order, so replays fire timers identically.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::record::EventTime;

/// Externally tagged (serde's default), not internally: state snapshots use a format that is not
/// self-describing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// `days` days after the invoice's due date (local midnight of the invoice's offset).
    InvoiceOverdue {
        invoice_id: CompactString,
        days: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timer {
    pub at: EventTime,
    /// Firing order among timers due at the same instant (scheduling order).
    #[serde(skip)]
    pub seq: u64,
    pub account_id: CompactString,
    pub kind: TimerKind,
}

/// Snapshotted as the pending timers in firing order; restoring renumbers them in that order, so the
/// firing order survives a restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Vec<Timer>", into = "Vec<Timer>")]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(i64, u64, Timer)>>,
    seq: u64,
}

impl TimerQueue {
    pub fn schedule(&mut self, at: EventTime, account_id: CompactString, kind: TimerKind) {
        self.seq += 1;
        let t = Timer {
            at,
            seq: self.seq,
            account_id,
            kind,
        };
        self.heap.push(Reverse((at.utc, self.seq, t)));
    }

    /// Pops the earliest timer if it is due at or before `watermark`.
    pub fn pop_due(&mut self, watermark: i64) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= watermark => {
                self.heap.pop().map(|Reverse((_, _, t))| t)
            }
            _ => None,
        }
    }

    /// Pops every timer due at or before `watermark`, in firing order.
    #[cfg(test)]
    pub fn due(&mut self, watermark: i64, out: &mut Vec<Timer>) {
        while let Some(t) = self.pop_due(watermark) {
            out.push(t);
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn pending_for<'a>(&'a self, account_id: &'a str) -> impl Iterator<Item = &'a Timer> + 'a {
        self.heap
            .iter()
            .map(|Reverse((_, _, t))| t)
            .filter(move |t| t.account_id == account_id)
    }

    /// Drops every pending timer of an account (the account was cleared by an operator).
    pub fn cancel_for(&mut self, account_id: &str) {
        self.heap
            .retain(|Reverse((_, _, t))| t.account_id != account_id);
    }

    pub fn heap_bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<Reverse<(i64, u64, Timer)>>()
    }
}

impl From<TimerQueue> for Vec<Timer> {
    fn from(q: TimerQueue) -> Vec<Timer> {
        let mut v: Vec<_> = q.heap.into_iter().map(|Reverse(e)| e).collect();
        v.sort();
        v.into_iter().map(|(_, _, t)| t).collect()
    }
}

impl From<Vec<Timer>> for TimerQueue {
    fn from(v: Vec<Timer>) -> TimerQueue {
        let mut q = TimerQueue::default();
        for t in v {
            q.schedule(t.at, t.account_id, t.kind);
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_time_then_schedule_order() {
        let mut q = TimerQueue::default();
        let t = |s: &str| EventTime::parse(s).unwrap();
        let k = |d| TimerKind::InvoiceOverdue {
            invoice_id: "I".into(),
            days: d,
        };
        q.schedule(t("2026-11-30T00:00:00Z"), "B".into(), k(15));
        q.schedule(t("2026-11-22T00:00:00Z"), "A".into(), k(7));
        q.schedule(t("2026-11-22T00:00:00Z"), "C".into(), k(7));
        let mut out = Vec::new();
        q.due(t("2026-11-21T23:59:59Z").utc, &mut out);
        assert!(out.is_empty());
        q.due(t("2026-11-25T00:00:00Z").utc, &mut out);
        let who: Vec<_> = out.iter().map(|t| t.account_id.as_str()).collect();
        assert_eq!(who, ["A", "C"]);
        assert_eq!(q.len(), 1);
    }
}
