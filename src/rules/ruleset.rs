//! `RuleSet`: a complete, validated, compiled rule library — or the list of everything wrong with it.
//!
//! Built whole or not at all: every script compiled (and its top level run once, where `RULE` is
//! declared), metadata checked, parameters resolved per segment, lists loaded, literal filters and
//! windows in feature calls checked. Any error and the build fails with every problem named as
//! `file:line:column: message`; the caller keeps the set it had. Immutable once built, so swapping
//! sets between two records is atomic by construction.
//!
//! Dispatch is precomputed: a table from each of the 1024 record classes (and each event type and
//! timer kind) to the rules it can trigger, so a record that no rule cares about costs one lookup.

use std::collections::BTreeSet;
use std::fmt;
use std::rc::Rc;

use ahash::AHashMap;
use rhai::{Dynamic, Engine, Scope, AST};

use crate::classify::{is_possible, PrefixList, RecordClass, CLASS_COUNT};
use crate::record::{EntityType, EventType};

use super::api::{self, Lists, ParamTable, Shared};
use super::gate::Gate;
use super::library::RuleSources;
use super::meta::{Resolved, RuleMeta, TimerTrigger, Trigger};
use super::params::{Params, SEGMENTS};
use super::sandbox::{self, SandboxLimits, ScriptError};
use super::{lint, placement};

/// One problem found while building, in the form editors and CI logs understand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Problem {
    /// `file:line:col: <level>: message`, as compilers print diagnostics.
    pub fn with_level(&self, level: &str) -> String {
        format!(
            "{}:{}:{}: {level}: {}",
            self.file,
            self.line.max(1),
            self.column.max(1),
            self.message
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file,
            self.line.max(1),
            self.column.max(1),
            self.message
        )
    }
}

/// A failed build: the errors, and the warnings found along the way.
#[derive(Debug)]
pub struct BuildErrors {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl fmt::Display for BuildErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule library has {} error(s):", self.errors.len())?;
        for p in &self.errors {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BuildErrors {}

/// The name every rule's entry point has, and how many arguments it takes.
pub const ENTRY: &str = "evaluate";
const ENTRY_ARGS: usize = 4;

pub struct Rule {
    pub file: String,
    /// Stable hash of the id (alert memory keys).
    pub id_hash: u64,
    pub resolved: Resolved,
    pub ast: AST,
    /// The script's top-level constants (`RULE`, helpers); rewound after every call.
    pub scope: Scope<'static>,
    /// Resolved parameters per segment, in `params::SEGMENTS` order.
    pub params: Vec<Rc<ParamTable>>,
    /// The script reads the alerts of a calling-number rule (`alerted("wangiri_inbound", …)`): the
    /// daemon runs it beside the calling numbers (`placement`).
    pub reads_callers: bool,
    /// The guards at the top of `evaluate`, evaluated natively before the script (`gate`); `None`
    /// when the script starts otherwise.
    pub gate: Option<Gate>,
}

impl Rule {
    pub fn id(&self) -> &str {
        &self.resolved.meta.id
    }
    pub fn meta(&self) -> &RuleMeta {
        &self.resolved.meta
    }
}

pub struct RuleSet {
    pub version: String,
    pub engine: Engine,
    pub rules: Vec<Rule>,
    pub lists: Lists,
    pub warnings: Vec<Problem>,
    /// Per class: (rule, record predicates it needs). A rule appears once per distinct mask.
    by_class: Vec<Box<[(u16, u8)]>>,
    by_event: AHashMap<EventType, Box<[u16]>>,
    by_timer: Box<[u16]>,
}

impl RuleSet {
    /// Rules a usage record of this class can trigger, each with the record predicates
    /// (`meta::CHARGED`, `meta::LOCATED`) it also needs.
    #[inline]
    pub fn for_class(&self, c: RecordClass) -> &[(u16, u8)] {
        &self.by_class[c.0 as usize]
    }

    pub fn for_event(&self, t: EventType) -> &[u16] {
        self.by_event.get(&t).map_or(&[], |v| v)
    }

    pub fn for_timer(&self) -> &[u16] {
        &self.by_timer
    }

    /// An empty set (no rules), e.g. when no library is configured.
    pub fn empty(limits: &SandboxLimits, shared: &Rc<Shared>) -> RuleSet {
        let sources = RuleSources::new(Default::default(), vec![], None, vec![]);
        RuleSet::build(&sources, limits, shared).expect("an empty library is valid")
    }

    pub fn build(
        sources: &RuleSources,
        limits: &SandboxLimits,
        shared: &Rc<Shared>,
    ) -> Result<RuleSet, BuildErrors> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let problem = |file: &str, line, column, message: String| Problem {
            file: sources.display_path(file),
            line,
            column,
            message,
        };

        // Parameters.
        let params_file = sources.params.as_ref();
        let params_text = params_file.map_or("", |f| f.text.as_str());
        let params_path = params_file.map_or("params.toml", |f| f.path.as_str());
        // A params.toml that does not parse is one error: the "parameter not defined" errors every
        // script's reads would then raise follow from it and are not reported.
        let (params, params_parsed) = match Params::parse(params_text) {
            Ok(p) => (p, true),
            Err(es) => {
                for e in es {
                    errors.push(problem(params_path, e.line, 1, e.message));
                }
                (Params::default(), false)
            }
        };

        // Lists.
        let mut lists = AHashMap::new();
        for f in &sources.lists {
            let name = f
                .path
                .trim_start_matches("lists/")
                .trim_end_matches(".txt")
                .to_string();
            match PrefixList::parse_all(&f.text, &sources.display_path(&f.path)) {
                Ok(l) => {
                    lists.insert(name, l);
                }
                Err(es) => {
                    for e in es {
                        errors.push(problem(&f.path, e.line, 1, e.message));
                    }
                }
            }
        }
        let lists: Lists = Rc::new(lists);

        let mut engine = sandbox::build_engine(limits);
        api::register(&mut engine, shared, lists.clone());
        let known = lint::known_functions(&engine);

        // Scripts.
        let mut rules: Vec<Rule> = Vec::new();
        for f in &sources.scripts {
            let display = sources.display_path(&f.path);
            let stem = f
                .path
                .rsplit('/')
                .next()
                .unwrap_or(&f.path)
                .trim_end_matches(".rhai");
            let (ast, scope) = match sandbox::load(&engine, &display, &f.text) {
                Ok(x) => x,
                Err(ScriptError::Compile {
                    line,
                    column,
                    message,
                    ..
                }) => {
                    errors.push(problem(&f.path, line, column, message));
                    continue;
                }
                Err(e) => {
                    let (line, column) = e.position();
                    errors.push(problem(&f.path, line, column, e.detail()));
                    continue;
                }
            };
            let rule_line = line_of(&f.text, "RULE").unwrap_or(1);
            let Some(meta) = scope.get_value::<Dynamic>("RULE") else {
                errors.push(problem(
                    &f.path,
                    1,
                    1,
                    "no `const RULE = #{ id: ..., ... };` metadata at top level".into(),
                ));
                continue;
            };
            let meta: RuleMeta = match rhai::serde::from_dynamic(&meta) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(problem(&f.path, rule_line, 1, format!("RULE: {e}")));
                    continue;
                }
            };
            let resolved = match meta.resolve(stem) {
                Ok(r) => r,
                Err(es) => {
                    for m in es {
                        errors.push(problem(&f.path, rule_line, 1, m));
                    }
                    continue;
                }
            };
            let entry = ast
                .iter_functions()
                .find(|fun| fun.name == ENTRY)
                .map(|fun| fun.params.iter().map(|p| p.to_string()).collect::<Vec<_>>());
            let entry_line = line_of(&f.text, &format!("fn {ENTRY}")).unwrap_or(1);
            let param_name = match entry {
                None => {
                    errors.push(problem(
                        &f.path,
                        1,
                        1,
                        format!("no `fn {ENTRY}(trigger, entity, acct, params)`"),
                    ));
                    continue;
                }
                Some(ps) if ps.len() != ENTRY_ARGS => {
                    errors.push(problem(
                        &f.path,
                        entry_line,
                        1,
                        format!("`fn {ENTRY}` takes {ENTRY_ARGS} arguments (trigger, entity, acct, params), not {}", ps.len()),
                    ));
                    continue;
                }
                Some(ps) => ps[3].clone(),
            };
            if let Some(other) = rules.iter().find(|r| r.id() == resolved.meta.id) {
                errors.push(problem(
                    &f.path,
                    rule_line,
                    1,
                    format!(
                        "rule id {:?} is also declared by {}",
                        resolved.meta.id, other.file
                    ),
                ));
                continue;
            }

            // Parameters the script reads must exist; parameters nobody reads are a warning.
            let defined: BTreeSet<&str> = params.defaults_of(&resolved.meta.id).collect();
            let mut read = BTreeSet::new();
            for (name, line, column) in param_reads(&f.text, &param_name) {
                if params_parsed && !defined.contains(name.as_str()) {
                    errors.push(problem(
                        &f.path,
                        line,
                        column,
                        format!(
                            "parameter {name:?} is not defined in [{}] of {params_path}",
                            resolved.meta.id
                        ),
                    ));
                }
                read.insert(name);
            }
            for name in defined
                .iter()
                .filter(|n| params_parsed && !read.contains(**n))
            {
                warnings.push(problem(
                    params_path,
                    line_of(params_text, name).unwrap_or(1),
                    1,
                    format!(
                        "parameter {}.{name} is not read by the rule",
                        resolved.meta.id
                    ),
                ));
            }
            for (line, column, message) in literal_problems(&f.text) {
                errors.push(problem(&f.path, line, column, message));
            }
            for found in lint::check(&ast, known, ENTRY, crate::alert::policy::VERDICT_KEYS) {
                let p = found.position;
                errors.push(problem(
                    &f.path,
                    p.line().unwrap_or(1),
                    p.position().unwrap_or(1),
                    found.message,
                ));
            }
            // Declared parameters without a value would all be errors too.
            let declared = if params_parsed {
                resolved.params.clone()
            } else {
                Default::default()
            };
            let tables = match params.resolve(&resolved.meta.id, params_text, &declared) {
                Ok(t) => t,
                Err(es) => {
                    for e in es {
                        errors.push(problem(params_path, e.line, 1, e.message));
                    }
                    continue;
                }
            };
            if !resolved.can_trigger() {
                warnings.push(problem(
                    &f.path,
                    rule_line,
                    1,
                    format!(
                        "rule {} can never run: no record class matches its triggers {:?}",
                        resolved.meta.id, resolved.meta.triggers
                    ),
                ));
            }
            let usage = resolved
                .triggers
                .iter()
                .all(|t| matches!(t, Trigger::Usage(..)));
            let gate = Gate::recognise(
                &ast,
                ENTRY,
                resolved.meta.entity,
                usage,
                limits,
                scope.len(),
            )
            .ok();
            rules.push(Rule {
                gate,
                file: display,
                id_hash: crate::alert::memory::key_hash(&resolved.meta.id),
                resolved,
                ast,
                scope,
                params: tables,
                reads_callers: false,
            });
        }
        place(&mut rules, &mut errors, &mut warnings);
        for id in params.rule_ids().collect::<BTreeSet<_>>() {
            if !rules.iter().any(|r| r.id() == id) && errors.is_empty() {
                errors.push(problem(
                    params_path,
                    line_of(params_text, id).unwrap_or(1),
                    1,
                    format!("parameters for {id:?}, but no rule has that id"),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(BuildErrors { errors, warnings });
        }
        debug_assert_eq!(SEGMENTS.len(), rules.first().map_or(7, |r| r.params.len()));

        let mut by_class = vec![Vec::new(); CLASS_COUNT];
        let mut by_event: AHashMap<EventType, Vec<u16>> = AHashMap::new();
        let mut by_timer = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let i = i as u16;
            for t in &r.resolved.triggers {
                match t {
                    Trigger::Usage(f, mask) => {
                        for (c, list) in by_class.iter_mut().enumerate() {
                            let c = RecordClass(c as u16);
                            // A trigger without predicates subsumes the rule's others for this class.
                            if is_possible(c)
                                && f.matches(c)
                                && !list.contains(&(i, *mask))
                                && !list.contains(&(i, 0))
                            {
                                if *mask == 0 {
                                    list.retain(|(r, _)| *r != i);
                                }
                                list.push((i, *mask));
                            }
                        }
                    }
                    Trigger::Event(e) => {
                        let list = by_event.entry(*e).or_default();
                        if !list.contains(&i) {
                            list.push(i);
                        }
                    }
                    Trigger::Timer(TimerTrigger::InvoiceOverdue) => {
                        if !by_timer.contains(&i) {
                            by_timer.push(i);
                        }
                    }
                }
            }
        }
        Ok(RuleSet {
            version: sources.version.clone(),
            engine,
            rules,
            lists,
            warnings,
            by_class: by_class.into_iter().map(Vec::into_boxed_slice).collect(),
            by_event: by_event
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
            by_timer: by_timer.into_boxed_slice(),
        })
    }

    /// Share of the 1024 classes with at least one rule (a quick dispatch sanity figure).
    pub fn classes_with_rules(&self) -> usize {
        self.by_class.iter().filter(|l| !l.is_empty()).count()
    }
}

fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Positions (1-based line, column) of each byte offset's line start, for the scanners below.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Byte ranges of comments and string literals, which the scanners skip.
fn code_mask(text: &str) -> Vec<bool> {
    let b = text.as_bytes();
    let mut code = vec![true; b.len()];
    let mut i = 0;
    while i < b.len() {
        let start = i;
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i = (i + 2).min(b.len());
        } else if b[i] == b'"' || b[i] == b'`' {
            let q = b[i];
            i += 1;
            while i < b.len() && b[i] != q {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
        } else {
            i += 1;
            continue;
        }
        code[start..i].iter_mut().for_each(|c| *c = false);
    }
    code
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `params.name` and `params["name"]` reads, where `params` is the entry point's fourth argument.
fn param_reads(text: &str, var: &str) -> Vec<(String, usize, usize)> {
    let code = code_mask(text);
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(var) {
        let at = from + found;
        from = at + var.len();
        let before_ok = at == 0 || !is_ident(b[at - 1]) && b[at - 1] != b'.';
        if !code[at] || !before_ok || b.get(from).is_some_and(|&c| is_ident(c)) {
            continue;
        }
        let rest = &text[from..];
        let (name_at, name) = if let Some(r) = rest.strip_prefix('.') {
            let len = r.bytes().take_while(|&c| is_ident(c)).count();
            (from + 1, &r[..len])
        } else if let Some(r) = rest.strip_prefix("[\"") {
            let len = r.find('"').unwrap_or(0);
            (from + 2, &r[..len])
        } else {
            continue;
        };
        // `params.segment` is the view's own property.
        if name.is_empty() || name == "segment" {
            continue;
        }
        let (line, column) = position(text, name_at);
        out.push((name.to_string(), line, column));
    }
    out
}

/// Feature calls whose filter or window is a literal: checked now, not on the first matching record.
fn literal_problems(text: &str) -> Vec<(usize, usize, String)> {
    // (method, index of the filter argument, index of the window argument)
    const CALLS: &[(&str, Option<usize>, Option<usize>)] = &[
        ("count", Some(0), Some(1)),
        ("seconds", Some(0), Some(1)),
        ("minutes", Some(0), Some(1)),
        ("bytes", Some(0), Some(1)),
        ("charges", Some(0), Some(1)),
        ("distinct_numbers", Some(0), Some(1)),
        ("distinct_cells", Some(0), Some(1)),
        ("distinct_called", None, Some(0)),
        ("reversals_within", None, Some(0)),
        ("is", Some(0), None),
    ];
    let code = code_mask(text);
    let mut out = Vec::new();
    for &(name, filter_arg, window_arg) in CALLS {
        let pat = format!(".{name}(");
        let mut from = 0;
        while let Some(found) = text[from..].find(&pat) {
            let at = from + found;
            from = at + pat.len();
            if !code[at] {
                continue;
            }
            // Split the literal arguments: only `"..."` literals are checked.
            let mut args = Vec::new();
            let mut i = from;
            let b = text.as_bytes();
            loop {
                while i < b.len() && b[i] == b' ' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'"' {
                    let end = text[i + 1..].find('"').map_or(b.len(), |e| i + 1 + e);
                    args.push(Some((i + 1, &text[i + 1..end])));
                    i = end + 1;
                } else {
                    args.push(None);
                    while i < b.len() && b[i] != b',' && b[i] != b')' {
                        i += 1;
                    }
                }
                while i < b.len() && b[i] == b' ' {
                    i += 1;
                }
                if i < b.len() && b[i] == b',' {
                    i += 1;
                    continue;
                }
                break;
            }
            if let Some(Some((off, f))) = filter_arg.and_then(|k| args.get(k)) {
                if let Err(e) = crate::classify::ClassFilter::parse(f) {
                    let (line, column) = position(text, *off);
                    out.push((line, column, e));
                }
            }
            if let Some(Some((off, w))) = window_arg.and_then(|k| args.get(k)) {
                if let Err(e) = crate::record::time::parse_duration(w) {
                    let (line, column) = position(text, *off);
                    out.push((line, column, format!("window {w:?}: {e}")));
                }
            }
        }
    }
    out.sort();
    out
}

/// Marks the rules that read calling-number rules' alerts (they run beside the calling numbers)
/// and refuses those that cannot run there, or that ask about another number than the record's
/// destination (`placement`).
fn place(rules: &mut [Rule], errors: &mut Vec<Problem>, warnings: &mut Vec<Problem>) {
    let callers: BTreeSet<String> = rules
        .iter()
        .filter(|r| r.meta().entity == EntityType::CallingNumber)
        .map(|r| r.id().to_string())
        .collect();
    // `rule.file` is already the path as shown: `problem` in `build` would join the root twice.
    let problem = |rule: &Rule, p: rhai::Position, message: String| Problem {
        file: rule.file.clone(),
        line: p.line().unwrap_or(1),
        column: p.position().unwrap_or(1),
        message,
    };
    for rule in rules.iter_mut() {
        if rule.meta().entity == EntityType::CallingNumber {
            continue;
        }
        let entry = rule
            .ast
            .iter_functions()
            .find(|f| f.name == ENTRY)
            .map(|f| f.params.iter().map(|p| p.to_string()).collect::<Vec<_>>())
            .unwrap_or_default();
        let record = entry.first().map_or("rec", String::as_str);
        let mut read = None;
        for call in placement::alerted_calls(&rule.ast, ENTRY) {
            match call.rule {
                Some(id) if callers.contains(&id) => {
                    if !call.keyed_by_destination {
                        errors.push(problem(
                            rule,
                            call.position,
                            format!(
                                "`alerted({id:?}, …)` must ask about the record's destination, written `{record}.destination` in `fn {ENTRY}`: the daemon evaluates rule {} beside the calling number it asks about, found from the record before the script runs, and another number's alerts need not be there",
                                rule.id()
                            ),
                        ));
                    }
                    read = read.or(Some((id, call.position)));
                }
                Some(_) => {}
                None => {
                    warnings.push(problem(
                        rule,
                        call.position,
                        "`alerted` with a rule id computed at run time: in the daemon it sees the alerts of rules kept beside this rule's entity only, never those of calling-number rules (write the id as a literal)".into(),
                    ));
                }
            }
        }
        let Some((source, pos)) = read else { continue };
        rule.reads_callers = true;
        if rule.meta().entity != EntityType::Subscriber {
            errors.push(problem(
                rule,
                pos,
                format!(
                    "rule {} reads the alerts of calling-number rule {source:?}, so it runs beside the calling numbers, which only a subscriber rule can: its entity is {:?}",
                    rule.id(),
                    rule.meta().entity.as_str()
                ),
            ));
            continue;
        }
        for var in entry.iter().skip(1).take(2) {
            if let Some(p) = placement::first_read(&rule.ast, ENTRY, var) {
                errors.push(problem(
                    rule,
                    p,
                    format!(
                        "rule {} reads the alerts of calling-number rule {source:?}, so the daemon runs it beside the calling numbers, where no subscriber or account state is kept: it cannot read `{var}` (use the record's fields, or split the rule)",
                        rule.id()
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::library::SourceFile;

    #[test]
    fn scanners_find_param_reads_and_bad_literals_outside_comments() {
        let text = "// params.commented\nfn evaluate(r, s, a, p) {\n  if s.count(\"voice.mo.intl\", \"1h\") > p.min_calls && p[\"max\"] > 0 { }\n  s.minutes(\"voice\", \"2 hours\")\n}\n";
        let reads = param_reads(text, "p");
        let names: Vec<_> = reads.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, ["min_calls", "max"]);
        assert_eq!((reads[0].1, reads[0].2), (3, 41));
        let bad = literal_problems(text);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!((bad[0].0, bad[0].1), (3, 15));
        assert!(bad[0].2.contains("intl"));
        assert_eq!((bad[1].0, bad[1].1), (4, 23));
    }

    fn build(sources: &RuleSources) -> Result<RuleSet, BuildErrors> {
        let store = Rc::new(std::cell::RefCell::new(crate::state::WindowStore::new(
            Default::default(),
        )));
        RuleSet::build(
            sources,
            &Default::default(),
            &Shared::new(store, Default::default()),
        )
    }

    fn shipped() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
    }

    #[test]
    fn the_shipped_library_builds_with_wangiri_callback_beside_the_calling_numbers() {
        let sources = RuleSources::read(&shipped()).unwrap();
        let set = build(&sources).unwrap_or_else(|e| panic!("{e}"));
        let callback = set.rules.iter().find(|r| r.id() == "wangiri_callback");
        assert!(callback.is_some_and(|r| r.reads_callers));
    }

    /// The shipped Wangiri pair, the callback asking `alerted` about `key` instead; and the line of
    /// that call.
    fn callback_asking_about(key: &str) -> (Result<RuleSet, BuildErrors>, usize) {
        let read = |rel: &str| std::fs::read_to_string(shipped().join(rel)).unwrap();
        let callback = read("fraud/wangiri_callback.rhai");
        let asked = "alerted(\"wangiri_inbound\", rec.destination,";
        assert!(callback.contains(asked));
        let callback = callback.replace(asked, &format!("alerted(\"wangiri_inbound\", {key},"));
        let callback = callback.replace(
            "    if !alerted(",
            "    let n = rec.destination;\n    if !alerted(",
        );
        let line = 1 + callback
            .lines()
            .position(|l| l.contains("alerted("))
            .unwrap();
        let file = |path: &str, text: String| SourceFile {
            path: path.into(),
            text,
        };
        let sources = RuleSources::new(
            "lib".into(),
            vec![
                file("fraud/wangiri_callback.rhai", callback),
                file(
                    "fraud/wangiri_inbound.rhai",
                    read("fraud/wangiri_inbound.rhai"),
                ),
            ],
            Some(file(
                "params.toml",
                "[wangiri_inbound]\nmin_victims = 20\n[wangiri_callback]\nlookback = \"72h\"\n"
                    .into(),
            )),
            vec![file("lists/wangiri_whitelist.txt", String::new())],
        );
        (build(&sources), line)
    }

    #[test]
    fn a_rule_reading_calling_number_alerts_must_ask_about_the_records_destination() {
        let (set, _) = callback_asking_about("rec.destination");
        let set = set.unwrap_or_else(|e| panic!("{e}"));
        assert!(set.rules.iter().any(|r| r.reads_callers));
        for key in ["rec.other_number", "n"] {
            let (set, line) = callback_asking_about(key);
            let err = set.err().expect(key);
            assert_eq!(err.errors.len(), 1, "{key}: {err}");
            let shown = err.errors[0].to_string();
            assert!(
                shown.starts_with(&format!("lib/fraud/wangiri_callback.rhai:{line}:9: `alerted(\"wangiri_inbound\", …)` must ask about the record's destination, written `rec.destination` in `fn evaluate`")),
                "{key}: {shown}"
            );
            assert!(
                shown.contains("beside the calling number it asks about"),
                "{shown}"
            );
        }
    }
}
