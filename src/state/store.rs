//! `WindowStore`: all state of one partition (or one replay), owned by one thread, no locks.
//!
//! Per record: lateness check against the watermark, de-duplication, then one update of each entity the
//! record concerns: its subscriber, its account (one customer across all lines), the calling number of an
//! international MT call, and optionally the device. The watermark is the newest **usage** event time
//! minus the allowed lateness: account events do not move it, because billing stamps some of them with
//! business dates (an invoice "issued" at tomorrow's midnight would otherwise make all usage late).

use ahash::AHashMap;
use compact_str::CompactString;

use crate::classify::RecordClass;
use crate::config::{CallingNumbers, StateConfig};
use crate::record::{AccountEvent, Direction, Money, Number, RecordType, UsageRecord};

use super::dedup::Dedup;
use super::entity::{Contribution, Entity, Fix, Limits, Span, NO_ACCOUNT};
use super::ledger::{Ledger, LedgerWarning};
use super::timers::{Timer, TimerKind, TimerQueue};

/// What happened to a record offered to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to every entity it concerns.
    Accepted,
    /// Its id was seen within the dedup horizon: counted, not applied again.
    Duplicate,
    /// Older than the watermark: dead-lettered by the caller with reason `late`.
    Late,
}

/// An account: its usage across all lines plus its credit ledger.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: CompactString,
    pub usage: Entity,
    pub ledger: Ledger,
    /// Lines (msisdns) seen on this account, from records and account events.
    pub lines: Vec<Number>,
}

/// How often (watermark time) idle entities are evicted and every entity rolled up.
const MAINTENANCE_EVERY_S: i64 = 3600;

pub struct WindowStore {
    cfg: StateConfig,
    limits: Limits,
    subscribers: AHashMap<u64, Entity>,
    calling_numbers: AHashMap<u64, Entity>,
    imeis: AHashMap<u64, Entity>,
    /// Accounts by slot. Slots are never reused, so a subscriber's slot can go stale (evicted account,
    /// `None`) but never point at another customer.
    accounts: Vec<Option<Box<Account>>>,
    account_index: AHashMap<CompactString, u32>,
    /// Lines that account events (activation...) named, for usage records without `account_id`.
    line_accounts: AHashMap<u64, u32>,
    timers: TimerQueue,
    dedup: Dedup,
    /// Newest usage event time (UTC seconds), if any.
    newest: Option<i64>,
    /// Set by `finish`: the end of input closes every window.
    final_watermark: Option<i64>,
    next_maintenance: i64,
    pub counters: StoreCounters,
}

/// Counts the store keeps for the summary and metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreCounters {
    pub usage_applied: u64,
    pub events_applied: u64,
    pub duplicates: u64,
    pub late: u64,
    pub timers_fired: u64,
    pub evicted_entities: u64,
    /// Account events that could not be applied in full, by reason (`unknown_payment`...).
    pub ledger_warnings: std::collections::BTreeMap<&'static str, u64>,
}

/// Entity counts and an estimate of heap bytes, for the summary and memory reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreSize {
    pub subscribers: usize,
    pub accounts: usize,
    pub calling_numbers: usize,
    pub imeis: usize,
    pub cells: usize,
    pub timers_pending: usize,
    pub dedup_ids: usize,
    pub estimated_bytes: usize,
}

impl WindowStore {
    pub fn new(cfg: StateConfig) -> Self {
        let limits = Limits {
            retention_s: cfg.max_window.0,
            distinct_horizon_s: cfg.distinct_horizon.0,
            allowed_lateness_s: cfg.allowed_lateness.0,
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
            timers: TimerQueue::default(),
            newest: None,
            final_watermark: None,
            next_maintenance: i64::MIN,
            counters: StoreCounters::default(),
        }
    }

    /// Event time before which usage is late; `None` before the first record.
    pub fn watermark(&self) -> Option<i64> {
        self.final_watermark
            .or(self.newest.map(|n| n - self.cfg.allowed_lateness.0))
    }

    pub fn newest_event_time(&self) -> Option<i64> {
        self.newest
    }

    pub fn apply_usage(&mut self, r: &UsageRecord, class: RecordClass) -> Outcome {
        let t = r.event_start.utc;
        if self.watermark().is_some_and(|w| t < w) {
            self.counters.late += 1;
            return Outcome::Late;
        }
        let newest = self.newest.map_or(t, |n| n.max(t));
        if self.dedup.check_and_insert(0, &r.record_id, newest) {
            self.counters.duplicates += 1;
            return Outcome::Duplicate;
        }
        self.newest = Some(newest);
        self.counters.usage_applied += 1;

        let other = if r.is_forwarded() {
            r.forwarded_to().or(r.other_party.number)
        } else {
            r.other_party.number
        };
        let units = match r.record_type {
            RecordType::Voice => r.duration_s as u64,
            RecordType::Data => r.bytes(),
            RecordType::Sms => 0,
        };
        let outgoing_voice =
            r.record_type == RecordType::Voice && r.direction != Some(Direction::Mt);
        let call = (outgoing_voice && r.answered && r.duration_s > 0).then(|| Span {
            start: t,
            end: t + r.duration_s as i64,
        });
        let fix = match (r.location.lat, r.location.lon) {
            (Some(lat), Some(lon)) => Some(Fix {
                at: t,
                lat: lat as f32,
                lon: lon as f32,
            }),
            _ => None,
        };
        let mut c = Contribution {
            at: t,
            class,
            units,
            charge: r.charge.amount,
            other: other.map(Number::hash32),
            cell: r.location.cell_id.map(|id| Number::from_key(id).hash32()),
            call,
            fix,
        };

        let limits = self.limits;
        let msisdn = r.served.msisdn;
        let sub = self
            .subscribers
            .entry(msisdn.key())
            .or_insert_with(|| Entity::new(t));
        sub.apply(&c, &limits);
        let slot = match &r.served.account_id {
            Some(id) => {
                let slot = account_slot(&mut self.accounts, &mut self.account_index, id);
                sub.account = slot;
                slot
            }
            None if sub.account == NO_ACCOUNT => {
                let slot = self
                    .line_accounts
                    .get(&msisdn.key())
                    .copied()
                    .unwrap_or(NO_ACCOUNT);
                sub.account = slot;
                slot
            }
            None => sub.account,
        };
        if let Some(acct) = self
            .accounts
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
        {
            if !acct.lines.contains(&msisdn) {
                acct.lines.push(msisdn);
            }
            // Location is per device, not per customer: an account with lines in two cities is normal.
            let fix = c.fix.take();
            acct.usage.apply(&c, &limits);
            c.fix = fix;
            if acct.ledger.last_invoice_at.is_none_or(|i| t >= i.utc) {
                acct.ledger.unbilled += r.charge.amount;
            }
        }
        if let Some(imei) = r.served.imei.filter(|_| self.cfg.track_imei) {
            let mut dev = Contribution {
                other: Some(msisdn.hash32()),
                call: None,
                ..c
            };
            dev.charge = Money::ZERO;
            self.imeis
                .entry(imei.key())
                .or_insert_with(|| Entity::new(t))
                .apply(&dev, &limits);
        }
        let tracked_caller = match self.cfg.calling_numbers {
            CallingNumbers::Off => false,
            CallingNumbers::All => true,
            CallingNumbers::International => class.has(crate::classify::INTERNATIONAL),
        };
        if let (Some(caller), true) = (
            r.other_party.number,
            tracked_caller
                && r.record_type == RecordType::Voice
                && r.direction == Some(Direction::Mt),
        ) {
            let ring = Contribution {
                other: Some(msisdn.hash32()),
                cell: None,
                call: None,
                fix: None,
                ..c
            };
            self.calling_numbers
                .entry(caller.key())
                .or_insert_with(|| Entity::new(t))
                .apply(&ring, &limits);
        }
        Outcome::Accepted
    }

    pub fn apply_event(&mut self, e: &AccountEvent) -> Outcome {
        let newest = self
            .newest
            .unwrap_or(e.occurred_at.utc)
            .max(e.occurred_at.utc);
        if self.dedup.check_and_insert(1, &e.event_id, newest) {
            self.counters.duplicates += 1;
            return Outcome::Duplicate;
        }
        self.counters.events_applied += 1;
        let slot = account_slot(&mut self.accounts, &mut self.account_index, &e.account_id);
        let acct = self.accounts[slot as usize].as_mut().expect("live slot");
        let (fx, warn) = acct.ledger.apply(e);
        if let Some(w) = warn {
            let key = match w {
                LedgerWarning::UnknownPayment(_) => "unknown_payment",
                LedgerWarning::AlreadyReversed(_) => "already_reversed",
                LedgerWarning::InvoiceReissued(_) => "invoice_reissued",
            };
            *self.counters.ledger_warnings.entry(key).or_default() += 1;
            tracing::debug!(account = %e.account_id, event = %e.event_id, "{w}");
        }
        if let Some((invoice_id, due, issued_at)) = fx.invoice_issued {
            // Usage before the invoice was billed by it; what remains unbilled is usage since.
            acct.ledger.unbilled = match acct.usage.last_seen {
                0 => Money::ZERO,
                last => {
                    acct.usage
                        .sum(
                            &crate::classify::ClassFilter::all(),
                            (last - issued_at.utc).max(0),
                            last,
                        )
                        .charge
                }
            };
            for &days in &self.cfg.invoice_overdue_days {
                let at = due.plus_days(days as i32).midnight(issued_at.offset_min);
                let kind = TimerKind::InvoiceOverdue {
                    invoice_id: invoice_id.clone(),
                    days,
                };
                self.timers.schedule(at, acct.id.clone(), kind);
            }
        }
        if let Some(line) = fx.line {
            if !acct.lines.contains(&line) {
                acct.lines.push(line);
            }
            self.line_accounts.insert(line.key(), slot);
            if let Some(sub) = self.subscribers.get_mut(&line.key()) {
                sub.account = slot;
            }
        }
        Outcome::Accepted
    }

    /// Fires the timers the watermark has passed and runs periodic maintenance.
    pub fn advance(&mut self, fired: &mut Vec<Timer>) {
        let Some(w) = self.watermark() else { return };
        let before = fired.len();
        self.timers.due(w, fired);
        self.counters.timers_fired += (fired.len() - before) as u64;
        if w >= self.next_maintenance {
            self.maintain(w);
            self.next_maintenance = w + MAINTENANCE_EVERY_S;
        }
    }

    /// End of input: no more records can arrive, so the watermark moves up to the newest event time of
    /// any record (usage or account event) and due timers fire. Timers later than that stay pending.
    pub fn finish(&mut self, newest_any: i64, fired: &mut Vec<Timer>) {
        let w = self.newest.unwrap_or(newest_any).max(newest_any);
        self.final_watermark = Some(w);
        self.advance(fired);
    }

    /// Rolls every entity up to `now` and evicts those idle for longer than the longest window.
    fn maintain(&mut self, now: i64) {
        let limits = self.limits;
        let mut evicted = 0u64;
        for map in [
            &mut self.subscribers,
            &mut self.calling_numbers,
            &mut self.imeis,
        ] {
            let before = map.len();
            map.retain(|_, e| !e.is_idle(now, &limits));
            evicted += (before - map.len()) as u64;
            for e in map.values_mut() {
                e.compact(now, &limits);
            }
            if map.capacity() > 2 * map.len() + 1024 {
                map.shrink_to_fit();
            }
        }
        for slot in self.accounts.iter_mut() {
            let Some(acct) = slot else { continue };
            acct.ledger.prune(now, self.cfg.ledger_history.0);
            if acct.usage.is_idle(now, &limits) {
                acct.usage = Entity::default();
                if acct.ledger.is_empty() && self.timers.pending_for(&acct.id).next().is_none() {
                    let gone = self.account_index.remove(&acct.id);
                    for line in &acct.lines {
                        if self.line_accounts.get(&line.key()) == gone.as_ref() {
                            self.line_accounts.remove(&line.key());
                        }
                    }
                    *slot = None;
                    evicted += 1;
                }
            } else {
                acct.usage.compact(now, &limits);
            }
        }
        self.counters.evicted_entities += evicted;
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
        let accounts = self.accounts.iter().flatten();
        let account_bytes: usize = accounts
            .map(|a| {
                std::mem::size_of::<Account>()
                    + a.usage.heap_bytes()
                    + a.lines.capacity() * 8
                    + a.ledger.invoices.capacity()
                        * std::mem::size_of::<super::ledger::InvoiceState>()
                    + a.ledger.payments.capacity()
                        * std::mem::size_of::<super::ledger::PaymentState>()
            })
            .sum();
        let cells = [&self.subscribers, &self.calling_numbers, &self.imeis]
            .iter()
            .flat_map(|m| m.values())
            .map(|e| e.cells.len())
            .sum::<usize>()
            + self
                .accounts
                .iter()
                .flatten()
                .map(|a| a.usage.cells.len())
                .sum::<usize>();
        StoreSize {
            subscribers: self.subscribers.len(),
            accounts: self.account_index.len(),
            calling_numbers: self.calling_numbers.len(),
            imeis: self.imeis.len(),
            cells,
            timers_pending: self.timers.len(),
            dedup_ids: self.dedup.len(),
            estimated_bytes: map_bytes(&self.subscribers)
                + map_bytes(&self.calling_numbers)
                + map_bytes(&self.imeis)
                + account_bytes
                + self.accounts.capacity() * 8
                + self.account_index.capacity() * 29
                + self.line_accounts.capacity() * 13
                + self.timers.heap_bytes()
                + self.dedup.heap_bytes(),
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
        usage: Entity::default(),
        ledger: Ledger::default(),
        lines: Vec::new(),
    })));
    index.insert(id.clone(), slot);
    slot
}
