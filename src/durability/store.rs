//! Where checkpoints live: a local directory or an S3-API object store every instance reaches.
//!
//! `durability.store` picks it: empty or `file:///path` is a directory on this machine (today's
//! default, `durability.dir`); `s3://bucket/prefix` is any S3 API (AWS, MinIO, Ceph, Garage),
//! through `object_store` with its retries and AWS credential chain (`AWS_ACCESS_KEY_ID`, …, or
//! `durability.store_options`). Credentials are never logged: the store describes itself by scheme,
//! bucket and prefix only.
//!
//! The daemon is thread-per-stage with no async runtime; `object_store` is async. The store owns one
//! small runtime and its callers block on it from their own threads (the snapshot writer, the
//! rebalance callback), which is what `block_on` on a multi-thread runtime allows.
//!
//! Keys are `/`-separated names relative to the store's root (`partition-3/g7/…`, see
//! `durability::dir`). A put is atomic on both: S3 makes an object visible whole or not at all; the
//! directory writes a temporary file, syncs it and renames it (`snapshot::write_atomic`), because
//! `object_store`'s local backend does not sync, and a machine that loses power must not come back
//! with a torn checkpoint its commits rely on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

/// Objects larger than two parts are uploaded in parts of this size, a few at a time.
const PART_BYTES: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// Why a store operation failed. `Display` names the store and the key, never credentials.
#[derive(Debug, thiserror::Error)]
#[error("{store}: {what} {key}: {why}")]
pub struct StoreError {
    pub store: String,
    pub what: &'static str,
    pub key: String,
    pub why: String,
}

/// A checkpoint store: put, get, list and delete whole objects by key.
pub struct Store {
    backend: Backend,
    shown: String,
}

enum Backend {
    Dir(PathBuf),
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: String,
        rt: tokio::runtime::Runtime,
    },
}

impl Store {
    /// Opens the store named by `durability.store` (`file://…`, `s3://…`), or the directory `dir`
    /// when that is empty. `options` are `object_store`'s S3 settings (`aws_endpoint`,
    /// `aws_region`, `aws_allow_http`, …) over those of the environment.
    pub fn open(
        url: &str,
        dir: &Path,
        options: &BTreeMap<String, String>,
    ) -> anyhow::Result<Store> {
        if url.is_empty() {
            return Ok(Store::dir(dir));
        }
        if let Some(path) = url.strip_prefix("file://") {
            anyhow::ensure!(
                !path.is_empty(),
                "durability.store {url:?}: file:// needs a path (file:///var/lib/cdrguard)"
            );
            return Ok(Store::dir(Path::new(path)));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            anyhow::bail!(
                "durability.store {url:?}: give file:///path or s3://bucket/prefix (any S3 API)"
            );
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(
            !bucket.is_empty(),
            "durability.store {url:?}: no bucket (s3://bucket/prefix)"
        );
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (k, v) in options {
            let key: object_store::aws::AmazonS3ConfigKey = k.parse().map_err(|_| {
                anyhow::anyhow!(
                    "durability.store_options: unknown S3 setting {k:?} (e.g. aws_endpoint, aws_region, aws_allow_http)"
                )
            })?;
            builder = builder.with_config(key, v);
        }
        // A checkpoint that cannot be written is retried by the next one; commits wait meanwhile.
        // Waiting minutes inside one attempt would only hold the writer up.
        builder = builder.with_retry(object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(20),
            ..Default::default()
        });
        let store = builder
            .build()
            .map_err(|e| anyhow::anyhow!("durability.store {url:?}: {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("object-store")
            .enable_all()
            .build()?;
        let prefix = prefix.trim_matches('/').to_string();
        Ok(Store {
            shown: format!("s3://{bucket}/{prefix}"),
            backend: Backend::Object {
                store: Arc::new(store),
                prefix,
                rt,
            },
        })
    }

    pub fn dir(path: &Path) -> Store {
        Store {
            shown: path.display().to_string(),
            backend: Backend::Dir(path.to_path_buf()),
        }
    }

    /// The directory, for a store on this machine (locks and set-aside files live there).
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Dir(p) => Some(p),
            Backend::Object { .. } => None,
        }
    }

    /// How logs and errors name the store.
    pub fn describe(&self) -> &str {
        &self.shown
    }

    fn error(&self, what: &'static str, key: &str, why: impl ToString) -> StoreError {
        StoreError {
            store: self.shown.clone(),
            what,
            key: key.to_string(),
            why: scrub(&why.to_string()),
        }
    }

    fn object_path(prefix: &str, key: &str) -> object_store::path::Path {
        if prefix.is_empty() {
            object_store::path::Path::from(key)
        } else {
            object_store::path::Path::from(format!("{prefix}/{key}"))
        }
    }

    /// Writes `bytes` under `key`, whole or not at all, durably.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Dir(root) => {
                let path = root.join(key);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| self.error("put", key, e))?;
                }
                super::snapshot::write_atomic(&path, &bytes).map_err(|e| self.error("put", key, e))
            }
            Backend::Object { store, prefix, rt } => {
                let at = Self::object_path(prefix, key);
                let put = async {
                    if bytes.len() <= 2 * PART_BYTES {
                        return store.put(&at, bytes.into()).await.map(drop);
                    }
                    // A large base goes up in parts: each part is a request of its own, retried
                    // and timed out on its own, and the 5 GiB limit of one PUT does not apply.
                    let bytes = bytes::Bytes::from(bytes);
                    let upload = store.put_multipart(&at).await?;
                    let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                    for start in (0..bytes.len()).step_by(PART_BYTES) {
                        if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                            let _ = w.abort().await;
                            return Err(e);
                        }
                        w.put(bytes.slice(start..(start + PART_BYTES).min(bytes.len())));
                    }
                    w.finish().await.map(drop)
                };
                rt.block_on(put).map_err(|e| self.error("put", key, e))
            }
        }
    }

    /// The object under `key`; `None` if there is none.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Dir(root) => match std::fs::read(root.join(key)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.error("get", key, e)),
            },
            Backend::Object { store, prefix, rt } => {
                let at = Self::object_path(prefix, key);
                rt.block_on(async {
                    match store.get(&at).await {
                        Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .map_err(|e| self.error("get", key, e))
            }
        }
    }

    /// Every key in the store with its size, sorted.
    pub fn list(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.list_under("")
    }

    /// The keys under the folder `folder` (`partition-3`; empty: all), with their sizes, sorted: one
    /// partition's checkpoints without listing every partition's.
    pub fn list_under(&self, folder: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = match &self.backend {
            Backend::Dir(root) => {
                let mut out = Vec::new();
                list_dir(root, &root.join(folder), &mut out)
                    .map_err(|e| self.error("list", folder, e))?;
                out
            }
            Backend::Object { store, prefix, rt } => {
                let base = object_store::path::Path::from(&**prefix);
                let under = Self::object_path(prefix, folder);
                let found: Vec<object_store::ObjectMeta> = rt
                    .block_on(
                        store
                            .list((!under.as_ref().is_empty()).then_some(&under))
                            .try_collect(),
                    )
                    .map_err(|e| self.error("list", folder, e))?;
                // Keys relative to the prefix as the store normalised it (not by its length).
                found
                    .into_iter()
                    .filter_map(|m| {
                        let parts: Vec<String> = m
                            .location
                            .prefix_match(&base)?
                            .map(|part| part.as_ref().to_string())
                            .collect();
                        Some((parts.join("/"), m.size))
                    })
                    .collect()
            }
        };
        out.sort();
        Ok(out)
    }

    /// Removes `key`; removing what is not there is not an error.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Dir(root) => {
                let path = root.join(key);
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        // Empty generation and partition folders go with their last object.
                        let mut dir = path.parent();
                        while let Some(d) = dir.filter(|d| *d != root.as_path()) {
                            if std::fs::remove_dir(d).is_err() {
                                break;
                            }
                            dir = d.parent();
                        }
                        Ok(())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(self.error("delete", key, e)),
                }
            }
            Backend::Object { store, prefix, rt } => {
                let at = Self::object_path(prefix, key);
                match rt.block_on(store.delete(&at)) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.error("delete", key, e)),
                }
            }
        }
    }
}

/// An error's text without what a server sent back beyond its error code and message: S3 error
/// bodies can echo the request (`SignatureDoesNotMatch` carries the canonical request, with the
/// session token header), and this text reaches logs and `/health`.
fn scrub(text: &str) -> String {
    let Some(at) = text.find("<?xml").or_else(|| text.find("<Error>")) else {
        return text.to_string();
    };
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find('<')? + start;
        Some(text[start..end].to_string())
    };
    let mut out = text[..at].trim_end().to_string();
    if let Some(code) = tag("Code") {
        out.push_str(&format!(" [{code}"));
        if let Some(message) = tag("Message") {
            out.push_str(&format!(": {message}"));
        }
        out.push(']');
    }
    out
}

/// Files under `dir`, as `/`-joined keys relative to `root` (temporary and set-aside files too:
/// the caller parses names).
fn list_dir(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            list_dir(root, &path, out)?;
        } else if kind.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let key = rel
                .components()
                .filter_map(|c| c.as_os_str().to_str())
                .collect::<Vec<_>>()
                .join("/");
            out.push((key, entry.metadata()?.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_store_puts_lists_gets_and_deletes_nested_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open("", tmp.path(), &BTreeMap::new()).unwrap();
        s.put("partition-1/g3/00000000000000000001.base", b"abc".to_vec())
            .unwrap();
        s.put("callers.a.snap", b"xy".to_vec()).unwrap();
        assert_eq!(
            s.list().unwrap(),
            [
                ("callers.a.snap".to_string(), 2),
                ("partition-1/g3/00000000000000000001.base".to_string(), 3)
            ]
        );
        assert_eq!(
            s.get("partition-1/g3/00000000000000000001.base")
                .unwrap()
                .unwrap(),
            b"abc"
        );
        assert_eq!(s.get("partition-1/g3/none").unwrap(), None);
        s.put("partition-10/g1/00000000000000000001.base", b"z".to_vec())
            .unwrap();
        assert_eq!(
            s.list_under("partition-1").unwrap(),
            [("partition-1/g3/00000000000000000001.base".to_string(), 3)],
            "one partition's folder, not its namesakes'"
        );
        assert!(s.list_under("partition-9").unwrap().is_empty());
        s.delete("partition-10/g1/00000000000000000001.base")
            .unwrap();
        s.delete("partition-1/g3/00000000000000000001.base")
            .unwrap();
        s.delete("partition-1/g3/00000000000000000001.base")
            .unwrap();
        assert!(!tmp.path().join("partition-1").exists(), "empty folders go");
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn server_error_bodies_are_cut_to_their_code_and_message() {
        let body = "Client error with status 403 Forbidden: <?xml version=\"1.0\"?><Error>\
                    <Code>SignatureDoesNotMatch</Code><Message>The signature does not match</Message>\
                    <AWSAccessKeyId>AKIAEXAMPLE</AWSAccessKeyId><CanonicalRequest>x-amz-security-token:SECRET\
                    </CanonicalRequest></Error>";
        let s = scrub(body);
        assert_eq!(
            s,
            "Client error with status 403 Forbidden: [SignatureDoesNotMatch: The signature does not match]"
        );
        assert_eq!(scrub("connection refused"), "connection refused");
    }

    #[test]
    fn store_urls_are_checked_and_never_show_credentials() {
        let tmp = tempfile::tempdir().unwrap();
        let none = BTreeMap::new();
        let f = Store::open(
            &format!("file://{}", tmp.path().display()),
            Path::new("x"),
            &none,
        )
        .unwrap();
        assert_eq!(f.local_dir(), Some(tmp.path()));
        for bad in ["ftp://x", "s3://", "file://"] {
            assert!(Store::open(bad, tmp.path(), &none).is_err(), "{bad}");
        }
        let mut opts = BTreeMap::new();
        opts.insert("aws_secret_access_key".to_string(), "SECRET".to_string());
        opts.insert("aws_access_key_id".to_string(), "KEY".to_string());
        opts.insert("aws_region".to_string(), "eu-west-1".to_string());
        let s = Store::open("s3://bucket/some/prefix/", tmp.path(), &opts).unwrap();
        assert_eq!(s.describe(), "s3://bucket/some/prefix");
        let e = s.error("put", "k", "boom").to_string();
        assert!(!e.contains("SECRET") && !e.contains("KEY"), "{e}");
        opts.insert("no_such_setting".to_string(), "1".to_string());
        let e = Store::open("s3://bucket", tmp.path(), &opts).err().unwrap();
        assert!(e.to_string().contains("no_such_setting"), "{e}");
    }
}
