//! `params.toml`: rule thresholds, tuned by analysts without touching scripts.
//!
//! ```toml
//! [irsf_high_risk_destination]          # defaults for one rule, by rule id
//! min_calls = 3
//! min_minutes = 10.0
//!
//! [segments.enterprise.irsf_high_risk_destination]   # overrides for one customer segment
//! min_calls = 10
//! ```
//!
//! An override must name a parameter the rule's defaults define (a typo would otherwise silently apply
//! the default). Each rule gets one resolved table per segment at load, so a lookup at run time is a
//! hash probe, not a merge.

use std::collections::BTreeMap;
use std::rc::Rc;

use ahash::AHashMap;
use rhai::Dynamic;

use crate::record::Segment;

use super::api::ParamTable;
use super::param_types::ParamSpec;

pub const SEGMENTS: [Segment; 7] = [
    Segment::Consumer,
    Segment::Smb,
    Segment::Enterprise,
    Segment::Vip,
    Segment::Government,
    Segment::M2m,
    Segment::Test,
];

/// Parameters of every rule, as read from the file.
#[derive(Default)]
pub struct Params {
    defaults: AHashMap<String, toml::Table>,
    overrides: AHashMap<(Segment, String), toml::Table>,
}

/// A params problem: message and the 1-based line it was found on (0 when unknown).
pub struct ParamsError {
    pub line: usize,
    pub message: String,
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(0, |i| i + 1)
}

impl Params {
    pub fn parse(text: &str) -> Result<Params, Vec<ParamsError>> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(0, |s| {
                text[..s.start.min(text.len())].lines().count().max(1)
            });
            vec![ParamsError {
                line,
                message: e.message().to_string(),
            }]
        })?;
        let mut p = Params::default();
        let mut errs = Vec::new();
        for (key, value) in table {
            if key == "segments" {
                let Some(segments) = value.as_table() else {
                    errs.push(ParamsError {
                        line: line_of(text, "segments"),
                        message: "`segments` must be a table of [segments.<segment>.<rule_id>]"
                            .into(),
                    });
                    continue;
                };
                for (seg, rules) in segments {
                    let Some(segment) = SEGMENTS.iter().find(|s| s.as_str() == seg) else {
                        errs.push(ParamsError {
                            line: line_of(text, &format!("segments.{seg}")),
                            message: format!("unknown segment {seg:?} (consumer, smb, enterprise, vip, government, m2m, test)"),
                        });
                        continue;
                    };
                    for (rule, values) in rules.as_table().into_iter().flatten() {
                        match values.as_table() {
                            Some(t) => {
                                p.overrides.insert((*segment, rule.clone()), t.clone());
                            }
                            None => errs.push(ParamsError {
                                line: line_of(text, &format!("segments.{seg}")),
                                message: format!(
                                    "segments.{seg}.{rule} must be a table of parameters"
                                ),
                            }),
                        }
                    }
                }
                continue;
            }
            match value {
                toml::Value::Table(t) => {
                    p.defaults.insert(key, t);
                }
                _ => errs.push(ParamsError {
                    line: line_of(text, &key),
                    message: format!("{key} must be a table [{key}] of one rule's parameters"),
                }),
            }
        }
        if errs.is_empty() {
            Ok(p)
        } else {
            Err(errs)
        }
    }

    /// Rule ids that have parameters (defaults or overrides).
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.defaults
            .keys()
            .map(String::as_str)
            .chain(self.overrides.keys().map(|(_, r)| r.as_str()))
    }

    pub fn defaults_of(&self, rule: &str) -> impl Iterator<Item = &str> {
        self.defaults
            .get(rule)
            .into_iter()
            .flat_map(|t| t.keys().map(String::as_str))
    }

    /// One table per segment (in `SEGMENTS` order) with overrides applied, every value checked
    /// against its declared type (`RULE.params`); errors name the bad keys.
    pub fn resolve(
        &self,
        rule: &str,
        text: &str,
        declared: &BTreeMap<String, ParamSpec>,
    ) -> Result<Vec<Rc<ParamTable>>, Vec<ParamsError>> {
        let empty = toml::Table::new();
        let defaults = self.defaults.get(rule).unwrap_or(&empty);
        let mut errs = Vec::new();
        let typed = |k: &str, v: &toml::Value| -> Result<Dynamic, String> {
            match declared.get(k) {
                Some(spec) => spec.value(v),
                None => Err(format!(
                    "not declared in the rule's RULE.params (declare its type, e.g. {k}: \"float 0..\")"
                )),
            }
        };
        let mut base = AHashMap::new();
        for (k, v) in defaults {
            match typed(k, v) {
                Ok(d) => {
                    base.insert(k.clone(), d);
                }
                Err(m) => errs.push(ParamsError {
                    line: line_of(text, k),
                    message: format!("{rule}.{k}: {m}"),
                }),
            }
        }
        for k in declared.keys().filter(|k| !defaults.contains_key(*k)) {
            errs.push(ParamsError {
                line: line_of(text, &format!("[{rule}]")),
                message: format!(
                    "{rule}.{k}: declared in RULE.params but given no value in [{rule}]"
                ),
            });
        }
        let mut out = Vec::new();
        for seg in SEGMENTS {
            let mut values = base.clone();
            if let Some(over) = self.overrides.get(&(seg, rule.to_string())) {
                for (k, v) in over {
                    let at = line_of(text, &format!("segments.{}.{rule}", seg.as_str()));
                    if !defaults.contains_key(k) {
                        errs.push(ParamsError {
                            line: at,
                            message: format!(
                                "segments.{}.{rule}.{k}: overrides a parameter [{rule}] does not define",
                                seg.as_str()
                            ),
                        });
                        continue;
                    }
                    match typed(k, v) {
                        Ok(d) => {
                            values.insert(k.clone(), d);
                        }
                        Err(m) => errs.push(ParamsError {
                            line: at,
                            message: format!("segments.{}.{rule}.{k}: {m}", seg.as_str()),
                        }),
                    }
                }
            }
            out.push(Rc::new(ParamTable {
                rule_id: rule.to_string(),
                segment: seg.as_str(),
                values,
            }));
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs)
        }
    }
}

/// Which segment's table applies: an account's segment, else consumer.
pub fn segment_index(s: Option<Segment>) -> usize {
    let s = s.unwrap_or_default();
    SEGMENTS.iter().position(|x| *x == s).unwrap_or(0)
}
