//! Webhook: each alert as a JSON `POST` to its department's URL (`[webhook.urls]`), for alert
//! consumers without Kafka — a case-management system, an on-call tool.
//!
//! - **Body and headers**: the alert exactly as on the Kafka topics; `Idempotency-Key` is the alert
//!   id (deterministic, so a redelivery after a crash carries the same key), plus `X-Cdrguard-Alert-Id`,
//!   `-Rule`, `-Severity`, `-Department` and `-Ruleset-Version`.
//! - **At least once**: the input offset waits (`ack::Tracker`) until the endpoint answered 2xx.
//!   Connection errors, timeouts, 5xx, 408, 425 and 429 are retried with exponential back-off (from
//!   100 ms, doubling, jittered, at most `webhook.max_backoff`) for as long as it takes; other answers
//!   (4xx, redirects) fail for good: the alert is logged and counted, and its offset stays uncommitted
//!   — as for a message Kafka refuses — so a restart after the endpoint is fixed delivers it again.
//! - **Bounded**: alerts wait in a queue of `webhook.queue`; when it is full the worker handing one
//!   over waits (backpressure on the input), nothing is dropped. `webhook.concurrency` POSTs run at
//!   once, so order across alerts is not kept (consumers de-duplicate by id and sort by time).
//!
//! Blocking threads and a blocking client (ureq), like the rest of the daemon: a few POSTs in flight
//! need no async runtime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::WebhookConfig;
use crate::record::{Alert, Department};
use crate::telemetry::metrics::Metrics;

use super::ack::Tracker;
use super::{Origin, Output, SinkError};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Repeated failures of one URL are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// One alert for one department's URL.
struct Post {
    url: Arc<str>,
    department: Department,
    alert_id: String,
    rule: String,
    severity: &'static str,
    ruleset_version: String,
    body: Arc<[u8]>,
    origin: Origin,
}

/// What an answer means for a POST.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Worth trying again later.
    Retry(String),
    /// Will not succeed by trying again.
    Failed(String),
}

fn outcome(result: Result<u16, ureq::Error>) -> Outcome {
    match result {
        Ok(s) if (200..300).contains(&s) => Outcome::Delivered,
        Ok(s @ (408 | 425 | 429)) | Ok(s @ 500..=599) => Outcome::Retry(format!("HTTP {s}")),
        Ok(s) => Outcome::Failed(format!("HTTP {s}")),
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

/// When a URL last failed and was logged, so an outage logs one line per `LOG_EVERY`.
#[derive(Default)]
struct Health {
    logged: Mutex<BTreeMap<Arc<str>, Instant>>,
}

impl Health {
    fn should_log(&self, url: &Arc<str>) -> bool {
        let mut logged = self.logged.lock().expect("health lock");
        let now = Instant::now();
        match logged.get(url) {
            Some(&t) if now.duration_since(t) < LOG_EVERY => false,
            _ => {
                logged.insert(url.clone(), now);
                true
            }
        }
    }
}

struct Shared {
    agent: ureq::Agent,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    in_flight: AtomicU64,
    stop: AtomicBool,
    max_backoff: Duration,
    health: Health,
}

pub struct WebhookOutput {
    urls: BTreeMap<Department, Arc<str>>,
    queue: SyncSender<Post>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl WebhookOutput {
    /// Starts the senders; `None` when no department has a URL.
    pub fn start(
        cfg: &WebhookConfig,
        tracker: Arc<Tracker>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Option<WebhookOutput>> {
        if cfg.urls.is_empty() {
            return Ok(None);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(cfg.timeout.0.max(1) as u64)))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("cdrguard/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let shared = Arc::new(Shared {
            agent,
            tracker,
            metrics,
            in_flight: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            max_backoff: Duration::from_secs(cfg.max_backoff.0.max(1) as u64),
            health: Health::default(),
        });
        let (tx, rx) = sync_channel(cfg.queue);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..cfg.concurrency {
            let (shared, rx) = (shared.clone(), rx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("webhook-{i}"))
                    .spawn(move || send_loop(&shared, &rx))?,
            );
        }
        for (dept, url) in &cfg.urls {
            tracing::info!(department = %dept, url, "Alerts also POSTed to a webhook.");
        }
        Ok(Some(WebhookOutput {
            urls: cfg
                .urls
                .iter()
                .map(|(d, u)| (*d, Arc::from(u.as_str())))
                .collect(),
            queue: tx,
            shared,
            threads: Mutex::new(threads),
        }))
    }
}

impl Output for WebhookOutput {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn alert(&self, alert: &Alert, body: &[u8], origin: Origin) -> Result<(), SinkError> {
        // Webhooks are departments' systems: a shadow rule's alert reaches none of them.
        if alert.mode == crate::record::Mode::Shadow {
            return Ok(());
        }
        let mut shared_body: Option<Arc<[u8]>> = None;
        for dept in &alert.departments {
            let Some(url) = self.urls.get(dept) else {
                continue;
            };
            let body = shared_body.get_or_insert_with(|| Arc::from(body)).clone();
            if let Origin::Record {
                input,
                partition,
                offset,
            } = origin
            {
                self.shared.tracker.add(input, partition, offset);
            }
            self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let post = Post {
                url: url.clone(),
                department: *dept,
                alert_id: alert.alert_id.clone(),
                rule: alert.rule.id.clone(),
                severity: alert.severity.as_str(),
                ruleset_version: alert.rule.ruleset_version.clone(),
                body,
                origin,
            };
            if let Err(e) = self.queue.send(post) {
                // The senders are gone (shutdown): the offset must not wait for an answer that will
                // not come, and must not be committed either.
                settle(&self.shared, &e.0, false);
                return Err(SinkError::Other("webhook senders stopped".into()));
            }
        }
        Ok(())
    }

    fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 {
            if Instant::now() >= deadline {
                return Err(SinkError::Other(format!(
                    "{} webhook POSTs not answered 2xx in time",
                    self.in_flight()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for WebhookOutput {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.lock().expect("threads lock").drain(..) {
            let _ = t.join();
        }
    }
}

/// The offset's wait for this POST is over: delivered (`ok`) or failed for good.
fn settle(shared: &Shared, post: &Post, ok: bool) {
    if let Origin::Record {
        input,
        partition,
        offset,
    } = post.origin
    {
        shared.tracker.ack(input, partition, offset, ok);
    }
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
}

fn send_loop(shared: &Shared, rx: &Mutex<Receiver<Post>>) {
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let next = rx
            .lock()
            .expect("queue lock")
            .recv_timeout(Duration::from_millis(100));
        match next {
            Ok(post) => deliver(shared, &post),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// POSTs until the endpoint answers 2xx, answers something retrying cannot fix, or the daemon stops
/// (then the offset stays uncommitted and the alert is delivered again after the restart).
fn deliver(shared: &Shared, post: &Post) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = shared
            .agent
            .post(&*post.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &post.alert_id)
            .header("X-Cdrguard-Alert-Id", &post.alert_id)
            .header("X-Cdrguard-Rule", &post.rule)
            .header("X-Cdrguard-Severity", post.severity)
            .header("X-Cdrguard-Department", post.department.as_str())
            .header("X-Cdrguard-Ruleset-Version", &post.ruleset_version)
            .send(&post.body[..])
            .map(|mut r| {
                // Read the answer so the connection can be reused.
                let _ = r.body_mut().read_to_vec();
                r.status().as_u16()
            });
        let w = &shared.metrics.webhook;
        match outcome(result) {
            Outcome::Delivered => {
                w.delivered.fetch_add(1, Ordering::Relaxed);
                if attempts > 1 {
                    tracing::info!(url = %post.url, attempts, "Webhook delivered again after failures.");
                }
                settle(shared, post, true);
                return;
            }
            Outcome::Failed(why) => {
                w.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    url = %post.url,
                    alert = %post.alert_id,
                    why,
                    "Webhook refused the alert; not retried. Its input offset stays uncommitted, so it is \
                     delivered again after a restart once the endpoint accepts it."
                );
                settle(shared, post, false);
                return;
            }
            Outcome::Retry(why) => {
                w.retries.fetch_add(1, Ordering::Relaxed);
                if shared.health.should_log(&post.url) {
                    tracing::warn!(
                        url = %post.url,
                        why,
                        in_flight = shared.in_flight.load(Ordering::Relaxed),
                        "Webhook unreachable or failing; retrying with back-off (input offsets wait)."
                    );
                }
            }
        }
        let pause = backoff.mul_f64(0.8 + 0.4 * fastrand::f64());
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if shared.stop.load(Ordering::Relaxed) {
                // In flight until the process ends: not acknowledged, not committed.
                return;
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        backoff = (backoff * 2).min(shared.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_sort_into_delivered_retry_and_failed() {
        assert_eq!(outcome(Ok(200)), Outcome::Delivered);
        assert_eq!(outcome(Ok(204)), Outcome::Delivered);
        for s in [408, 425, 429, 500, 502, 503] {
            assert!(matches!(outcome(Ok(s)), Outcome::Retry(_)), "{s}");
        }
        for s in [301, 400, 401, 404, 413] {
            assert!(matches!(outcome(Ok(s)), Outcome::Failed(_)), "{s}");
        }
        assert!(matches!(
            outcome(Err(ureq::Error::ConnectionFailed)),
            Outcome::Retry(_)
        ));
    }
}
