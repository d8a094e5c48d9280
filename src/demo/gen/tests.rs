use std::collections::{HashMap, HashSet};

use super::*;
use crate::record::{
    AccountEvent, Date, Decoder, Direction, EventType, Money, NumberKind, RecordType, UsageRecord,
};

fn run(cfg: &GenConfig) -> (Vec<u8>, Vec<u8>, GenSummary) {
    let (mut usage, mut events) = (Vec::new(), Vec::new());
    let summary = generate(cfg, &mut usage, &mut events).unwrap();
    (usage, events, summary)
}

fn small(seed: u64) -> GenConfig {
    GenConfig {
        seed,
        subscribers: 300,
        records: 6_000,
        days: 2,
        ..GenConfig::default()
    }
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
    bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

fn usage(bytes: &[u8]) -> Vec<UsageRecord> {
    let d = Decoder::default();
    lines(bytes)
        .map(|l| {
            d.usage(l)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)))
        })
        .collect()
}

fn events(bytes: &[u8]) -> Vec<AccountEvent> {
    let d = Decoder::default();
    lines(bytes)
        .map(|l| {
            d.account_event(l)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)))
        })
        .collect()
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = run(&small(1));
    let b = run(&small(1));
    let c = run(&small(2));
    assert!(a.0 == b.0 && a.1 == b.1, "same config, different output");
    assert_ne!(a.0, c.0);
    assert_ne!(a.1, c.1);
}

#[test]
fn every_line_decodes_is_sorted_and_lies_in_the_period() {
    let cfg = small(7);
    let (u, e, s) = run(&cfg);
    let recs = usage(&u);
    let evs = events(&e);
    assert_eq!(recs.len() as u64, s.usage_records);
    assert_eq!(evs.len() as u64, s.account_events);
    // Some long calls are written as several partial records: the calls are the records asked for.
    let calls: HashSet<&str> = recs
        .iter()
        .map(|r| r.call_ref.as_deref().unwrap_or(&r.record_id))
        .collect();
    assert_eq!(calls.len() as u64, cfg.records);
    assert!(s.usage_records > cfg.records, "some calls in parts");
    assert_eq!(s.subscribers, cfg.subscribers);

    let end = cfg.start.utc + cfg.days as i64 * 86_400;
    assert!(recs
        .windows(2)
        .all(|w| w[0].event_start.utc <= w[1].event_start.utc));
    assert!(recs
        .iter()
        .all(|r| (cfg.start.utc..end).contains(&r.event_start.utc)
            && r.event_start.offset_min == cfg.start.offset_min));
    assert!(evs
        .windows(2)
        .all(|w| w[0].occurred_at.utc <= w[1].occurred_at.utc));
    assert!(evs.iter().all(|e| e.occurred_at.utc < end));

    let ids: HashSet<_> = recs.iter().map(|r| r.record_id.clone()).collect();
    assert_eq!(ids.len(), recs.len(), "record ids unique");
    let ids: HashSet<_> = evs.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), evs.len(), "event ids unique");
}

#[test]
fn record_mix_is_within_tolerance() {
    let n = 20_000.0;
    let (u, ..) = run(&GenConfig {
        subscribers: 1_000,
        records: n as u64,
        ..small(11)
    });
    let recs = usage(&u);
    let share = |f: &dyn Fn(&UsageRecord) -> bool, of: &dyn Fn(&UsageRecord) -> bool| {
        recs.iter().filter(|r| of(r) && f(r)).count() as f64
            / recs.iter().filter(|r| of(r)).count() as f64
    };
    let all = |_: &UsageRecord| true;
    let voice = |r: &UsageRecord| r.record_type == RecordType::Voice;
    let in_range =
        |x: f64, lo: f64, hi: f64| assert!((lo..=hi).contains(&x), "{x} not in {lo}..={hi}");

    in_range(share(&voice, &all), 0.42, 0.48);
    in_range(
        share(&|r| r.record_type == RecordType::Sms, &all),
        0.17,
        0.23,
    );
    in_range(
        share(&|r| r.record_type == RecordType::Data, &all),
        0.32,
        0.38,
    );
    let placed_or_received =
        |r: &UsageRecord| matches!(r.direction, Some(Direction::Mo | Direction::Mt));
    in_range(
        share(&|r| r.direction == Some(Direction::Mo), &placed_or_received),
        0.50,
        0.58,
    );
    in_range(
        share(&|r| r.direction == Some(Direction::Forwarded), &voice),
        0.002,
        0.01,
    );
    in_range(share(&|r| r.answered, &voice), 0.78, 0.88);
    let abroad = |r: &UsageRecord| {
        r.other_party
            .number
            .is_some_and(|n| !n.to_string().starts_with("33"))
    };
    in_range(share(&abroad, &voice), 0.035, 0.065);
    in_range(share(&|r| r.roaming.is_roaming, &all), 0.005, 0.035);
    in_range(
        share(&|r| r.location.cell_id.is_none(), &|r| {
            !r.roaming.is_roaming
        }),
        0.01,
        0.06,
    );

    for r in &recs {
        assert_eq!(r.charge.currency.as_deref(), Some("EUR"));
        assert!(r.charge.amount >= Money::ZERO);
        assert_eq!(r.roaming.is_roaming, r.roaming.visited_plmn.is_some());
        match r.record_type {
            RecordType::Voice => {
                assert!(
                    r.other_party.number.is_some() || r.other_party.kind == NumberKind::Withheld
                );
                assert_eq!(r.answered, r.duration_s > 0, "{r:?}");
                assert!(r.duration_s <= 1800);
                if !r.answered {
                    assert_eq!(r.charge.amount, Money::ZERO);
                }
                assert_eq!(
                    r.direction == Some(Direction::Forwarded),
                    r.forwarding.forwarded_to_number.is_some()
                );
            }
            RecordType::Sms => {
                let sender_name = r.other_party.kind == NumberKind::Alphanumeric;
                assert!((r.other_party.number.is_some() || sender_name) && r.duration_s == 0)
            }
            RecordType::Data => {
                assert!(r.direction.is_none() && r.other_party.number.is_none());
                assert!((60..=3600).contains(&r.duration_s));
                assert!(r.volume.bytes_down > 0 && r.volume.bytes_up > 0);
            }
        }
        if !r.roaming.is_roaming && r.record_type == RecordType::Data {
            assert_eq!(
                r.charge.amount,
                Money::ZERO,
                "data at home is in the bundle"
            );
        }
    }
}

#[test]
fn every_subscriber_appears_when_records_are_ten_times_subscribers() {
    let (u, e, s) = run(&GenConfig {
        subscribers: 500,
        records: 5_000,
        ..small(5)
    });
    // Inbound roamers (lines known by their IMSI) are visitors, not subscribers.
    let seen: HashSet<_> = usage(&u)
        .iter()
        .map(|r| r.served.msisdn)
        .filter(|m| !m.is_imsi_line())
        .collect();
    assert_eq!(seen.len(), s.subscribers as usize);
    let activated: HashSet<_> = events(&e).iter().filter_map(|e| e.msisdn).collect();
    assert_eq!(
        activated, seen,
        "every line has an activation, and only lines do"
    );
}

#[test]
fn activity_is_skewed() {
    let (u, ..) = run(&GenConfig {
        subscribers: 500,
        records: 10_000,
        ..small(9)
    });
    let mut per_line: HashMap<_, u32> = HashMap::new();
    for r in usage(&u) {
        *per_line.entry(r.served.msisdn).or_default() += 1;
    }
    let mut counts: Vec<u32> = per_line.into_values().collect();
    counts.sort_unstable();
    let median = counts[counts.len() / 2];
    let top = counts[counts.len() - counts.len() / 100];
    assert!(top >= 5 * median, "median {median}, 99th percentile {top}");
}

#[test]
fn nights_are_quiet_and_evenings_busy() {
    let (u, ..) = run(&GenConfig {
        subscribers: 500,
        records: 10_000,
        ..small(3)
    });
    let mut by_hour = [0u32; 24];
    for r in usage(&u) {
        by_hour[r.event_start.local_hour() as usize] += 1;
    }
    let night: u32 = by_hour[1..6].iter().sum();
    assert!(night * 25 < 10_000, "{by_hour:?}");
    assert!(by_hour[18] > 10 * by_hour[3], "{by_hour:?}");
    assert!(by_hour[11] > 10 * by_hour[3], "{by_hour:?}");
}

#[test]
fn no_line_holds_two_calls_at_once() {
    let (u, ..) = run(&small(13));
    let mut busy_until: HashMap<_, (i64, Option<_>)> = HashMap::new();
    for r in usage(&u) {
        if r.record_type != RecordType::Voice || r.is_forwarded() || !r.answered {
            continue;
        }
        let (until, call) = busy_until
            .entry(r.served.msisdn)
            .or_insert((i64::MIN, None));
        let end = r.event_start.utc + r.duration_s as i64;
        // The next part of the call in progress extends it.
        if r.call_ref.is_some() && r.call_ref == *call {
            *until = end.max(*until);
            continue;
        }
        assert!(r.event_start.utc >= *until, "overlapping call {r:?}");
        (*until, *call) = (end, r.call_ref.clone());
    }
}

#[test]
fn billing_hangs_together() {
    let cfg = GenConfig {
        subscribers: 2_000,
        records: 2_000,
        ..small(17)
    };
    let (u, e, s) = run(&cfg);
    let evs = events(&e);
    let count = |t: EventType| evs.iter().filter(|e| e.event_type == t).count();
    assert_eq!(count(EventType::Activation), s.subscribers as usize);
    assert_eq!(count(EventType::InvoiceIssued), s.accounts as usize);
    assert_eq!(count(EventType::CreditLimitChanged), s.accounts as usize);
    let paid = count(EventType::PaymentReceived) as f64 / s.accounts as f64;
    assert!((0.80..=0.90).contains(&paid), "{paid}");
    assert!(count(EventType::SegmentChanged) > 0);
    assert!(
        s.accounts < s.subscribers,
        "some accounts have several lines"
    );

    // Usage names the account its line was activated in.
    let account_of: HashMap<_, _> = evs
        .iter()
        .filter_map(|e| Some((e.msisdn?, e.account_id.clone())))
        .collect();
    for r in usage(&u) {
        assert_eq!(
            r.served.account_id.as_ref(),
            account_of.get(&r.served.msisdn)
        );
    }

    let mut invoices = HashMap::new();
    let mut payments = HashMap::new();
    for e in &evs {
        assert!(
            e.occurred_at.utc < cfg.start.utc
                || matches!(
                    e.event_type,
                    EventType::PaymentReceived | EventType::PaymentReversed
                )
        );
        match e.event_type {
            EventType::InvoiceIssued => {
                let inv = e.invoice.as_ref().unwrap();
                assert_eq!(inv.due_date, Date::of(e.occurred_at).plus_days(14));
                assert!(
                    inv.due_date > Date::of(cfg.start),
                    "nothing overdue at the start"
                );
                invoices.insert(
                    inv.invoice_id.clone(),
                    (e.account_id.clone(), inv.amount_due),
                );
            }
            EventType::PaymentReceived => {
                let p = e.payment.as_ref().unwrap();
                let (account, due) = &invoices[p.invoice_id.as_ref().unwrap()];
                assert_eq!(
                    (account, due),
                    (&e.account_id, &e.amount.as_ref().unwrap().value)
                );
                assert!(e.occurred_at.utc >= cfg.start.utc);
                payments.insert(p.payment_id.clone(), e.occurred_at.utc);
            }
            EventType::PaymentReversed => {
                let p = e.payment.as_ref().unwrap();
                let paid_at = payments[p.reversed_payment_id.as_ref().unwrap()];
                assert!(e.occurred_at.utc > paid_at);
            }
            _ => {}
        }
    }
}

#[test]
fn generated_international_traffic_matches_the_shipped_high_risk_list() {
    let list = crate::classify::PrefixList::parse(
        include_str!("../../../rules/lists/high_risk_prefixes.txt"),
        "high_risk_prefixes.txt",
    )
    .unwrap();
    let (u, ..) = run(&GenConfig {
        subscribers: 500,
        records: 10_000,
        ..small(21)
    });
    let voice: Vec<_> = usage(&u)
        .into_iter()
        .filter(|r| r.record_type == RecordType::Voice)
        .collect();
    let risky = voice
        .iter()
        .filter(|r| r.other_party.number.is_some_and(|n| list.matches(n)))
        .count();
    // 0.05% expected; anything in the percent range would mean ordinary destinations are listed.
    assert!(risky * 500 < voice.len(), "{risky} of {}", voice.len());
}

/// The ways real feeds write numbers (`record::numbering`) all appear, and decode to what the
/// generator meant.
#[test]
fn numbers_are_written_in_every_form_feeds_use() {
    let (u, ..) = run(&GenConfig {
        subscribers: 500,
        records: 20_000,
        ..small(5)
    });
    let text = String::from_utf8(u.clone()).unwrap();
    for form in [
        r#""served":{"imsi":"310260"#,
        r#""msisdn":"+33"#,
        r#""number":"+"#,
        r#""number":"00"#,
        r#""number":"06"#,
        r#""number":"tel:+"#,
        r#""number":"sip:+"#,
        r#""number":"anonymous""#,
        r#""number":"MYBANK""#,
    ] {
        assert!(text.contains(form), "no {form} in the generated usage");
    }
    let recs = usage(&u);
    let kinds: HashSet<_> = recs.iter().map(|r| r.other_party.kind).collect();
    assert_eq!(
        kinds.len(),
        4,
        "every kind of number among the other parties: {kinds:?}"
    );
    let kept = recs
        .iter()
        .filter(|r| r.other_party.written.is_some())
        .count();
    assert!(
        kept * 20 > recs.len(),
        "{kept} of {} written otherwise",
        recs.len()
    );
}

#[test]
fn small_and_empty_runs_work() {
    let (u, e, s) = run(&GenConfig {
        subscribers: 50,
        records: 10,
        ..small(1)
    });
    assert_eq!(usage(&u).len(), 10);
    assert_eq!(events(&e).len() as u64, s.account_events);
    let (u, ..) = run(&GenConfig {
        subscribers: 1,
        records: 0,
        ..small(1)
    });
    assert!(u.is_empty());
}

#[test]
fn an_invalid_config_names_every_problem() {
    let cfg = GenConfig {
        subscribers: 0,
        days: 0,
        home_cc: "+33".into(),
        ..GenConfig::default()
    };
    let err = generate(&cfg, &mut Vec::new(), &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let msg = err.to_string();
    for field in ["subscribers", "days", "home_cc"] {
        assert!(msg.contains(field), "{msg}");
    }
    let early = GenConfig {
        start: EventTime::parse("2000-06-01T00:00:00Z").unwrap(),
        ..GenConfig::default()
    };
    assert!(generate(&early, &mut Vec::new(), &mut Vec::new()).is_err());
}
