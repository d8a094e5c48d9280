//! Exchange rates: a charge in another currency made one in the deployment's.
//!
//! TAP and NRTRDE records price roaming in SDR (`XDR`) or the visited network's currency; with one
//! `input.currency`, each such record was dead-lettered and every charge rule was blind to exactly
//! the traffic roaming fraud lives in. A rate table (`input.exchange_rates`) converts them at decode;
//! the amount as priced stays on the record and in the alert's evidence (`original_charge`).
//!
//! The table is a text file, one rate per line: `CURRENCY,RATE[,FROM]` — `RATE` deployment units
//! per one unit of `CURRENCY` (a decimal of up to 6 places), `FROM` the date (UTC) from which it
//! holds, absent meaning always; `#` comments. A record takes the rate in force on its event date,
//! so a replay converts as the live run did once the table holds the rates of the days replayed.
//! The daemon reloads the file when it changes (`Rates::reload_if_changed`); a broken file is
//! reported and the rates in force are kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use ahash::AHashMap;
use compact_str::CompactString;

use super::money::MICROS;
use super::{Date, Money};

/// Rates by currency, each sorted by the day it holds from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RateTable {
    by_currency: AHashMap<CompactString, Vec<(i64, i64)>>,
}

impl RateTable {
    /// Parses the file format; every bad line is reported with its number.
    pub fn parse(text: &str, path: &str) -> Result<Self, Vec<String>> {
        let mut t = RateTable::default();
        let mut errs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let body = line.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let fields: Vec<&str> = body.split(',').map(str::trim).collect();
            let bad = |why: String| format!("{path}:{}: {why}", i + 1);
            let (code, rate, from) = match fields.as_slice() {
                [c, r] => (*c, *r, None),
                [c, r, f] => (*c, *r, Some(*f)),
                _ => {
                    errs.push(bad(format!("{body:?}: expected CURRENCY,RATE[,FROM]")));
                    continue;
                }
            };
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
                errs.push(bad(format!("{code:?} is not an ISO 4217 code")));
                continue;
            }
            let rate = match Money::parse(rate) {
                Ok(r) if r.micros() > 0 => r.micros(),
                Ok(_) => {
                    errs.push(bad(format!("rate {rate} must be positive")));
                    continue;
                }
                Err(why) => {
                    errs.push(bad(format!("rate {rate:?}: {why}")));
                    continue;
                }
            };
            let from = match from.map(Date::parse) {
                None => i64::MIN,
                Some(Ok(d)) => d.0 as i64 * 86_400,
                Some(Err(why)) => {
                    errs.push(bad(format!("date {:?}: {why}", from.unwrap_or(""))));
                    continue;
                }
            };
            let list = t
                .by_currency
                .entry(code.to_ascii_uppercase().into())
                .or_default();
            if list.iter().any(|&(f, _)| f == from) {
                errs.push(bad(format!("a second rate for {code} from the same date")));
                continue;
            }
            list.push((from, rate));
            list.sort_unstable();
        }
        if errs.is_empty() {
            Ok(t)
        } else {
            Err(errs)
        }
    }

    /// `amount` in `currency` at event time `at`, in the deployment currency (rounded half away
    /// from zero to the micro-unit); `None` when the table has no rate for it then.
    pub fn convert(&self, amount: Money, currency: &str, at: i64) -> Option<Money> {
        let list = self
            .by_currency
            .get(currency.to_ascii_uppercase().as_str())?;
        let i = list.partition_point(|&(from, _)| from <= at);
        let rate = list.get(i.checked_sub(1)?)?.1;
        let exact = amount.micros() as i128 * rate as i128;
        let half = MICROS as i128 / 2;
        let rounded = if exact >= 0 {
            (exact + half) / MICROS as i128
        } else {
            (exact - half) / MICROS as i128
        };
        i64::try_from(rounded).ok().map(Money)
    }

    pub fn len(&self) -> usize {
        self.by_currency.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_currency.is_empty()
    }
}

/// The file a table was read from, and its modification time then.
type Source = Option<(PathBuf, Option<SystemTime>)>;

/// The table in force, shared by every decoder of a process; swapped whole on reload.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    table: Arc<RwLock<Arc<RateTable>>>,
    source: Arc<Mutex<Source>>,
}

impl Rates {
    /// Loads the table from `path` (and remembers it for reloads).
    pub fn load(path: &Path) -> anyhow::Result<Rates> {
        let rates = Rates::default();
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        rates.set(read(path)?);
        *rates.source.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((path.to_path_buf(), modified));
        Ok(rates)
    }

    pub fn get(&self) -> Arc<RateTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, t: RateTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
    }

    /// Reads the file again if it changed since it was last read: `Ok(Some(rates))` when the new
    /// table is in force, `Err` (the old one kept) when the file is broken or gone.
    pub fn reload_if_changed(&self) -> anyhow::Result<Option<usize>> {
        let mut source = self.source.lock().unwrap_or_else(|e| e.into_inner());
        let Some((path, seen)) = source.as_mut() else {
            return Ok(None);
        };
        let modified = std::fs::metadata(&*path).and_then(|m| m.modified()).ok();
        if modified == *seen {
            return Ok(None);
        }
        *seen = modified;
        let table = read(path)?;
        let n = table.len();
        self.set(table);
        Ok(Some(n))
    }
}

fn read(path: &Path) -> anyhow::Result<RateTable> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    RateTable::parse(&text, &path.display().to_string())
        .map_err(|errs| anyhow::anyhow!("invalid exchange rates:\n  {}", errs.join("\n  ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_in_force_on_the_event_date_converts() {
        let t = RateTable::parse(
            "# SDR and a visited network's currency\nXDR,1.20\nXDR, 1.25, 2026-11-15\nusd,0.92\n",
            "rates.csv",
        )
        .unwrap();
        let day = |d: &str| Date::parse(d).unwrap().0 as i64 * 86_400;
        let xdr = Money::parse("90.00").unwrap();
        assert_eq!(
            t.convert(xdr, "XDR", day("2026-11-14") + 3600),
            Some(Money::parse("108").unwrap())
        );
        assert_eq!(
            t.convert(xdr, "xdr", day("2026-11-15")),
            Some(Money::parse("112.5").unwrap())
        );
        assert_eq!(
            t.convert(Money::parse("0.000001").unwrap(), "USD", 0),
            Some(Money(1)),
            "rounded half away from zero"
        );
        assert_eq!(t.convert(xdr, "GBP", 0), None);
    }

    #[test]
    fn a_changed_file_is_put_in_force_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rates.csv");
        std::fs::write(&path, "XDR,1.20\n").unwrap();
        let rates = Rates::load(&path).unwrap();
        let shared = rates.clone();
        let xdr = Money::from_units(10);
        assert_eq!(
            shared.get().convert(xdr, "XDR", 0),
            Some(Money::from_units(12))
        );
        assert_eq!(rates.reload_if_changed().unwrap(), None, "unchanged");
        // A file system with coarse timestamps: make the change visible.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::write(&path, "XDR,1.30\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(rates.reload_if_changed().unwrap(), Some(1));
        assert_eq!(
            shared.get().convert(xdr, "XDR", 0),
            Some(Money::from_units(13))
        );
        std::fs::write(&path, "XDR,abc\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(5))
            .unwrap();
        assert!(rates.reload_if_changed().is_err());
        assert_eq!(
            shared.get().convert(xdr, "XDR", 0),
            Some(Money::from_units(13)),
            "kept"
        );
    }

    #[test]
    fn every_bad_line_is_named() {
        let errs = RateTable::parse(
            "XDR,1.2\nEURO,1\nUSD,-1\nGBP,1.1,2026-13-01\nXDR,1.3\nCHF\n",
            "r.csv",
        )
        .unwrap_err();
        let lines: Vec<&str> = errs.iter().map(|e| e.split(':').nth(1).unwrap()).collect();
        assert_eq!(lines, ["2", "3", "4", "5", "6"], "{errs:#?}");
    }
}
