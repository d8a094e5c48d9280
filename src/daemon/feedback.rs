//! Analysts' decisions in the daemon (`alert::feedback`): the `kafka.feedback_topic` read whole,
//! from its beginning, by every instance, beside the group's input.
//!
//! **Why not through the consumer group.** A decision names an alert by id, and only the alert
//! memory that issued the alert can resolve it; that memory sits with the alert's entity, in the
//! partition of the entity's *account* — which the desk that writes decisions does not know (a
//! subscriber's alert is keyed by its msisdn). So every instance reads every decision, as Kafka
//! Streams reads a global table, and each worker offers it to each partition it holds; the one
//! that issued the alert applies it. Decisions are few (people write them), so reading them all
//! costs nothing next to the records.
//!
//! - **Restarts and moves.** A decision applied is in the alert memory, checkpointed with the
//!   partition, so it follows the partition to its next owner. Every instance re-reads the topic
//!   at start (a decision applied after the last checkpoint before a crash is applied again) and
//!   keeps the last `RETAINED` decisions, which it offers again to every partition assigned to it:
//!   a decision read while its partition was between owners is applied when the partition lands.
//!   Applying is idempotent: the same decision again changes nothing and is counted as `again`.
//!   The reader commits how far it has read (group `<kafka.group_id>.feedback.<instance>`), so
//!   that what it re-reads below that is not dead-lettered twice.
//! - **Unknown alerts.** A decision no partition here knows is dead-lettered as `unknown_alert`
//!   when this instance holds every input partition (then nobody knows it). With several
//!   instances, another may hold the alert: it is counted as `not_here` and left to that one.
//! - **Order.** A decision takes effect when its worker reads it, between two batches of records:
//!   an alert raised before that stays raised. `replay --feedback` applies each decision right
//!   after its alert, the same on every run.
//! - **Security.** Who may write decisions is Kafka's ACLs on the topic (grant `WRITE` to the
//!   case-management desk only); the reader uses the daemon's TLS/SASL settings.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::poll::Assignment;
use super::worker::WorkerMessage;
use crate::alert::feedback::{self, Feedback};
use crate::config::Config;
use crate::record::{Input, Reject};

/// Decisions kept to offer to partitions assigned later.
pub const RETAINED: usize = 100_000;
/// Decisions read per poll round at most: the records come first.
const PER_ROUND: usize = 512;
/// How often a reader that cannot read yet (broker down, no topic) tries again.
const RETRY: Duration = Duration::from_secs(10);

/// One message of the feedback topic, as the workers see it.
pub struct Decision {
    pub read: Result<Feedback, Reject>,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub raw: Vec<u8>,
    /// Read before, by an earlier run of this instance: applied again, but its dead letter (if
    /// any) was written then.
    pub reread: bool,
    /// Workers yet to answer; the last one decides whether the alert is known here.
    waiting: AtomicUsize,
    known: AtomicBool,
}

/// What the last worker to answer learnt about a decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not the last answer, or a partition here knew the alert.
    Settled,
    /// No partition anywhere knows it: dead-letter it.
    Unknown,
    /// No partition here knows it; another instance may.
    NotHere,
}

/// What the reader and the workers share.
pub struct Desk {
    pub topic: String,
    retained: Mutex<VecDeque<Arc<Decision>>>,
    assignment: Arc<Assignment>,
    /// Partitions of the usage topic (every instance together).
    usage_partitions: AtomicUsize,
}

impl Desk {
    pub fn new(topic: &str, assignment: Arc<Assignment>) -> Self {
        Desk {
            topic: topic.to_string(),
            retained: Mutex::default(),
            assignment,
            usage_partitions: AtomicUsize::new(usize::MAX),
        }
    }

    /// The decisions kept, oldest first, for a partition just assigned.
    pub fn retained(&self) -> Vec<Arc<Decision>> {
        self.retained
            .lock()
            .expect("feedback lock")
            .iter()
            .cloned()
            .collect()
    }

    /// A worker's answer: whether one of its partitions knew the decision's alert.
    pub fn answer(&self, d: &Decision, known: bool) -> Answer {
        if known {
            d.known.store(true, Ordering::SeqCst);
        }
        if d.waiting.fetch_sub(1, Ordering::SeqCst) != 1 || d.known.load(Ordering::SeqCst) {
            return Answer::Settled;
        }
        let all = self.usage_partitions.load(Ordering::Relaxed);
        match self.assignment.held(Input::Usage) >= all {
            true => Answer::Unknown,
            false => Answer::NotHere,
        }
    }
}

/// Reads the feedback topic and hands each decision to every worker.
pub struct Reader {
    consumer: BaseConsumer,
    desk: Arc<Desk>,
    topic: String,
    usage_topic: String,
    /// Per partition, the position an earlier run committed: below it, a decision is re-read.
    resume: Vec<i64>,
    /// The topic's partitions are assigned (`assign`).
    assigned: bool,
    next_try: Instant,
    /// The last reason given for not reading yet.
    said: Option<String>,
}

impl Reader {
    /// The reader of `kafka.feedback_topic`; `None` when the setting is empty.
    pub fn open(
        cfg: &Config,
        brokers: &str,
        base: &std::path::Path,
        desk: Arc<Desk>,
    ) -> anyhow::Result<Option<Reader>> {
        let k = &cfg.kafka;
        if k.feedback_topic.is_empty() {
            return Ok(None);
        }
        let mut c = crate::client::client_config(k, brokers, base)?;
        // Its own group per instance: the position says what this instance has read (every start
        // still reads from the beginning).
        c.set(
            "group.id",
            format!("{}.feedback.{}", k.group_id, cfg.durability.instance),
        )
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50");
        let consumer: BaseConsumer = c.create().context("creating the feedback reader")?;
        Ok(Some(Reader {
            consumer,
            desk,
            topic: k.feedback_topic.clone(),
            usage_topic: k.topic(Input::Usage).to_string(),
            resume: Vec::new(),
            assigned: false,
            next_try: Instant::now(),
            said: None,
        }))
    }

    /// Assigns every partition of the topic from the beginning, once the broker answers and the
    /// topic exists: tried now and then, so that a broker down at start or a topic created later
    /// delays the decisions, never the records. Says once why it waits.
    fn assign(&mut self) {
        if self.assigned || Instant::now() < self.next_try {
            return;
        }
        self.next_try = Instant::now() + RETRY;
        match self.try_assign() {
            Ok(true) => {
                self.assigned = true;
                tracing::info!(topic = %self.topic, partitions = self.resume.len(), "Reading analysts' decisions.");
            }
            Ok(false) => self.say(format!(
                "no topic {:?}: analysts' decisions are not read until it exists (or set kafka.feedback_topic = \"\")",
                self.topic
            )),
            Err(e) => self.say(format!("the feedback topic {:?}: {e:#}", self.topic)),
        }
    }

    fn say(&mut self, why: String) {
        if self.said.as_ref() != Some(&why) {
            tracing::warn!("Feedback: {why}; trying again every {} s.", RETRY.as_secs());
            self.said = Some(why);
        }
    }

    fn try_assign(&mut self) -> anyhow::Result<bool> {
        let partitions = |t: &str| -> anyhow::Result<Option<usize>> {
            let m = self
                .consumer
                .fetch_metadata(Some(t), Duration::from_millis(500))
                .with_context(|| format!("reading the metadata of {t:?}"))?;
            Ok(m.topics()
                .first()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len()))
        };
        let Some(n) = partitions(&self.topic)? else {
            return Ok(false);
        };
        if let Some(u) = partitions(&self.usage_topic)? {
            self.desk.usage_partitions.store(u, Ordering::Relaxed);
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..n as i32 {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(2))
            .context("reading the reader's position")?;
        self.resume = (0..n as i32)
            .map(
                |p| match committed.find_partition(&self.topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                },
            )
            .collect();
        for p in 0..n as i32 {
            tpl.set_partition_offset(&self.topic, p, Offset::Beginning)?;
        }
        self.consumer
            .assign(&tpl)
            .context("assigning the feedback topic")?;
        Ok(true)
    }

    /// Reads what has come and hands it over: a decision to every worker, a malformed message to
    /// the first (which dead-letters it). Only once this instance holds partitions: their state is
    /// restored before (the assignment's messages are ahead of these in each worker's queue).
    pub fn poll(&mut self, workers: &[Sender<WorkerMessage>]) {
        if self.desk.assignment.held(Input::Usage) == 0 {
            return;
        }
        self.assign();
        if !self.assigned {
            return;
        }
        for _ in 0..PER_ROUND {
            let m = match self.consumer.poll(Duration::ZERO) {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "Feedback consume error.");
                    return;
                }
                Some(Ok(m)) => m,
            };
            let raw = m.payload().unwrap_or_default();
            let read = feedback::decode(raw);
            let reread = self
                .resume
                .get(m.partition() as usize)
                .is_some_and(|&r| m.offset() < r);
            let to = if read.is_ok() { workers.len() } else { 1 };
            let d = Arc::new(Decision {
                read,
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                raw: raw.to_vec(),
                reread,
                waiting: AtomicUsize::new(to),
                known: AtomicBool::new(false),
            });
            if d.read.is_ok() {
                let mut kept = self.desk.retained.lock().expect("feedback lock");
                if kept.len() == RETAINED {
                    kept.pop_front();
                }
                kept.push_back(d.clone());
            }
            for w in &workers[..to] {
                // A worker gone is the stop in progress.
                let _ = w.send(WorkerMessage::Feedback(d.clone()));
            }
            // Handed over; committed within a second. A crash before its dead letter is written
            // loses that letter, not the decision (applied decisions are re-read at every start).
            let _ = self
                .consumer
                .store_offset(&self.topic, d.partition, d.offset);
        }
    }
}
