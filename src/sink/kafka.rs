//! Kafka output: alerts to department topics and dead letters, with every delivery acknowledged back
//! to the offset tracker (`daemon::offsets`) so input offsets are committed only behind delivered
//! output.
//!
//! One `ThreadedProducer` for all workers: librdkafka batches across them and its own thread runs the
//! delivery callbacks. `message.timeout.ms = 0` (retry forever) because an alert dropped after a
//! timeout would break at-least-once; a broker outage shows as growing in-flight counts and lag, and
//! delivery resumes when the broker is back. `acks = all`: an alert is delivered when the cluster has
//! it, not when one broker does.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::sink::ack::{Input, Tracker};
use crate::telemetry::metrics::Metrics;

/// What a produced message is for: the input record whose offset waits for it (none for alerts of
/// timers fired by the wall clock on an idle partition).
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    pub input: Option<(Input, i32, i64)>,
}

pub struct Delivery {
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
}

impl ClientContext for Delivery {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.kafka_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, reason, "Kafka producer error; retrying.");
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
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
                    input = ?ticket.input,
                    "Message could not be delivered; its input offset will not be committed."
                );
                false
            }
        };
        if let Some((input, partition, offset)) = ticket.input {
            self.tracker.ack(input, partition, offset, ok);
        }
    }
}

pub struct OutputProducer {
    producer: ThreadedProducer<Delivery>,
    tracker: Arc<Tracker>,
}

impl OutputProducer {
    pub fn new(
        brokers: &str,
        options: &std::collections::BTreeMap<String, String>,
        tracker: Arc<Tracker>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("message.timeout.ms", "0")
            .set("linger.ms", "1")
            .set("queue.buffering.max.messages", "1000000");
        for (k, v) in options {
            cfg.set(k, v);
        }
        let producer = cfg.create_with_context(Delivery {
            tracker: tracker.clone(),
            metrics,
        })?;
        Ok(OutputProducer { producer, tracker })
    }

    /// Sends one message; the ticket's input offset waits for its acknowledgement. Blocks (briefly,
    /// repeatedly) while librdkafka's queue is full rather than dropping anything.
    pub fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
        ticket: Ticket,
    ) -> Result<(), KafkaError> {
        if let Some((input, partition, offset)) = ticket.input {
            self.tracker.add(input, partition, offset);
        }
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(ticket))
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
                    if let Some((input, partition, offset)) = r.delivery_opaque.input {
                        self.tracker.ack(input, partition, offset, false);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Waits for every message in flight, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
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
