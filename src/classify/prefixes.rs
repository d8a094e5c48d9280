//! Longest-prefix match of E.164 numbers against a prefix list (high-risk ranges, whitelists).
//!
//! A digit trie in one flat `Vec`: matching walks at most 15 array slots, ~20 ns, on every record with an
//! other party. A hash set of prefixes would need one lookup per prefix length instead.
//!
//! Short codes have a trie of their own (lines `short:3244`): a premium short code listed as high-risk
//! must not make every number of the country sharing its first digits high-risk, nor a country's
//! prefix every short code starting with its digits (`record::numbering` gives each number its kind).

use std::path::Path;

use crate::record::{Number, NumberKind};

#[derive(Clone, Debug, Default)]
pub struct PrefixList {
    /// Node 0 is the root; `next[d]` is the child for digit d (0 = none).
    nodes: Vec<Node>,
    entries: usize,
}

#[derive(Clone, Debug, Default)]
struct Node {
    next: [u32; 10],
    /// Some(true) listed, Some(false) exempted with `!`, None not an entry.
    mark: Option<bool>,
}

/// A problem in a list file, with its line number.
#[derive(Debug, thiserror::Error)]
#[error("{path}{}: {message}", if *.line > 0 { format!(":{}", .line) } else { String::new() })]
pub struct ListError {
    pub path: String,
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    pub message: String,
}

impl PrefixList {
    pub fn new() -> Self {
        PrefixList {
            nodes: vec![Node::default(), Node::default()],
            entries: 0,
        }
    }

    /// Parses the list format: one prefix per line, `#` comments, `!prefix` for an exemption,
    /// `short:digits` for a short code (exact digits or a prefix of short codes).
    pub fn parse(text: &str, path: &str) -> Result<Self, ListError> {
        Self::parse_all(text, path).map_err(|mut es| es.swap_remove(0))
    }

    /// Like `parse`, with every bad line reported, not only the first.
    pub fn parse_all(text: &str, path: &str) -> Result<Self, Vec<ListError>> {
        let mut list = PrefixList::new();
        let mut errs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let body = line.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let (listed, digits) = match body.strip_prefix('!') {
                Some(d) => (false, d.trim()),
                None => (true, body),
            };
            let (kind, digits) = match digits.strip_prefix("short:") {
                Some(d) => (NumberKind::ShortCode, d.trim()),
                None => (NumberKind::E164, digits),
            };
            match Number::parse(digits) {
                Ok(n) => list.insert_kind(n, kind, listed),
                Err(why) => errs.push(ListError {
                    path: path.into(),
                    line: i + 1,
                    message: format!("{digits:?} is not a prefix: {why}"),
                }),
            }
        }
        if errs.is_empty() {
            Ok(list)
        } else {
            Err(errs)
        }
    }

    pub fn load(path: &Path) -> Result<Self, ListError> {
        let text = std::fs::read_to_string(path).map_err(|e| ListError {
            path: path.display().to_string(),
            line: 0,
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Node 0 is the root of E.164 prefixes, node 1 of short codes (a `Default` list has neither).
    fn root(&self, kind: NumberKind) -> Option<usize> {
        let at = match kind {
            NumberKind::E164 => 0,
            NumberKind::ShortCode => 1,
            NumberKind::Alphanumeric | NumberKind::Withheld => return None,
        };
        (at < self.nodes.len()).then_some(at)
    }

    pub fn insert(&mut self, prefix: Number, listed: bool) {
        self.insert_kind(prefix, NumberKind::E164, listed)
    }

    pub fn insert_kind(&mut self, prefix: Number, kind: NumberKind, listed: bool) {
        if self.nodes.len() < 2 {
            self.nodes.resize(2, Node::default());
        }
        let Some(mut at) = self.root(kind) else {
            return;
        };
        for i in 0..prefix.digits() {
            let d = prefix.digit(i) as usize;
            if self.nodes[at].next[d] == 0 {
                self.nodes.push(Node::default());
                let id = (self.nodes.len() - 1) as u32;
                self.nodes[at].next[d] = id;
            }
            at = self.nodes[at].next[d] as usize;
        }
        if self.nodes[at].mark.is_none() {
            self.entries += 1;
        }
        self.nodes[at].mark = Some(listed);
    }

    /// True when the longest listed E.164 prefix of `n` is a listing (not an exemption).
    #[inline]
    pub fn matches(&self, n: Number) -> bool {
        self.matches_kind(n, NumberKind::E164)
    }

    /// The same among the entries of `n`'s kind: a short code only meets `short:` entries.
    #[inline]
    pub fn matches_kind(&self, n: Number, kind: NumberKind) -> bool {
        // An IMSI's digits are no dialling prefix.
        let Some(mut at) = self.root(kind).filter(|_| !n.is_imsi_line()) else {
            return false;
        };
        let mut verdict = false;
        for i in 0..n.digits() {
            let next = self.nodes[at].next[n.digit(i) as usize];
            if next == 0 {
                break;
            }
            at = next as usize;
            if let Some(m) = self.nodes[at].mark {
                verdict = m;
            }
        }
        verdict
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Number {
        Number::parse(s).unwrap()
    }

    #[test]
    fn longest_prefix_decides() {
        let l =
            PrefixList::parse("# header\n882  # intl networks\n!88213\n8821399\n", "t").unwrap();
        assert_eq!(l.len(), 3);
        assert!(l.matches(n("88216000123")));
        assert!(!l.matches(n("88213000123")), "exempted range");
        assert!(l.matches(n("88213990000")), "listed inside the exemption");
        assert!(!l.matches(n("33612345678")));
        assert!(!l.matches(n("88")), "shorter than every prefix");
    }

    #[test]
    fn short_codes_and_countries_never_meet() {
        let l = PrefixList::parse("32\nshort:3244\n!short:32449\n", "t").unwrap();
        let short = |s| (n(s), NumberKind::ShortCode);
        let e164 = |s| (n(s), NumberKind::E164);
        for ((number, kind), want) in [
            (short("3244"), true),
            (short("32441"), true),
            (short("32449"), false),
            (short("3201"), false),
            (e164("32444123456"), true),
            (e164("3244"), true),
            (e164("33612345678"), false),
        ] {
            assert_eq!(l.matches_kind(number, kind), want, "{number} as {kind}");
        }
        let only_short = PrefixList::parse("short:3244\n", "t").unwrap();
        assert!(
            !only_short.matches(n("32441234567")),
            "a short code is no country prefix"
        );
        assert!(!PrefixList::default().matches_kind(n("3244"), NumberKind::ShortCode));
    }

    #[test]
    fn bad_line_names_its_line() {
        let all = PrefixList::parse_all("882\n+44\n33\nabc\n", "lists/x.txt").unwrap_err();
        assert_eq!(
            all.iter().map(|e| e.line).collect::<Vec<_>>(),
            [2, 4],
            "every bad line"
        );
        let e = PrefixList::parse("882\n+44\n", "lists/x.txt").unwrap_err();
        assert_eq!(
            e.to_string(),
            "lists/x.txt:2: \"+44\" is not a prefix: must be digits without '+'"
        );
    }

    #[test]
    fn shipped_list_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/lists/high_risk_prefixes.txt");
        let l = PrefixList::load(&p).unwrap();
        assert!(l.len() > 30);
        assert!(l.matches(n("88213000123")));
    }
}
