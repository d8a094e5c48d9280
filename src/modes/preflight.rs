//! `cdrguard run --check`: everything the daemon needs before it starts, tried for real — the rule
//! library, the reference data, the Kafka client settings and their files, the brokers (reached with
//! the same TLS and SASL settings as the daemon's clients), the topics and their partition counts,
//! the state directory, the metrics address. Every problem is named with its setting; none stops
//! the others from being checked.
//!
//! What it cannot know without running: whether the consumer group is authorised, and whether the
//! brokers let the producer write (ACLs). Those fail at start-up with the broker's own error.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::config::Config;
use crate::record::Input;

/// What was checked and what is wrong.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per check that passed.
    pub passed: Vec<String>,
    /// One line per problem, naming the setting.
    pub problems: Vec<String>,
}

impl Report {
    fn check(&mut self, r: Result<String, String>) {
        match r {
            Ok(s) => self.passed.push(s),
            Err(e) => self.problems.push(e),
        }
    }

    /// The report as printed: a line per check, then the verdict.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for p in &self.passed {
            out += &format!("ok       {p}\n");
        }
        for p in &self.problems {
            out += &format!("PROBLEM  {p}\n");
        }
        if self.problems.is_empty() {
            out += &format!("configuration OK ({} checks)\n", self.passed.len());
        } else {
            out += &format!(
                "{} problem(s); the daemon would not start or would not work as configured\n",
                self.problems.len()
            );
        }
        out
    }
}

/// How long the brokers get to answer.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every check. `cfg` is already parsed and validated (with the command line's overrides).
pub fn run(cfg: &Config, base: &Path, rules_dir: &Path) -> Report {
    let mut r = Report::default();
    let shadow_rules = match rules(cfg, rules_dir) {
        Ok((line, shadow)) => {
            r.passed.push(line);
            shadow
        }
        Err(e) => {
            r.problems.push(e);
            0
        }
    };
    r.check(
        cfg.classifier(base)
            .map(|_| match &cfg.reference.high_risk_prefixes {
                Some(p) => format!("reference.high_risk_prefixes: {}", base.join(p).display()),
                None => "reference data: the default high-risk prefix list".to_string(),
            })
            .map_err(|e| match &cfg.reference.high_risk_prefixes {
                Some(_) => format!("reference.high_risk_prefixes: {e:#}"),
                None => format!("reference data: {e:#}"),
            }),
    );
    let Some(brokers) = &cfg.kafka.brokers else {
        r.passed.push(
            "kafka.brokers unset: `run` starts the embedded demo broker (nothing to reach)".into(),
        );
        r.check(metrics_address(cfg));
        return r;
    };
    for (setting, path) in crate::client::files(&cfg.kafka, base) {
        r.check(
            std::fs::File::open(&path)
                .map(|_| format!("{setting}: {}", path.display()))
                .map_err(|e| format!("{setting}: cannot read {}: {e}", path.display())),
        );
    }
    match crate::client::client_config(&cfg.kafka, brokers, base) {
        Ok(client) => kafka(&mut r, cfg, brokers, client, shadow_rules),
        Err(e) => r.problems.push(format!("{e:#}")),
    }
    if cfg.durability.dir.is_empty() {
        r.passed
            .push("durability.dir unset: no snapshots (state is rebuilt on restart)".into());
    } else {
        // As the daemon opens it: relative to the working directory.
        r.check(writable(Path::new(&cfg.durability.dir)));
    }
    r.check(metrics_address(cfg));
    r
}

/// The library's summary line, and how many of its rules run in shadow.
fn rules(cfg: &Config, dir: &Path) -> Result<(String, usize), String> {
    let sources = crate::rules::RuleSources::read(dir)
        .map_err(|e| format!("rule library {}: {e:#}", dir.display()))?;
    let set = crate::rules::runtime::validate(&sources, cfg)
        .map_err(|e| format!("rule library {}: {e:#}", dir.display()))?;
    let shadow = set
        .rules
        .iter()
        .filter(|r| r.meta().mode == crate::rules::meta::RuleMode::Shadow)
        .count();
    Ok((
        format!(
            "rule library {}: {} rules (rule set {}){}",
            dir.display(),
            set.rules.len(),
            sources.version,
            if shadow > 0 {
                format!(", {shadow} in shadow")
            } else {
                String::new()
            }
        ),
        shadow,
    ))
}

/// Client errors seen while the brokers are tried (a TLS handshake or an authentication failure
/// comes only this way; the metadata call itself just fails or times out), each marked fatal when
/// waiting longer will not cure it.
#[derive(Default)]
struct Seen(Mutex<Vec<(String, bool)>>);

/// Words of librdkafka's messages for a TLS or SASL failure (its error codes say `SSL` and
/// `Authentication` only in the error callback).
const FATAL_WORDS: [&str; 4] = [
    "ssl handshake failed",
    "certificate verify failed",
    "authentication failed",
    "sasl authentication error",
];

impl ClientContext for Seen {
    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::error::RDKafkaErrorCode as C;
        let fatal = matches!(
            error.rdkafka_error_code(),
            Some(C::SSL | C::Authentication | C::SaslAuthenticationFailed)
        );
        self.note(format!("{error}: {reason}"), fatal);
    }

    /// Kept for the report rather than logged: the report says what went wrong, once.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Error as i32) {
            self.note(format!("{fac}: {log_message}"), false);
        }
    }
}

/// A producer, not a consumer: it reads metadata without looking for a group coordinator.
impl ProducerContext for Seen {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

impl Seen {
    fn note(&self, line: String, fatal: bool) {
        let lower = line.to_ascii_lowercase();
        let fatal = fatal || FATAL_WORDS.iter().any(|w| lower.contains(w));
        let mut seen = self.0.lock().expect("seen lock");
        if !seen.iter().any(|(l, _)| *l == line) {
            seen.push((line, fatal));
        }
    }

    /// An error that waiting longer will not cure.
    fn fatal(&self) -> Option<String> {
        let seen = self.0.lock().expect("seen lock");
        seen.iter().find(|(_, f)| *f).map(|(l, _)| l.clone())
    }

    /// The first thing that went wrong (the rest are mostly its echoes).
    fn first(&self) -> Option<String> {
        let seen = self.0.lock().expect("seen lock");
        seen.first().map(|(l, _)| l.clone())
    }
}

fn kafka(
    r: &mut Report,
    cfg: &Config,
    brokers: &str,
    mut settings: rdkafka::ClientConfig,
    shadow_rules: usize,
) {
    let how = crate::client::describe(&cfg.kafka);
    // No group: the pre-flight never joins the daemon's group (that would rebalance it).
    settings.set("log_level", "3");
    let settings = settings;
    let client: BaseProducer<Seen> = match settings.create_with_context(Seen::default()) {
        Ok(c) => c,
        Err(e) => {
            r.problems.push(format!(
                "kafka: the client settings are refused by librdkafka: {e}"
            ));
            return;
        }
    };
    let started = Instant::now();
    let metadata = loop {
        let answer = client.client().fetch_metadata(None, Duration::from_secs(1));
        // Error callbacks are served by polling.
        client.poll(Duration::ZERO);
        match answer {
            Ok(m) => break Ok(m),
            Err(e) => {
                if let Some(fatal) = client.context().fatal() {
                    break Err(format!("refused: {fatal}"));
                }
                if started.elapsed() >= BROKER_TIMEOUT {
                    let why = client.context().first().unwrap_or_else(|| e.to_string());
                    break Err(format!(
                        "not reached within {} s: {why}",
                        BROKER_TIMEOUT.as_secs()
                    ));
                }
            }
        }
    };
    let metadata = match metadata {
        Ok(m) => m,
        Err(why) => {
            r.problems
                .push(format!("kafka.brokers: {brokers} over {how}: {why}"));
            return;
        }
    };
    r.passed.push(format!(
        "kafka.brokers: {brokers} reached over {how} ({} broker(s) in the cluster)",
        metadata.brokers().len()
    ));
    let partitions = |topic: &str| -> Result<usize, String> {
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() => Ok(t.partitions().len()),
            Some(t) => Err(format!("{:?}", t.error())),
            None => Err("does not exist".into()),
        }
    };
    let k = &cfg.kafka;
    let usage = partitions(&k.usage_topic);
    let events = partitions(&k.events_topic);
    let repartitioned = crate::repartition::inputs(cfg);
    match (&usage, &events) {
        (Ok(u), Ok(e)) if !repartitioned.is_empty() => {
            // Only the input read directly fixes the partition count; the internal topics follow it.
            let counts = [*u, *e];
            let direct = Input::ALL
                .iter()
                .find(|i| !repartitioned.contains(i))
                .copied()
                .unwrap_or(Input::Usage);
            let n = counts[direct.index()];
            for &input in &repartitioned {
                let (repartition, by_account) = crate::repartition::topics(&k.group_id, input);
                let at = |t: &str| match partitions(t) {
                    Ok(c) if c == n => Ok(format!("{t:?} ({c} partitions)")),
                    Ok(c) => Err(format!(
                        "internal topic {t:?} has {c} partitions; it needs {n}: delete it (it is rebuilt from the input) or give it {n}"
                    )),
                    Err(_) => Ok(format!("{t:?} (created at start with {n} partitions)")),
                };
                match (at(&repartition), at(&by_account)) {
                    (Ok(a), Ok(b)) => r.passed.push(format!(
                        "{} {:?} ({} partitions, keyed by {:?}): read through the repartition stages, {a} and {b}",
                        input.setting(),
                        k.source_topic(input),
                        counts[input.index()],
                        k.keyed_by(input),
                    )),
                    (a, b) => r.problems.extend([a.err(), b.err()].into_iter().flatten()),
                }
            }
        }
        (Ok(u), Ok(e)) if u == e => r.passed.push(format!(
            "kafka.usage_topic {:?} and kafka.events_topic {:?}: {u} partitions each",
            k.usage_topic, k.events_topic
        )),
        (Ok(u), Ok(e)) => r.problems.push(format!(
            "kafka.usage_topic {:?} has {u} partitions and kafka.events_topic {:?} has {e}: they must be partitioned alike (same count, same key), or an account's usage and events never meet",
            k.usage_topic, k.events_topic
        )),
        _ => {
            for (setting, topic, p) in [
                ("kafka.usage_topic", &k.usage_topic, &usage),
                ("kafka.events_topic", &k.events_topic, &events),
            ] {
                if let Err(e) = p {
                    r.problems.push(format!("{setting}: topic {topic:?} {e}"));
                }
            }
        }
    }
    if let (Ok(u), Ok(e)) = (&usage, &events) {
        for (input, n) in [(Input::Usage, *u), (Input::Events, *e)] {
            r.check(sample_keying(cfg, &settings, input, n));
        }
    }
    let mut missing = Vec::new();
    // The shadow topic matters once a rule runs in shadow: its alerts, undeliverable, would hold
    // the commits behind them.
    let shadow = ("kafka.shadow_topic", k.shadow_topic.as_str());
    for (setting, topic) in k
        .output_topics()
        .into_iter()
        .chain((shadow_rules > 0).then_some(shadow))
    {
        if let Err(e) = partitions(topic) {
            missing.push(format!("{setting}: topic {topic:?} {e}"));
        }
    }
    if !k.feedback_topic.is_empty() {
        // Optional: without it the daemon runs, and says so at start.
        r.passed.push(match partitions(&k.feedback_topic) {
            Ok(n) => format!(
                "kafka.feedback_topic {:?}: {n} partition(s); analysts' decisions are read",
                k.feedback_topic
            ),
            Err(e) => format!(
                "kafka.feedback_topic {:?} {e}: analysts' decisions are not read until it exists (create it to use feedback)",
                k.feedback_topic
            ),
        });
    }
    if missing.is_empty() {
        r.passed
            .push("output topics: the four alert topics and the dead-letter topic exist".into());
    } else {
        // Alerts and dead letters the producer cannot deliver hold every commit behind them.
        r.problems.extend(missing);
    }
}

/// Records read from the end of each input partition to see how the producers key them.
const KEYING_SAMPLE: i64 = 100;

/// How the last records of an input topic are keyed, against the contract (README "Keying"): an
/// event by its account; a usage record by its `served.account_id`, else by its msisdn. (A line an
/// `activation` gave an account should be keyed by that account: the sample cannot know, so such a
/// key counts as "other".) A problem when one partition can hold what belongs in another.
fn sample_keying(
    cfg: &Config,
    settings: &rdkafka::ClientConfig,
    input: Input,
    partitions: usize,
) -> Result<String, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let topic = cfg.kafka.source_topic(input);
    let setting = input.setting();
    let fail = |e: String| format!("{setting} {topic:?}: keying not sampled: {e}");
    // Assigned, never subscribed: no group is joined and nothing is committed.
    let consumer: BaseConsumer = settings
        .clone()
        .set("group.id", "cdrguard-run-check")
        .set("enable.auto.commit", "false")
        // A partition is done at its end, whatever the last offset holds (a transaction marker
        // is never delivered).
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| fail(e.to_string()))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for p in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, BROKER_TIMEOUT)
            .map_err(|e| fail(e.to_string()))?;
        if high > low {
            let from = low.max(high - KEYING_SAMPLE);
            tpl.add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(|e| fail(e.to_string()))?;
            ends.insert(p, high);
        }
    }
    if ends.is_empty() {
        return Ok(format!("{setting} {topic:?}: empty, keying not sampled"));
    }
    consumer.assign(&tpl).map_err(|e| fail(e.to_string()))?;
    let decoder = cfg.decoder();
    let (mut right, mut by_line, mut unkeyed, mut other, mut undecodable) = (0, 0, 0, 0, 0);
    let mut example = None;
    let deadline = Instant::now() + BROKER_TIMEOUT;
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                ends.remove(&p);
                continue;
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        use rdkafka::Message;
        // Only the sample: not what was produced after the end offsets were read.
        match ends.get(&m.partition()) {
            Some(&end) if m.offset() < end => {
                if m.offset() + 1 >= end {
                    ends.remove(&m.partition());
                }
            }
            _ => continue,
        }
        let payload = m.payload().unwrap_or_default();
        // The account (or, for usage without one, the msisdn) the key must be.
        let (expected, line) = match input {
            Input::Usage | Input::Calls => match decoder.usage(payload) {
                Ok(rec) => match rec.served.account_id {
                    Some(a) => (a.to_string(), Some(rec.served.msisdn.to_string())),
                    None => (rec.served.msisdn.to_string(), None),
                },
                Err(_) => {
                    undecodable += 1;
                    continue;
                }
            },
            Input::Events => match decoder.account_event(payload) {
                Ok(e) => (e.account_id.to_string(), None),
                Err(_) => {
                    undecodable += 1;
                    continue;
                }
            },
        };
        let key = m.key().map(String::from_utf8_lossy);
        match key.as_deref() {
            Some(k) if k == expected => right += 1,
            None => unkeyed += 1,
            Some(k) => {
                if line.as_deref() == Some(k) {
                    by_line += 1;
                } else {
                    other += 1;
                }
                example.get_or_insert_with(|| format!("key {k:?} for {expected:?}"));
            }
        }
    }
    let sampled = right + by_line + unkeyed + other;
    let wrong = sampled - right;
    let mut skipped = match undecodable {
        0 => String::new(),
        n => format!(", {n} undecodable not counted"),
    };
    if !ends.is_empty() {
        skipped += &format!(
            "; incomplete: {} partition(s) not read to their end within {} s",
            ends.len(),
            BROKER_TIMEOUT.as_secs()
        );
    }
    if sampled == 0 {
        return Err(fail(format!("no record could be decoded{skipped}")));
    }
    if wrong == 0 {
        return Ok(format!(
            "{setting} {topic:?}: keyed by account (else msisdn) as the daemon needs ({sampled} records sampled{skipped})"
        ));
    }
    let detail = format!(
        "{wrong} of {sampled} sampled records keyed other than by their account ({by_line} by the line's msisdn, {unkeyed} unkeyed, {other} other; e.g. {}){skipped}",
        example.unwrap_or_else(|| "no key".into())
    );
    if cfg.kafka.keyed_by(input) != crate::config::KeyedBy::Account {
        Ok(format!(
            "{setting} {topic:?}: {detail}; repartitioned by account (kafka.{input}_keyed_by), keys do not matter"
        ))
    } else if partitions > 1 {
        Err(format!(
            "{setting} {topic:?}: {detail}: records of one account land in several partitions, each seeing part of it, and alerts are lost (README \"Keying\")"
        ))
    } else {
        Ok(format!(
            "{setting} {topic:?}: {detail}; harmless with one partition, not with more (README \"Keying\")"
        ))
    }
}

/// Writes and removes a file in `dir`; a directory made for the purpose is removed again (the
/// daemon makes it at start).
fn writable(dir: &Path) -> Result<String, String> {
    let made = !dir.exists();
    let probe: PathBuf = dir.join(format!(".cdrguard-check-{}", std::process::id()));
    let r = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b"check"))
        .and_then(|_| std::fs::remove_file(&probe))
        .map(|_| format!("durability.dir: {} is writable", dir.display()))
        .map_err(|e| format!("durability.dir: {} is not writable: {e}", dir.display()));
    if made {
        let _ = std::fs::remove_dir_all(dir);
    }
    r
}

fn metrics_address(cfg: &Config) -> Result<String, String> {
    let a = &cfg.daemon.metrics_address;
    if a.is_empty() {
        return Ok("daemon.metrics_address empty: no /metrics".into());
    }
    std::net::TcpListener::bind(a)
        .map(|_| format!("daemon.metrics_address: {a} can be bound"))
        .map_err(|e| format!("daemon.metrics_address: {a} cannot be bound: {e}"))
}
