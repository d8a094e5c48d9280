//! Kafka input: a consumer-group member reading the usage and account-event topics.
//!
//! `BaseConsumer` polled by one thread, which hands each message (copied: payload, key, position) to the
//! worker that owns its partition number. Not `StreamConsumer`: its known stall after rebalances
//! (rust-rdkafka issues) is avoided, and a plain poll loop is all a thread-per-worker design needs.
//!
//! Offsets: `enable.auto.offset.store = false` — only offsets the tracker has cleared (every alert and
//! dead letter of that record and all earlier ones acknowledged) are stored, and the auto-commit
//! commits what is stored. `enable.auto.commit` stays on because it only ever commits stored offsets.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::daemon::metrics::Metrics;
use crate::daemon::offsets::Input;

/// One consumed message, owned, on its way to a worker.
pub struct InputMessage {
    pub input: Input,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Broker timestamp (ms), for latency figures.
    pub timestamp_ms: Option<i64>,
}

pub struct ConsumerCtx {
    pub metrics: Arc<Metrics>,
}

impl ClientContext for ConsumerCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.kafka_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, reason, "Kafka consumer error; retrying.");
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(
                partitions = tpl.count(),
                "Partitions revoked; uncommitted records will be redelivered to their next owner."
            );
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(partitions = %parts.join(" "), "Partitions assigned.");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance failed."),
            Rebalance::Revoke(_) => {}
        }
    }
}

pub fn consumer(
    cfg: &KafkaConfig,
    brokers: &str,
    metrics: Arc<Metrics>,
) -> Result<BaseConsumer<ConsumerCtx>, KafkaError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &cfg.start_from)
        .set("enable.partition.eof", "false")
        // Low fetch wait: a record should not sit at the broker for the default 500 ms.
        .set("fetch.wait.max.ms", "10");
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    c.create_with_context(ConsumerCtx { metrics })
}
