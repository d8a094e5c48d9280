//! `WindowStore`: all state of one partition (or one replay), owned by one thread, no locks.
//!
//! Per record: lateness check against the watermark, de-duplication, then one update of each entity the
//! record concerns: its subscriber, the calling number of an international MT call, and optionally the
//! device. The watermark is the newest **usage** event time minus the allowed lateness: account events
//! do not move it, because billing stamps some of them with business dates (an invoice "issued" at
//! tomorrow's midnight would otherwise make all usage late).
//!
//! **The account view is computed from its lines, not stored twice.** An account's usage features are
//! the sums (and unions, for distinct counts) of its lines' windows at query time. Materialising a second
//! copy per account doubled the cells, the distinct entries and the per-record update work (measured: 1.8
//! cells per record, ~1.9 KB per subscriber); reading 1–4 family lines per query costs far less than
//! that. The price is O(lines) per account query, which matters only for very large enterprise accounts;
//! if profiles ever show it, a materialised view for accounts above a line count is the fix.

use ahash::AHashMap;
use compact_str::CompactString;

use crate::classify::{ClassFilter, RecordClass};
use crate::config::{CallingNumbers, StateConfig};
use crate::record::{AccountEvent, Direction, GapMark, Number, RecordType, UsageRecord};

use super::calls::{self, OpenCall};
use super::cells::WindowSums;
use super::changes::{ChangedKeys, StoreChanges};
use super::dedup::{event_digest, usage_digest, Dedup, Seen};
use super::distinct::SeenKind;
use super::entity::{Contribution, Entity, Fix, Limits, Span, NO_ACCOUNT};
use super::ledger::{Ledger, LedgerWarning};
use super::timers::{Timer, TimerKind, TimerQueue};
use super::Features;

/// What happened to a record offered to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to every entity it concerns.
    Accepted,
    /// Its id was seen within the dedup horizon: counted, not applied again.
    Duplicate,
    /// Its id was seen within the dedup horizon with other content: dead-lettered by the caller
    /// with reason `conflicting_duplicate`; the first record stays applied.
    Conflict,
    /// Older than the watermark: dead-lettered by the caller with reason `late`.
    Late,
    /// Stamped after the wall clock plus `max_future_skew`: dead-lettered with reason `future`. One
    /// such record (year 2099, or 2027 for 2026) would otherwise move the watermark and make all real
    /// traffic late.
    Future,
}

/// An account: its credit ledger and its lines. Usage features come from the lines (`AccountUsage`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Account {
    pub id: CompactString,
    pub ledger: Ledger,
    /// Lines (msisdns) seen on this account, from records and account events.
    pub lines: Vec<Number>,
}

/// An account's usage: its lines' state, read together.
pub struct AccountUsage<'a> {
    lines: Vec<&'a Entity>,
}

impl AccountUsage<'_> {
    /// Charges in buckets starting at or after `from` (unbilled usage since an invoice).
    pub fn charges_since(&self, from: i64) -> crate::record::Money {
        self.lines.iter().map(|e| e.cells.charges_since(from)).sum()
    }

    fn distinct(&self, kind: SeenKind, filter: &ClassFilter, window_s: i64, end: i64) -> u32 {
        let mut all = Vec::new();
        for e in &self.lines {
            e.distinct.collect(kind, filter, window_s, end, &mut all);
        }
        all.sort_unstable();
        all.dedup();
        all.len() as u32
    }

    /// Calls in progress at `at` across all lines (a PBX's concurrent calls).
    pub fn open_calls(&self, at: i64) -> usize {
        self.lines.iter().map(|e| e.open_calls(at)).sum()
    }

    pub fn first_seen(&self) -> Option<i64> {
        self.lines.iter().map(|e| e.first_seen).min()
    }

    pub fn last_seen(&self) -> Option<i64> {
        self.lines.iter().map(|e| e.last_seen).max()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

impl Features for AccountUsage<'_> {
    fn sum(&self, filter: &ClassFilter, window_s: i64, end: i64) -> WindowSums {
        let mut total = WindowSums::default();
        for e in &self.lines {
            total += e.sum(filter, window_s, end);
        }
        total
    }

    fn distinct_numbers(&self, filter: &ClassFilter, window_s: i64, end: i64) -> u32 {
        self.distinct(SeenKind::Number, filter, window_s, end)
    }

    fn distinct_cells(&self, filter: &ClassFilter, window_s: i64, end: i64) -> u32 {
        self.distinct(SeenKind::Cell, filter, window_s, end)
    }
}

/// How often (watermark time) idle entities are evicted and every entity rolled up. Active entities roll
/// themselves up as they are updated; this sweep is for memory held by the idle ones.
const MAINTENANCE_EVERY_S: i64 = 6 * 3600;

/// Fields are `pub(super)` for `delta`, which writes and applies incremental checkpoints. Every
/// mutation of a keyed map, an account or an account's timers marks its key in `changes` (when
/// tracking is on): a mutation that does not is lost at the next restore from a delta.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct WindowStore {
    cfg: StateConfig,
    limits: Limits,
    pub(super) subscribers: AHashMap<u64, Entity>,
    pub(super) calling_numbers: AHashMap<u64, Entity>,
    pub(super) imeis: AHashMap<u64, Entity>,
    /// Accounts by slot. Slots are never reused, so a subscriber's slot can go stale (evicted account,
    /// `None`) but never point at another customer.
    pub(super) accounts: Vec<Option<Box<Account>>>,
    pub(super) account_index: AHashMap<CompactString, u32>,
    /// Lines that account events (activation...) named, for usage records without `account_id`.
    pub(super) line_accounts: AHashMap<u64, u32>,
    /// Calls whose partial records are still arriving, by line and call reference (`state::calls`).
    pub(super) open_calls: AHashMap<u64, OpenCall>,
    pub(super) timers: TimerQueue,
    pub(super) dedup: Dedup,
    /// Newest usage event time (UTC seconds), if any.
    pub(super) newest: Option<i64>,
    /// Real time now; usage stamped later than this plus `max_future_skew` cannot be genuine. Read
    /// again after a restore, never snapshotted.
    #[serde(skip, default = "far_future")]
    wall_clock: i64,
    /// Set by `finish`: the end of input closes every window.
    pub(super) final_watermark: Option<i64>,
    pub(super) next_maintenance: i64,
    pub counters: StoreCounters,
    /// Offsets the input skipped (records gone from the broker before they were read), newest
    /// last: windows over their event-time span may miss records. Kept until the span leaves the
    /// longest window, at most `MAX_GAP_MARKS`.
    pub(super) gaps: Vec<GapMark>,
    /// What changed since the last durable checkpoint (`track_changes`); `None`, and free, when off.
    #[serde(skip)]
    pub(super) changes: Option<Box<StoreChanges>>,
}

/// Gap marks a store keeps (the oldest go first): an input that keeps outrunning its broker's
/// retention would otherwise grow the state without bound.
const MAX_GAP_MARKS: usize = 64;

/// Counts the store keeps for the summary and metrics.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StoreCounters {
    pub usage_applied: u64,
    pub events_applied: u64,
    pub duplicates: u64,
    /// Records whose id was seen with other content (`Outcome::Conflict`).
    #[serde(default)]
    pub conflicts: u64,
    pub late: u64,
    pub timers_fired: u64,
    /// Timers whose invoice was reissued with another due date or whose account is gone.
    pub timers_cancelled: u64,
    pub evicted_entities: u64,
    /// Usage stamped in the future of the wall clock (a broken producer clock).
    pub future: u64,
    /// Calls longer than `state.max_call_duration`, clipped to it for concurrency.
    pub calls_clipped: u64,
    /// Account events that could not be applied in full, by reason (`unknown_payment`...).
    pub ledger_warnings: std::collections::BTreeMap<String, u64>,
}

/// Entity counts and an estimate of heap bytes, for the summary and memory reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreSize {
    pub subscribers: usize,
    pub accounts: usize,
    pub calling_numbers: usize,
    pub imeis: usize,
    pub cells: usize,
    pub distinct_entries: usize,
    pub timers_pending: usize,
    pub dedup_ids: usize,
    /// Window state of subscribers, calling numbers and IMEIs (maps included).
    pub entity_bytes: usize,
    /// Accounts: ledgers, line lists, indexes.
    pub account_bytes: usize,
    /// Record-id fingerprints for de-duplication (grows with records per dedup horizon, not entities).
    pub dedup_bytes: usize,
    pub estimated_bytes: usize,
}

impl WindowStore {
    pub fn new(cfg: StateConfig) -> Self {
        let limits = Limits {
            retention_s: cfg.max_window.0,
            distinct_horizon_s: cfg.distinct_horizon.0,
            allowed_lateness_s: cfg.max_lateness(),
            max_call_s: cfg.max_call_duration.0,
        };
        WindowStore {
            dedup: Dedup::new(cfg.dedup_horizon.0),
            cfg,
            limits,
            subscribers: AHashMap::new(),
            calling_numbers: AHashMap::new(),
            imeis: AHashMap::new(),
            accounts: Vec::new(),
            account_index: AHashMap::new(),
            line_accounts: AHashMap::new(),
            open_calls: AHashMap::new(),
            timers: TimerQueue::default(),
            newest: None,
            wall_clock: far_future(),
            final_watermark: None,
            next_maintenance: i64::MIN,
            counters: StoreCounters::default(),
            gaps: Vec::new(),
            changes: None,
        }
    }

    /// Marks offsets the input skipped (see `record::gap`).
    pub fn note_gap(&mut self, mark: GapMark) {
        if self.gaps.len() == MAX_GAP_MARKS {
            self.gaps.remove(0);
        }
        self.gaps.push(mark);
    }

    /// The gaps whose event-time span some window may still cover, oldest first.
    pub fn gaps(&self) -> &[GapMark] {
        &self.gaps
    }

    /// A store restored from a snapshot takes the current configuration: limits may have been changed
    /// since it was written (a longer window starts with what the snapshot kept).
    pub fn restored(mut self, cfg: StateConfig) -> Self {
        self.limits = Limits {
            retention_s: cfg.max_window.0,
            distinct_horizon_s: cfg.distinct_horizon.0,
            allowed_lateness_s: cfg.max_lateness(),
            max_call_s: cfg.max_call_duration.0,
        };
        self.dedup.set_horizon(cfg.dedup_horizon.0);
        self.cfg = cfg;
        self.wall_clock = far_future();
        self
    }

    /// Removes one subscriber (`state clear --msisdn`); true if it was there.
    pub fn remove_subscriber(&mut self, n: Number) -> bool {
        let Some(sub) = self.subscribers.remove(&n.key()) else {
            return false;
        };
        let mut changes = self.changes.as_deref_mut();
        let marks = changes.as_deref_mut().map(|c| &mut c.accounts);
        move_line(&mut self.accounts, n, sub.account, NO_ACCOUNT, marks);
        self.line_accounts.remove(&n.key());
        if let Some(c) = changes {
            c.subscribers.mark(n.key());
            c.line_accounts.mark(n.key());
        }
        true
    }

    /// Removes one account, its pending timers and its lines' link to it (`state clear --account`);
    /// the lines keep their own windows. True if it was there.
    pub fn remove_account(&mut self, id: &str) -> bool {
        let Some(slot) = self.account_index.remove(id) else {
            return false;
        };
        let mut changes = self.changes.as_deref_mut();
        if let Some(acct) = self.accounts[slot as usize].take() {
            for line in &acct.lines {
                if let Some(sub) = self.subscribers.get_mut(&line.key()) {
                    if sub.account == slot {
                        sub.account = NO_ACCOUNT;
                        if let Some(c) = changes.as_deref_mut() {
                            c.subscribers.mark(line.key());
                        }
                    }
                }
            }
        }
        self.line_accounts.retain(|&line, s| {
            let keep = *s != slot;
            if let (false, Some(c)) = (keep, changes.as_deref_mut()) {
                c.line_accounts.mark(line);
            }
            keep
        });
        self.timers.cancel_for(id);
        if let Some(c) = changes {
            c.accounts.mark(slot);
            c.timers.mark(id.into());
        }
        true
    }

    /// Subscribers' numbers, for listing a snapshot's contents.
    pub fn subscriber_numbers(&self) -> impl Iterator<Item = Number> + '_ {
        self.subscribers.keys().map(|&k| Number::from_key(k))
    }

    /// Event time before which usage is late; `None` before the first record.
    pub fn watermark(&self) -> Option<i64> {
        self.final_watermark
            .or(self.newest.map(|n| n - self.cfg.allowed_lateness.0))
    }

    /// The watermark a usage record is judged against: roaming records may have a lateness of
    /// their own (`state.roaming_allowed_lateness`).
    pub fn watermark_for(&self, r: &UsageRecord) -> Option<i64> {
        let lateness = self.cfg.lateness_for(r.roaming.is_roaming);
        self.final_watermark.or(self.newest.map(|n| n - lateness))
    }

    pub fn newest_event_time(&self) -> Option<i64> {
        self.newest
    }

    /// Lateness, clock and duplicate checks every usage record passes before it touches state; `None`
    /// when it is admitted (the newest event time and the counters then include it).
    fn admit(&mut self, r: &UsageRecord) -> Option<Outcome> {
        let t = r.event_start.utc;
        // A CDR exists only once its call or session has ended, so lateness is judged on its end: a
        // 7-hour data session delivered when it closes is on time, though it started before the
        // watermark. Windows still place it at its start.
        let ends = t + r.duration_s as i64;
        if self.watermark_for(r).is_some_and(|w| ends < w) {
            self.counters.late += 1;
            return Some(Outcome::Late);
        }
        if t > self.wall_clock + self.cfg.max_future_skew.0 {
            self.counters.future += 1;
            return Some(Outcome::Future);
        }
        let newest = self.newest.map_or(t, |n| n.max(t));
        // The parts of a long call are told apart by (call, sequence number), not by record id:
        // some exporters give every part the call's id, and the second part is no resend.
        let part_id;
        let id = match (&r.call_ref, r.seq) {
            (Some(call), Some(seq)) => {
                part_id = format!(
                    "{}\u{1f}{}\u{1f}{:?}\u{1f}{call}\u{1f}{seq}",
                    r.served.msisdn,
                    r.record_type.as_str(),
                    r.direction
                );
                part_id.as_str()
            }
            _ => r.record_id.as_str(),
        };
        if let Some(seen) = self.seen_before(0, id, usage_digest(r), newest) {
            return Some(seen);
        }
        self.newest = Some(newest);
        self.counters.usage_applied += 1;
        None
    }

    /// The dedup check of a record id (`domain` 0 usage, 1 events) with its content digest, counted:
    /// `None` for an id not seen within the horizon.
    fn seen_before(&mut self, domain: u8, id: &str, digest: u32, newest: i64) -> Option<Outcome> {
        let journal = self.changes.as_deref_mut().map(|c| &mut c.dedup.open);
        match self
            .dedup
            .check_and_insert(domain, id, digest, newest, journal)
        {
            Seen::New => None,
            Seen::Again => {
                self.counters.duplicates += 1;
                Some(Outcome::Duplicate)
            }
            Seen::Conflict => {
                self.counters.conflicts += 1;
                Some(Outcome::Conflict)
            }
        }
    }

    /// A partial record (one with a `call_ref`) adds to its call what it adds, not a call of its
    /// own (`state::calls`).
    fn part_of_call(&mut self, r: &UsageRecord, c: &mut Contribution) {
        let Some(call_ref) = r.call_ref.as_deref() else {
            return;
        };
        let key = calls::key(r, call_ref);
        let max_call_s = self.limits.max_call_s;
        let call = calls::apply_part(self.open_calls.get(&key), r, c, max_call_s);
        self.open_calls.insert(key, call);
        if let Some(changes) = self.changes.as_deref_mut() {
            changes.open_calls.mark(key);
        }
    }

    /// Applies an MT call to its calling number only: a daemon partition's calls lane, which sees the
    /// calls of every partition to its numbers while the lines and accounts live in the partitions'
    /// stores.
    pub fn apply_call(&mut self, r: &UsageRecord, class: RecordClass) -> Outcome {
        if let Some(refused) = self.admit(r) {
            return refused;
        }
        let limits = self.limits;
        let mut c = contribution(r, class, limits.max_call_s);
        self.counters.calls_clipped +=
            u64::from(c.call.is_some() && r.duration_s as i64 > limits.max_call_s);
        self.part_of_call(r, &mut c);
        self.apply_caller(r, class, &c, &limits);
        Outcome::Accepted
    }

    /// Applies a usage record to every entity it concerns: its line, the line's account, its device,
    /// and (MT calls) the calling number.
    pub fn apply_usage(&mut self, r: &UsageRecord, class: RecordClass) -> Outcome {
        if let Some(refused) = self.admit(r) {
            return refused;
        }
        let t = r.event_start.utc;
        let limits = self.limits;
        let mut c = contribution(r, class, limits.max_call_s);
        self.counters.calls_clipped +=
            u64::from(c.call.is_some() && r.duration_s as i64 > limits.max_call_s);
        self.part_of_call(r, &mut c);
        let msisdn = r.served.msisdn;
        let sub = self
            .subscribers
            .entry(msisdn.key())
            .or_insert_with(|| Entity::new(t));
        sub.apply(&c, &limits);
        let previous = sub.account;
        let known = self
            .accounts
            .get(previous as usize)
            .and_then(Option::as_deref);
        let slot = match (&r.served.account_id, known) {
            // The common case: the same account as last time, no index lookup.
            (Some(id), Some(acct)) if acct.id == *id => previous,
            (Some(id), _) => account_slot(&mut self.accounts, &mut self.account_index, id),
            (None, _) if previous == NO_ACCOUNT => self
                .line_accounts
                .get(&msisdn.key())
                .copied()
                .unwrap_or(NO_ACCOUNT),
            (None, _) => previous,
        };
        sub.account = slot;
        let mut changes = self.changes.as_deref_mut();
        if let Some(c) = changes.as_deref_mut() {
            c.subscribers.mark(msisdn.key());
        }
        if slot != previous {
            let marks = changes.as_deref_mut().map(|c| &mut c.accounts);
            move_line(&mut self.accounts, msisdn, previous, slot, marks);
        }
        if let Some(acct) = self
            .accounts
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
        {
            let billed = acct.ledger.last_invoice_at.is_some_and(|i| t < i.utc);
            if !billed && c.charge != crate::record::Money::ZERO {
                acct.ledger.unbilled += c.charge;
                if let Some(c) = changes.as_deref_mut() {
                    c.accounts.mark(slot);
                }
            }
        }
        if let Some(imei) = r.served.imei.filter(|_| self.cfg.track_imei) {
            let dev = Contribution {
                other: Some(msisdn.hash32()),
                call: None,
                replaces: None,
                charge: crate::record::Money::ZERO,
                ..c
            };
            self.imeis
                .entry(imei.key())
                .or_insert_with(|| Entity::new(t))
                .apply(&dev, &limits);
            if let Some(c) = changes {
                c.imeis.mark(imei.key());
            }
        }
        self.apply_caller(r, class, &c, &limits);
        Outcome::Accepted
    }

    /// The calling number of an international MT call gets state of its own (Wangiri sources).
    fn apply_caller(
        &mut self,
        r: &UsageRecord,
        class: RecordClass,
        c: &Contribution,
        limits: &Limits,
    ) {
        if let (Some(caller), true) = (
            r.other_party.number,
            tracks_caller(self.cfg.calling_numbers, r, class),
        ) {
            let ring = Contribution {
                other: Some(r.served.msisdn.hash32()),
                cell: None,
                call: None,
                replaces: None,
                fix: None,
                ..*c
            };
            self.calling_numbers
                .entry(caller.key())
                .or_insert_with(|| Entity::new(c.at))
                .apply(&ring, limits);
            if let Some(changes) = self.changes.as_deref_mut() {
                changes.calling_numbers.mark(caller.key());
            }
        }
    }

    pub fn apply_event(&mut self, e: &AccountEvent) -> Outcome {
        // Usage time clocks the dedup generations; billing's business dates must not rotate them.
        let newest = self.newest.unwrap_or(e.occurred_at.utc);
        if let Some(seen) = self.seen_before(1, &e.event_id, event_digest(e), newest) {
            return seen;
        }
        self.counters.events_applied += 1;
        let slot = account_slot(&mut self.accounts, &mut self.account_index, &e.account_id);
        let acct = self.accounts[slot as usize].as_mut().expect("live slot");
        let (fx, warn) = acct.ledger.apply(e);
        if let Some(c) = self.changes.as_deref_mut() {
            c.accounts.mark(slot);
        }
        if let Some(w) = warn {
            let key = match w {
                LedgerWarning::UnknownPayment(_) => "unknown_payment",
                LedgerWarning::AlreadyReversed(_) => "already_reversed",
                LedgerWarning::InvoiceReissued(_) => "invoice_reissued",
                LedgerWarning::DuplicatePayment(_) => "duplicate_payment",
            };
            *self
                .counters
                .ledger_warnings
                .entry(key.to_string())
                .or_default() += 1;
            tracing::debug!(account = %e.account_id, event = %e.event_id, "{w}");
        }
        if let Some(line) = fx.line {
            self.line_accounts.insert(line.key(), slot);
            let previous = match self.subscribers.get_mut(&line.key()) {
                Some(sub) => std::mem::replace(&mut sub.account, slot),
                None => NO_ACCOUNT,
            };
            let mut changes = self.changes.as_deref_mut();
            if let Some(c) = changes.as_deref_mut() {
                c.line_accounts.mark(line.key());
                if previous != slot && self.subscribers.contains_key(&line.key()) {
                    c.subscribers.mark(line.key());
                }
            }
            let marks = changes.map(|c| &mut c.accounts);
            move_line(&mut self.accounts, line, previous, slot, marks);
        }
        if let Some(issued_at) = fx.billing_cut {
            // Usage before the invoice was billed by it; what remains unbilled is usage since. Buckets
            // that start before the cut are left out (usage within a bucket of an invoice is billed).
            let acct = self.accounts[slot as usize].as_deref().expect("live slot");
            let unbilled = self.usage_of(acct).charges_since(issued_at.utc);
            self.accounts[slot as usize]
                .as_mut()
                .expect("live slot")
                .ledger
                .unbilled = unbilled;
        }
        if let Some((invoice_id, due, issued_at)) = fx.invoice_issued {
            // Only the first stage is pending; each stage schedules the next when it fires (`advance`),
            // so an invoice costs one pending timer, not one per stage.
            if let Some(&days) = self.cfg.invoice_overdue_days.iter().min() {
                let at = due.plus_days(days as i32).midnight(issued_at.offset_min);
                let kind = TimerKind::InvoiceOverdue { invoice_id, days };
                let id = self.accounts[slot as usize]
                    .as_ref()
                    .expect("live slot")
                    .id
                    .clone();
                if let Some(c) = self.changes.as_deref_mut() {
                    c.timers.mark(id.clone());
                }
                self.timers.schedule(at, id, kind);
            }
        }
        Outcome::Accepted
    }

    /// Fires the timers the watermark has passed and runs periodic maintenance.
    pub fn advance(&mut self, fired: &mut Vec<Timer>) {
        let Some(w) = self.watermark() else { return };
        self.fire_timers(w, fired);
        if w >= self.next_maintenance {
            self.maintain(w);
            self.next_maintenance = w + MAINTENANCE_EVERY_S;
        }
    }

    fn fire_timers(&mut self, w: i64, fired: &mut Vec<Timer>) {
        // One at a time, so a stage scheduled by an earlier one that is already due fires in time order.
        while let Some(t) = self.timers.pop_due(w) {
            if let Some(c) = self.changes.as_deref_mut() {
                c.timers.mark(t.account_id.clone());
            }
            let TimerKind::InvoiceOverdue { invoice_id, days } = &t.kind;
            let due_date = crate::record::Date::of(t.at).plus_days(-(*days as i32));
            // An invoice reissued with another due date, or an evicted account, cancels the timer.
            let current = self.account(&t.account_id).is_some_and(|a| {
                a.ledger
                    .invoices
                    .iter()
                    .any(|i| i.invoice_id == *invoice_id && i.due_date == due_date)
            });
            if !current {
                self.counters.timers_cancelled += 1;
                continue;
            }
            self.counters.timers_fired += 1;
            let next = self
                .cfg
                .invoice_overdue_days
                .iter()
                .copied()
                .filter(|d| d > days)
                .min();
            if let Some(next) = next {
                let at = due_date.plus_days(next as i32).midnight(t.at.offset_min);
                let kind = TimerKind::InvoiceOverdue {
                    invoice_id: invoice_id.clone(),
                    days: next,
                };
                self.timers.schedule(at, t.account_id.clone(), kind);
            }
            fired.push(t);
        }
    }

    /// End of input: no more records can arrive, so the watermark moves up to `end` (the newest usage
    /// time, or the inspect cutoff) and due timers fire. No eviction here: the final state is what
    /// `inspect` and the summary report on.
    pub fn finish(&mut self, end: i64, fired: &mut Vec<Timer>) {
        let w = self.newest.map_or(end, |n| n.max(end));
        self.final_watermark = Some(w);
        self.fire_timers(w, fired);
    }

    /// A live stream gone quiet: event time follows the wall clock `now` (if it is ahead), so the
    /// watermark moves and timers fire with no record arriving. Returns whether time moved.
    pub fn advance_idle(&mut self, now: i64, fired: &mut Vec<Timer>) -> bool {
        if self.newest.is_some_and(|n| n >= now) {
            return false;
        }
        self.newest = Some(now);
        self.advance(fired);
        true
    }

    /// The real time now (UTC seconds), for the future-skew check. The caller reads the system clock;
    /// event time drives everything else.
    pub fn set_wall_clock(&mut self, now: i64) {
        self.wall_clock = now;
    }

    /// Evicts entities idle for longer than the longest window and prunes account ledgers.
    fn maintain(&mut self, now: i64) {
        let limits = self.limits;
        let mut evicted = 0u64;
        let mut changes = self.changes.as_deref_mut();
        let marks = match changes.as_deref_mut() {
            Some(c) => c.entity_keys().map(Some),
            None => [None, None, None],
        };
        let maps = [
            &mut self.subscribers,
            &mut self.calling_numbers,
            &mut self.imeis,
        ];
        for (map, mut marks) in maps.into_iter().zip(marks) {
            let before = map.len();
            map.retain(|&k, e| {
                let keep = !e.is_idle(now, &limits);
                if let (false, Some(m)) = (keep, marks.as_deref_mut()) {
                    m.mark(k);
                }
                keep
            });
            evicted += (before - map.len()) as u64;
            // No compaction here: an entity rolls its cells up on its own clock (`Entity::apply`), so
            // its state is a function of its own records alone — the same in one replay store as in
            // a partition's — and never of when the store it lives in happened to be swept.
            if map.capacity() > 2 * map.len() + 1024 {
                map.shrink_to_fit();
            }
        }
        // A call no part that is not late can still belong to (`state::calls::is_over`).
        if let Some(newest) = self.newest {
            let w = newest - self.cfg.max_lateness();
            let max_call_s = limits.max_call_s;
            let mut marks = changes.as_deref_mut().map(|c| &mut c.open_calls);
            self.open_calls.retain(|&k, call| {
                let keep = !calls::is_over(call, w, max_call_s);
                if let (false, Some(m)) = (keep, marks.as_deref_mut()) {
                    m.mark(k);
                }
                keep
            });
        }
        let subscribers = &self.subscribers;
        for (i, slot) in self.accounts.iter_mut().enumerate() {
            let Some(acct) = slot else { continue };
            let pruned = acct.ledger.prune(now, self.cfg.ledger_history.0);
            if let (true, Some(c)) = (pruned, changes.as_deref_mut()) {
                c.accounts.mark(i as u32);
            }
            let lines_gone = acct
                .lines
                .iter()
                .all(|l| !subscribers.contains_key(&l.key()));
            if lines_gone
                && acct.ledger.is_empty()
                && self.timers.pending_for(&acct.id).next().is_none()
            {
                let gone = self.account_index.remove(&acct.id);
                for line in &acct.lines {
                    if self.line_accounts.get(&line.key()) == gone.as_ref() {
                        self.line_accounts.remove(&line.key());
                        if let Some(c) = changes.as_deref_mut() {
                            c.line_accounts.mark(line.key());
                        }
                    }
                }
                *slot = None;
                if let Some(c) = changes.as_deref_mut() {
                    c.accounts.mark(i as u32);
                }
                evicted += 1;
            }
        }
        self.counters.evicted_entities += evicted;
        // A gap no window reaches any more changes nothing.
        let horizon = now - self.cfg.max_window.0;
        self.gaps
            .retain(|g| g.before.or(g.after).is_none_or(|t| t >= horizon));
    }

    pub fn subscriber(&self, n: Number) -> Option<&Entity> {
        self.subscribers.get(&n.key())
    }

    pub fn calling_number(&self, n: Number) -> Option<&Entity> {
        self.calling_numbers.get(&n.key())
    }

    pub fn imei(&self, n: Number) -> Option<&Entity> {
        self.imeis.get(&n.key())
    }

    pub fn account(&self, id: &str) -> Option<&Account> {
        let slot = *self.account_index.get(id)?;
        self.accounts[slot as usize].as_deref()
    }

    /// The account in a slot (`Entity::account`); `None` for no account or an evicted one.
    pub fn account_at(&self, slot: u32) -> Option<&Account> {
        self.accounts.get(slot as usize).and_then(Option::as_deref)
    }

    /// The slot of an account by id.
    pub fn account_slot(&self, id: &str) -> Option<u32> {
        self.account_index.get(id).copied()
    }

    /// The usage of all of an account's lines that are in state.
    pub fn usage_of(&self, acct: &Account) -> AccountUsage<'_> {
        AccountUsage {
            lines: acct
                .lines
                .iter()
                .filter_map(|l| self.subscribers.get(&l.key()))
                .collect(),
        }
    }

    /// The id of the account a line belongs to, as far as this store knows: from its usage, else
    /// from an `activation` naming it.
    pub fn line_account_id(&self, n: Number) -> Option<&str> {
        let slot = match self.subscribers.get(&n.key()) {
            Some(sub) if sub.account != NO_ACCOUNT => sub.account,
            _ => *self.line_accounts.get(&n.key())?,
        };
        self.account_at(slot).map(|a| a.id.as_str())
    }

    /// The account a subscriber's usage is attributed to.
    pub fn account_of(&self, sub: &Entity) -> Option<&Account> {
        self.accounts
            .get(sub.account as usize)
            .and_then(Option::as_deref)
    }

    pub fn pending_timers<'a>(
        &'a self,
        account_id: &'a str,
    ) -> impl Iterator<Item = &'a Timer> + 'a {
        self.timers.pending_for(account_id)
    }

    pub fn config(&self) -> &StateConfig {
        &self.cfg
    }

    pub fn size(&self) -> StoreSize {
        fn map_bytes(m: &AHashMap<u64, Entity>) -> usize {
            m.capacity() * (std::mem::size_of::<(u64, Entity)>() + 1)
                + m.values().map(Entity::heap_bytes).sum::<usize>()
        }
        let maps = [&self.subscribers, &self.calling_numbers, &self.imeis];
        let account_bytes: usize = self
            .accounts
            .iter()
            .flatten()
            .map(|a| {
                std::mem::size_of::<Account>()
                    + a.lines.capacity() * 8
                    + a.ledger.invoices.capacity()
                        * std::mem::size_of::<super::ledger::InvoiceState>()
                    + a.ledger.payments.capacity()
                        * std::mem::size_of::<super::ledger::PaymentState>()
                    + a.ledger.reversals.capacity() * 16
            })
            .sum::<usize>()
            + self.accounts.capacity() * 8
            + self.account_index.capacity() * (std::mem::size_of::<(CompactString, u32)>() + 1)
            + self.line_accounts.capacity() * 13
            + self.open_calls.capacity() * (std::mem::size_of::<(u64, OpenCall)>() + 1)
            + self.timers.heap_bytes();
        let entity_bytes: usize = maps.iter().map(|m| map_bytes(m)).sum();
        let dedup_bytes = self.dedup.heap_bytes();
        StoreSize {
            subscribers: self.subscribers.len(),
            accounts: self.account_index.len(),
            calling_numbers: self.calling_numbers.len(),
            imeis: self.imeis.len(),
            cells: maps
                .iter()
                .flat_map(|m| m.values())
                .map(|e| e.cells.len())
                .sum(),
            distinct_entries: maps
                .iter()
                .flat_map(|m| m.values())
                .map(|e| e.distinct.len())
                .sum(),
            timers_pending: self.timers.len(),
            dedup_ids: self.dedup.len(),
            entity_bytes,
            account_bytes,
            dedup_bytes,
            estimated_bytes: entity_bytes + account_bytes + dedup_bytes,
        }
    }
}

fn far_future() -> i64 {
    i64::MAX / 2
}

/// Moves a line's membership from one account slot to another (either may be `NO_ACCOUNT`), so a
/// number ported between customers is counted in one account's view only. Marks the slots whose
/// lines changed in `changed`, if given.
fn move_line(
    accounts: &mut [Option<Box<Account>>],
    line: Number,
    from: u32,
    to: u32,
    mut changed: Option<&mut ChangedKeys<u32>>,
) {
    if from != to {
        if let Some(old) = accounts.get_mut(from as usize).and_then(Option::as_mut) {
            let before = old.lines.len();
            old.lines.retain(|l| *l != line);
            if let (true, Some(c)) = (old.lines.len() != before, changed.as_deref_mut()) {
                c.mark(from);
            }
        }
    }
    if let Some(new) = accounts.get_mut(to as usize).and_then(Option::as_mut) {
        if !new.lines.contains(&line) {
            super::reserve_tight(&mut new.lines);
            new.lines.push(line);
            if let Some(c) = changed {
                c.mark(to);
            }
        }
    }
}

fn account_slot(
    accounts: &mut Vec<Option<Box<Account>>>,
    index: &mut AHashMap<CompactString, u32>,
    id: &CompactString,
) -> u32 {
    if let Some(&slot) = index.get(id) {
        return slot;
    }
    let slot = accounts.len() as u32;
    assert!(slot != NO_ACCOUNT, "account slots exhausted");
    accounts.push(Some(Box::new(Account {
        id: id.clone(),
        ledger: Ledger::default(),
        lines: Vec::new(),
    })));
    index.insert(id.clone(), slot);
    slot
}

/// What a usage record adds to the windows of the entities it concerns.
fn contribution(r: &UsageRecord, class: RecordClass, max_call_s: i64) -> Contribution {
    let t = r.event_start.utc;
    let other = r.destination();
    let units = match r.record_type {
        RecordType::Voice => r.duration_s as u64,
        RecordType::Data => r.bytes(),
        RecordType::Sms => 0,
    };
    let outgoing_voice = r.record_type == RecordType::Voice && r.direction != Some(Direction::Mt);
    let call = (outgoing_voice && r.answered && r.duration_s > 0).then(|| Span {
        start: t,
        end: t + (r.duration_s as i64).min(max_call_s),
    });
    let fix = match (r.location.lat, r.location.lon) {
        (Some(lat), Some(lon)) => Some(Fix {
            at: t,
            lat: lat as f32,
            lon: lon as f32,
        }),
        _ => None,
    };
    Contribution {
        at: t,
        class,
        count: 1,
        units,
        charge: r.charge.amount,
        other: other.map(Number::hash32),
        cell: r.location.cell_id.map(|id| Number::from_key(id).hash32()),
        call,
        replaces: None,
        fix,
    }
}

/// Whether an MT call gives its calling number state of its own (a Wangiri source): the one test the
/// store and the daemon's hand-over to the calling numbers (`repartition::calls`) both use.
pub fn tracks_caller(calling: CallingNumbers, r: &UsageRecord, class: RecordClass) -> bool {
    let mt_voice = r.record_type == RecordType::Voice && r.direction == Some(Direction::Mt);
    mt_voice
        && r.other_party.number.is_some()
        && match calling {
            CallingNumbers::Off => false,
            CallingNumbers::All => true,
            CallingNumbers::International => class.has(crate::classify::INTERNATIONAL),
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Classifier, PrefixList};
    use crate::record::Decoder;

    fn record(id: &str, t: &str, msisdn: &str, account: &str) -> UsageRecord {
        let json = format!(
            r#"{{"record_id":"{id}","record_type":"voice","direction":"mo","event_start":"{t}","duration_s":60,"served":{{"msisdn":"{msisdn}","account_id":"{account}"}},"other_party":{{"number":"33611111111"}}}}"#
        );
        Decoder::default().usage(json.as_bytes()).unwrap()
    }

    /// Defect 4 of the rule-safety issue: one line's week-long answered calls, one every 5 s, kept
    /// every call open for a week. A call is now clipped to `state.max_call_duration` for
    /// concurrency, and counted; its minutes stay whole.
    #[test]
    fn calls_longer_than_the_maximum_are_clipped_and_counted() {
        let classifier = Classifier::new(Number::parse("33").unwrap(), PrefixList::new());
        let mut store = WindowStore::new(StateConfig::default());
        let call = |id: &str, t: &str, duration_s: u32| {
            let json = format!(
                r#"{{"record_id":"{id}","record_type":"voice","direction":"mo","event_start":"{t}","duration_s":{duration_s},"answered":true,"served":{{"msisdn":"33600000001"}},"other_party":{{"number":"33611111111"}}}}"#
            );
            Decoder::default().usage(json.as_bytes()).unwrap()
        };
        for (id, t, d) in [
            ("w1", "2026-09-01T10:00:00Z", 7 * 86_400),
            ("w2", "2026-09-01T10:00:05Z", 7 * 86_400),
            ("n1", "2026-09-01T10:00:10Z", 600),
        ] {
            let r = call(id, t, d);
            assert_eq!(
                store.apply_usage(&r, classifier.classify(&r)),
                Outcome::Accepted
            );
        }
        assert_eq!(store.counters.calls_clipped, 2, "the two week-long calls");
        let line = store
            .subscriber(Number::parse("33600000001").unwrap())
            .unwrap();
        let t0 = 1_788_256_800; // 2026-09-01T10:00:00Z
        assert_eq!(line.max_concurrent_calls(t0 + 20, t0 + 30), 3);
        assert_eq!(
            line.max_concurrent_calls(t0 + 86_400 + 10, t0 + 2 * 86_400),
            0,
            "clipped at 24 h, not open for a week"
        );
    }

    #[test]
    fn idle_entities_are_evicted_after_the_longest_window_but_ledgers_stay() {
        let classifier = Classifier::new(Number::parse("33").unwrap(), PrefixList::new());
        let mut store = WindowStore::new(StateConfig::default());
        let mut fired = Vec::new();
        let apply = |store: &mut WindowStore, r: UsageRecord, fired: &mut Vec<Timer>| {
            let class = classifier.classify(&r);
            assert_eq!(store.apply_usage(&r, class), Outcome::Accepted);
            store.advance(fired);
        };
        apply(
            &mut store,
            record("a", "2026-09-01T10:00:00Z", "33600000001", "A-1"),
            &mut fired,
        );
        let limit = Decoder::default()
            .account_event(br#"{"event_id":"c","event_type":"credit_limit_changed","occurred_at":"2026-09-01T10:00:00Z","account_id":"A-1","credit":{"credit_limit":"50"}}"#)
            .unwrap();
        store.apply_event(&limit);
        apply(
            &mut store,
            record("b", "2026-09-01T10:00:00Z", "33600000002", "A-2"),
            &mut fired,
        );
        // 34 days later both are still within the 35-day window.
        apply(
            &mut store,
            record("c", "2026-10-05T10:00:00Z", "33600000003", "A-3"),
            &mut fired,
        );
        assert_eq!(store.size().subscribers, 3);
        // 36 days later: the idle subscribers go, the account with a credit limit keeps its ledger,
        // the account with nothing left goes too.
        apply(
            &mut store,
            record("d", "2026-10-08T10:00:00Z", "33600000003", "A-3"),
            &mut fired,
        );
        assert!(store
            .subscriber(Number::parse("33600000001").unwrap())
            .is_none());
        assert!(store
            .subscriber(Number::parse("33600000003").unwrap())
            .is_some());
        assert_eq!(
            store.account("A-1").unwrap().ledger.credit_limit,
            Some(crate::record::Money::from_units(50))
        );
        assert!(store.account("A-2").is_none());
        assert_eq!(store.counters.evicted_entities, 3);
    }
}
