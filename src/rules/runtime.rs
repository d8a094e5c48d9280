//! The rule library at run time: the one path `replay`, the daemon, `check`, `test` and `run --check`
//! use to find the library, read it, validate it as a whole, and reload it when it changes.
//!
//! Validation builds the set once against an empty store: a library that builds there builds in every
//! pipeline (compilation and parameter checks do not depend on state), so the daemon validates once
//! and then hands the same sources to every worker, and a refused reload never reaches one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, DEFAULT_RULES_DIR};
use crate::state::WindowStore;

use super::library::{LibraryError, RuleSources};
use super::ruleset::{BuildErrors, RuleSet};
use super::watch::{ReloadCause, RuleWatcher};
use super::Shared;

/// Where the rule library is: `--rules`, else `rules.dir` of the config (relative to the config
/// file), else `rules/` in the working directory.
pub fn locate(flag: Option<&Path>, cfg: &Config, base: &Path) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| cfg.rules.dir.as_ref().map(|d| base.join(d)))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RULES_DIR))
}

/// Like `locate`, for commands that can run without rules: `None` when none was named and `rules/`
/// does not exist.
pub fn locate_optional(flag: Option<&Path>, cfg: &Config, base: &Path) -> Option<PathBuf> {
    let named = flag.is_some() || cfg.rules.dir.is_some();
    let dir = locate(flag, cfg, base);
    (named || dir.is_dir()).then_some(dir)
}

/// Builds the rule set as a pipeline would, against an empty store: every problem, or the set.
pub fn validate(sources: &RuleSources, cfg: &Config) -> Result<RuleSet, BuildErrors> {
    let store = std::rc::Rc::new(std::cell::RefCell::new(WindowStore::new(cfg.state.clone())));
    let shared = Shared::new(store, Default::default());
    RuleSet::build(sources, &cfg.rules.sandbox, &shared)
}

/// A library read and validated: what every pipeline is built from.
#[derive(Clone)]
pub struct Library {
    pub dir: PathBuf,
    pub sources: Arc<RuleSources>,
    /// Rules in the set.
    pub rules: usize,
}

/// Why a library could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Unreadable(#[from] LibraryError),
    #[error("rule library {dir}: {errors}")]
    Invalid { dir: PathBuf, errors: BuildErrors },
}

impl Library {
    /// Reads and validates the library in `dir`, logging its warnings and a line saying what loaded.
    pub fn load(dir: &Path, cfg: &Config) -> Result<Library, LoadError> {
        let sources = RuleSources::read(dir)?;
        let set = validate(&sources, cfg).map_err(|errors| LoadError::Invalid {
            dir: dir.to_path_buf(),
            errors,
        })?;
        for w in &set.warnings {
            tracing::warn!("{w}");
        }
        tracing::info!(
            dir = %dir.display(),
            rules = set.rules.len(),
            version = %sources.version,
            "Rules loaded."
        );
        Ok(Library {
            dir: dir.to_path_buf(),
            rules: set.rules.len(),
            sources: Arc::new(sources),
        })
    }
}

/// Reloads counted by outcome, for the summary and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    pub ok: u64,
    /// Unreadable (folder missing, unreadable file) or invalid: the previous rules stayed active.
    pub refused: u64,
}

/// Watches a loaded library and validates every change before anyone sees it.
pub struct Reloader {
    watcher: RuleWatcher,
    cfg: Config,
    pub counts: ReloadCounts,
}

impl Reloader {
    /// Starts watching `library`'s folder every `rules.watch_interval` (and on SIGHUP when `sighup`).
    pub fn spawn(library: &Library, cfg: &Config, sighup: bool) -> std::io::Result<Reloader> {
        let watcher = RuleWatcher::spawn(
            library.dir.clone(),
            library.sources.version.clone(),
            Duration::from_secs(cfg.rules.watch_interval.0.max(1) as u64),
            sighup,
        )?;
        Ok(Reloader {
            watcher,
            cfg: cfg.clone(),
            counts: ReloadCounts::default(),
        })
    }

    /// A changed library that validated, to hand to every pipeline; a refused one is logged and
    /// counted here, and the previous rules stay active.
    pub fn poll(&mut self) -> Option<Arc<RuleSources>> {
        let (cause, read) = self.watcher.poll()?;
        self.accept(cause, read)
    }

    /// Waits up to `timeout` for the next change (tests, or a caller with nothing else to do).
    pub fn wait(&mut self, timeout: Duration) -> Option<Arc<RuleSources>> {
        let (cause, read) = self.watcher.wait(timeout)?;
        self.accept(cause, read)
    }

    fn accept(
        &mut self,
        cause: ReloadCause,
        read: Result<RuleSources, LibraryError>,
    ) -> Option<Arc<RuleSources>> {
        let sources = match read {
            Ok(s) => s,
            Err(e) => {
                self.counts.refused += 1;
                tracing::error!(?cause, error = %e, "Rule library unreadable; the previous rules stay active.");
                return None;
            }
        };
        match validate(&sources, &self.cfg) {
            Ok(set) => {
                self.counts.ok += 1;
                for w in &set.warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!(?cause, version = %sources.version, rules = set.rules.len(), "Rule library changed; reloading.");
                Some(Arc::new(sources))
            }
            Err(e) => {
                self.counts.refused += 1;
                tracing::error!(
                    ?cause,
                    "Rule reload refused; the previous rules stay active. {e}"
                );
                None
            }
        }
    }
}
