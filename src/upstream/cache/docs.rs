//! Repodata documents (JSON, zst, shard index, current_repodata) held in the cache: served from the held copy
//! while at most one background revalidation runs (stale-while-revalidate), and still served when the upstream fails
//! (stale-if-error). Each is kept on disk with a sidecar (its validator and when it was last validated), so a restart
//! during an outage still serves.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::disk::{lock, now_millis, Disk};
use super::index::META;
use crate::error::{chain, Error};
use crate::upstream::{Document, Refetch, Upstream};

/// How often (in milliseconds) a revalidation that found the document unchanged rewrites the sidecar: the time of the last
/// validation on disk only serves `Age` after a restart.
const META_EVERY: u64 = 60_000;

/// The documents held, by key, and the package digests read from them.
#[derive(Debug)]
pub struct Docs {
    recheck: Duration,
    held: Mutex<HashMap<String, Arc<HeldDoc>>>,
    shas: Mutex<HashMap<String, Arc<Shas>>>,
}

/// One document held.
#[derive(Debug)]
pub struct HeldDoc {
    /// The document; its `validated` is this entry's.
    pub doc: Document,
    validated: Arc<AtomicU64>,
    meta_written: AtomicU64,
    revalidating: AtomicBool,
    /// Whether the last revalidation failed.
    pub failing: AtomicBool,
}

/// The sha256 of each package a `repodata.json` lists, by file name.
#[derive(Debug)]
pub struct Shas {
    validator: String,
    by_name: HashMap<Box<str>, [u8; 32]>,
}

/// The sidecar of a document on disk.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    validator: String,
    modified: Option<u64>,
    max_age: Option<u64>,
    /// Milliseconds since the Unix epoch.
    validated_ms: u64,
}

impl HeldDoc {
    fn new(mut doc: Document, validated: u64) -> Arc<Self> {
        let at = Arc::new(AtomicU64::new(validated));
        doc.validated = Some(Arc::clone(&at));
        doc.stamp = None;
        Arc::new(HeldDoc {
            doc,
            validated: at,
            meta_written: AtomicU64::new(validated),
            revalidating: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        })
    }
}

impl Docs {
    /// Documents trusted for `recheck` (or the upstream's `max-age`) before a background revalidation.
    pub fn new(recheck: Duration) -> Self {
        Docs { recheck, held: Mutex::default(), shas: Mutex::default() }
    }

    /// The document in memory for `key`.
    pub fn in_memory(&self, key: &str) -> Option<Arc<HeldDoc>> {
        lock(&self.held).get(key).cloned()
    }

    /// How many documents are held whose last revalidation failed.
    pub fn failing(&self) -> usize {
        lock(&self.held).values().filter(|d| d.failing.load(Relaxed)).count()
    }

    /// The document for `key`: from memory, else from disk, else fetched from the upstream (the only case where
    /// the caller waits on it).
    pub async fn get(
        &self,
        disk: &Arc<Disk>,
        inner: &dyn Upstream,
        key: &str,
        rel: &str,
    ) -> Result<Arc<HeldDoc>, Error> {
        if let Some(d) = self.in_memory(key) {
            disk.touch(key);
            disk.stats.document_hits.fetch_add(1, Relaxed);
            return Ok(d);
        }
        let (d2, k2) = (Arc::clone(disk), key.to_owned());
        if let Ok(Some(d)) = tokio::task::spawn_blocking(move || read(&d2, &k2)).await {
            disk.touch(key);
            disk.stats.document_hits.fetch_add(1, Relaxed);
            lock(&self.held).insert(key.to_owned(), Arc::clone(&d));
            return Ok(d);
        }
        disk.stats.fetches.fetch_add(1, Relaxed);
        let Refetch::Changed(doc) = inner.document(rel, None).await? else {
            return Err(Error::Internal("the upstream called a document it was not asked about unchanged".into()));
        };
        let d = HeldDoc::new(doc, now_millis());
        store(disk, key, &d).await;
        lock(&self.held).insert(key.to_owned(), Arc::clone(&d));
        Ok(d)
    }

    /// Starts a background revalidation of `held` if it is due and none is running. Clients keep the held copy
    /// meanwhile; an upstream that fails leaves it in place.
    pub fn revalidate_if_due(
        self: &Arc<Self>,
        disk: &Arc<Disk>,
        inner: &Arc<dyn Upstream>,
        key: &str,
        rel: &str,
        held: &Arc<HeldDoc>,
    ) {
        let fresh_for = held.doc.max_age.unwrap_or(self.recheck).as_millis() as u64;
        if now_millis().saturating_sub(held.validated.load(Relaxed)) < fresh_for {
            return;
        }
        if held.revalidating.swap(true, Relaxed) {
            return;
        }
        let (docs, disk, inner, key, rel, held) =
            (Arc::clone(self), Arc::clone(disk), Arc::clone(inner), key.to_owned(), rel.to_owned(), Arc::clone(held));
        tokio::spawn(async move {
            disk.stats.fetches.fetch_add(1, Relaxed);
            match inner.document(&rel, Some(&held.doc.validator)).await {
                Ok(Refetch::Unchanged) => {
                    let now = now_millis();
                    held.validated.store(now, Relaxed);
                    if now.saturating_sub(held.meta_written.swap(now, Relaxed)) >= META_EVERY {
                        let (disk, key, meta) = (Arc::clone(&disk), key.clone(), meta_of(&held));
                        let _ = tokio::task::spawn_blocking(move || write_meta(&disk, &key, &meta)).await;
                    }
                    recovered(&held, &rel);
                }
                Ok(Refetch::Changed(doc)) => {
                    let fresh = HeldDoc::new(doc, now_millis());
                    store(&disk, &key, &fresh).await;
                    lock(&docs.held).insert(key.clone(), fresh);
                    recovered(&held, &rel);
                }
                Err(Error::NotFound) => {
                    // The upstream no longer has it: neither does the cache.
                    lock(&docs.held).remove(&key);
                    let (disk, key) = (Arc::clone(&disk), key.clone());
                    let _ = tokio::task::spawn_blocking(move || disk.discard(&key)).await;
                }
                Err(e) => {
                    disk.stats.revalidation_failures.fetch_add(1, Relaxed);
                    if !held.failing.swap(true, Relaxed) {
                        tracing::warn!(
                            document = %rel,
                            error = %chain(&e),
                            "the upstream failed a revalidation: the cached copy keeps being served"
                        );
                    }
                }
            }
            held.revalidating.store(false, Relaxed);
        });
    }

    /// The sha256 of package `name` as `repodata` (the held `repodata.json` at `key`) lists it.
    pub async fn sha256(&self, key: &str, repodata: &HeldDoc, name: &str) -> Option<[u8; 32]> {
        let current = lock(&self.shas).get(key).filter(|s| s.validator == repodata.doc.validator).cloned();
        let shas = match current {
            Some(s) => s,
            None => {
                let (bytes, validator) = (repodata.doc.bytes.clone(), repodata.doc.validator.clone());
                let built = tokio::task::spawn_blocking(move || Shas::parse(&bytes, validator)).await.ok()??;
                let built = Arc::new(built);
                lock(&self.shas).insert(key.to_owned(), Arc::clone(&built));
                built
            }
        };
        shas.by_name.get(name).copied()
    }
}

fn recovered(held: &HeldDoc, rel: &str) {
    if held.failing.swap(false, Relaxed) {
        tracing::info!(document = %rel, "the upstream answers revalidations again");
    }
}

impl Shas {
    /// The sha256 of package file `name`, if listed.
    pub fn get(&self, name: &str) -> Option<[u8; 32]> {
        self.by_name.get(name).copied()
    }

    /// Reads the `sha256` of every record of a `repodata.json`; `None` when it is not JSON of that shape.
    pub fn parse(bytes: &Bytes, validator: String) -> Option<Self> {
        #[derive(Deserialize)]
        struct Repodata<'a> {
            #[serde(default, borrow)]
            packages: HashMap<Cow<'a, str>, Record<'a>>,
            #[serde(default, borrow, rename = "packages.conda")]
            conda: HashMap<Cow<'a, str>, Record<'a>>,
        }
        #[derive(Deserialize)]
        struct Record<'a> {
            #[serde(default, borrow)]
            sha256: Option<Cow<'a, str>>,
        }
        let rd: Repodata<'_> = serde_json::from_slice(bytes).ok()?;
        let mut by_name = HashMap::with_capacity(rd.packages.len() + rd.conda.len());
        for (name, rec) in rd.packages.into_iter().chain(rd.conda) {
            let mut sha = [0u8; 32];
            if let Some(s) = rec.sha256 {
                if hex::decode_to_slice(s.as_bytes(), &mut sha).is_ok() {
                    by_name.insert(name.into_owned().into_boxed_str(), sha);
                }
            }
        }
        Some(Shas { validator, by_name })
    }
}

fn meta_of(held: &HeldDoc) -> Meta {
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs());
    Meta {
        validator: held.doc.validator.clone(),
        modified: held.doc.modified.and_then(secs),
        max_age: held.doc.max_age.map(|d| d.as_secs()),
        validated_ms: held.validated.load(Relaxed),
    }
}

/// Writes `bytes` to the final path of `name` through a partial file and a rename.
fn put(disk: &Disk, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let partial = disk.partial_path();
    std::fs::write(&partial, bytes)?;
    let path = disk.path(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(&partial, &path)
}

fn write_meta(disk: &Disk, key: &str, meta: &Meta) -> std::io::Result<()> {
    let text = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    put(disk, &format!("{key}{META}"), &text)
}

/// Keeps a document on disk (the document first, then its sidecar: a document without one is ignored at start),
/// and counts it. A failure is logged and costs only the copy on disk.
async fn store(disk: &Arc<Disk>, key: &str, held: &Arc<HeldDoc>) {
    let (disk, key, bytes, meta) = (Arc::clone(disk), key.to_owned(), held.doc.bytes.clone(), meta_of(held));
    let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        put(&disk, &key, &bytes)?;
        write_meta(&disk, &key, &meta)?;
        disk.committed(&key, bytes.len() as u64 + 256);
        Ok(())
    })
    .await;
    if let Ok(Err(e)) = done {
        tracing::warn!(error = %e, "the upstream cache could not keep a document on disk");
    }
}

/// A document kept on disk, with its sidecar; `None` when either is missing or unreadable.
fn read(disk: &Disk, key: &str) -> Option<Arc<HeldDoc>> {
    let meta: Meta = serde_json::from_slice(&std::fs::read(disk.path(&format!("{key}{META}"))).ok()?).ok()?;
    let bytes = std::fs::read(disk.path(key)).ok()?;
    let doc = Document {
        bytes: bytes.into(),
        validator: meta.validator,
        modified: meta.modified.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        max_age: meta.max_age.map(Duration::from_secs),
        stamp: None,
        validated: None,
    };
    Some(HeldDoc::new(doc, meta.validated_ms))
}
