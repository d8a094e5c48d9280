//! `replay --feedback FILE`: analysts' decisions (`alert::feedback`) in a back-test.
//!
//! A replay cannot know when an analyst would have read an alert, so each decision is applied at
//! the soonest it could have been: right after the record that raised the alert it names. A snooze
//! then holds back that (rule, entity) for the rest of its span, and the back-test shows what the
//! desk would have seen with it. Applying at the alert, not at a wall-clock time, keeps the result
//! the same for any batch size or machine. A decision naming an alert the replay never raised is
//! dead-lettered (`unknown_alert`) at the end; a malformed one at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ahash::AHashMap;
use anyhow::Context;

use crate::alert::feedback::{self, Feedback};
use crate::alert::memory::Judged;
use crate::pipeline::Pipeline;
use crate::record::Reject;
use crate::sink::{Origin, Outputs, Rejected};

/// What became of the decisions of one file.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FeedbackReport {
    pub file: PathBuf,
    /// Non-blank lines read.
    pub read: u64,
    pub applied: u64,
    /// The same decision again (already applied).
    pub again: u64,
    /// Dead-lettered: naming no alert of the replay.
    pub unknown_alert: u64,
    /// Dead-lettered: not a decision.
    pub malformed: u64,
    /// Applied decisions by rule, then disposition.
    pub by_rule: BTreeMap<String, BTreeMap<&'static str, u64>>,
}

impl FeedbackReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "  feedback            {} decisions from {}: {} applied, {} again, {} unknown alert, {} malformed\n",
            self.read,
            self.file.display(),
            self.applied,
            self.again,
            self.unknown_alert,
            self.malformed
        );
        for (rule, by) in &self.by_rule {
            let parts: Vec<String> = by.iter().map(|(d, n)| format!("{d} {n}")).collect();
            s += &format!("    {rule}: {}\n", parts.join(", "));
        }
        s
    }
}

/// Decisions waiting for the alert they name.
pub struct FeedbackFile {
    source: String,
    /// Alert id → (line, raw line, decision), in file order.
    pending: AHashMap<u128, Vec<(u64, Vec<u8>, Feedback)>>,
    pub report: FeedbackReport,
}

fn dead_letter(
    outputs: &mut Outputs<'_>,
    source: &str,
    line: u64,
    raw: &[u8],
    reject: &Reject,
) -> anyhow::Result<()> {
    let r = Rejected {
        source,
        partition: None,
        position: line,
        key: &[],
        raw,
        truncated: 0,
        reject,
    };
    match outputs.reject(&r, Origin::Untracked).pop() {
        Some((_, e)) => Err(e).context("writing the dead-letter file"),
        None => Ok(()),
    }
}

impl FeedbackFile {
    /// Reads every decision of `path`; the malformed ones go to the dead letters at once.
    pub fn load(path: &Path, outputs: &mut Outputs<'_>) -> anyhow::Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let source = path.display().to_string();
        let mut f = FeedbackFile {
            source: source.clone(),
            pending: AHashMap::new(),
            report: FeedbackReport {
                file: path.to_path_buf(),
                ..Default::default()
            },
        };
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            f.report.read += 1;
            let line = i as u64 + 1;
            match feedback::decode(raw) {
                Ok(d) => f
                    .pending
                    .entry(d.alert_id)
                    .or_default()
                    .push((line, raw.to_vec(), d)),
                Err(reject) => {
                    f.report.malformed += 1;
                    dead_letter(outputs, &source, line, raw, &reject)?;
                }
            }
        }
        Ok(f)
    }

    /// Applies the decisions naming `alert_id`, just raised by `pipeline`.
    pub fn on_alert(&mut self, pipeline: &mut Pipeline, alert_id: u128) {
        let Some(decisions) = self.pending.remove(&alert_id) else {
            return;
        };
        for (line, raw, d) in decisions {
            match pipeline.judge(&d) {
                Judged::Applied { rule } => {
                    self.report.applied += 1;
                    *self
                        .report
                        .by_rule
                        .entry(rule)
                        .or_default()
                        .entry(d.disposition.as_str())
                        .or_default() += 1;
                }
                Judged::Again => self.report.again += 1,
                // Raised a moment ago, so known; were it not, it ends as a dead letter.
                Judged::Unknown => self
                    .pending
                    .entry(alert_id)
                    .or_default()
                    .push((line, raw, d)),
            }
        }
    }

    /// Dead-letters the decisions whose alert never came, in file order.
    pub fn finish(mut self, outputs: &mut Outputs<'_>) -> anyhow::Result<FeedbackReport> {
        let mut left: Vec<(u64, Vec<u8>, Feedback)> =
            self.pending.drain().flat_map(|(_, v)| v).collect();
        left.sort_by_key(|(line, _, _)| *line);
        for (line, raw, d) in left {
            self.report.unknown_alert += 1;
            dead_letter(outputs, &self.source, line, &raw, &feedback::unknown(&d))?;
        }
        Ok(self.report)
    }
}
