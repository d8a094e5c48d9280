//! Kafka output: alerts to their departments' topics and dead letters to the dead-letter topic, with
//! every delivery acknowledged back to the offset tracker (`ack`) so input offsets are committed only
//! behind delivered output.
//!
//! One `ThreadedProducer` for all workers: librdkafka batches across them and its own thread runs the
//! delivery callbacks. `message.timeout.ms = 0` (retry forever) because an alert dropped after a
//! timeout would break at-least-once; a broker outage shows as growing in-flight counts and lag, and
//! delivery resumes when the broker is back. `acks = all`: an alert is delivered when the cluster has
//! it, not when one broker does.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::alert::wire;
use crate::config::KafkaConfig;
use crate::record::{Alert, Mode};
use crate::telemetry::events::{KafkaClientError, RateLimit};
use crate::telemetry::metrics::Metrics;

use super::ack::Tracker;
use super::{Origin, Output, Rejected, SinkError};

pub struct Delivery {
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
    /// A broker outage repeats the same error many times a second: one line per 30 s.
    errors: RateLimit,
}

impl ClientContext for Delivery {
    fn error(&self, error: KafkaError, reason: &str) {
        KafkaClientError {
            client: "producer",
            error: &error,
            reason,
        }
        .emit(&self.metrics, &self.errors);
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Box<Origin>;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: Box<Origin>) {
        let ok = match result {
            Ok(_) => {
                self.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err((error, message)) => {
                self.metrics.delivery_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    %error,
                    topic = rdkafka::Message::topic(message),
                    origin = ?origin,
                    "Message could not be delivered; its input offset will not be committed."
                );
                false
            }
        };
        if let Origin::Record {
            input,
            partition,
            offset,
        } = *origin
        {
            self.tracker.ack(input, partition, offset, ok);
        }
    }
}

/// Alerts to department topics, dead letters to the dead-letter topic.
pub struct KafkaOutput {
    producer: ThreadedProducer<Delivery>,
    tracker: Arc<Tracker>,
    topics: crate::config::AlertTopics,
    shadow_topic: String,
    dead_letter_topic: String,
}

impl KafkaOutput {
    pub fn new(
        brokers: &str,
        cfg: &KafkaConfig,
        base: &std::path::Path,
        tracker: Arc<Tracker>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let options = &cfg.options;
        let mut client = crate::client::client_config(cfg, brokers, base)?;
        client
            .set("acks", "all")
            .set("message.timeout.ms", "0")
            .set("linger.ms", "1")
            .set("queue.buffering.max.messages", "1000000");
        for (k, v) in options {
            client.set(k, v);
        }
        let producer = client.create_with_context(Delivery {
            tracker: tracker.clone(),
            metrics,
            errors: RateLimit::default(),
        })?;
        Ok(KafkaOutput {
            producer,
            tracker,
            topics: cfg.alert_topics.clone(),
            shadow_topic: cfg.shadow_topic.clone(),
            dead_letter_topic: cfg.dead_letter_topic.clone(),
        })
    }

    /// Sends one message; the origin's offset waits for its acknowledgement. Blocks (briefly,
    /// repeatedly) while librdkafka's queue is full rather than dropping anything.
    fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
        origin: Origin,
    ) -> Result<(), KafkaError> {
        if let Origin::Record {
            input,
            partition,
            offset,
        } = origin
        {
            self.tracker.add(input, partition, offset);
        }
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(origin))
            .key(key)
            .payload(payload)
            .headers(headers);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, r)) => {
                    // Not sent: the ack will never come, so the offset must not wait for it — but it
                    // must not be committed either.
                    if let Origin::Record {
                        input,
                        partition,
                        offset,
                    } = *r.delivery_opaque
                    {
                        self.tracker.ack(input, partition, offset, false);
                    }
                    return Err(e);
                }
            }
        }
    }
}

impl Output for KafkaOutput {
    fn name(&self) -> &'static str {
        "kafka"
    }

    /// One message per department topic, keyed by the entity (one entity's alerts stay in order);
    /// a shadow rule's alert, one message to the shadow topic and none to a department.
    fn alert(&self, alert: &Alert, body: &[u8], origin: Origin) -> Result<(), SinkError> {
        if alert.mode == Mode::Shadow {
            // Untracked: a candidate's alert that cannot be delivered (no shadow topic) is counted
            // and logged, and does not hold the live alerts' commits behind it.
            let _ = origin;
            let h = headers(&wire::shadow_headers(alert));
            self.send(
                &self.shadow_topic,
                alert.entity.key.as_bytes(),
                body,
                h,
                Origin::Untracked,
            )?;
            return Ok(());
        }
        for &dept in &alert.departments {
            let h = headers(&wire::alert_headers(alert, dept));
            self.send(
                self.topics.of(dept),
                alert.entity.key.as_bytes(),
                body,
                h,
                origin,
            )?;
        }
        Ok(())
    }

    /// The original bytes and key, with the reason and the source position in headers.
    fn reject(&self, r: &Rejected<'_>, origin: Origin) -> Result<(), SinkError> {
        let partition = r.partition.map(|p| p.to_string()).unwrap_or_default();
        let offset = r.position.to_string();
        let h = headers(&wire::reject_headers(
            r.reject, r.source, &partition, &offset,
        ));
        Ok(self.send(&self.dead_letter_topic, r.key, r.raw, h, origin)?)
    }

    fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        Ok(self.producer.flush(timeout)?)
    }

    fn in_flight(&self) -> u64 {
        self.producer.in_flight_count().max(0) as u64
    }
}

/// Headers from (name, value) pairs.
pub fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        })
    })
}
