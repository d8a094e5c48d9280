//! A worker thread: owns the pipelines (window state + rule engine) of the partitions routed to it —
//! partition `p` of both input topics goes to worker `p % workers`, so an account's usage and events
//! (keyed alike, co-partitioned) meet in one pipeline with no lock on state.
//!
//! Per message: decode, run the pipeline, produce each alert to each of its departments' topics and
//! each reject to the dead-letter topic, then mark the offset processed; the tracker commits it once
//! all of that is acknowledged. Between messages (every 200 ms at least): rule reloads, idle
//! watermarks, and a metrics view.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::classify::Classifier;
use crate::config::Config;
use crate::pipeline::{Pipeline, Verdict};
use crate::record::{Alert, Decoder, Reject};
use crate::rules::RuleSources;
use crate::sink::kafka::{headers, OutputProducer, Ticket};
use crate::source::kafka::InputMessage;
use crate::source::{Decoded, Item};
use crate::state::WindowStore;

use super::metrics::{Metrics, RuleView, WorkerView};
use super::offsets::{Input, Tracker};

pub enum Work {
    Record(InputMessage),
    Reload(Arc<RuleSources>),
    /// Finish what is queued, then stop.
    Stop,
}

pub struct WorkerSetup {
    pub index: usize,
    pub config: Arc<Config>,
    pub classifier: Classifier,
    pub sources: Arc<RuleSources>,
    pub producer: Arc<OutputProducer>,
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
    /// The mode stamped on alerts (`live`).
    pub mode: crate::record::Mode,
}

struct Partition {
    pipeline: Pipeline,
    last_record: Instant,
}

pub fn run(setup: WorkerSetup, rx: Receiver<Work>) {
    let mut w = Worker {
        decoder: setup.config.decoder(),
        setup,
        partitions: AHashMap::new(),
        scratch: Vec::with_capacity(1024),
    };
    let mut next_tick = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Work::Record(m)) => w.record(m),
            Ok(Work::Reload(sources)) => w.reload(sources),
            Ok(Work::Stop) | Err(RecvTimeoutError::Disconnected) => {
                w.publish_view();
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next_tick {
            w.tick();
            next_tick = Instant::now() + Duration::from_secs(1);
        }
    }
}

struct Worker {
    setup: WorkerSetup,
    decoder: Decoder,
    partitions: AHashMap<i32, Partition>,
    scratch: Vec<u8>,
}

impl Worker {
    fn pipeline(&mut self, partition: i32) -> &mut Pipeline {
        let s = &self.setup;
        self.partitions.entry(partition).or_insert_with(|| {
            let mut p = Pipeline::new(
                s.classifier.clone(),
                WindowStore::new(s.config.state.clone()),
            );
            p.high_risk_from_rules = s.config.reference.high_risk_prefixes.is_none();
            // The library was validated before the workers started; a failure here is a bug.
            p.enable_rules(
                &s.sources,
                &s.config.rules.sandbox,
                s.config.rules.quarantine_after,
            )
            .expect("rule library validated at startup");
            if let Some(e) = &mut p.rules {
                e.mode = s.mode;
            }
            tracing::debug!(worker = s.index, partition, "Partition state created.");
            Partition {
                pipeline: p,
                last_record: Instant::now(),
            }
        });
        let part = self.partitions.get_mut(&partition).expect("just inserted");
        part.last_record = Instant::now();
        &mut part.pipeline
    }

    fn record(&mut self, m: InputMessage) {
        let metrics = self.setup.metrics.clone();
        let (counter, source) = match m.input {
            Input::Usage => (
                &metrics.usage_in,
                self.setup.config.kafka.usage_topic.clone(),
            ),
            Input::Events => (
                &metrics.events_in,
                self.setup.config.kafka.events_topic.clone(),
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let item = match m.input {
            Input::Usage => self.decoder.usage(&m.payload).map(Item::Usage),
            Input::Events => self.decoder.account_event(&m.payload).map(Item::Event),
        };
        let ticket = Ticket {
            input: Some((m.input, m.partition, m.offset)),
        };
        let verdict = self.pipeline(m.partition).process(Decoded {
            source: &source,
            line: m.offset as u64,
            raw: &m.payload,
            truncated: 0,
            item,
        });
        if let Verdict::Reject(reject) = verdict {
            self.dead_letter(&m, &source, &reject, ticket);
        }
        self.send_alerts(m.partition, ticket);
        self.setup.tracker.processed(m.input, m.partition, m.offset);
    }

    fn dead_letter(&mut self, m: &InputMessage, source: &str, reject: &Reject, ticket: Ticket) {
        let reason = reject.reason.as_str();
        self.setup.metrics.count_reject(reason);
        let (partition, offset) = (m.partition.to_string(), m.offset.to_string());
        let h = headers(&[
            ("cdrguard.reason", reason),
            ("cdrguard.field", reject.field.as_deref().unwrap_or("")),
            ("cdrguard.detail", &reject.detail),
            ("cdrguard.source.topic", source),
            ("cdrguard.source.partition", &partition),
            ("cdrguard.source.offset", &offset),
        ]);
        let key = m.key.as_deref().unwrap_or(&[]);
        match self.setup.producer.send(
            &self.setup.config.kafka.dead_letter_topic,
            key,
            &m.payload,
            h,
            ticket,
        ) {
            Ok(()) => {
                self.setup
                    .metrics
                    .dead_letters
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, source, offset = m.offset, "Dead letter not sent; the offset stays uncommitted.")
            }
        }
    }

    fn send_alerts(&mut self, partition: i32, ticket: Ticket) {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return;
        };
        let Some(engine) = &mut part.pipeline.rules else {
            return;
        };
        let alerts: Vec<Alert> = engine.take_alerts().collect();
        for alert in alerts {
            self.scratch.clear();
            if let Err(e) = serde_json::to_writer(&mut self.scratch, &alert) {
                tracing::error!(error = %e, "Alert not serializable.");
                continue;
            }
            let severity = serde_json::to_value(alert.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            for dept in &alert.departments {
                let topic = self.setup.config.kafka.alert_topics.of(*dept);
                let dept_name = serde_json::to_value(dept)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let h = headers(&[
                    ("cdrguard.alert_id", &alert.alert_id),
                    ("cdrguard.rule", &alert.rule.id),
                    ("cdrguard.severity", &severity),
                    ("cdrguard.ruleset_version", &alert.rule.ruleset_version),
                    ("cdrguard.department", &dept_name),
                ]);
                match self.setup.producer.send(
                    topic,
                    alert.entity.key.as_bytes(),
                    &self.scratch,
                    h,
                    ticket,
                ) {
                    Ok(()) => self.setup.metrics.count_alert(&alert.rule.id, &dept_name),
                    Err(e) => {
                        tracing::error!(error = %e, topic, alert = %alert.alert_id, "Alert not sent; the offset stays uncommitted.")
                    }
                }
            }
        }
    }

    fn reload(&mut self, sources: Arc<RuleSources>) {
        let mut failed = None;
        for part in self.partitions.values_mut() {
            if let Err(e) = part.pipeline.reload_rules(&sources) {
                failed = Some(e);
            }
        }
        match failed {
            // Logged once per worker by the engine; the set stays as it was everywhere.
            Some(_) => {}
            None => self.setup.sources = sources,
        }
    }

    fn tick(&mut self) {
        let idle = self.setup.config.daemon.idle_watermark_after.0;
        if idle > 0 {
            let now = crate::daemon::metrics::now_ms() / 1000;
            let quiet: Vec<i32> = self
                .partitions
                .iter()
                .filter(|(_, p)| p.last_record.elapsed() >= Duration::from_secs(idle as u64))
                .map(|(&k, _)| k)
                .collect();
            for partition in quiet {
                if let Some(part) = self.partitions.get_mut(&partition) {
                    part.pipeline.advance_idle(now);
                }
                self.send_alerts(partition, Ticket { input: None });
            }
        }
        self.publish_view();
    }

    fn publish_view(&mut self) {
        let mut view = WorkerView {
            partitions: self.partitions.len(),
            ..Default::default()
        };
        for part in self.partitions.values() {
            let size = part.pipeline.store.borrow().size();
            view.entities +=
                (size.subscribers + size.accounts + size.calling_numbers + size.imeis) as u64;
            view.state_bytes += size.estimated_bytes as u64;
            view.timers_pending += size.timers_pending as u64;
            let Some(engine) = &part.pipeline.rules else {
                continue;
            };
            view.ruleset_version = engine.version().to_string();
            view.reloads_ok += engine.counters.reloads_ok;
            view.reloads_failed += engine.counters.reloads_failed;
            for s in engine.stats() {
                match view.rules.get_mut(&s.id) {
                    Some(r) => {
                        let _ = r.latency.add(&s.latency);
                        r.evaluations += s.evaluations;
                        r.errors += s.errors;
                        r.quarantined |= s.quarantined;
                    }
                    None => {
                        view.rules.insert(
                            s.id.clone(),
                            RuleView {
                                evaluations: s.evaluations,
                                errors: s.errors,
                                quarantined: s.quarantined,
                                latency: s.latency.clone(),
                            },
                        );
                    }
                }
            }
        }
        let mut workers = self.setup.metrics.workers.lock().expect("metrics lock");
        if workers.len() <= self.setup.index {
            workers.resize(self.setup.index + 1, WorkerView::default());
        }
        workers[self.setup.index] = view;
    }
}
