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

/// Snapshotted as the pending timers in firing order, each with its sequence number, and the next
/// sequence number. The numbers themselves are kept, not renumbered at restore: an incremental
/// checkpoint replaces the timers of the accounts it names with their numbers as written, and those
/// must still sort against the untouched timers of other accounts (midnight ties are the rule, not the
/// exception) exactly as they did before the restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "QueueForm", into = "QueueForm")]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(i64, u64, Timer)>>,
    seq: u64,
}

/// `TimerQueue` as written: `Timer::seq` is not serialized on its own (reports show timers), so it
/// travels beside each timer.
#[derive(Serialize, Deserialize)]
struct QueueForm {
    seq: u64,
    pending: Vec<(u64, Timer)>,
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

    /// The next sequence number to be given (incremental checkpoints carry it).
    pub(super) fn next_seq(&self) -> u64 {
        self.seq
    }

    /// The pending timers of the accounts `wanted` accepts, in no particular order: one pass over the
    /// heap, however many accounts are asked about.
    pub(super) fn pending_where<'a>(
        &'a self,
        mut wanted: impl FnMut(&str) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Timer> + 'a {
        self.heap
            .iter()
            .map(|Reverse((_, _, t))| t)
            .filter(move |t| wanted(&t.account_id))
    }

    /// Replaces the pending timers of the accounts `replaced` accepts by `timers` (with their own
    /// sequence numbers) and sets the next sequence number: applying an incremental checkpoint.
    pub(super) fn replace(
        &mut self,
        replaced: impl Fn(&str) -> bool,
        timers: impl IntoIterator<Item = Timer>,
        seq: u64,
    ) {
        self.heap
            .retain(|Reverse((_, _, t))| !replaced(&t.account_id));
        self.heap
            .extend(timers.into_iter().map(|t| Reverse((t.at.utc, t.seq, t))));
        self.seq = seq;
    }

    /// Every pending timer in firing order.
    #[cfg(test)]
    pub(super) fn in_order(&self) -> Vec<&Timer> {
        let mut v: Vec<&Timer> = self.heap.iter().map(|Reverse((_, _, t))| t).collect();
        v.sort_unstable_by_key(|t| (t.at.utc, t.seq));
        v
    }
}

impl From<TimerQueue> for QueueForm {
    fn from(q: TimerQueue) -> QueueForm {
        let mut v: Vec<_> = q.heap.into_iter().map(|Reverse(e)| e).collect();
        v.sort_unstable_by_key(|(at, seq, _)| (*at, *seq));
        QueueForm {
            seq: q.seq,
            pending: v.into_iter().map(|(_, seq, t)| (seq, t)).collect(),
        }
    }
}

impl From<QueueForm> for TimerQueue {
    fn from(form: QueueForm) -> TimerQueue {
        let heap = form
            .pending
            .into_iter()
            .map(|(seq, t)| Reverse((t.at.utc, seq, Timer { seq, ..t })))
            .collect();
        TimerQueue {
            heap,
            seq: form.seq,
        }
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
