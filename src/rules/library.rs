//! The rule library on disk, read into memory as plain text: one `.rhai` script per rule (in any
//! folder), `params.toml`, and reference lists under `lists/`.
//!
//! Reading is separate from compiling on purpose. `RuleSources` is plain data (`Send`), so a watcher
//! thread can read the folder and hand the text to the worker that owns the Rhai engine (which, without
//! Rhai's `sync` feature, cannot cross threads); and the version — a content hash of everything read —
//! identifies exactly what a rule set was built from.

use std::path::{Path, PathBuf};

/// One file of the library: its path relative to the library root, and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Relative to the library root, `/`-separated, e.g. `fraud/irsf_high_risk_destination.rhai`.
    pub path: String,
    pub text: String,
}

/// Everything a rule set is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSources {
    /// The library folder as given (errors name files under it).
    pub root: PathBuf,
    /// Scripts, sorted by path.
    pub scripts: Vec<SourceFile>,
    pub params: Option<SourceFile>,
    /// `lists/*.txt`, sorted by path.
    pub lists: Vec<SourceFile>,
    /// Content hash of all of the above (16 hex digits).
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("rule library {0}: not a folder (set --rules or rules.dir)")]
    NotAFolder(PathBuf),
    #[error("{path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A symbolic link to something outside the library folder: refused, so that a link to
    /// `/etc/passwd` cannot show its content in error messages, nor a link to `/` walk the disk.
    #[error("{0}: a symbolic link out of the rule library is refused")]
    LinkOutside(PathBuf),
    /// A folder reached twice through symbolic links.
    #[error("{0}: a symbolic link loop (this folder is already part of the library)")]
    LinkLoop(PathBuf),
}

/// Folders beside a rule that hold its test cases (`<rule_id>.cases/`), not scripts.
pub const CASES_SUFFIX: &str = ".cases";

impl RuleSources {
    pub fn read(root: &Path) -> Result<Self, LibraryError> {
        if !root.is_dir() {
            return Err(LibraryError::NotAFolder(root.to_path_buf()));
        }
        let mut scripts = Vec::new();
        let mut lists = Vec::new();
        let mut params = None;
        let canonical_root = std::fs::canonicalize(root).map_err(|error| LibraryError::Read {
            path: root.to_path_buf(),
            error,
        })?;
        let mut seen = std::collections::HashSet::from([canonical_root.clone()]);
        let bounds = Bounds {
            root,
            canonical_root: &canonical_root,
        };
        walk(&bounds, root, &mut seen, &mut |rel, path| {
            // A byte-order mark (editors on Windows) is not part of the text.
            let read = || {
                std::fs::read_to_string(path)
                    .map(|t| match t.strip_prefix('\u{feff}') {
                        Some(rest) => rest.to_string(),
                        None => t,
                    })
                    .map_err(|error| LibraryError::Read {
                        path: path.to_path_buf(),
                        error,
                    })
            };
            if rel.ends_with(".rhai") {
                scripts.push(SourceFile {
                    path: rel.to_string(),
                    text: read()?,
                });
            } else if rel == "params.toml" {
                params = Some(SourceFile {
                    path: rel.to_string(),
                    text: read()?,
                });
            } else if rel.starts_with("lists/") && rel.ends_with(".txt") {
                lists.push(SourceFile {
                    path: rel.to_string(),
                    text: read()?,
                });
            }
            Ok(())
        })?;
        scripts.sort_by(|a, b| a.path.cmp(&b.path));
        lists.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(RuleSources::new(root.to_path_buf(), scripts, params, lists))
    }

    /// Assembles sources (tests and benches build libraries in memory) and computes the version.
    pub fn new(
        root: PathBuf,
        scripts: Vec<SourceFile>,
        params: Option<SourceFile>,
        lists: Vec<SourceFile>,
    ) -> Self {
        let mut h = StableHash::new();
        for f in scripts.iter().chain(params.iter()).chain(lists.iter()) {
            h.write(f.path.as_bytes());
            h.write(&[0]);
            h.write(f.text.as_bytes());
            h.write(&[0]);
        }
        let version = format!("{:016x}", h.finish() as u64);
        RuleSources {
            root,
            scripts,
            params,
            lists,
            version,
        }
    }

    /// How an error names a file: the library root joined with the relative path.
    pub fn display_path(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
}

/// The library folder as given (for relative names) and as resolved (for links).
struct Bounds<'a> {
    root: &'a Path,
    canonical_root: &'a Path,
}

fn walk(
    bounds: &Bounds,
    dir: &Path,
    seen: &mut std::collections::HashSet<PathBuf>,
    f: &mut dyn FnMut(&str, &Path) -> Result<(), LibraryError>,
) -> Result<(), LibraryError> {
    let root = bounds.root;
    let io = |error| LibraryError::Read {
        path: dir.to_path_buf(),
        error,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Editor swap files and hidden folders are not part of the library.
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        // Links are followed only inside the library (a ConfigMap mount links its files into a
        // hidden folder beside them).
        if entry.file_type().map_err(io)?.is_symlink() {
            let target = std::fs::canonicalize(&path).map_err(|error| LibraryError::Read {
                path: path.clone(),
                error,
            })?;
            if !target.starts_with(bounds.canonical_root) {
                return Err(LibraryError::LinkOutside(path));
            }
        }
        if path.is_dir() {
            if !name.ends_with(CASES_SUFFIX) {
                let canonical = std::fs::canonicalize(&path).map_err(io)?;
                if !seen.insert(canonical) {
                    return Err(LibraryError::LinkLoop(path));
                }
                walk(bounds, &path, seen, f)?;
            }
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        f(&rel, &path)?;
    }
    Ok(())
}

/// FNV-1a, 128 bits: stable across machines, builds and Rust versions (unlike `ahash`, whose output
/// depends on the CPU's AES support), which ids that leave the process — rule set versions, alert
/// ids — must be. Not cryptographic; these ids only need to be distinct.
#[derive(Clone, Copy)]
pub struct StableHash(u128);

impl StableHash {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;

    pub fn new() -> Self {
        StableHash(Self::OFFSET)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u128;
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    pub fn finish(self) -> u128 {
        self.0
    }
}

impl Default for StableHash {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_fnv1a_128() {
        // Published FNV-1a 128 test vector for "a".
        let mut h = StableHash::new();
        h.write(b"a");
        assert_eq!(h.finish(), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn links_out_of_the_library_and_link_loops_are_refused() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("rules");
        std::fs::create_dir_all(lib.join("fraud")).unwrap();
        std::fs::write(lib.join("fraud/a.rhai"), "const A = 1;").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "root:x:0:0").unwrap();
        // Inside: followed.
        symlink(lib.join("fraud/a.rhai"), lib.join("b.rhai")).unwrap();
        let s = RuleSources::read(&lib).unwrap();
        assert_eq!(s.scripts.len(), 2);
        // Out of the library: refused, without its content.
        symlink(dir.path().join("secret.txt"), lib.join("lists.rhai")).unwrap();
        let e = RuleSources::read(&lib).unwrap_err().to_string();
        assert!(
            e.contains("lists.rhai: a symbolic link out of the rule library"),
            "{e}"
        );
        assert!(!e.contains("root:x"), "{e}");
        std::fs::remove_file(lib.join("lists.rhai")).unwrap();
        // A loop: refused at once.
        symlink(&lib, lib.join("fraud/again")).unwrap();
        let e = RuleSources::read(&lib).unwrap_err().to_string();
        assert!(e.contains("again: a symbolic link loop"), "{e}");
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_a_rule_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.rhai"), "\u{feff}const X = 1;").unwrap();
        std::fs::write(dir.path().join("params.toml"), "\u{feff}[r]\n").unwrap();
        let s = RuleSources::read(dir.path()).unwrap();
        assert_eq!(s.scripts[0].text, "const X = 1;");
        assert_eq!(s.params.unwrap().text, "[r]\n");
    }

    #[test]
    fn version_changes_with_any_file_and_reads_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("fraud/x.cases/c1")).unwrap();
        std::fs::create_dir_all(dir.path().join("lists")).unwrap();
        std::fs::write(dir.path().join("fraud/b.rhai"), "1").unwrap();
        std::fs::write(dir.path().join("a.rhai"), "2").unwrap();
        std::fs::write(dir.path().join("fraud/x.cases/c1/usage.ndjson"), "").unwrap();
        std::fs::write(dir.path().join("lists/w.txt"), "33").unwrap();
        std::fs::write(dir.path().join("README.md"), "docs").unwrap();
        let s1 = RuleSources::read(dir.path()).unwrap();
        let paths: Vec<_> = s1.scripts.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.rhai", "fraud/b.rhai"]);
        assert_eq!(s1.lists[0].path, "lists/w.txt");
        // Docs and test cases do not change the version; a list does.
        std::fs::write(dir.path().join("README.md"), "more docs").unwrap();
        assert_eq!(RuleSources::read(dir.path()).unwrap().version, s1.version);
        std::fs::write(dir.path().join("lists/w.txt"), "34").unwrap();
        assert_ne!(RuleSources::read(dir.path()).unwrap().version, s1.version);
    }
}
