//! One event-time alignment for every place where ordered inputs meet: a replay's usage and event
//! files, a Kafka partition's usage and event topics, and a sequencer's source partitions
//! (`crate::repartition`).
//!
//! Each input (a *lane*) is a sequence in its own order (file lines, offsets); the aligner interleaves
//! the lanes by event time and never reorders a lane. An item's key is (the highest event time of its
//! lane so far, lane, position): the running maximum rather than the item's own time, so a record
//! stamped a little earlier than its predecessors keeps its place in its lane, and keys never go down
//! within a lane. The smallest key goes next, but only when no lane can still deliver a smaller one:
//! every lane either holds an item, or is known to have ended, or has a lower bound — its running
//! maximum and next position — above that key. This is the k-way merge "the head of every input, or
//! its end" that Kafka Streams applies to a task's partitions (with sorted inputs it is a plain merge
//! by event time), decided only from what has been read: never from a clock or a lag statistic, so
//! the same inputs give the same order whatever the machine's load, the batch sizes or the timing.
//!
//! What "ended" means is the caller's: the end of a file; for Kafka, the partition's end offset
//! reached, so nothing unread can be older; for a sequencer, a marker saying the source partition
//! had nothing more. Ties
//! go to the lower lane: account events before usage at the same instant (an invoice is on the
//! ledger when a call of that instant is rated), partitions in number order.

use std::collections::VecDeque;

/// Where an item stands in the merged order. Field order is the comparison order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The lane's running maximum event time at this item (UTC seconds).
    pub time: i64,
    pub lane: u32,
    /// Position in the lane: offset or line.
    pub seq: i64,
}

impl Key {
    pub const MAX: Key = Key {
        time: i64::MAX,
        lane: u32::MAX,
        seq: i64::MAX,
    };
}

struct Queued<T> {
    key: Key,
    /// The lane's running maximum before this item: where the lane resumes if the item is dropped.
    high_before: i64,
    item: T,
}

/// One input's state.
pub struct Lane<T> {
    queue: VecDeque<Queued<T>>,
    /// Highest event time pushed so far (`i64::MIN` before any).
    high: i64,
    /// Position of the next item to come.
    next: i64,
    /// Nothing more will come (until `push` says otherwise).
    ended: bool,
}

impl<T> Lane<T> {
    fn new(high: i64, next: i64) -> Self {
        Lane {
            queue: VecDeque::new(),
            high,
            next,
            ended: false,
        }
    }

    /// No key of this lane, present or future, is below this.
    fn lower_bound(&self, id: u32) -> Key {
        match self.queue.front() {
            Some(q) => q.key,
            None if self.ended => Key::MAX,
            None => Key {
                time: self.high,
                lane: id,
                seq: self.next,
            },
        }
    }
}

/// The merge. Lanes are numbered; a lane id is its rank in ties.
pub struct Aligner<T> {
    lanes: Vec<Option<Lane<T>>>,
}

impl<T> Default for Aligner<T> {
    fn default() -> Self {
        Aligner { lanes: Vec::new() }
    }
}

impl<T> Aligner<T> {
    /// An aligner with lanes `0..n`, each starting empty at position 0 with no event time yet.
    pub fn with_lanes(n: usize) -> Self {
        let mut a = Aligner::default();
        for id in 0..n {
            a.open(id as u32, i64::MIN, 0);
        }
        a
    }

    /// Opens (or reopens, dropping what it held) lane `id`, resuming at position `next` with running
    /// maximum `high` (`i64::MIN`: none yet). Until it receives an item, a progress note or its end,
    /// an open lane holds everything back.
    pub fn open(&mut self, id: u32, high: i64, next: i64) {
        let i = id as usize;
        if self.lanes.len() <= i {
            self.lanes.resize_with(i + 1, || None);
        }
        self.lanes[i] = Some(Lane::new(high, next));
    }

    /// Closes lane `id`; it holds nothing back any more. Returns what it held.
    pub fn close(&mut self, id: u32) -> Vec<T> {
        match self.lanes.get_mut(id as usize).and_then(Option::take) {
            Some(l) => l.queue.into_iter().map(|q| q.item).collect(),
            None => Vec::new(),
        }
    }

    /// One past the highest lane id ever opened.
    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_open(&self, id: u32) -> bool {
        self.lane(id).is_some()
    }

    fn lane(&self, id: u32) -> Option<&Lane<T>> {
        self.lanes.get(id as usize).and_then(Option::as_ref)
    }

    fn lane_mut(&mut self, id: u32) -> &mut Lane<T> {
        self.lanes
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .unwrap_or_else(|| panic!("lane {id} is not open"))
    }

    /// Appends an item at position `seq` of lane `id`. `time` is its event time; `None` (a record that
    /// did not decode) keeps the lane's running maximum.
    pub fn push(&mut self, id: u32, seq: i64, time: Option<i64>, item: T) {
        let lane = self.lane_mut(id);
        let high_before = lane.high;
        let t = time.map_or(lane.high, |t| t.max(lane.high));
        lane.high = t;
        lane.next = lane.next.max(seq + 1);
        lane.ended = false;
        lane.queue.push_back(Queued {
            key: Key {
                time: t,
                lane: id,
                seq,
            },
            high_before,
            item,
        });
    }

    /// Lane `id` moved on without an item for the merge: everything before `next` has been seen, the
    /// newest at event time `time` (a marker of a lane that sent no record).
    pub fn advance(&mut self, id: u32, next: i64, time: Option<i64>) {
        let lane = self.lane_mut(id);
        if let Some(t) = time {
            lane.high = lane.high.max(t);
        }
        lane.next = lane.next.max(next);
    }

    /// Whether lane `id` has ended: nothing more will come unless `push` brings it.
    pub fn set_ended(&mut self, id: u32, ended: bool) {
        self.lane_mut(id).ended = ended;
    }

    pub fn is_ended(&self, id: u32) -> bool {
        self.lane(id).is_some_and(|l| l.ended)
    }

    /// Items waiting in lane `id`.
    pub fn queued(&self, id: u32) -> usize {
        self.lane(id).map_or(0, |l| l.queue.len())
    }

    /// Items waiting in every lane.
    pub fn len(&self) -> usize {
        self.lanes.iter().flatten().map(|l| l.queue.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lane whose head goes next, if one may go now.
    fn next_lane(&self) -> Option<u32> {
        let mut best: Option<(Key, u32, bool)> = None;
        for (i, lane) in self.lanes.iter().enumerate() {
            let Some(lane) = lane else { continue };
            let bound = lane.lower_bound(i as u32);
            if best.is_none_or(|(b, ..)| bound < b) {
                best = Some((bound, i as u32, !lane.queue.is_empty()));
            }
        }
        match best {
            Some((_, id, true)) => Some(id),
            _ => None,
        }
    }

    /// The item that goes next, if one may go now: its lane and key.
    pub fn peek(&self) -> Option<(u32, Key, &T)> {
        let id = self.next_lane()?;
        let q = self.lane(id)?.queue.front()?;
        Some((id, q.key, &q.item))
    }

    /// Takes the item that goes next, if one may go now.
    pub fn pop(&mut self) -> Option<(u32, Key, T)> {
        let id = self.next_lane()?;
        let q = self.lane_mut(id).queue.pop_front()?;
        Some((id, q.key, q.item))
    }

    /// Takes the smallest head whatever the lanes without one might still bring: end of input, or a
    /// partition handed over (its records are processed as far as they were read).
    pub fn pop_unbounded(&mut self) -> Option<(u32, Key, T)> {
        let id = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((l.as_ref()?.queue.front()?.key, i as u32)))
            .min()?
            .1;
        let q = self.lane_mut(id).queue.pop_front()?;
        Some((id, q.key, q.item))
    }

    /// The head of lane `id`, merge order aside.
    pub fn head(&self, id: u32) -> Option<(Key, &T)> {
        self.lane(id)?.queue.front().map(|q| (q.key, &q.item))
    }

    /// Where lane `id` would resume if what it holds were dropped: the position of its first waiting
    /// item (or of the next to come) and the running maximum before it. A snapshot taken now covers
    /// the positions before it.
    pub fn resume_point(&self, id: u32) -> Option<(i64, i64)> {
        let lane = self.lane(id)?;
        Some(match lane.queue.front() {
            Some(q) => (q.key.seq, q.high_before),
            None => (lane.next, lane.high),
        })
    }

    /// The position lane `id` expects next: one past the highest pushed or advanced to.
    pub fn next_of(&self, id: u32) -> Option<i64> {
        self.lane(id).map(|l| l.next)
    }

    /// No key still to go, held or to come, is below this: the smallest lower bound of the open
    /// lanes (`Key::MAX` when every lane has ended and holds nothing). `None` without lanes.
    pub fn lower_bound(&self) -> Option<Key> {
        self.lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some(l.as_ref()?.lower_bound(i as u32)))
            .min()
    }

    /// The running maximum of lane `id`, including what it holds.
    pub fn high(&self, id: u32) -> Option<i64> {
        self.lane(id).map(|l| l.high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(a: &mut Aligner<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| a.pop().map(|(_, _, x)| x)).collect()
    }

    #[test]
    fn merges_by_event_time_and_waits_for_a_lane_without_a_head() {
        let mut a = Aligner::with_lanes(2);
        a.push(1, 0, Some(10), "u10");
        assert!(
            a.pop().is_none(),
            "lane 0 may still bring something earlier"
        );
        a.push(0, 0, Some(5), "e5");
        assert_eq!(drain(&mut a), ["e5"], "u10 waits for lane 0's next");
        a.push(0, 1, Some(10), "e10");
        assert_eq!(
            drain(&mut a),
            ["e10"],
            "ties go to the lower lane; then lane 0 is empty again"
        );
        a.set_ended(0, true);
        assert_eq!(drain(&mut a), ["u10"]);
        // Stamped 3 but after e10 in its lane: keyed 10, below anything lane 1 can still bring.
        a.push(0, 2, Some(3), "e3 late");
        assert_eq!(drain(&mut a), ["e3 late"]);
        a.push(0, 3, Some(11), "e11");
        assert!(a.pop().is_none(), "lane 1 is open and may bring 10..11");
    }

    #[test]
    fn a_lane_never_reorders_and_keys_follow_its_running_maximum() {
        // The lane's order stands: 7 after 9 keeps its place, keyed 9.
        let mut a = Aligner::with_lanes(2);
        for (i, (t, x)) in [(9, "u9"), (7, "u7"), (12, "u12")].into_iter().enumerate() {
            a.push(1, i as i64, Some(t), x);
        }
        for (i, (t, x)) in [(8, "e8"), (10, "e10")].into_iter().enumerate() {
            a.push(0, i as i64, Some(t), x);
        }
        a.set_ended(0, true);
        a.set_ended(1, true);
        assert_eq!(drain(&mut a), ["e8", "u9", "u7", "e10", "u12"]);
    }

    #[test]
    fn a_lane_without_items_holds_back_only_what_is_above_its_bound() {
        let mut a = Aligner::default();
        a.open(3, i64::MIN, 0);
        a.open(5, i64::MIN, 0);
        a.push(5, 0, Some(20), "p5@20");
        assert!(a.pop().is_none());
        a.advance(3, 10, Some(15));
        assert!(a.pop().is_none(), "lane 3 may still bring 15..20");
        a.advance(3, 11, Some(21));
        assert_eq!(drain(&mut a), ["p5@20"]);
        assert_eq!(a.resume_point(5), Some((1, 20)));
        a.push(3, 11, Some(1), "p3 late");
        assert_eq!(a.resume_point(3), Some((11, 21)));
        a.close(5);
        assert_eq!(
            drain(&mut a),
            ["p3 late"],
            "a closed lane holds nothing back"
        );
    }

    #[test]
    fn the_same_items_give_the_same_order_however_they_arrive() {
        // Two interleavings of arrivals, one order out.
        let lane0 = [(1, "a"), (4, "b"), (4, "c"), (9, "d")];
        let lane1 = [(2, "w"), (4, "x"), (3, "y"), (10, "z")];
        let mut outs = Vec::new();
        for schedule in [[0, 0, 1, 1, 0, 1, 0, 1], [1, 1, 1, 1, 0, 0, 0, 0]] {
            let mut a = Aligner::with_lanes(2);
            let (mut i0, mut i1, mut out) = (0, 0, Vec::new());
            for lane in schedule {
                if lane == 0 {
                    a.push(0, i0 as i64, Some(lane0[i0].0), lane0[i0].1);
                    i0 += 1;
                } else {
                    a.push(1, i1 as i64, Some(lane1[i1].0), lane1[i1].1);
                    i1 += 1;
                }
                out.extend(drain(&mut a));
            }
            a.set_ended(0, true);
            a.set_ended(1, true);
            out.extend(drain(&mut a));
            outs.push(out);
        }
        assert_eq!(outs[0], outs[1]);
        assert_eq!(outs[0], ["a", "w", "b", "c", "x", "y", "d", "z"]);
    }
}
