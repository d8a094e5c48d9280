//! Which keys of a map changed since the last durable checkpoint, per epoch: the part of
//! incremental checkpoints (`state::delta`) that any keyed state uses, the window store's maps as
//! well as the alert memory's. Kept apart from the store so that the alert memory needs nothing of it.

use std::collections::VecDeque;
use std::hash::Hash;

use ahash::{AHashMap, AHashSet};
use compact_str::CompactString;

use super::dedup::DedupOp;

/// Keys changed since the last durable checkpoint: those of the open epoch, and those of sealed
/// epochs with the newest epoch that changed each.
pub(crate) struct ChangedKeys<K> {
    open: AHashSet<K>,
    pub(crate) sealed: AHashMap<K, u64>,
}

impl<K> Default for ChangedKeys<K> {
    fn default() -> Self {
        ChangedKeys {
            open: AHashSet::default(),
            sealed: AHashMap::default(),
        }
    }
}

impl<K: Eq + Hash + Ord> ChangedKeys<K> {
    pub(crate) fn mark(&mut self, key: K) {
        self.open.insert(key);
    }

    pub(crate) fn seal(&mut self, epoch: u64) {
        for k in self.open.drain() {
            self.sealed.insert(k, epoch);
        }
        if self.open.capacity() > 4 * 1024 {
            self.open.shrink_to(1024);
        }
    }

    /// Forgets keys whose newest change is in a durable epoch: a key changed again since stays.
    pub(crate) fn durable(&mut self, epoch: u64) {
        self.sealed.retain(|_, e| *e > epoch);
        // An outage's backlog, once durable, should not pin its peak size.
        if self.sealed.capacity() > 4 * self.sealed.len() + 4 * 1024 {
            self.sealed.shrink_to_fit();
        }
    }

    pub(crate) fn open_is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Keys of sealed epochs not yet durable, sorted: the delta's bytes are then the same for the
    /// same content, whatever the hash maps' order.
    pub(crate) fn sorted(&self) -> Vec<&K> {
        let mut keys: Vec<&K> = self.sealed.keys().collect();
        keys.sort_unstable();
        keys
    }

    /// The changed keys with their values in `map` now, `None` for a key gone since the base.
    pub(crate) fn entries<'a, V>(&self, map: &'a AHashMap<K, V>) -> Vec<(K, Option<&'a V>)>
    where
        K: Copy,
    {
        self.sorted()
            .into_iter()
            .map(|k| (*k, map.get(k)))
            .collect()
    }

    /// Keys held (open and sealed, a key in both counted twice).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len() + self.sealed.len()
    }
}

/// Applies a delta's entries for one keyed map: a value replaces, a tombstone removes.
pub(crate) fn apply_entries<K: Eq + Hash, V>(
    map: &mut AHashMap<K, V>,
    entries: Vec<(K, Option<V>)>,
) {
    for (k, v) in entries {
        match v {
            Some(v) => {
                map.insert(k, v);
            }
            None => {
                map.remove(&k);
            }
        }
    }
}

/// Turns recording on (keeping what is recorded if it already was) or off (dropping it).
pub(crate) fn track<T: Default>(changes: &mut Option<Box<T>>, on: bool) {
    match (on, changes.is_some()) {
        (true, false) => *changes = Some(Box::default()),
        (false, _) => *changes = None,
        (true, true) => {}
    }
}

/// The dedup journal: the open epoch's operations, then each sealed epoch's, oldest first.
#[derive(Default)]
pub(crate) struct Journal {
    pub(crate) open: Vec<DedupOp>,
    pub(crate) sealed: VecDeque<(u64, Vec<DedupOp>)>,
}

impl Journal {
    pub(crate) fn seal(&mut self, epoch: u64) {
        if !self.open.is_empty() {
            self.sealed
                .push_back((epoch, std::mem::take(&mut self.open)));
        }
        self.compact();
    }

    /// Drops what precedes the second newest generation start: two generations later nothing inserted
    /// before it is remembered, on the base or anywhere. Keeps the journal (and a delta written after
    /// hours of failed checkpoints) within the dedup memory's own size.
    fn compact(&mut self) {
        let mut starts = 0;
        for e in (0..self.sealed.len()).rev() {
            let ops = &mut self.sealed[e].1;
            let Some(at) = (0..ops.len())
                .rev()
                .filter(|&i| matches!(ops[i], DedupOp::Generation { .. }))
                .nth(1 - starts)
            else {
                starts += ops
                    .iter()
                    .filter(|op| matches!(op, DedupOp::Generation { .. }))
                    .count();
                continue;
            };
            ops.drain(..at);
            self.sealed.drain(..e);
            return;
        }
    }

    pub(crate) fn durable(&mut self, epoch: u64) {
        while self.sealed.front().is_some_and(|(e, _)| *e <= epoch) {
            self.sealed.pop_front();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len() + self.sealed.iter().map(|(_, ops)| ops.len()).sum::<usize>()
    }
}

/// A store's changes since its last durable checkpoint (`WindowStore::track_changes`).
#[derive(Default)]
pub(crate) struct StoreChanges {
    pub(crate) subscribers: ChangedKeys<u64>,
    pub(crate) calling_numbers: ChangedKeys<u64>,
    pub(crate) imeis: ChangedKeys<u64>,
    pub(crate) line_accounts: ChangedKeys<u64>,
    pub(crate) open_calls: ChangedKeys<u64>,
    pub(crate) accounts: ChangedKeys<u32>,
    /// Accounts, by id, whose pending timers changed (scheduled, fired, cancelled).
    pub(crate) timers: ChangedKeys<CompactString>,
    pub(crate) dedup: Journal,
    pub(crate) last_sealed: Option<u64>,
}

impl StoreChanges {
    /// The three entity maps' keys: subscribers, calling numbers, IMEIs (the order `maintain` sweeps
    /// the maps in).
    pub(crate) fn entity_keys(&mut self) -> [&mut ChangedKeys<u64>; 3] {
        [
            &mut self.subscribers,
            &mut self.calling_numbers,
            &mut self.imeis,
        ]
    }

    pub(crate) fn open_is_empty(&self) -> bool {
        self.subscribers.open_is_empty()
            && self.calling_numbers.open_is_empty()
            && self.imeis.open_is_empty()
            && self.line_accounts.open_is_empty()
            && self.open_calls.open_is_empty()
            && self.accounts.open_is_empty()
            && self.timers.open_is_empty()
            && self.dedup.open.is_empty()
    }

    /// Entries held across every map and the journal.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.subscribers.len()
            + self.calling_numbers.len()
            + self.imeis.len()
            + self.line_accounts.len()
            + self.open_calls.len()
            + self.accounts.len()
            + self.timers.len()
            + self.dedup.len()
    }
}
