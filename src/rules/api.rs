//! What a rule script sees: registered custom types with getters and native feature calls.
//!
//! ```rhai
//! fn evaluate(call, sub, acct, params) {
//!     let calls = sub.count("voice.mo.high_risk", "1h");
//!     if calls < params.min_calls { return; }
//!     #{ metrics: #{ calls: calls }, explanation: `${calls} calls to high-risk numbers in 1 h` }
//! }
//! ```
//!
//! Why custom types over handles and not values: a `Map` built per record costs ~1 µs before a rule
//! runs (PERF_NOTES.md), and most rules read two or three features out of hundreds possible. A view is
//! an `Rc` and a key; each feature call borrows the window store for the length of that call only,
//! finds the entity (it was just updated, so it is in cache) and computes the sum. The store is shared
//! as `Rc<RefCell<_>>` with the pipeline, which only mutates it between rule evaluations, so a borrow
//! can never conflict. Filters (`"voice.mo.international"`) and windows (`"1h"`) are parsed once per
//! distinct string and cached, never per call.
//!
//! Views are read-only: no function here changes state.

use std::cell::RefCell;
use std::rc::Rc;

use ahash::AHashMap;
use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Position};

use crate::classify::{ClassFilter, PrefixList, RecordClass};
use crate::record::EntityType;
use crate::record::{AccountEvent, EventTime, Money, Number, NumberKind, RecordType, UsageRecord};
use crate::state::{Account, Entity, Features, Timer, TimerKind, WindowStore};

use crate::alert::memory::AlertMemory;

pub type SharedStore = Rc<RefCell<WindowStore>>;

type Fallible<T> = Result<T, Box<EvalAltResult>>;

fn fail<T>(message: String) -> Fallible<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        message.into(),
        Position::NONE,
    )))
}

/// Distinct filter and window strings kept parsed; literals in scripts are far fewer.
const CACHE_LIMIT: usize = 1024;

/// The entity of an evaluation, without making a string of it.
#[derive(Clone, Copy, Debug, Default)]
pub enum EntityKey {
    #[default]
    None,
    Number(Number),
    /// A subscriber as seen from the number its record went to
    /// (`alert::policy::TriggerInfo::scope`).
    Scoped(Number, Number),
    Account(u32),
}

/// What views share: the store, the alert memory (for `alerted`), and the parse caches.
/// What a candidate library's rule ids carry in the alert memory (and in its alert ids).
pub const CANDIDATE_NAMESPACE: &str = "\u{1f}candidate";

pub struct Shared {
    pub store: SharedStore,
    pub memory: Rc<RefCell<AlertMemory>>,
    /// Rule (id hash) and entity of the evaluation in progress, for `edge`.
    pub current: std::cell::Cell<(u64, EntityKey)>,
    filters: RefCell<AHashMap<ImmutableString, Rc<ClassFilter>>>,
    windows: RefCell<AHashMap<ImmutableString, i64>>,
    /// Rules of the active set in shadow: `alerted` never sees their alerts, so a candidate's
    /// output cannot reach a department through a live rule reading it.
    pub shadow: RefCell<ahash::AHashSet<String>>,
    /// The library's part of the alert memory: empty for the live library; for a candidate
    /// library beside it (`rules.shadow_dir`) a suffix of every rule id it remembers by, so that
    /// a candidate and the live rule of the same id keep their own cooldowns, latches, alerts
    /// and snoozes in the one memory the partition checkpoints.
    pub namespace: &'static str,
}

impl Shared {
    pub fn new(store: SharedStore, memory: Rc<RefCell<AlertMemory>>) -> Rc<Self> {
        Rc::new(Shared {
            store,
            memory,
            current: Default::default(),
            filters: RefCell::default(),
            windows: RefCell::default(),
            shadow: RefCell::default(),
            namespace: "",
        })
    }

    /// The same, for a candidate library: its memory kept apart under `namespace`.
    pub fn candidate(store: SharedStore, memory: Rc<RefCell<AlertMemory>>) -> Rc<Self> {
        Rc::new(Shared {
            namespace: CANDIDATE_NAMESPACE,
            ..Rc::try_unwrap(Shared::new(store, memory))
                .ok()
                .expect("just made")
        })
    }

    /// The id a rule is remembered by in this library's part of the alert memory.
    pub fn memory_id<'a>(&self, rule: &'a str) -> std::borrow::Cow<'a, str> {
        match self.namespace {
            "" => rule.into(),
            ns => format!("{rule}{ns}").into(),
        }
    }

    fn filter(&self, text: &ImmutableString) -> Fallible<Rc<ClassFilter>> {
        let cached = self.filters.borrow().get(text).cloned();
        if let Some(f) = cached {
            return Ok(f);
        }
        let f = Rc::new(ClassFilter::parse(text).or_else(fail)?);
        // Bounded: a script building filter strings at run time must not grow memory without end.
        let mut cache = self.filters.borrow_mut();
        if cache.len() < CACHE_LIMIT {
            cache.insert(text.clone(), f.clone());
        }
        Ok(f)
    }

    /// A window length in seconds, at most the longest window state keeps (`distinct` for distinct
    /// counts, which keep a shorter history).
    fn window(&self, text: &ImmutableString, distinct: bool) -> Fallible<i64> {
        let cached = self.windows.borrow().get(text).copied();
        let w = match cached {
            Some(w) => w,
            None => {
                let w = crate::record::time::parse_duration(text).or_else(fail)?;
                let mut cache = self.windows.borrow_mut();
                if cache.len() < CACHE_LIMIT {
                    cache.insert(text.clone(), w);
                }
                w
            }
        };
        let (max, what) = {
            let store = self.store.borrow();
            let cfg = store.config();
            if distinct {
                (cfg.distinct_horizon.0, "state.distinct_horizon")
            } else {
                (cfg.max_window.0, "state.max_window")
            }
        };
        if w <= 0 || w > max {
            return fail(format!(
                "window {text:?} must be positive and at most {what} ({})",
                crate::record::time::format_duration(max)
            ));
        }
        Ok(w)
    }
}

fn digits(n: Option<Number>) -> ImmutableString {
    n.map(|n| n.to_string().into()).unwrap_or_default()
}

fn money(m: Money) -> f64 {
    m.as_f64()
}

/// The usage record that triggered the evaluation.
#[derive(Clone)]
pub struct UsageView(Rc<(UsageRecord, RecordClass)>);

impl UsageView {
    pub fn new(r: &UsageRecord, class: RecordClass) -> Self {
        UsageView(Rc::new((r.clone(), class)))
    }
    fn r(&self) -> &UsageRecord {
        &self.0 .0
    }
}

/// The account event that triggered the evaluation.
#[derive(Clone)]
pub struct EventView(Rc<AccountEvent>);

impl EventView {
    pub fn new(e: &AccountEvent) -> Self {
        EventView(Rc::new(e.clone()))
    }
}

/// The timer that fired.
#[derive(Clone)]
pub struct TimerView(Rc<Timer>);

impl TimerView {
    pub fn new(t: &Timer) -> Self {
        TimerView(Rc::new(t.clone()))
    }
}

/// One entity's windows (subscriber, calling number or device), ending at the trigger time.
#[derive(Clone)]
pub struct EntityView {
    shared: Rc<Shared>,
    kind: EntityType,
    number: Number,
    end: i64,
}

impl EntityView {
    pub fn new(shared: Rc<Shared>, kind: EntityType, number: Number, end: i64) -> Self {
        EntityView {
            shared,
            kind,
            number,
            end,
        }
    }

    fn with<R>(&self, default: R, f: impl FnOnce(&Entity) -> R) -> R {
        let store = self.shared.store.borrow();
        let e = match self.kind {
            EntityType::CallingNumber => store.calling_number(self.number),
            EntityType::Imei => store.imei(self.number),
            _ => store.subscriber(self.number),
        };
        e.map_or(default, f)
    }
}

/// An account: its ledger, and the usage of all its lines read together, ending at the trigger time.
#[derive(Clone)]
pub struct AccountView {
    shared: Rc<Shared>,
    slot: Option<u32>,
    end: EventTime,
}

impl AccountView {
    pub fn new(shared: Rc<Shared>, slot: Option<u32>, end: EventTime) -> Self {
        AccountView { shared, slot, end }
    }

    fn with<R>(&self, default: R, f: impl FnOnce(&WindowStore, &Account) -> R) -> R {
        let store = self.shared.store.borrow();
        match self.slot.and_then(|s| store.account_at(s)) {
            Some(a) => f(&store, a),
            None => default,
        }
    }
}

/// A rule's parameters for the account's segment (segment overrides applied at load).
#[derive(Clone)]
pub struct ParamsView(pub Rc<ParamTable>);

pub struct ParamTable {
    pub rule_id: String,
    pub segment: &'static str,
    pub values: AHashMap<String, Dynamic>,
}

/// The reference lists of a rule set (`lists/<name>.txt`), by name.
pub type Lists = Rc<AHashMap<String, PrefixList>>;

/// Window features both entity and account views answer.
trait Windowed {
    fn shared(&self) -> &Rc<Shared>;
    fn end(&self) -> i64;
    fn features<R>(&self, default: R, f: impl FnOnce(&dyn Features) -> R) -> R;
}

impl Windowed for EntityView {
    fn shared(&self) -> &Rc<Shared> {
        &self.shared
    }
    fn end(&self) -> i64 {
        self.end
    }
    fn features<R>(&self, default: R, f: impl FnOnce(&dyn Features) -> R) -> R {
        self.with(default, |e| f(e))
    }
}

impl Windowed for AccountView {
    fn shared(&self) -> &Rc<Shared> {
        &self.shared
    }
    fn end(&self) -> i64 {
        self.end.utc
    }
    fn features<R>(&self, default: R, f: impl FnOnce(&dyn Features) -> R) -> R {
        self.with(default, |store, a| f(&store.usage_of(a)))
    }
}

/// The sums of a windowed feature call: `window` ending at the trigger, or `ago` before it (the
/// baselines of spike rules, "the 30 days before the last 72 hours").
fn window_sums<T: Windowed>(
    v: &T,
    filter: &ImmutableString,
    window: &ImmutableString,
    ago: Option<&ImmutableString>,
) -> Fallible<crate::state::WindowSums> {
    let f = v.shared().filter(filter)?;
    let w = v.shared().window(window, false)?;
    let Some(ago) = ago else {
        return Ok(v.features(Default::default(), |x| x.sum(&f, w, v.end())));
    };
    let a = v.shared().window(ago, false)?;
    if w + a > v.shared().store.borrow().config().max_window.0 {
        return fail(format!(
            "window {window:?} ending {ago:?} ago reaches beyond state.max_window"
        ));
    }
    Ok(v.features(Default::default(), |x| x.sum(&f, w, v.end() - a)))
}

/// Distinct numbers (`cells` false) or cells within `window` ending at the trigger.
fn window_distinct<T: Windowed>(
    v: &T,
    filter: &ImmutableString,
    window: &ImmutableString,
    cells: bool,
) -> Fallible<i64> {
    let f = v.shared().filter(filter)?;
    let w = v.shared().window(window, true)?;
    Ok(v.features(0, |x| {
        if cells {
            x.distinct_cells(&f, w, v.end())
        } else {
            x.distinct_numbers(&f, w, v.end())
        }
    }) as i64)
}

/// The window features a script reads on an entity or account view, and that a gate (`gate`)
/// reads natively before deciding whether the script needs to run at all: one function per feature
/// serves both, so that the two cannot disagree. All of them are pure: they read the store and
/// change nothing (the parse caches aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accessor {
    /// `count(filter, window[, ago])`, an `INT`.
    Count,
    /// `seconds(filter, window)`, an `INT`.
    Seconds,
    /// `minutes(filter, window[, ago])`, a `FLOAT`.
    Minutes,
    /// `bytes(filter, window)`, an `INT`.
    Bytes,
    /// `charges(filter, window[, ago])`, a `FLOAT`.
    Charges,
    /// `distinct_numbers(filter, window)`, an `INT`.
    DistinctNumbers,
    /// `distinct_cells(filter, window)`, an `INT`.
    DistinctCells,
    /// `distinct_called(window)`, an `INT`.
    DistinctCalled,
    /// `travel_km()` of an entity, a `FLOAT`.
    TravelKm,
    /// `travel_kmh()` of an entity, a `FLOAT`.
    TravelKmh,
    /// `age_days()` of an account, a `FLOAT`.
    AgeDays,
    /// `exposure()` of an account (unpaid invoices and unbilled usage), a `FLOAT`.
    Exposure,
    /// `credit_limit()` of an account (0 when none), a `FLOAT`.
    CreditLimit,
    /// `unpaid()` of an account, a `FLOAT`.
    Unpaid,
    /// `unbilled()` of an account, a `FLOAT`.
    Unbilled,
    /// The property `first_seen` of an entity or an account, an `INT` (UTC seconds; 0 when none).
    FirstSeen,
    /// `concurrent_calls(from, to)` of an entity, two `INT` arguments, an `INT`.
    ConcurrentCalls,
}

/// The type of an argument a gate passes to an accessor, as the script's call would: Rhai picks
/// the registered function by its argument types, so an accessor is only recognised with the types
/// its function takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
    Str,
    Int,
}

/// An argument of an accessor, as the script passes it.
#[derive(Clone, Copy, Debug)]
pub enum Arg<'a> {
    Str(&'a ImmutableString),
    Int(i64),
}

impl<'a> Arg<'a> {
    fn str(self) -> Fallible<&'a ImmutableString> {
        match self {
            Arg::Str(s) => Ok(s),
            Arg::Int(_) => fail("a string argument was expected".into()),
        }
    }
    fn int(self) -> Fallible<i64> {
        match self {
            Arg::Int(i) => Ok(i),
            Arg::Str(_) => fail("an integer argument was expected".into()),
        }
    }
}

/// The view an accessor reads: the entity of a subscriber, calling-number or device rule, or an
/// account (the entity of an account rule, and every rule's third argument).
#[derive(Clone, Copy)]
pub enum View<'a> {
    Entity(&'a EntityView),
    Account(&'a AccountView),
}

/// What an accessor returns, as a script sees it: Rhai's `INT` or `FLOAT`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reading {
    Int(i64),
    Float(f64),
}

impl Accessor {
    /// The accessor a script calls as `view.name(args)` on this kind of view (`account` true for an
    /// account view) with arguments of these types, if it is one.
    pub fn by_call(name: &str, args: &[ArgType], account: bool) -> Option<Accessor> {
        use Accessor::*;
        use ArgType::{Int, Str};
        Some(match (name, args, account) {
            ("count", [Str, Str] | [Str, Str, Str], _) => Count,
            ("seconds", [Str, Str], _) => Seconds,
            ("minutes", [Str, Str] | [Str, Str, Str], _) => Minutes,
            ("bytes", [Str, Str], _) => Bytes,
            ("charges", [Str, Str] | [Str, Str, Str], _) => Charges,
            ("distinct_numbers", [Str, Str], _) => DistinctNumbers,
            ("distinct_cells", [Str, Str], _) => DistinctCells,
            ("distinct_called", [Str], _) => DistinctCalled,
            ("travel_km", [], false) => TravelKm,
            ("travel_kmh", [], false) => TravelKmh,
            ("concurrent_calls", [Int, Int], false) => ConcurrentCalls,
            ("age_days", [], true) => AgeDays,
            ("exposure", [], true) => Exposure,
            ("credit_limit", [], true) => CreditLimit,
            ("unpaid", [], true) => Unpaid,
            ("unbilled", [], true) => Unbilled,
            _ => return None,
        })
    }

    /// The accessor a script reads as the property `view.name` of this kind of view, if it is one.
    pub fn by_property(name: &str) -> Option<Accessor> {
        match name {
            "first_seen" => Some(Accessor::FirstSeen),
            _ => None,
        }
    }

    /// Reads the feature, exactly as the script function (or getter) of that name does (same code,
    /// same errors). `args` has the types `by_call` accepted for this view.
    pub fn read(self, view: View<'_>, args: &[Arg<'_>]) -> Fallible<Reading> {
        use Accessor::*;
        match view {
            View::Entity(v) => match self {
                TravelKm => Ok(Reading::Float(travel_km(v))),
                TravelKmh => Ok(Reading::Float(travel_kmh(v))),
                FirstSeen => Ok(Reading::Int(entity_first_seen(v))),
                ConcurrentCalls => Ok(Reading::Int(concurrent_calls(
                    v,
                    arg(args, 0)?.int()?,
                    arg(args, 1)?.int()?,
                ))),
                _ => self.read_window(v, args),
            },
            View::Account(v) => match self {
                AgeDays => Ok(Reading::Float(age_days(v))),
                Exposure => Ok(Reading::Float(exposure(v))),
                CreditLimit => Ok(Reading::Float(credit_limit(v))),
                Unpaid => Ok(Reading::Float(unpaid(v))),
                Unbilled => Ok(Reading::Float(unbilled(v))),
                FirstSeen => Ok(Reading::Int(account_first_seen(v))),
                _ => self.read_window(v, args),
            },
        }
    }

    fn read_window<T: Windowed>(self, v: &T, args: &[Arg<'_>]) -> Fallible<Reading> {
        use Accessor::*;
        let s = |k: usize| arg(args, k)?.str();
        let ago = match args.get(2) {
            Some(a) => Some(a.str()?),
            None => None,
        };
        let sums = |ago| window_sums(v, s(0)?, s(1)?, ago);
        Ok(match self {
            Count => Reading::Int(count(&sums(ago)?)),
            Seconds => Reading::Int(seconds(&sums(None)?)),
            Minutes => Reading::Float(minutes(&sums(ago)?)),
            Bytes => Reading::Int(bytes(&sums(None)?)),
            Charges => Reading::Float(charges(&sums(ago)?)),
            DistinctNumbers => Reading::Int(window_distinct(v, s(0)?, s(1)?, false)?),
            DistinctCells => Reading::Int(window_distinct(v, s(0)?, s(1)?, true)?),
            DistinctCalled => Reading::Int(window_distinct(v, &"mo".into(), s(0)?, false)?),
            TravelKm | TravelKmh | AgeDays | Exposure | CreditLimit | Unpaid | Unbilled
            | FirstSeen | ConcurrentCalls => {
                return fail(format!("{self:?} is not a feature of this view"))
            }
        })
    }
}

fn arg<'a>(args: &[Arg<'a>], k: usize) -> Fallible<Arg<'a>> {
    match args.get(k) {
        Some(a) => Ok(*a),
        None => fail(format!("argument {k} is missing")),
    }
}

/// A numeric field of the usage record that triggered the evaluation, as its getter reads it: the
/// getter and a gate (`gate`) call the same function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordField {
    /// `duration_s`, an `INT`.
    DurationS,
    /// `minutes`, a `FLOAT`.
    Minutes,
    /// `charge`, a `FLOAT`.
    Charge,
    /// `bytes`, an `INT`.
    Bytes,
    /// `time`, the start (UTC seconds), an `INT`.
    Time,
    /// `end_time`, the start plus the duration (UTC seconds), an `INT`.
    EndTime,
    /// `local_hour`, an `INT`.
    LocalHour,
}

impl RecordField {
    /// The getter `rec.name` of a usage record, if it is a numeric one.
    pub fn by_name(name: &str) -> Option<RecordField> {
        use RecordField::*;
        Some(match name {
            "duration_s" => DurationS,
            "minutes" => Minutes,
            "charge" => Charge,
            "bytes" => Bytes,
            "time" => Time,
            "end_time" => EndTime,
            "local_hour" => LocalHour,
            _ => return None,
        })
    }

    /// Whether the getter returns an `INT` (else a `FLOAT`).
    pub fn is_int(self) -> bool {
        !matches!(self, RecordField::Minutes | RecordField::Charge)
    }

    /// The field's value, as the script's getter returns it.
    pub fn read(self, v: &UsageView) -> Reading {
        use RecordField::*;
        let r = v.r();
        match self {
            DurationS => Reading::Int(rec_duration_s(r)),
            Minutes => Reading::Float(rec_minutes(r)),
            Charge => Reading::Float(rec_charge(r)),
            Bytes => Reading::Int(rec_bytes(r)),
            Time => Reading::Int(rec_time(r)),
            EndTime => Reading::Int(rec_end_time(r)),
            LocalHour => Reading::Int(rec_local_hour(r)),
        }
    }
}

fn rec_duration_s(r: &UsageRecord) -> i64 {
    r.duration_s as i64
}

fn rec_minutes(r: &UsageRecord) -> f64 {
    r.duration_s as f64 / 60.0
}

fn rec_charge(r: &UsageRecord) -> f64 {
    money(r.charge.amount)
}

fn rec_bytes(r: &UsageRecord) -> i64 {
    r.bytes() as i64
}

fn rec_time(r: &UsageRecord) -> i64 {
    r.event_start.utc
}

fn rec_end_time(r: &UsageRecord) -> i64 {
    r.event_start.utc + r.duration_s as i64
}

fn rec_local_hour(r: &UsageRecord) -> i64 {
    r.event_start.local_hour() as i64
}

fn count(s: &crate::state::WindowSums) -> i64 {
    s.count as i64
}

fn seconds(s: &crate::state::WindowSums) -> i64 {
    s.duration_s as i64
}

fn minutes(s: &crate::state::WindowSums) -> f64 {
    s.duration_s as f64 / 60.0
}

fn bytes(s: &crate::state::WindowSums) -> i64 {
    s.bytes as i64
}

fn charges(s: &crate::state::WindowSums) -> f64 {
    money(s.charge)
}

fn register_windowed<T: Windowed + Clone + 'static>(engine: &mut Engine) {
    type S = ImmutableString;
    engine
        .register_fn("count", |v: &mut T, f: S, w: S| -> Fallible<i64> {
            Ok(count(&window_sums(v, &f, &w, None)?))
        })
        .register_fn("seconds", |v: &mut T, f: S, w: S| -> Fallible<i64> {
            Ok(seconds(&window_sums(v, &f, &w, None)?))
        })
        .register_fn("minutes", |v: &mut T, f: S, w: S| -> Fallible<f64> {
            Ok(minutes(&window_sums(v, &f, &w, None)?))
        })
        .register_fn("bytes", |v: &mut T, f: S, w: S| -> Fallible<i64> {
            Ok(bytes(&window_sums(v, &f, &w, None)?))
        })
        .register_fn("charges", |v: &mut T, f: S, w: S| -> Fallible<f64> {
            Ok(charges(&window_sums(v, &f, &w, None)?))
        })
        // The same sums over a window that ends `ago` before the trigger: baselines ("the 30 days
        // before the last 72 hours") for spike rules.
        .register_fn("count", |v: &mut T, f: S, w: S, ago: S| -> Fallible<i64> {
            Ok(count(&window_sums(v, &f, &w, Some(&ago))?))
        })
        .register_fn(
            "minutes",
            |v: &mut T, f: S, w: S, ago: S| -> Fallible<f64> {
                Ok(minutes(&window_sums(v, &f, &w, Some(&ago))?))
            },
        )
        .register_fn(
            "charges",
            |v: &mut T, f: S, w: S, ago: S| -> Fallible<f64> {
                Ok(charges(&window_sums(v, &f, &w, Some(&ago))?))
            },
        )
        .register_fn(
            "distinct_numbers",
            |v: &mut T, f: S, w: S| -> Fallible<i64> { window_distinct(v, &f, &w, false) },
        )
        .register_fn("distinct_called", |v: &mut T, w: S| -> Fallible<i64> {
            window_distinct(v, &"mo".into(), &w, false)
        })
        .register_fn("distinct_cells", |v: &mut T, f: S, w: S| -> Fallible<i64> {
            window_distinct(v, &f, &w, true)
        });
}

/// Registers every type and function scripts may use. `lists` are the set's reference lists.
pub fn register(engine: &mut Engine, shared: &Rc<Shared>, lists: Lists) {
    engine
        .register_type_with_name::<UsageView>("UsageRecord")
        .register_type_with_name::<EventView>("AccountEvent")
        .register_type_with_name::<TimerView>("Timer")
        .register_type_with_name::<EntityView>("Entity")
        .register_type_with_name::<AccountView>("Account")
        .register_type_with_name::<ParamsView>("Params");
    register_usage(engine);
    register_event(engine);
    register_timer(engine);
    register_windowed::<EntityView>(engine);
    register_windowed::<AccountView>(engine);
    register_entity(engine);
    register_account(engine);
    engine.register_indexer_get(|p: &mut ParamsView, name: &str| -> Fallible<Dynamic> {
        match p.0.values.get(name) {
            Some(v) => Ok(v.clone()),
            None => fail(format!(
                "rule {} has no parameter {name:?} in params.toml",
                p.0.rule_id
            )),
        }
    });
    engine.register_get("segment", |p: &mut ParamsView| -> ImmutableString {
        p.0.segment.into()
    });

    // `fixed(minutes, 1)`: a number as text with that many decimals, for explanations.
    engine.register_fn("fixed", |x: f64, decimals: i64| -> String {
        format!("{x:.*}", decimals.clamp(0, 6) as usize)
    });
    engine.register_fn("fixed", |x: i64, decimals: i64| -> String {
        format!("{:.*}", decimals.clamp(0, 6) as usize, x as f64)
    });
    // `listed("simbox_whitelist", rec.msisdn)`: the number matches a prefix of lists/<name>.txt.
    let lists_k = lists.clone();
    engine.register_fn(
        "listed",
        move |name: &str, number: &str| -> Fallible<bool> {
            let Some(list) = lists.get(name) else {
                return fail(format!("no list lists/{name}.txt in the rule library"));
            };
            if number.is_empty() {
                return Ok(false);
            }
            Ok(Number::parse(number).is_ok_and(|n| list.matches(n)))
        },
    );
    // `listed("premium_short_codes", rec.destination, rec.destination_kind)`: the same among the
    // entries of that kind (`short:` lines for `short_code`); a sender name or a withheld party is
    // never listed.
    engine.register_fn(
        "listed",
        move |name: &str, number: &str, kind: &str| -> Fallible<bool> {
            let Some(list) = lists_k.get(name) else {
                return fail(format!("no list lists/{name}.txt in the rule library"));
            };
            let Some(kind) = NumberKind::parse(kind) else {
                return fail(format!(
                    "listed: unknown number kind {kind:?} (e164, short_code, alphanumeric, withheld)"
                ));
            };
            Ok(Number::parse(number).is_ok_and(|n| list.matches_kind(n, kind)))
        },
    );
    // `edge("above_80", exposure >= 0.8 * limit)`: true only when the condition turns true for this
    // rule and entity (false before, true now) — "once per crossing". Re-armed when it is seen false.
    let memory = shared.memory.clone();
    let shared_e = shared.clone();
    engine.register_fn("edge", move |name: &str, cond: bool| -> Fallible<bool> {
        let (rule, entity) = shared_e.current.get();
        let entity = match entity {
            EntityKey::None => 0,
            EntityKey::Number(n) => n.key(),
            EntityKey::Scoped(n, to) => crate::alert::memory::key_hash(
                &crate::alert::memory::scoped_key(&n.to_string(), to),
            ),
            EntityKey::Account(slot) => shared_e
                .store
                .borrow()
                .account_at(slot)
                .map_or(0, |a| crate::alert::memory::key_hash(&a.id)),
        };
        let max = shared_e.store.borrow().config().max_edges_per_entity;
        memory
            .borrow_mut()
            .edge(rule, entity, name, cond, max)
            .map_err(|e| {
                format!(
                    "edge({name:?}): this rule already keeps {} condition names for this entity (state.max_edges_per_entity); build names from constants, not from record values",
                    e.max
                )
                .into()
            })
    });
    // `alerted("wangiri_inbound", rec.destination, "72h")`: that rule alerted on that entity within
    // the window before the trigger time. In the daemon a rule asking about a calling-number rule
    // runs beside that number, whose memory holds those alerts (`rules::placement`).
    let memory = shared.memory.clone();
    let shared_w = shared.clone();
    engine.register_fn(
        "alerted",
        move |rule: &str, key: &str, window: ImmutableString| -> Fallible<bool> {
            let w = shared_w.window(&window, false)?;
            if shared_w.shadow.borrow().contains(rule) {
                return Ok(false);
            }
            Ok(memory
                .borrow()
                .alerted_since(&shared_w.memory_id(rule), key, w))
        },
    );
}

fn register_usage(engine: &mut Engine) {
    engine
        .register_get("kind", |_: &mut UsageView| -> ImmutableString {
            "usage".into()
        })
        .register_get("record_id", |v: &mut UsageView| -> ImmutableString {
            v.r().record_id.as_str().into()
        })
        .register_get("type", |v: &mut UsageView| -> ImmutableString {
            match v.r().record_type {
                RecordType::Voice => "voice",
                RecordType::Sms => "sms",
                RecordType::Data => "data",
            }
            .into()
        })
        .register_get("direction", |v: &mut UsageView| -> ImmutableString {
            match v.r().direction {
                Some(crate::record::Direction::Mo) => "mo",
                Some(crate::record::Direction::Mt) => "mt",
                Some(crate::record::Direction::Forwarded) => "forwarded",
                None => "",
            }
            .into()
        })
        .register_get("msisdn", |v: &mut UsageView| {
            digits(Some(v.r().served.msisdn))
        })
        .register_get("account_id", |v: &mut UsageView| -> ImmutableString {
            v.r().served.account_id.as_deref().unwrap_or("").into()
        })
        .register_get("other_number", |v: &mut UsageView| {
            digits(v.r().other_party.number)
        })
        // `e164`, `short_code`, `alphanumeric` or `withheld` (`record::numbering`); `other_number`
        // is empty for the last two, `other_written` keeps what the feed wrote.
        .register_get("other_kind", |v: &mut UsageView| -> ImmutableString {
            v.r().other_party.kind.as_str().into()
        })
        .register_get("other_written", |v: &mut UsageView| -> ImmutableString {
            let p = &v.r().other_party;
            match (&p.written, p.number) {
                (Some(w), _) => w.as_str().into(),
                (None, n) => digits(n),
            }
        })
        .register_get("destination", |v: &mut UsageView| {
            digits(v.r().destination())
        })
        .register_get("destination_kind", |v: &mut UsageView| -> ImmutableString {
            v.r()
                .destination_party()
                .map_or("", |(_, kind)| kind.as_str())
                .into()
        })
        .register_get("forwarded_to", |v: &mut UsageView| {
            digits(v.r().forwarded_to())
        })
        .register_get("forwarded", |v: &mut UsageView| v.r().is_forwarded())
        // A part of a long call (`state::calls`): its call, and `first` / `intermediate` /
        // `last` ("" for a whole record). The windows hold the call once, whatever the part.
        .register_get("call_ref", |v: &mut UsageView| -> ImmutableString {
            v.r().call_ref.as_deref().unwrap_or("").into()
        })
        .register_get("partial", |v: &mut UsageView| -> ImmutableString {
            v.r().partial.map_or("", |p| p.as_str()).into()
        })
        .register_get("duration_s", |v: &mut UsageView| rec_duration_s(v.r()))
        .register_get("minutes", |v: &mut UsageView| rec_minutes(v.r()))
        .register_get("answered", |v: &mut UsageView| v.r().answered)
        .register_get("charge", |v: &mut UsageView| rec_charge(v.r()))
        .register_get("bytes", |v: &mut UsageView| rec_bytes(v.r()))
        .register_get("roaming", |v: &mut UsageView| v.r().roaming.is_roaming)
        .register_get("visited_plmn", |v: &mut UsageView| -> ImmutableString {
            v.r().roaming.visited_plmn.as_deref().unwrap_or("").into()
        })
        .register_get("international", |v: &mut UsageView| {
            v.0 .1.has(crate::classify::INTERNATIONAL)
        })
        .register_get("high_risk", |v: &mut UsageView| {
            v.0 .1.has(crate::classify::HIGH_RISK)
        })
        .register_get("off_hours", |v: &mut UsageView| {
            v.0 .1.has(crate::classify::OFF_HOURS)
        })
        .register_get("short", |v: &mut UsageView| {
            v.0 .1.has(crate::classify::SHORT)
        })
        .register_get("time", |v: &mut UsageView| rec_time(v.r()))
        .register_get("start", |v: &mut UsageView| -> ImmutableString {
            v.r().event_start.to_string().into()
        })
        .register_get("end_time", |v: &mut UsageView| rec_end_time(v.r()))
        .register_get("local_hour", |v: &mut UsageView| rec_local_hour(v.r()))
        .register_get("cell_id", |v: &mut UsageView| -> Dynamic {
            v.r()
                .location
                .cell_id
                .map_or(Dynamic::UNIT, |c| (c as i64).into())
        })
        .register_get("lat", |v: &mut UsageView| -> Dynamic {
            v.r().location.lat.map_or(Dynamic::UNIT, Dynamic::from)
        })
        .register_get("lon", |v: &mut UsageView| -> Dynamic {
            v.r().location.lon.map_or(Dynamic::UNIT, Dynamic::from)
        })
        // `call.is("voice.mo.international")`: the record's class matches the filter.
        .register_fn("is", |v: &mut UsageView, filter: &str| -> Fallible<bool> {
            let f = ClassFilter::parse(filter).or_else(fail)?;
            Ok(f.matches(v.0 .1))
        });
}

fn register_event(engine: &mut Engine) {
    engine
        .register_get("kind", |_: &mut EventView| -> ImmutableString {
            "event".into()
        })
        .register_get("event_id", |v: &mut EventView| -> ImmutableString {
            v.0.event_id.as_str().into()
        })
        .register_get("type", |v: &mut EventView| -> ImmutableString {
            serde_json::to_value(v.0.event_type)
                .ok()
                .and_then(|j| j.as_str().map(ImmutableString::from))
                .unwrap_or_default()
        })
        .register_get("account_id", |v: &mut EventView| -> ImmutableString {
            v.0.account_id.as_str().into()
        })
        .register_get("msisdn", |v: &mut EventView| digits(v.0.msisdn))
        .register_get("time", |v: &mut EventView| v.0.occurred_at.utc)
        .register_get("start", |v: &mut EventView| -> ImmutableString {
            v.0.occurred_at.to_string().into()
        })
        // The event's money: an invoice's amount due, a payment's amount, a new credit limit.
        .register_get("amount", |v: &mut EventView| -> f64 {
            let e = &v.0;
            e.invoice
                .as_ref()
                .map(|i| i.amount_due)
                .or(e.amount.as_ref().map(|a| a.value))
                .or(e.credit.as_ref().map(|c| c.credit_limit))
                .map_or(0.0, money)
        })
        .register_get("invoice_id", |v: &mut EventView| -> ImmutableString {
            let e = &v.0;
            e.invoice
                .as_ref()
                .map(|i| i.invoice_id.as_str())
                .or(e.payment.as_ref().and_then(|p| p.invoice_id.as_deref()))
                .unwrap_or("")
                .into()
        })
        .register_get("payment_id", |v: &mut EventView| -> ImmutableString {
            v.0.payment
                .as_ref()
                .map_or("", |p| p.payment_id.as_str())
                .into()
        })
        .register_get(
            "reversed_payment_id",
            |v: &mut EventView| -> ImmutableString {
                v.0.payment
                    .as_ref()
                    .and_then(|p| p.reversed_payment_id.as_deref())
                    .unwrap_or("")
                    .into()
            },
        );
}

fn register_timer(engine: &mut Engine) {
    engine
        .register_get("kind", |_: &mut TimerView| -> ImmutableString {
            "timer".into()
        })
        .register_get("type", |v: &mut TimerView| -> ImmutableString {
            match v.0.kind {
                TimerKind::InvoiceOverdue { .. } => "invoice_overdue".into(),
            }
        })
        .register_get("account_id", |v: &mut TimerView| -> ImmutableString {
            v.0.account_id.as_str().into()
        })
        .register_get("time", |v: &mut TimerView| v.0.at.utc)
        .register_get("start", |v: &mut TimerView| -> ImmutableString {
            v.0.at.to_string().into()
        })
        .register_get("invoice_id", |v: &mut TimerView| -> ImmutableString {
            let TimerKind::InvoiceOverdue { invoice_id, .. } = &v.0.kind;
            invoice_id.as_str().into()
        })
        .register_get("days", |v: &mut TimerView| -> i64 {
            let TimerKind::InvoiceOverdue { days, .. } = &v.0.kind;
            *days as i64
        });
}

fn register_entity(engine: &mut Engine) {
    engine
        .register_get("key", |v: &mut EntityView| digits(Some(v.number)))
        .register_get("exists", |v: &mut EntityView| v.with(false, |_| true))
        .register_get("first_seen", |v: &mut EntityView| entity_first_seen(v))
        .register_get("last_seen", |v: &mut EntityView| v.with(0, |e| e.last_seen))
        // Calls (answered MO/forwarded voice) in progress at the trigger time, this one included.
        .register_fn("open_calls", |v: &mut EntityView| -> i64 {
            let end = v.end;
            v.with(0, |e| e.open_calls(end) as i64)
        })
        // The most calls at once within [from, to) (e.g. the triggering call's span).
        .register_fn(
            "concurrent_calls",
            |v: &mut EntityView, from: i64, to: i64| -> i64 { concurrent_calls(v, from, to) },
        )
        // Distance and implied speed between the last two located records (0 when fewer than two).
        .register_fn("travel_km", |v: &mut EntityView| -> f64 { travel_km(v) })
        .register_fn("travel_kmh", |v: &mut EntityView| -> f64 { travel_kmh(v) });
}

fn entity_first_seen(v: &EntityView) -> i64 {
    v.with(0, |e| e.first_seen)
}

fn concurrent_calls(v: &EntityView, from: i64, to: i64) -> i64 {
    v.with(0, |e| e.max_concurrent_calls(from, to) as i64)
}

fn account_first_seen(v: &AccountView) -> i64 {
    v.with(0, |store, a| store.usage_of(a).first_seen().unwrap_or(0))
}

fn credit_limit(v: &AccountView) -> f64 {
    v.with(0.0, |_, a| a.ledger.credit_limit.map_or(0.0, money))
}

fn exposure(v: &AccountView) -> f64 {
    v.with(0.0, |_, a| money(a.ledger.exposure()))
}

fn unpaid(v: &AccountView) -> f64 {
    v.with(0.0, |_, a| money(a.ledger.unpaid()))
}

fn unbilled(v: &AccountView) -> f64 {
    v.with(0.0, |_, a| money(a.ledger.unbilled))
}

fn travel_km(v: &EntityView) -> f64 {
    v.with(0.0, |e| travel(e).map_or(0.0, |(km, _)| km))
}

fn travel_kmh(v: &EntityView) -> f64 {
    v.with(0.0, |e| travel(e).map_or(0.0, |(_, kmh)| kmh))
}

/// Days since the account's activation, as a fraction; -1 when no activation is known.
fn age_days(v: &AccountView) -> f64 {
    let end = v.end.utc;
    v.with(-1.0, |_, a| {
        a.ledger
            .activated_at
            .map_or(-1.0, |t| (end - t.utc) as f64 / 86_400.0)
    })
}

/// Great-circle distance (km) and implied speed (km/h) between an entity's last two fixes.
fn travel(e: &Entity) -> Option<(f64, f64)> {
    let [Some(a), Some(b)] = e.fixes else {
        return None;
    };
    let (la1, lo1, la2, lo2) = (
        (a.lat as f64).to_radians(),
        (a.lon as f64).to_radians(),
        (b.lat as f64).to_radians(),
        (b.lon as f64).to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    let km = 2.0 * 6371.0 * h.sqrt().asin();
    // Fixes in the same second: speed is unbounded; report the distance over one second.
    let hours = ((b.at - a.at).abs().max(1)) as f64 / 3600.0;
    Some((km, km / hours))
}

fn register_account(engine: &mut Engine) {
    engine
        .register_get("exists", |v: &mut AccountView| v.with(false, |_, _| true))
        .register_get("id", |v: &mut AccountView| -> ImmutableString {
            v.with(ImmutableString::new(), |_, a| a.id.as_str().into())
        })
        .register_get("key", |v: &mut AccountView| -> ImmutableString {
            v.with(ImmutableString::new(), |_, a| a.id.as_str().into())
        })
        .register_get("segment", |v: &mut AccountView| -> ImmutableString {
            v.with("consumer", |_, a| a.ledger.segment.as_str()).into()
        })
        .register_get("key_account", |v: &mut AccountView| {
            v.with(false, |_, a| a.ledger.segment.is_key_account())
        })
        // The earliest usage of any of its lines in state (UTC seconds; 0 when none).
        .register_get("first_seen", |v: &mut AccountView| account_first_seen(v))
        .register_get("line_count", |v: &mut AccountView| {
            v.with(0, |_, a| a.lines.len() as i64)
        })
        .register_fn("has_credit_limit", |v: &mut AccountView| {
            v.with(false, |_, a| a.ledger.credit_limit.is_some())
        })
        .register_fn("credit_limit", |v: &mut AccountView| credit_limit(v))
        .register_fn("exposure", |v: &mut AccountView| exposure(v))
        .register_fn("unpaid", |v: &mut AccountView| unpaid(v))
        .register_fn("unbilled", |v: &mut AccountView| unbilled(v))
        .register_fn("overdue_amount", |v: &mut AccountView| {
            let end = v.end;
            v.with(0.0, |_, a| money(a.ledger.overdue(end)))
        })
        // Days the oldest unpaid invoice is past its due date (0 when none is).
        .register_fn("days_overdue", |v: &mut AccountView| -> i64 {
            let end = v.end;
            v.with(0, |_, a| {
                a.ledger
                    .invoices
                    .iter()
                    .filter(|i| i.remaining() > Money::ZERO)
                    .map(|i| i.days_overdue(end) as i64)
                    .max()
                    .unwrap_or(0)
            })
        })
        .register_fn("invoice_remaining", |v: &mut AccountView, id: &str| {
            v.with(0.0, |_, a| {
                a.ledger
                    .invoices
                    .iter()
                    .find(|i| i.invoice_id == id)
                    .map_or(0.0, |i| money(i.remaining()))
            })
        })
        .register_fn("promise_active", |v: &mut AccountView| {
            let end = v.end;
            v.with(false, |_, a| a.ledger.promise_active(end))
        })
        // Days since activation, as a fraction; -1 when no activation is known.
        .register_fn("age_days", |v: &mut AccountView| -> f64 { age_days(v) })
        // Ledger history reaches back `state.ledger_history` (90 days), further than usage windows.
        .register_fn(
            "reversals_within",
            |v: &mut AccountView, w: ImmutableString| -> Fallible<i64> {
                let w = crate::record::time::parse_duration(&w).or_else(fail)?;
                let keep = v.shared.store.borrow().config().ledger_history.0;
                if w <= 0 || w > keep {
                    return fail(format!(
                        "window {w}s must be positive and at most state.ledger_history"
                    ));
                }
                let end = v.end;
                Ok(v.with(0, |_, a| a.ledger.reversals_within(w, end) as i64))
            },
        )
        // When a payment was received (UTC seconds), or () when unknown.
        .register_fn("payment_time", |v: &mut AccountView, id: &str| -> Dynamic {
            v.with(Dynamic::UNIT, |_, a| {
                a.ledger
                    .payments
                    .iter()
                    .find(|p| p.payment_id == id)
                    .map_or(Dynamic::UNIT, |p| p.at.utc.into())
            })
        })
        // Usage charges on all lines in buckets from `from` (UTC seconds) to now.
        .register_fn("charges_since", |v: &mut AccountView, from: i64| -> f64 {
            v.with(0.0, |store, a| money(store.usage_of(a).charges_since(from)))
        })
        .register_fn("open_calls", |v: &mut AccountView| -> i64 {
            let end = v.end.utc;
            v.with(0, |store, a| store.usage_of(a).open_calls(end) as i64)
        });
}
