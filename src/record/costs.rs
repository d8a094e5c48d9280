//! A cost table for unrated records: what a call or message to a destination would cost.
//!
//! MSC records straight from the switch are not rated: they carry no charge, so every rule that
//! reads charges (bill shock, roaming, credit limits, arrears exposure) is blind to them. With
//! `input.unrated_costs`, a record that came without an amount is priced at decode from its
//! destination: the longest listed prefix gives a price per minute (voice, by the second) and per
//! message (SMS). Only what the served line pays is priced: outgoing and forwarded voice and
//! outgoing SMS. A record that states an amount, even zero, is rated and left alone.
//!
//! The file: one entry per line, `PREFIX,PER_MINUTE[,PER_SMS]` (E.164 digits, or `short:DIGITS` for
//! short codes), `#` comments. Read at start.

use std::path::Path;

use ahash::AHashMap;

use super::money::MICROS;
use super::{Direction, Money, Number, NumberKind, RecordType, UsageRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Price {
    per_minute: Money,
    per_sms: Money,
}

/// Prices by (kind, prefix key).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CostTable {
    prices: AHashMap<(bool, u64), Price>,
}

impl CostTable {
    pub fn parse(text: &str, path: &str) -> Result<Self, Vec<String>> {
        let mut t = CostTable::default();
        let mut errs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let body = line.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let bad = |why: String| format!("{path}:{}: {why}", i + 1);
            let fields: Vec<&str> = body.split(',').map(str::trim).collect();
            let (prefix, minute, sms) = match fields.as_slice() {
                [p, m] => (*p, *m, "0"),
                [p, m, s] => (*p, *m, *s),
                _ => {
                    errs.push(bad(format!(
                        "{body:?}: expected PREFIX,PER_MINUTE[,PER_SMS]"
                    )));
                    continue;
                }
            };
            let (short, digits) = match prefix.strip_prefix("short:") {
                Some(d) => (true, d),
                None => (false, prefix),
            };
            let number = match Number::parse(digits) {
                Ok(n) if !n.is_imsi_line() => n,
                Ok(_) | Err(_) => {
                    errs.push(bad(format!("{prefix:?} is not a prefix")));
                    continue;
                }
            };
            let money = |s: &str| Money::parse(s).ok().filter(|m| !m.is_negative());
            let (Some(per_minute), Some(per_sms)) = (money(minute), money(sms)) else {
                errs.push(bad(format!(
                    "prices {minute:?}, {sms:?}: non-negative decimals"
                )));
                continue;
            };
            if t.prices
                .insert(
                    (short, number.key()),
                    Price {
                        per_minute,
                        per_sms,
                    },
                )
                .is_some()
            {
                errs.push(bad(format!("{prefix} listed twice")));
            }
        }
        if errs.is_empty() {
            Ok(t)
        } else {
            Err(errs)
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<CostTable> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        CostTable::parse(&text, &path.display().to_string())
            .map_err(|errs| anyhow::anyhow!("invalid cost table:\n  {}", errs.join("\n  ")))
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// What an unrated record costs the served line; `None` when it pays nothing or the table has
    /// no price for its destination.
    pub fn price(&self, r: &UsageRecord) -> Option<Money> {
        if self.prices.is_empty() {
            return None;
        }
        let outgoing = matches!(
            r.direction,
            Some(Direction::Mo) | Some(Direction::Forwarded)
        ) || r.is_forwarded();
        if !outgoing {
            return None;
        }
        let (n, kind) = r.destination_party()?;
        let short = match kind {
            NumberKind::E164 => false,
            NumberKind::ShortCode => true,
            NumberKind::Alphanumeric | NumberKind::Withheld => return None,
        };
        let price = (1..=n.digits())
            .rev()
            .find_map(|k| self.prices.get(&(short, n.prefix(k).key())))?;
        match r.record_type {
            RecordType::Voice if r.answered => {
                let micros = price.per_minute.micros() as i128 * r.duration_s as i128;
                Some(Money((micros / 60) as i64))
            }
            RecordType::Sms => Some(price.per_sms),
            RecordType::Voice | RecordType::Data => None,
        }
    }
}

const _: () = assert!(MICROS == 1_000_000);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Decoder;

    #[test]
    fn the_longest_prefix_prices_what_the_line_pays() {
        let t = CostTable::parse(
            "# per minute, per SMS\n33,0.05,0.01\n336,0.10\n882,3.00,0.50\nshort:36,0,0.80\n",
            "costs.csv",
        )
        .unwrap();
        let d = Decoder::default();
        let rec = |kind: &str, dir: &str, to: &str, secs: u32| {
            d.usage(format!(r#"{{"record_id":"u","record_type":"{kind}","direction":"{dir}","event_start":"2026-11-10T10:00:00Z","duration_s":{secs},"served":{{"msisdn":"33612345678"}},"other_party":{{"number":"{to}"}}}}"#).as_bytes()).unwrap()
        };
        let price = |r: UsageRecord| t.price(&r).map(|m| m.to_string());
        assert_eq!(
            price(rec("voice", "mo", "33612000000", 90)),
            Some("0.15".into())
        );
        assert_eq!(
            price(rec("voice", "mo", "33140000000", 60)),
            Some("0.05".into())
        );
        assert_eq!(
            price(rec("voice", "mo", "88216000111", 20)),
            Some("1.00".into())
        );
        assert_eq!(price(rec("sms", "mo", "36123", 0)), Some("0.80".into()));
        assert_eq!(
            price(rec("sms", "mo", "4479000000", 0)),
            None,
            "no price listed"
        );
        assert_eq!(
            price(rec("voice", "mt", "88216000111", 60)),
            None,
            "received"
        );
        let e = CostTable::parse("33,x\n+44,1\n33,1\n", "c.csv").unwrap_err();
        assert_eq!(e.len(), 2, "{e:#?}");
    }
}
