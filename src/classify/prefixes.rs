//! Longest-prefix match of E.164 numbers against a prefix list (high-risk ranges, whitelists).
//!
//! A digit trie in one flat `Vec`: matching walks at most 15 array slots, ~20 ns, on every record with an
//! other party. A hash set of prefixes would need one lookup per prefix length instead.

use std::path::Path;

use crate::record::Number;

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
            nodes: vec![Node::default()],
            entries: 0,
        }
    }

    /// Parses the list format: one prefix per line, `#` comments, `!prefix` for an exemption.
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
            match Number::parse(digits) {
                Ok(n) => list.insert(n, listed),
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

    pub fn insert(&mut self, prefix: Number, listed: bool) {
        let mut at = 0usize;
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

    /// True when the longest listed prefix of `n` is a listing (not an exemption).
    #[inline]
    pub fn matches(&self, n: Number) -> bool {
        let mut at = 0usize;
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
