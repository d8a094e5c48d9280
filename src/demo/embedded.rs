//! The embedded default: `cdrguard run` with no `kafka.brokers` starts an in-process Kafka-protocol
//! broker (librdkafka's mock cluster) that any Kafka client can reach at the printed address, a demo
//! traffic generator, and a printer of the alerts arriving on the department topics — the whole
//! product on one machine with no external service.
//!
//! Demo traffic: rounds of four simulated days (calm generated background with a fraud or arrears
//! story for every rule), produced at `demo.rate` records per second. The first round ends at the
//! wall clock; later rounds continue in simulated time, faster than real time, so the demo raises
//! `state.max_future_skew` (a demo clock is not a broken producer clock).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::{Config, KeyedBy};
use crate::demo::gen::{generate, GenConfig};
use crate::record::{Decoder, EventTime, Number};

/// The in-process broker; dropping it stops it.
pub struct Embedded {
    _cluster: MockCluster<'static, DefaultProducerContext>,
    pub bootstrap: String,
}

impl Embedded {
    /// Creates the internal topics a daemon of `cfg` needs (its group names them): the mock
    /// cluster does not create topics on request. `start` does it for its own configuration; a
    /// bench running several groups on one broker does it for each.
    pub fn create_internal_topics(&self, cfg: &Config) -> anyhow::Result<()> {
        let k = &cfg.kafka;
        let parts = cfg.demo.partitions;
        let cluster = &self._cluster;
        for input in crate::repartition::inputs(cfg) {
            let (repartition, by_account) = crate::repartition::topics(&k.group_id, input);
            cluster.create_topic(&repartition, parts, 1)?;
            cluster.create_topic(&by_account, parts, 1)?;
        }
        if k.usage_keyed_by != crate::config::KeyedBy::Account {
            cluster.create_topic(&crate::repartition::lines_topic(&k.group_id), 1, 1)?;
        }
        if cfg.state.calling_numbers != crate::config::CallingNumbers::Off {
            let (repartition, by_number) = crate::repartition::calls::topics(&k.group_id);
            cluster.create_topic(&repartition, parts, 1)?;
            cluster.create_topic(&by_number, parts, 1)?;
        }
        Ok(())
    }

    /// Takes the (only) broker down or brings it back: outages for tests.
    pub fn set_broker_up(&self, up: bool) -> anyhow::Result<()> {
        if up {
            self._cluster.broker_up(1)?;
        } else {
            self._cluster.broker_down(1)?;
        }
        Ok(())
    }
}

/// Starts the mock cluster and creates the topics (inputs co-partitioned).
pub fn start(cfg: &Config) -> anyhow::Result<Embedded> {
    let cluster = MockCluster::new(1).context("starting the embedded Kafka mock cluster")?;
    let k = &cfg.kafka;
    // librdkafka's mock cluster keeps at most 5 MB or 100,000 messages per partition (fixed in
    // rdkafka_mock.c) and drops the oldest beyond: room comes from partitions
    // (`demo.partitions`). What a consumer loses to it is counted like any gap.
    let parts = cfg.demo.partitions;
    cluster.create_topic(&k.usage_topic, parts, 1)?;
    cluster.create_topic(&k.events_topic, parts, 1)?;
    cluster.create_topic(&k.dead_letter_topic, 1, 1)?;
    if !k.feedback_topic.is_empty() {
        cluster.create_topic(&k.feedback_topic, 1, 1)?;
    }
    for t in [
        &k.alert_topics.fraud,
        &k.alert_topics.collections,
        &k.alert_topics.key_accounts,
        &k.alert_topics.care,
        &k.shadow_topic,
    ] {
        cluster.create_topic(t, 1, 1)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    let embedded = Embedded {
        _cluster: cluster,
        bootstrap,
    };
    embedded.create_internal_topics(cfg)?;
    Ok(embedded)
}

/// Produces NDJSON usage and events to their topics in event-time order, keyed the way
/// `kafka.usage_keyed_by` and `kafka.events_keyed_by` say their producers key them — by default as
/// producers are asked to (usage by account id, else msisdn; events by account id); `msisdn`: by the
/// line (an event that names none, by its account); `any`: no key — at most `rate` records per
/// second (0: as fast as possible). Returns the number produced, or stops early when `stop` is set.
pub fn produce_input(
    producer: &ThreadedProducer<DefaultProducerContext>,
    cfg: &Config,
    usage: &[u8],
    events: &[u8],
    rate: u32,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let decoder = Decoder::default();
    let keyed = |by: KeyedBy, account: Option<&str>, msisdn: Option<Number>| match (by, account) {
        (KeyedBy::Any, _) => None,
        (KeyedBy::Account, Some(a)) => Some(a.to_string()),
        _ => msisdn
            .map(|n| n.to_string())
            .or(account.map(str::to_string)),
    };
    let mut lines: Vec<(i64, bool, Option<String>, &[u8])> = Vec::new();
    for l in usage.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let r = decoder
            .usage(l)
            .map_err(|e| anyhow::anyhow!("generated usage: {e:?}"))?;
        let key = keyed(
            cfg.kafka.usage_keyed_by,
            r.served.account_id.as_deref(),
            Some(r.served.msisdn),
        );
        lines.push((r.event_start.utc, true, key, l));
    }
    for l in events.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let e = decoder
            .account_event(l)
            .map_err(|e| anyhow::anyhow!("generated event: {e:?}"))?;
        let key = keyed(cfg.kafka.events_keyed_by, Some(&e.account_id), e.msisdn);
        lines.push((e.occurred_at.utc, false, key, l));
    }
    // Stable: events before usage at one instant, generator order otherwise.
    lines.sort_by_key(|(t, is_usage, ..)| (*t, *is_usage));
    let started = Instant::now();
    let mut sent = 0u64;
    for (_, is_usage, key, payload) in &lines {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let topic = if *is_usage {
            &cfg.kafka.usage_topic
        } else {
            &cfg.kafka.events_topic
        };
        let mut record = BaseRecord::<str, [u8]>::to(topic).payload(*payload);
        if let Some(k) = key {
            record = record.key(k.as_str());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        sent += 1;
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    // A slow broker (a loaded machine) takes what it takes; one that stops acknowledging for
    // 30 s fails the call.
    let mut left = producer.in_flight_count();
    let mut stalled = Duration::ZERO;
    while let Err(e) = producer.flush(Duration::from_secs(5)) {
        let now = producer.in_flight_count();
        if now < left {
            left = now;
            stalled = Duration::ZERO;
        } else {
            stalled += Duration::from_secs(5);
            if stalled >= Duration::from_secs(30) {
                return Err(anyhow::anyhow!(
                    "{now} records unacknowledged after 30 s without progress: {e}"
                ));
            }
        }
    }
    Ok(sent)
}

/// The first offset the broker still has of every partition of both input topics. Compared before
/// and after producing, it shows records the broker dropped (its retention or size limit) — records
/// a consumer that had not read them yet will skip.
pub fn log_starts(
    producer: &ThreadedProducer<DefaultProducerContext>,
    cfg: &Config,
) -> anyhow::Result<std::collections::BTreeMap<(String, i32), i64>> {
    let timeout = Duration::from_secs(10);
    let mut out = std::collections::BTreeMap::new();
    for topic in [&cfg.kafka.usage_topic, &cfg.kafka.events_topic] {
        let meta = producer.client().fetch_metadata(Some(topic), timeout)?;
        for t in meta.topics() {
            for p in t.partitions() {
                let (low, _) = producer.client().fetch_watermarks(topic, p.id(), timeout)?;
                out.insert((topic.to_string(), p.id()), low);
            }
        }
    }
    Ok(out)
}

/// A producer of input records to `brokers`, connecting as `kafka` says (TLS, SASL; relative paths
/// from `base`).
pub fn input_producer(
    kafka: &crate::config::KafkaConfig,
    brokers: &str,
    base: &std::path::Path,
) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    crate::client::client_config(kafka, brokers, base)?
        .set("linger.ms", "5")
        // Unkeyed records (`usage_keyed_by = "any"`) spread one by one, not a batch per partition:
        // the embedded broker's partitions hold at most 5 MB.
        .set("sticky.partitioning.linger.ms", "0")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the demo producer")
}

/// Streams demo rounds until `stop`.
pub fn demo_traffic(
    brokers: String,
    cfg: Config,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("demo-traffic".into())
        .spawn(move || {
            if let Err(e) = demo_rounds(&brokers, &cfg, &stop) {
                tracing::error!("Demo traffic stopped: {e:#}");
            }
        })
}

fn demo_rounds(brokers: &str, cfg: &Config, stop: &AtomicBool) -> anyhow::Result<()> {
    // The embedded broker speaks plain Kafka, whatever the configuration says of real ones.
    let producer = input_producer(&Default::default(), brokers, std::path::Path::new(""))?;
    let now = crate::telemetry::metrics::now_ms() / 1000;
    // Whole minutes, so every timestamp written is exact.
    let first = (now - 4 * 86_400) / 60 * 60;
    let offset_min = 60;
    for round in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let start = EventTime {
            utc: first + round as i64 * 4 * 86_400,
            offset_min,
        };
        // Stories that need weeks of history before the period only fit the first round: later
        // rounds start where the watermark already is, so that history would be late.
        let inject = crate::demo::gen::stories::STORY_RULES
            .iter()
            .filter(|r| round == 0 || !matches!(**r, "bill_shock" | "usage_spike_in_arrears"))
            .map(|r| (r.to_string(), 1))
            .collect();
        let gen = GenConfig {
            seed: 1000 + round,
            subscribers: cfg.demo.subscribers,
            records: cfg.demo.subscribers as u64 * 12,
            start,
            days: 4,
            home_cc: cfg.reference.home_country_code.clone(),
            inject,
            tag: format!("r{round}-"),
            tap: false,
        };
        let (mut usage, mut events) = (Vec::new(), Vec::new());
        let summary = generate(&gen, &mut usage, &mut events)?;
        tracing::info!(
            round,
            from = %start,
            records = summary.usage_records,
            events = summary.account_events,
            stories = summary.labels.len(),
            "Demo traffic: producing four simulated days with a story for every rule."
        );
        produce_input(&producer, cfg, &usage, &events, cfg.demo.rate, stop)?;
    }
    Ok(())
}

/// Prints every alert arriving on the department topics, as a subscriber would see it.
pub fn print_alerts(
    brokers: String,
    cfg: Config,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set(
            "group.id",
            format!("cdrguard-demo-printer-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("creating the alert printer")?;
    let t = &cfg.kafka.alert_topics;
    consumer.subscribe(&[&t.fraud, &t.collections, &t.key_accounts, &t.care])?;
    let handle = std::thread::Builder::new()
        .name("alert-printer".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let Ok(a) =
                    serde_json::from_slice::<crate::record::Alert>(m.payload().unwrap_or_default())
                else {
                    continue;
                };
                let severity = serde_json::to_value(a.severity)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_uppercase))
                    .unwrap_or_default();
                println!(
                    "{:<20} {:<8} {:<28} {:<14} {}",
                    m.topic(),
                    severity,
                    a.rule.id,
                    a.entity.key,
                    a.evidence.explanation
                );
            }
        })?;
    Ok(handle)
}
