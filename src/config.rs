//! Configuration file (TOML). Every field is optional with a documented default; unknown keys are an
//! error (a typo must not silently fall back to a default); `validate` reports every problem at once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::classify::{Classifier, PrefixList};
use crate::record::time::{format_duration, parse_duration};
use crate::record::{Decoder, Number};

pub const DEFAULT_HIGH_RISK_PREFIXES: &str = "rules/lists/high_risk_prefixes.txt";
const BUILTIN_HIGH_RISK_PREFIXES: &str = include_str!("../rules/lists/high_risk_prefixes.txt");

/// A length of time written as `20s`, `10m`, `6h`, `35d` or `2w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub i64);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Span)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Span {
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
    /// Window state, lateness, de-duplication and timers.
    pub state: StateConfig,
    /// The rule library and the sandbox its scripts run in.
    pub rules: RulesConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// The rule library folder (scripts, `params.toml`, `lists/`). Relative paths are resolved from
    /// the config file's folder. Default `rules` in the working directory.
    pub dir: Option<PathBuf>,
    /// A rule that fails this many times (limits, runtime errors, bad verdicts) is quarantined until
    /// the next reload. Default 50.
    pub quarantine_after: u64,
    /// How often the library folder is checked for changes when watching. Default `2s`.
    pub watch_interval: Span,
    /// Per-evaluation limits of the Rhai sandbox.
    pub sandbox: crate::rules::SandboxLimits,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: None,
            quarantine_after: 50,
            watch_interval: Span(2),
            sandbox: Default::default(),
        }
    }
}

/// The rule library folder used when neither `--rules` nor `rules.dir` names one.
pub const DEFAULT_RULES_DIR: &str = "rules";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Largest accepted record in bytes; larger ones are dead-lettered as `oversized`. Default 65536.
    pub max_record_bytes: usize,
    /// ISO 4217 code charges and payments must be in when they name a currency. Default `EUR`.
    pub currency: String,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            max_record_bytes: 64 * 1024,
            currency: "EUR".into(),
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
    /// Numbers shorter than this are short codes and never international. Default 7.
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
    pub allowed_lateness: Span,
    /// Usage stamped more than this after the real time now is rejected as `future` (a broken
    /// producer clock; a local time written with `Z`). Default `1h`.
    pub max_future_skew: Span,
    /// Record ids are remembered at least this long (event time) to drop redeliveries. Default `24h`.
    pub dedup_horizon: Span,
    /// The longest window any feature can ask for; older buckets are dropped, and entities idle this
    /// long are evicted. Default `35d`.
    pub max_window: Span,
    /// Distinct-count features (distinct numbers, cells) can look back this far. Default `72h`.
    pub distinct_horizon: Span,
    /// Days after an invoice's due date at which an overdue timer fires. Default `[7, 15, 30]`.
    pub invoice_overdue_days: Vec<u16>,
    /// Keep paid invoices, payments and reversals this long for payment-behaviour features. Default `90d`.
    pub ledger_history: Span,
    /// Calling numbers with state of their own: `off`, `international` (default) or `all`.
    pub calling_numbers: CallingNumbers,
    /// Keep state per IMEI (device) as well. Default false: no shipped rule needs it and it doubles state.
    pub track_imei: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            allowed_lateness: Span(6 * 3600),
            max_future_skew: Span(3600),
            dedup_horizon: Span(24 * 3600),
            max_window: Span(35 * 86_400),
            distinct_horizon: Span(72 * 3600),
            invoice_overdue_days: vec![7, 15, 30],
            ledger_history: Span(90 * 86_400),
            calling_numbers: CallingNumbers::International,
            track_imei: false,
        }
    }
}

/// Every problem in a config, one per line, each with its key path.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

impl Config {
    /// Reads and validates a config file; `None` gives the defaults (validated too).
    pub fn load(path: Option<&Path>) -> anyhow::Result<(Config, PathBuf)> {
        let (cfg, base) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                let cfg: Config =
                    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                (cfg, p.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (Config::default(), PathBuf::new()),
        };
        cfg.validate()?;
        Ok((cfg, base))
    }

    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
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
        if s.dedup_horizon.0 <= 0 {
            errs.push("state.dedup_horizon: must be positive".into());
        }
        if s.invoice_overdue_days.iter().any(|&d| d > 365) {
            errs.push("state.invoice_overdue_days: at most 365 days".into());
        }
        if self.rules.quarantine_after == 0 {
            errs.push("rules.quarantine_after: at least 1".into());
        }
        if self.rules.watch_interval.0 <= 0 {
            errs.push("rules.watch_interval: must be positive".into());
        }
        let sb = &self.rules.sandbox;
        if sb.max_operations == 0 || sb.max_call_levels == 0 || sb.max_expr_depth == 0 {
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
        c.min_international_digits = r.min_international_digits;
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
        assert_eq!(c.state.allowed_lateness, Span(4 * 3600));
        let e = toml::from_str::<Config>("[state]\nallowed_lateness = \"4 hours\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut c = Config::default();
        c.input.currency = "euro".into();
        c.reference.home_country_code = "+33".into();
        c.state.distinct_horizon = Span(60);
        let e = c.validate().unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(e.to_string().contains("reference.home_country_code"));
    }
}
