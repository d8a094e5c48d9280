//! Configuration file (TOML). Every field is optional with a documented default; unknown keys are an
//! error (a typo must not silently fall back to a default); `validate` reports every problem at once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::classify::{Classifier, PrefixList};
use crate::record::time::{format_duration, parse_duration};
use crate::record::{CostTable, Decoder, Number, Numbering, Rates};

pub const DEFAULT_HIGH_RISK_PREFIXES: &str = "rules/lists/high_risk_prefixes.txt";
const BUILTIN_HIGH_RISK_PREFIXES: &str = include_str!("../rules/lists/high_risk_prefixes.txt");

/// A length of time written as `20s`, `10m`, `6h`, `35d` or `2w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Secs(pub i64);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Secs)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Secs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Limits on what is accepted as a record.
    pub input: InputConfig,
    /// Reference data used to classify records.
    pub reference: ReferenceConfig,
    /// The home numbering plan: how the numbers feeds write become canonical E.164 and a kind.
    pub numbering: NumberingConfig,
    /// Window state, lateness, de-duplication and timers.
    pub state: StateConfig,
    /// The rule library and the sandbox its scripts run in.
    pub rules: RulesConfig,
    /// Kafka: brokers, topics, consumer group, librdkafka options (`cdrguard run`).
    pub kafka: KafkaConfig,
    /// The daemon: metrics, status, idle timers, shutdown (`cdrguard run`).
    pub daemon: DaemonConfig,
    /// State snapshots: where, how often, how far back to rebuild without one (`cdrguard run`).
    pub durability: DurabilityConfig,
    /// The embedded demo (`cdrguard run` without `kafka.brokers`).
    pub demo: DemoConfig,
    /// Alerts as HTTP POSTs to a URL per department, beside the Kafka topics (`cdrguard run`).
    pub webhook: WebhookConfig,
    /// The exchange rates in force (`input.exchange_rates`), shared by every decoder made from
    /// this config and its clones.
    #[serde(skip)]
    pub rates: Rates,
    /// The cost table for unrated records (`input.unrated_costs`).
    #[serde(skip)]
    pub costs: std::sync::Arc<CostTable>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, e.g. `kafka1:9092,kafka2:9092`. Unset: `cdrguard run` starts an embedded
    /// in-process broker (librdkafka's mock cluster) with the demo traffic generator.
    pub brokers: Option<String>,
    /// Consumer group; partitions are shared among the instances of one group. Default `cdrguard`.
    pub group_id: String,
    /// Usage records (CDRs). Producers key them by account id, else msisdn. Default `cdr.usage`.
    pub usage_topic: String,
    /// Account events, keyed by account id and partitioned like the usage topic (same partition
    /// count, same partitioner) so an account's records and events meet in one worker.
    /// Default `cdr.account-events`.
    pub events_topic: String,
    /// Undecodable and late records, with the original payload and the reason in headers.
    /// Default `cdrguard.dead-letter`.
    pub dead_letter_topic: String,
    /// Alert topic per department. Defaults `alerts.fraud`, `alerts.collections`,
    /// `alerts.key_accounts`, `alerts.care`.
    pub alert_topics: AlertTopics,
    /// The alerts of shadow rules (`RULE.mode: "shadow"`), one message each, keyed by entity: never a
    /// department's topic. Default `alerts.shadow`.
    pub shadow_topic: String,
    /// Analysts' decisions about alerts (`alert::feedback`, docs/schema/feedback.schema.json), read
    /// whole by every instance. Default `cdrguard.feedback`; empty: none read. Who may write to it is
    /// Kafka's ACLs.
    pub feedback_topic: String,
    /// Where a new consumer group starts: `earliest` (default) or `latest`.
    pub start_from: StartFrom,
    /// When the next offset of a partition is gone (retention, deleted records, a recreated topic):
    /// `continue` (default) resumes at the oldest record left, counting and logging what was
    /// skipped; `stop` exits non-zero without committing past the gap.
    pub on_gap: OnGap,
    /// TLS to the brokers (`security.protocol` `ssl`, or `sasl_ssl` with `kafka.sasl`). Unset: plain
    /// TCP.
    pub tls: Option<TlsConfig>,
    /// SASL authentication (`sasl_plaintext`, or `sasl_ssl` with `kafka.tls`). Unset: none.
    pub sasl: Option<SaslConfig>,
    /// librdkafka options passed through to the consumer and producers (e.g. `fetch.wait.max.ms`,
    /// `client.rack`). Options cdrguard sets from typed settings are refused by name, and so are
    /// secrets (passwords belong in files or the environment: `kafka.sasl`).
    pub options: std::collections::BTreeMap<String, String>,
    /// How the usage topic's producers key their records: `account` (default: as asked above, read
    /// directly), `msisdn` or `any` (by the line, the switch, not at all): cdrguard then routes the
    /// records through internal topics keyed by account before any state sees them
    /// (`crate::repartition`).
    pub usage_keyed_by: KeyedBy,
    /// The same for the events topic: `account` (default), else routed like usage.
    pub events_keyed_by: KeyedBy,
    /// Retention of the internal topics cdrguard creates for `usage_keyed_by`/`events_keyed_by`. At
    /// least `durability.rebuild_window`: a partition without a usable snapshot is rebuilt from them.
    /// Default `40d`.
    pub internal_retention: Secs,
    /// The topics the workers read instead of `[usage_topic, events_topic]`: an input routed
    /// through the repartition stages is read from its by-account topic; the third is the calls
    /// topic of the calling numbers (`repartition::worker_view`, `repartition::calls`).
    #[serde(skip)]
    pub read_topics: Option<[String; 3]>,
}

/// How an input topic's producers key its records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyedBy {
    /// By account id (else msisdn for a record that names no account): read as it is.
    #[default]
    Account,
    /// By the line's msisdn: repartitioned by account.
    Msisdn,
    /// By anything else, or not at all: repartitioned by account.
    Any,
}

/// TLS to the brokers. Relative paths are resolved from the config file's folder.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// CA certificate(s) (PEM) the brokers' certificates are verified against. Unset: the system's
    /// trust store.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that require mutual TLS; with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted; keep it readable by cdrguard only).
    pub key: Option<PathBuf>,
    /// Check that a broker's certificate names the host connected to. Default true; turn off only
    /// for brokers reached through addresses their certificates do not list.
    pub verify_hostname: Option<bool>,
}

/// SASL authentication. The password (or OAuth client secret) is read from a file or an
/// environment variable when the clients are created, never from this file, and never logged.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaslConfig {
    /// `SCRAM-SHA-512`, `SCRAM-SHA-256`, `PLAIN`, `OAUTHBEARER` (OIDC client credentials) or
    /// `GSSAPI` (Kerberos).
    pub mechanism: String,
    /// User name; for `OAUTHBEARER` the OAuth client id.
    pub username: Option<String>,
    /// File holding the password (or client secret); one trailing newline is ignored.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password (or client secret).
    pub password_env: Option<String>,
    /// Refused: a password written in the configuration file ends up in backups, tickets and
    /// version control. Present only to name the mistake.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// `OAUTHBEARER`: the OIDC token endpoint (client-credentials grant).
    pub token_endpoint: Option<String>,
    /// `OAUTHBEARER`: scope requested, if the provider needs one.
    pub scope: Option<String>,
    /// `GSSAPI`: the brokers' Kerberos service name. Default `kafka`.
    pub kerberos_service_name: Option<String>,
    /// `GSSAPI`: the client principal, e.g. `cdrguard/host@REALM`.
    pub kerberos_principal: Option<String>,
    /// `GSSAPI`: keytab of that principal.
    pub kerberos_keytab: Option<PathBuf>,
}

/// SASL mechanisms this build supports (librdkafka with OpenSSL, Cyrus SASL and libcurl).
pub const SASL_MECHANISMS: [&str; 5] = [
    "SCRAM-SHA-512",
    "SCRAM-SHA-256",
    "PLAIN",
    "OAUTHBEARER",
    "GSSAPI",
];

/// Pass-through options that carry secrets: refused, whatever their value.
pub const SECRET_KAFKA_OPTIONS: [&str; 6] = [
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
    "ssl.key.pem",
    "ssl_key",
];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertTopics {
    #[serde(rename = "FRAUD")]
    pub fraud: String,
    #[serde(rename = "COLLECTIONS")]
    pub collections: String,
    #[serde(rename = "KEY_ACCOUNTS")]
    pub key_accounts: String,
    #[serde(rename = "CARE")]
    pub care: String,
}

impl Default for AlertTopics {
    fn default() -> Self {
        AlertTopics {
            fraud: "alerts.fraud".into(),
            collections: "alerts.collections".into(),
            key_accounts: "alerts.key_accounts".into(),
            care: "alerts.care".into(),
        }
    }
}

impl AlertTopics {
    pub fn of(&self, d: crate::record::Department) -> &str {
        use crate::record::Department as D;
        match d {
            D::Fraud => &self.fraud,
            D::Collections => &self.collections,
            D::KeyAccounts => &self.key_accounts,
            D::Care => &self.care,
        }
    }
}

impl KafkaConfig {
    /// The topic of an input: the one mapping from `Input` to a topic name.
    pub fn topic(&self, input: crate::record::Input) -> &str {
        match (&self.read_topics, input) {
            (Some(t), _) => &t[input.index()],
            // Outside the daemon there is no calls topic (`repartition::worker_view` names it).
            (None, crate::record::Input::Calls) => "",
            (None, _) => self.source_topic(input),
        }
    }

    /// The topic `input`'s producers write (`usage_topic`, `events_topic`; the calls topic is
    /// cdrguard's own).
    pub fn source_topic(&self, input: crate::record::Input) -> &str {
        match input {
            crate::record::Input::Usage => &self.usage_topic,
            crate::record::Input::Events => &self.events_topic,
            crate::record::Input::Calls => self.topic(input),
        }
    }

    /// How `input`'s producers key it (the calls topic: by calling number, as cdrguard wants).
    pub fn keyed_by(&self, input: crate::record::Input) -> KeyedBy {
        match input {
            crate::record::Input::Usage => self.usage_keyed_by,
            crate::record::Input::Events => self.events_keyed_by,
            crate::record::Input::Calls => KeyedBy::Account,
        }
    }

    /// Whether the workers read `input` from a sequenced topic, whose messages carry lane headers
    /// and whose end is told by markers (`crate::repartition`, `repartition::calls`).
    pub fn sequenced(&self, input: crate::record::Input) -> bool {
        match input {
            crate::record::Input::Calls => true,
            i => self.keyed_by(i) != KeyedBy::Account,
        }
    }

    /// The input a topic is, if it is one of the two.
    pub fn input_of(&self, topic: &str) -> Option<crate::record::Input> {
        crate::record::Input::LANES
            .into_iter()
            .find(|&i| !self.topic(i).is_empty() && self.topic(i) == topic)
    }

    /// The topics the daemon writes, with their settings: the four alert topics and the dead-letter
    /// topic.
    pub fn output_topics(&self) -> [(&'static str, &str); 5] {
        let a = &self.alert_topics;
        [
            ("kafka.alert_topics.FRAUD", &a.fraud),
            ("kafka.alert_topics.COLLECTIONS", &a.collections),
            ("kafka.alert_topics.KEY_ACCOUNTS", &a.key_accounts),
            ("kafka.alert_topics.CARE", &a.care),
            ("kafka.dead_letter_topic", &self.dead_letter_topic),
        ]
    }

    /// What is wrong with `kafka.tls` and `kafka.sasl` as written (files are checked when the
    /// clients are created, and by `run --check`).
    fn security_problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if let Some(t) = &self.tls {
            if t.cert.is_some() != t.key.is_some() {
                errs.push("kafka.tls: cert and key go together (mutual TLS)".into());
            }
        }
        let Some(s) = &self.sasl else { return errs };
        if s.password.is_some() {
            errs.push(
                "kafka.sasl.password: a password in the configuration file is refused; put it in a file (kafka.sasl.password_file, readable by cdrguard only) or an environment variable (kafka.sasl.password_env)"
                    .into(),
            );
        }
        let mechanism = s.mechanism.to_ascii_uppercase();
        if !SASL_MECHANISMS.contains(&mechanism.as_str()) {
            errs.push(format!(
                "kafka.sasl.mechanism: {:?} is not one of {}",
                s.mechanism,
                SASL_MECHANISMS.join(", ")
            ));
            return errs;
        }
        let secret = match (&s.password_file, &s.password_env) {
            (Some(_), Some(_)) => {
                errs.push("kafka.sasl: password_file or password_env, not both".into());
                true
            }
            (None, None) => false,
            _ => true,
        };
        if mechanism != "GSSAPI" {
            if s.username.as_deref().is_none_or(str::is_empty) {
                errs.push(format!("kafka.sasl.username: required with {mechanism}"));
            }
            if !secret && s.password.is_none() {
                errs.push(format!(
                    "kafka.sasl: {mechanism} needs password_file or password_env"
                ));
            }
        }
        match (mechanism.as_str(), &s.token_endpoint) {
            ("OAUTHBEARER", None) => errs.push(
                "kafka.sasl.token_endpoint: required with OAUTHBEARER (the OIDC token URL)".into(),
            ),
            ("OAUTHBEARER", Some(u))
                if !(u.starts_with("https://") || u.starts_with("http://")) =>
            {
                errs.push(format!(
                    "kafka.sasl.token_endpoint: {u:?} is not an http(s) URL"
                ))
            }
            ("OAUTHBEARER", _) => {}
            (_, Some(_)) => errs.push("kafka.sasl.token_endpoint: only with OAUTHBEARER".into()),
            _ => {}
        }
        if mechanism != "GSSAPI" && (s.kerberos_keytab.is_some() || s.kerberos_principal.is_some())
        {
            errs.push("kafka.sasl.kerberos_*: only with GSSAPI".into());
        }
        errs
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            group_id: "cdrguard".into(),
            usage_topic: "cdr.usage".into(),
            events_topic: "cdr.account-events".into(),
            dead_letter_topic: "cdrguard.dead-letter".into(),
            alert_topics: AlertTopics::default(),
            shadow_topic: "alerts.shadow".into(),
            feedback_topic: "cdrguard.feedback".into(),
            start_from: StartFrom::Earliest,
            on_gap: OnGap::Continue,
            tls: None,
            sasl: None,
            options: Default::default(),
            usage_keyed_by: KeyedBy::Account,
            events_keyed_by: KeyedBy::Account,
            internal_retention: Secs(40 * 86_400),
            read_topics: None,
        }
    }
}

/// What the daemon does when records it has not read are gone from the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnGap {
    /// Resume at the oldest record left; the skip is counted, logged and marked in the state.
    #[default]
    Continue,
    /// Exit non-zero without committing past the gap: someone decides.
    Stop,
}

/// Where a partition the consumer group never committed starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest record the broker still has.
    #[default]
    Earliest,
    /// The next record produced.
    Latest,
}

impl StartFrom {
    /// librdkafka's `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        }
    }
}

/// Alerts POSTed as JSON to a URL per department (case management, on-call tools), with the same
/// at-least-once contract as the Kafka topics: an input offset is committed only after every webhook
/// of its alerts answered 2xx.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// URL per department (`FRAUD`, `COLLECTIONS`, `KEY_ACCOUNTS`, `CARE`); a department without one
    /// gets no POST. Default: none.
    pub urls: std::collections::BTreeMap<crate::record::Department, String>,
    /// Longest wait for one POST's answer. Default `10s`.
    pub timeout: Secs,
    /// Alerts waiting to be posted; when full, the workers wait (nothing is dropped). Default 10000.
    pub queue: usize,
    /// POSTs in flight at once. Default 4.
    pub concurrency: usize,
    /// Longest pause between retries of a failing POST (it starts at 100 ms and doubles).
    /// Default `30s`.
    pub max_backoff: Secs,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            urls: Default::default(),
            timeout: Secs(10),
            queue: 10_000,
            concurrency: 4,
            max_backoff: Secs(30),
        }
    }
}

/// librdkafka options cdrguard derives from typed settings or needs for at-least-once delivery.
pub const OWNED_KAFKA_OPTIONS: [&str; 21] = [
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.token.endpoint.url",
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "message.timeout.ms",
    "acks",
    "statistics.interval.ms",
    "partition.assignment.strategy",
];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Worker threads; a partition always belongs to one worker. Default 2.
    pub workers: usize,
    /// HTTP address for `/metrics` (Prometheus text) and `/health`. Empty: none.
    /// Default `127.0.0.1:9464`.
    pub metrics_address: String,
    /// How often a status line is logged. Default `5s`.
    pub status_interval: Secs,
    /// A partition with no record for this long has its watermark moved by the wall clock, so
    /// timers (invoice overdue) fire on a quiet stream. `0s` turns it off. Default `30s`.
    pub idle_watermark_after: Secs,
    /// Longest wait on SIGINT/SIGTERM for in-flight alerts before exiting. Default `10s`.
    pub shutdown_timeout: Secs,
    /// A partition's usage and events are merged in event time: a record waits for the other topic
    /// while that topic has unread records (however long: order never depends on load), and not at
    /// all once its end offset is reached — unless this is set, for producers that write the two
    /// topics at different delays: then a record also waits this long for the idle topic (Kafka
    /// Streams' `max.task.idle.ms`). Default `0s`.
    pub align_wait: Secs,
    /// Input read ahead and waiting in the workers, in MiB, before fetching of the partitions
    /// holding the most pauses. Default 256.
    pub max_read_ahead_mib: u32,
    /// Messages handed to a worker at once (fewer when the poll comes back empty). Larger batches
    /// cost fewer wake-ups; the results never depend on it. Default 256.
    pub poll_batch: usize,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            workers: 2,
            metrics_address: "127.0.0.1:9464".into(),
            status_interval: Secs(5),
            idle_watermark_after: Secs(30),
            shutdown_timeout: Secs(10),
            align_wait: Secs(0),
            max_read_ahead_mib: 256,
            poll_batch: 256,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityConfig {
    /// Directory of the per-partition state snapshots, relative to the working directory. One
    /// daemon per directory (a lock file enforces it). Empty: no snapshots, state is lost on
    /// restart. The embedded demo, whose broker lives in memory, uses a fresh temporary directory.
    /// Default `cdrguard-state`.
    pub dir: String,
    /// How often each partition's state is snapshotted (also on shutdown and when a partition is
    /// revoked). Offsets are committed only up to the last snapshot, so this is also how much input a
    /// crash re-reads. Default `30s`.
    pub snapshot_interval: Secs,
    /// With no usable snapshot (missing, corrupt, from another version) for a partition that has
    /// committed offsets, the state is rebuilt by re-reading this far back (broker timestamps);
    /// alerts already delivered are not sent again. Default `35d`, the longest window.
    pub rebuild_window: Secs,
    /// Longest wait for a snapshot's alerts to be acknowledged before it is written. Default `30s`.
    pub delivery_timeout: Secs,
    /// This daemon's name in a state directory several daemons share (its lock there). Partition
    /// snapshots need no name (their owner comes from the
    /// consumer group). Letters, digits, `-`, `_`, `.`. Default: the host name.
    pub instance: String,
    /// Where checkpoints go, when not to `dir`: `file:///path` or `s3://bucket/prefix` (any S3 API:
    /// AWS, MinIO, Ceph, Garage), which every instance of a group reaches, so that a partition
    /// moving to another machine is restored, not rebuilt. Credentials from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, …) or `store_options`; never
    /// logged. Default empty: `dir`.
    pub store: String,
    /// S3 settings by `object_store`'s names (`aws_endpoint`, `aws_region`, `aws_allow_http`,
    /// `aws_access_key_id`, …), over those of the environment.
    pub store_options: std::collections::BTreeMap<String, String>,
}

/// The host name (Linux), else `cdrguard`: a name that differs between machines sharing a state
/// directory without configuration.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cdrguard".into())
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            dir: "cdrguard-state".into(),
            snapshot_interval: Secs(30),
            rebuild_window: Secs(35 * 86_400),
            delivery_timeout: Secs(30),
            instance: host_name(),
            store: String::new(),
            store_options: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Stream generated traffic with fraud stories into the embedded broker. Default true.
    pub enabled: bool,
    /// Records per second the generator produces. Default 2000.
    pub rate: u32,
    /// Partitions of the embedded input topics. Default 32: the embedded broker keeps at most 5 MB
    /// or 100,000 messages per partition (librdkafka's mock cluster, fixed), so 32 partitions hold
    /// about 160 MB per topic (some 340,000 usage records); older records are dropped, and a
    /// consumer that had not read them counts a gap.
    pub partitions: i32,
    /// Subscribers in each generated round (4 days of simulated traffic). Default 3000.
    pub subscribers: u32,
    /// Print each alert received on the department topics. Default true.
    pub print_alerts: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: true,
            rate: 2000,
            partitions: 32,
            subscribers: 3000,
            print_alerts: true,
        }
    }
}

/// The rule library folder used when neither `--rules` nor `rules.dir` names one.

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// The rule library folder (scripts, `params.toml`, `lists/`). Relative paths are resolved from
    /// the config file's folder. Default `rules` in the working directory.
    pub dir: Option<PathBuf>,
    /// A candidate library run in shadow beside the live one (`rules::candidate`): every rule of
    /// it on the same records and state, its alerts to the shadow destination only, its cooldowns
    /// and snoozes its own, and per rule shared with the live library the overlap of their
    /// alerts. Relative to the config file's folder. Default: none.
    pub shadow_dir: Option<PathBuf>,
    /// A rule is quarantined when this many of its recent evaluations failed (limits, runtime
    /// errors, bad verdicts)... Default 50.
    pub quarantine_after: u64,
    /// ...and they are at least this share of its recent evaluations. Default 0.05.
    pub quarantine_error_rate: f64,
    /// Recent: the last `quarantine_window` to twice that many evaluations. Default 1000.
    pub quarantine_window: u64,
    /// A quarantined rule runs again this much event time later (or at the next reload).
    /// Default `1h`.
    pub quarantine_cooldown: Secs,
    /// How often the library folder is checked for changes when watching. Default `2s`.
    pub watch_interval: Secs,
    /// Per-evaluation limits of the Rhai sandbox.
    pub sandbox: crate::rules::SandboxLimits,
}

impl RulesConfig {
    pub fn quarantine_policy(&self) -> crate::rules::engine::QuarantinePolicy {
        crate::rules::engine::QuarantinePolicy {
            after: self.quarantine_after,
            error_rate: self.quarantine_error_rate,
            window: self.quarantine_window,
            cooldown_s: self.quarantine_cooldown.0,
        }
    }
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: None,
            shadow_dir: None,
            quarantine_after: 50,
            quarantine_error_rate: 0.05,
            quarantine_window: 1000,
            quarantine_cooldown: Secs(3600),
            watch_interval: Secs(2),
            sandbox: Default::default(),
        }
    }
}

pub const DEFAULT_RULES_DIR: &str = "rules";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Largest accepted record in bytes; larger ones are dead-lettered as `oversized`. Default 65536.
    pub max_record_bytes: usize,
    /// ISO 4217 code charges and payments must be in when they name a currency. Default `EUR`.
    pub currency: String,
    /// Largest dead-letter file a replay writes, in MiB; further rejects are counted, not written.
    /// Default 256.
    pub dead_letter_file_max_mib: u64,
    /// Exchange rates (`CURRENCY,RATE[,FROM]` per line, `record::rates`): a charge priced in
    /// another currency (TAP in SDR, `XDR`) is converted, not rejected. Relative to the config
    /// file's folder. The daemon reloads it when it changes. Default: none.
    pub exchange_rates: Option<PathBuf>,
    /// Prices for unrated records (`PREFIX,PER_MINUTE[,PER_SMS]` per line, `record::costs`): a
    /// record without an amount (straight from the switch) is priced from its destination, so the
    /// charge rules see it. Relative to the config file's folder; read at start. Default: none.
    pub unrated_costs: Option<PathBuf>,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            max_record_bytes: 64 * 1024,
            currency: "EUR".into(),
            dead_letter_file_max_mib: 256,
            exchange_rates: None,
            unrated_costs: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReferenceConfig {
    /// Home country calling code; other numbers are international. Default `33`.
    pub home_country_code: String,
    /// High-risk prefix list (longest-prefix match, `!` exemptions). A relative path set here is
    /// resolved from the config file's folder and must exist. Default: `rules/lists/high_risk_prefixes.txt`
    /// in the working directory, else the list shipped inside the binary.
    pub high_risk_prefixes: Option<PathBuf>,
    /// Digit strings shorter than this, written without `+` or an international prefix, are short
    /// codes (`record::numbering`): never international, and matched only by `short:` list
    /// entries. Default 7.
    pub min_international_digits: usize,
    /// Local hours `[start, end)` that count as off-hours, wrapping midnight. Default `[20, 7]`.
    pub off_hours: [u8; 2],
    /// Voice calls up to this many seconds are `short`. Default 3.
    pub short_call_s: u32,
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        ReferenceConfig {
            home_country_code: "33".into(),
            high_risk_prefixes: None,
            min_international_digits: 7,
            off_hours: [20, 7],
            short_call_s: 3,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumberingConfig {
    /// Dialled before a country code in feeds that do not write `+`: `["00"]` in most of the
    /// world, `["011"]` in North America. Default `["00"]`.
    pub international_prefixes: Vec<String>,
    /// Dialled before a national number (`0612345678` in France); `""` when the plan has none.
    /// Default `"0"`; North America `"1"`.
    pub trunk_prefix: String,
    /// E.164 prefixes inside the home country code that count as international (another
    /// country sharing the code). Unset: the Caribbean members of the North American plan when
    /// `reference.home_country_code` is `1` (their numbers look domestic, and one-ring scams use
    /// them), none otherwise.
    pub foreign_prefixes: Option<Vec<String>>,
}

impl Default for NumberingConfig {
    fn default() -> Self {
        NumberingConfig {
            international_prefixes: vec!["00".into()],
            trunk_prefix: "0".into(),
            foreign_prefixes: None,
        }
    }
}

/// The North American plan's members that are not the United States or its territories, by area
/// code (NANPA): dialled as `1 NPA`, billed and abused as international.
pub const NANP_FOREIGN_PREFIXES: &[&str] = &[
    "1242", "1246", "1264", "1268", "1284", "1345", "1441", "1473", "1649", "1658", "1664", "1721",
    "1758", "1767", "1784", "1809", "1829", "1849", "1868", "1869", "1876",
];

/// Which calling numbers (the other party of MT voice calls) get state of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallingNumbers {
    /// None.
    Off,
    /// Only international callers (Wangiri sources); the default. Domestic callers are mostly other
    /// subscribers and would double the state for no rule.
    International,
    /// Every caller.
    All,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Usage records older than (newest event time − this) are dead-lettered as `late`. Default `6h`
    /// (roaming NRTRDE files arrive up to 4 h late).
    pub allowed_lateness: Secs,
    /// The same for roaming records (`roaming.is_roaming`), which TAP files deliver up to 36 h
    /// after the call: a late roaming record is applied where the rest would be `late`, without
    /// holding back the watermark of the rest. Unset: `allowed_lateness`. At most
    /// `dedup_horizon`, so that a record accepted that late is still checked for duplicates.
    pub roaming_allowed_lateness: Option<Secs>,
    /// Usage stamped more than this after the real time now is rejected as `future` (a broken
    /// producer clock; a local time written with `Z`). Default `1h`.
    pub max_future_skew: Secs,
    /// Record ids are remembered at least this long (event time) to drop redeliveries. Default `24h`.
    pub dedup_horizon: Secs,
    /// The longest window any feature can ask for; older buckets are dropped, and entities idle this
    /// long are evicted. Default `35d`.
    pub max_window: Secs,
    /// Distinct-count features (distinct numbers, cells) can look back this far. Default `72h`.
    pub distinct_horizon: Secs,
    /// Days after an invoice's due date at which an overdue timer fires. Default `[7, 15, 30]`.
    pub invoice_overdue_days: Vec<u16>,
    /// Keep paid invoices, payments and reversals this long for payment-behaviour features. Default `90d`.
    pub ledger_history: Secs,
    /// Calling numbers with state of their own: `off`, `international` (default) or `all`.
    pub calling_numbers: CallingNumbers,
    /// Keep state per IMEI (device) as well. Default false: no shipped rule needs it and it doubles state.
    pub track_imei: bool,
    /// Condition names one rule may keep per entity with `edge(name, cond)`; a further name is a
    /// rule error. Default 16.
    pub max_edges_per_entity: u32,
    /// An answered call longer than this counts as this long for concurrency (`simultaneous_calls`):
    /// its span is clipped and counted (`calls_clipped`), so one implausible record cannot keep a
    /// line's open calls growing. Its minutes are not clipped. Default `24h`.
    pub max_call_duration: Secs,
}

impl StateConfig {
    /// How late a usage record may be: `roaming_allowed_lateness` for roaming records.
    pub fn lateness_for(&self, roaming: bool) -> i64 {
        match self.roaming_allowed_lateness {
            Some(r) if roaming => r.0,
            _ => self.allowed_lateness.0,
        }
    }

    /// The longest lateness of any record kind.
    pub fn max_lateness(&self) -> i64 {
        self.lateness_for(true).max(self.allowed_lateness.0)
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            allowed_lateness: Secs(6 * 3600),
            roaming_allowed_lateness: None,
            max_future_skew: Secs(3600),
            dedup_horizon: Secs(24 * 3600),
            max_window: Secs(35 * 86_400),
            distinct_horizon: Secs(72 * 3600),
            invoice_overdue_days: vec![7, 15, 30],
            ledger_history: Secs(90 * 86_400),
            calling_numbers: CallingNumbers::International,
            track_imei: false,
            max_edges_per_entity: 16,
            max_call_duration: Secs(86_400),
        }
    }
}

/// Every problem in a config, one per line, each with its key path.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

/// Keys of `have` that `schema` does not know, with their paths. A table empty in the schema (a map
/// such as `kafka.options` or `webhook.urls`, an optional section) takes any key.
fn unknown_keys(
    have: &toml::Table,
    schema: &toml::Table,
    path: &str,
    errs: &mut Vec<String>,
    sections: &mut std::collections::BTreeSet<String>,
) {
    for (k, v) in have {
        let full = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match (schema.get(k), v) {
            (None, _) => {
                errs.push(format!("unknown key `{full}`"));
                sections.insert(full.split('.').next().unwrap_or("").to_string());
            }
            (Some(toml::Value::Table(s)), toml::Value::Table(t)) if !s.is_empty() => {
                unknown_keys(t, s, &full, errs, sections)
            }
            _ => {}
        }
    }
}

impl Config {
    /// Reads and validates a config file; `None` gives the defaults (validated too).
    pub fn load(path: Option<&Path>) -> anyhow::Result<(Config, PathBuf)> {
        let (cfg, base) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                let cfg = Config::parse(&text).map_err(|es| {
                    anyhow::anyhow!(
                        "{}: invalid configuration:\n  {}",
                        p.display(),
                        es.join("\n  ")
                    )
                })?;
                (cfg, p.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (Config::default(), PathBuf::new()),
        };
        cfg.validate()?;
        let mut cfg = cfg;
        if let Some(p) = &cfg.input.exchange_rates {
            cfg.rates = Rates::load(&base.join(p))?;
        }
        if let Some(p) = &cfg.input.unrated_costs {
            cfg.costs = std::sync::Arc::new(CostTable::load(&base.join(p))?);
        }
        Ok((cfg, base))
    }

    /// Reads a config file's text. Every problem is reported, not only the first serde meets: all
    /// unknown keys (a typo must not fall back to a default in silence), and one error per section
    /// whose values do not fit.
    pub fn parse(text: &str) -> Result<Config, Vec<String>> {
        let first = match toml::from_str::<Config>(text) {
            Ok(c) => return Ok(c),
            Err(e) => e.to_string(),
        };
        // A syntax error: nothing more can be read.
        let Ok(table) = text.parse::<toml::Table>() else {
            return Err(vec![first]);
        };
        let mut schema = Config::default();
        schema.kafka.tls = Some(Default::default());
        schema.kafka.sasl = Some(Default::default());
        let schema = toml::Table::try_from(&schema).expect("the defaults serialize");
        let mut errs = Vec::new();
        let mut unknown_in = std::collections::BTreeSet::new();
        unknown_keys(&table, &schema, "", &mut errs, &mut unknown_in);
        for (section, value) in &table {
            if unknown_in.contains(section.as_str()) {
                continue;
            }
            // Each key of the section alone, so that the message can name it.
            let keys: Vec<(String, toml::Value)> = match value {
                toml::Value::Table(t) => t
                    .iter()
                    .map(|(k, v)| {
                        let one = toml::Table::from_iter([(k.clone(), v.clone())]);
                        (format!("{section}.{k}"), toml::Value::Table(one))
                    })
                    .collect(),
                other => vec![(section.clone(), other.clone())],
            };
            for (name, v) in keys {
                let one = toml::Table::from_iter([(section.clone(), v)]);
                if let Err(e) = one.try_into::<Config>() {
                    errs.push(format!("{name}: {}", e.message().trim()));
                }
            }
        }
        if errs.is_empty() {
            errs.push(first);
        }
        Err(errs)
    }

    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        if self.input.dead_letter_file_max_mib == 0 {
            errs.push("input.dead_letter_file_max_mib: at least 1".into());
        }
        if self.input.max_record_bytes < 256 {
            errs.push(format!(
                "input.max_record_bytes: {} is too small (at least 256)",
                self.input.max_record_bytes
            ));
        }
        if self.input.currency.len() != 3
            || !self.input.currency.bytes().all(|b| b.is_ascii_alphabetic())
        {
            errs.push(format!(
                "input.currency: {:?} is not an ISO 4217 code",
                self.input.currency
            ));
        }
        let d = &self.durability;
        for k in d.store_options.keys() {
            let k = k.to_ascii_lowercase();
            let secret = k.contains("secret")
                || k.contains("customer_key")
                || matches!(
                    k.as_str(),
                    "aws_session_token" | "aws_token" | "session_token" | "token"
                );
            if secret {
                errs.push(format!(
                    "durability.store_options.{k}: secrets are not read from the configuration file; set them in the environment (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or use the instance's role"
                ));
            }
        }
        if !d.dir.is_empty() && d.snapshot_interval.0 < 1 {
            errs.push("durability.snapshot_interval: must be at least 1s".to_string());
        }
        if d.rebuild_window.0 < 0 {
            errs.push("durability.rebuild_window: must not be negative".to_string());
        }
        let internal = self.state.calling_numbers != CallingNumbers::Off
            || crate::record::Input::ALL
                .iter()
                .any(|&i| self.kafka.keyed_by(i) != KeyedBy::Account);
        if internal && self.kafka.internal_retention.0 < d.rebuild_window.0 {
            errs.push(format!(
                "kafka.internal_retention: at least durability.rebuild_window ({}s): a partition without a usable snapshot is rebuilt from the internal topics",
                d.rebuild_window.0
            ));
        }
        let r = &self.reference;
        if let Err(why) = Number::parse(&r.home_country_code) {
            errs.push(format!(
                "reference.home_country_code: {:?} {why}",
                r.home_country_code
            ));
        } else if r.home_country_code.len() > 3 {
            errs.push(format!(
                "reference.home_country_code: {:?} has more than 3 digits",
                r.home_country_code
            ));
        }
        if let Err(why) = self.numbering_plan().validate() {
            errs.push(why);
        }
        for p in self.foreign_prefixes() {
            if Number::parse(&p).is_err() || !p.starts_with(&r.home_country_code) {
                errs.push(format!(
                    "numbering.foreign_prefixes: {p:?} must be E.164 digits starting with the home country code {:?}",
                    r.home_country_code
                ));
            }
        }
        if r.off_hours.iter().any(|&h| h > 23) {
            errs.push(format!(
                "reference.off_hours: {:?} must be hours 0..=23",
                r.off_hours
            ));
        }
        let s = &self.state;
        let min_window = 600;
        if s.max_window.0 < min_window {
            errs.push("state.max_window: must be at least 10m".into());
        }
        if s.distinct_horizon.0 < min_window || s.distinct_horizon.0 > s.max_window.0 {
            errs.push("state.distinct_horizon: must be between 10m and state.max_window".into());
        }
        if s.allowed_lateness.0 < 0 || s.allowed_lateness.0 > s.max_window.0 {
            errs.push("state.allowed_lateness: must be between 0s and state.max_window".into());
        }
        if s.max_future_skew.0 < 0 {
            errs.push("state.max_future_skew: must not be negative".into());
        }
        if s.max_edges_per_entity == 0 {
            errs.push("state.max_edges_per_entity: at least 1".into());
        }
        if s.max_call_duration.0 <= 0 {
            errs.push("state.max_call_duration: must be positive".into());
        }
        if let Some(r) = s.roaming_allowed_lateness {
            if r.0 < 0 || r.0 > s.max_window.0 {
                errs.push(
                    "state.roaming_allowed_lateness: must be between 0s and state.max_window"
                        .into(),
                );
            } else if r.0 > s.dedup_horizon.0 {
                errs.push(format!(
                    "state.roaming_allowed_lateness: {} is longer than state.dedup_horizon ({}): a roaming record accepted that late could repeat one no longer remembered; raise the horizon",
                    format_duration(r.0),
                    format_duration(s.dedup_horizon.0)
                ));
            }
        }
        if s.dedup_horizon.0 <= 0 {
            errs.push("state.dedup_horizon: must be positive".into());
        }
        if s.invoice_overdue_days.iter().any(|&d| d > 365) {
            errs.push("state.invoice_overdue_days: at most 365 days".into());
        }
        let r = &self.rules;
        if !(0.0..=1.0).contains(&r.quarantine_error_rate)
            || r.quarantine_window == 0
            || r.quarantine_cooldown.0 < 1
        {
            errs.push("rules: quarantine_error_rate 0..=1, quarantine_window at least 1, quarantine_cooldown at least 1s".into());
        }
        if self.rules.quarantine_after == 0 {
            errs.push("rules.quarantine_after: at least 1".into());
        }
        if self.rules.watch_interval.0 <= 0 {
            errs.push("rules.watch_interval: must be positive".into());
        }
        for key in self.kafka.options.keys() {
            if OWNED_KAFKA_OPTIONS.contains(&key.as_str()) {
                errs.push(format!(
                    "kafka.options.{key}: set by cdrguard (use the typed setting, e.g. kafka.brokers, kafka.group_id, kafka.start_from, kafka.tls, kafka.sasl)"
                ));
            }
            if SECRET_KAFKA_OPTIONS.contains(&key.as_str()) {
                errs.push(format!(
                    "kafka.options.{key}: a secret in the configuration file is refused; use kafka.sasl.password_file or kafka.sasl.password_env"
                ));
            }
            if key == "group.instance.id" {
                // A static member keeps its generation across restarts, so a zombie and its
                // replacement would write one generation's checkpoints (`durability::layout`).
                errs.push(format!(
                    "kafka.options.{key}: static group membership is not supported: checkpoint ownership is fenced by the group generation, which a static member keeps across restarts"
                ));
            }
        }
        errs.extend(self.kafka.security_problems());
        let w = &self.webhook;
        for (dept, url) in &w.urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                errs.push(format!(
                    "webhook.urls.{dept}: {url:?} is not an http:// or https:// URL"
                ));
            }
        }
        if w.timeout.0 < 1 || w.queue == 0 || !(1..=64).contains(&w.concurrency) {
            errs.push("webhook: timeout at least 1s, queue at least 1, concurrency 1..=64".into());
        }
        if w.max_backoff.0 < 1 {
            errs.push("webhook.max_backoff: at least 1s".into());
        }
        let k = &self.kafka;
        for (name, topic) in [
            ("kafka.usage_topic", k.usage_topic.as_str()),
            ("kafka.events_topic", k.events_topic.as_str()),
        ]
        .into_iter()
        .chain(k.output_topics())
        .chain([("kafka.shadow_topic", k.shadow_topic.as_str())])
        {
            if topic.is_empty()
                || !topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                errs.push(format!("{name}: {topic:?} is not a valid topic name"));
            }
        }
        if k.usage_topic == k.events_topic {
            errs.push("kafka.events_topic: must differ from kafka.usage_topic".into());
        }
        // Shadow alerts reach no department: not through a topic a department or the pipeline reads.
        for (name, topic) in [
            ("kafka.usage_topic", k.usage_topic.as_str()),
            ("kafka.events_topic", k.events_topic.as_str()),
        ]
        .into_iter()
        .chain(k.output_topics())
        {
            if topic == k.shadow_topic {
                errs.push(format!(
                    "kafka.shadow_topic: {topic:?} is also {name}; shadow alerts need a topic of their own"
                ));
            }
        }
        if !k.feedback_topic.is_empty() {
            if !k
                .feedback_topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                errs.push(format!(
                    "kafka.feedback_topic: {:?} is not a valid topic name",
                    k.feedback_topic
                ));
            }
            for (name, topic) in [
                ("kafka.usage_topic", k.usage_topic.as_str()),
                ("kafka.events_topic", k.events_topic.as_str()),
                ("kafka.shadow_topic", k.shadow_topic.as_str()),
            ]
            .into_iter()
            .chain(k.output_topics())
            {
                if topic == k.feedback_topic {
                    errs.push(format!(
                        "kafka.feedback_topic: {topic:?} is also {name}; decisions need a topic of their own"
                    ));
                }
            }
        }
        if !(1..=64).contains(&self.daemon.workers) {
            errs.push("daemon.workers: 1..=64".into());
        }
        if self.daemon.align_wait.0 < 0 {
            errs.push("daemon.align_wait: must not be negative".into());
        }
        if !(1..=100_000).contains(&self.daemon.poll_batch) {
            errs.push("daemon.poll_batch: 1..=100000".into());
        }
        if self.daemon.max_read_ahead_mib < 16 {
            errs.push("daemon.max_read_ahead_mib: at least 16".into());
        }
        if !self.daemon.metrics_address.is_empty()
            && self
                .daemon
                .metrics_address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            errs.push(format!(
                "daemon.metrics_address: {:?} is not host:port",
                self.daemon.metrics_address
            ));
        }
        if self.demo.rate == 0 || !(1..=256).contains(&self.demo.partitions) {
            errs.push("demo.rate must be positive and demo.partitions 1..=256".into());
        }
        let sb = &self.rules.sandbox;
        if sb.max_operations == 0
            || sb.max_call_levels == 0
            || sb.max_expr_depth == 0
            || sb.max_eval_ms == 0
        {
            errs.push(
                "rules.sandbox: limits must be positive (0 would mean unlimited in Rhai)".into(),
            );
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    pub fn decoder(&self) -> Decoder {
        Decoder {
            max_record_bytes: self.input.max_record_bytes,
            currency: self.input.currency.to_ascii_uppercase(),
            numbering: self.numbering_plan(),
            rates: self.rates.clone(),
            costs: self.costs.clone(),
        }
    }

    pub fn numbering_plan(&self) -> Numbering {
        Numbering {
            country_code: self.reference.home_country_code.clone(),
            international_prefixes: self.numbering.international_prefixes.clone(),
            trunk_prefix: self.numbering.trunk_prefix.clone(),
            min_international_digits: self.reference.min_international_digits,
        }
    }

    /// `numbering.foreign_prefixes`, or its default for the home country code.
    pub fn foreign_prefixes(&self) -> Vec<String> {
        match &self.numbering.foreign_prefixes {
            Some(p) => p.clone(),
            None if self.reference.home_country_code == "1" => NANP_FOREIGN_PREFIXES
                .iter()
                .map(|p| p.to_string())
                .collect(),
            None => Vec::new(),
        }
    }

    /// Builds the classifier, loading the prefix list relative to `base`.
    pub fn classifier(&self, base: &Path) -> anyhow::Result<Classifier> {
        let r = &self.reference;
        let list = match &r.high_risk_prefixes {
            Some(p) => PrefixList::load(&base.join(p))?,
            None if Path::new(DEFAULT_HIGH_RISK_PREFIXES).exists() => {
                tracing::debug!(
                    path = DEFAULT_HIGH_RISK_PREFIXES,
                    "Loading the high-risk prefix list."
                );
                PrefixList::load(Path::new(DEFAULT_HIGH_RISK_PREFIXES))?
            }
            None => {
                // Run from elsewhere (an installed binary): the list shipped with this build.
                tracing::info!("No {DEFAULT_HIGH_RISK_PREFIXES} here; using the high-risk prefix list built into cdrguard.");
                PrefixList::parse(
                    BUILTIN_HIGH_RISK_PREFIXES,
                    "(built-in high_risk_prefixes.txt)",
                )?
            }
        };
        let mut c = Classifier::new(
            Number::parse(&r.home_country_code).map_err(anyhow::Error::msg)?,
            list,
        );
        for p in self.foreign_prefixes() {
            c.foreign
                .insert(Number::parse(&p).map_err(anyhow::Error::msg)?, true);
        }
        c.numbering = self.numbering_plan();
        c.off_hours = (r.off_hours[0], r.off_hours[1]);
        c.short_call_s = r.short_call_s;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_rejected() {
        Config::default().validate().unwrap();
        let e = toml::from_str::<Config>("[state]\nallowed_latenes = \"1h\"\n").unwrap_err();
        assert!(
            e.to_string().contains("unknown field `allowed_latenes`"),
            "{e}"
        );
        let c: Config = toml::from_str("[state]\nallowed_lateness = \"4h\"\n").unwrap();
        assert_eq!(c.state.allowed_lateness, Secs(4 * 3600));
        let e = toml::from_str::<Config>("[state]\nallowed_lateness = \"4 hours\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
    }

    #[test]
    fn parse_reports_every_unknown_key_and_every_bad_section() {
        let text = "[state]\nallowed_latenes = \"1h\"\n[daemon]\nworkers = \"two\"\nmetrics_adress = \"\"\n[input]\ncurrency = 3\n[kafka.options]\n\"client.rack\" = \"a\"\n[webhook.urls]\nFRAUD = \"http://x.example\"\n[kafka.tls]\nca = \"ca.pem\"\n";
        let errs = Config::parse(text).unwrap_err();
        assert_eq!(
            errs[..2],
            [
                "unknown key `daemon.metrics_adress`",
                "unknown key `state.allowed_latenes`"
            ]
        );
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[2].starts_with("input.currency: invalid type: integer `3`"),
            "{errs:#?}"
        );
        let ok = Config::parse(
            "[kafka.options]\n\"client.rack\" = \"a\"\n[kafka.tls]\nca = \"ca.pem\"\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn the_shadow_topic_is_no_department_topic() {
        let mut c = Config::default();
        c.kafka.shadow_topic = c.kafka.alert_topics.fraud.clone();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("kafka.shadow_topic") && e.contains("kafka.alert_topics.FRAUD"),
            "{e}"
        );
    }

    #[test]
    fn roaming_lateness_needs_a_dedup_horizon_as_long() {
        let c = Config::parse("[state]\nroaming_allowed_lateness = \"36h\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("longer than state.dedup_horizon"), "{e}");
        let c =
            Config::parse("[state]\nroaming_allowed_lateness = \"36h\"\ndedup_horizon = \"36h\"\n")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(
            (c.state.lateness_for(true), c.state.lateness_for(false)),
            (36 * 3600, 6 * 3600)
        );
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut c = Config::default();
        c.input.currency = "euro".into();
        c.reference.home_country_code = "+33".into();
        c.state.distinct_horizon = Secs(60);
        let e = c.validate().unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(e.to_string().contains("reference.home_country_code"));
    }
}
