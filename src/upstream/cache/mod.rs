//! A verified on-disk cache in front of a remote upstream (an HTTP mirror or an S3 bucket), as one more
//! [`Upstream`] that wraps the remote one.
//!
//! - Packages (`.conda`, `.tar.bz2`) and shards are immutable: a cold one is fetched once however many clients ask
//!   ([`fill`]), streamed to all of them while it is written, and kept only if its sha256 is the one the upstream's
//!   `repodata.json` gives (a shard's is its name). Ranges on cold files are answered from the fill as their bytes
//!   arrive; on cached files, from disk.
//! - Repodata documents are served from the held copy while one background revalidation runs, and kept when the
//!   upstream fails ([`docs`]).
//! - Everything else (`notices.json`) passes through.
//! - The folder is bounded by `max_size`, least recently used first ([`index`]), and safe across crashes: files
//!   reach their final name only by a rename; partial files are deleted at start.
//!
//! Each source gets a folder named by a digest of where it is (so two channels on one mirror share it, and a
//! channel moved to another mirror does not see the old one's files), with a `SOURCE` file saying what it is.

pub mod disk;
pub mod docs;
pub mod fill;
pub mod index;
pub mod ops;

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{AGE, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue, Method, Response};
use sha2::{Digest, Sha256};

use self::disk::Disk;
use self::docs::Docs;
use self::fill::{Fills, Found, Job};
use super::{Document, Refetch, Upstream};
use crate::config::Source;
use crate::error::Error;
use crate::http::body::Body;
use crate::http::conditional::{self, quoted_etag, Validators};

pub use self::disk::CacheStats;

/// One `[upstream.cache]`, shared by every remote channel and kept across configuration reloads.
#[derive(Debug)]
pub struct Cache {
    disk: Arc<Disk>,
    fills: Fills,
    docs: Arc<Docs>,
}

impl Cache {
    /// Opens the cache folder (see [`Disk::open`]); documents are revalidated after `recheck` or their `max-age`.
    /// Blocks: call it off the serving threads.
    pub fn open(root: &Path, max_size: u64, recheck: Duration) -> std::io::Result<Self> {
        Ok(Cache {
            disk: Arc::new(Disk::open(root, max_size)?),
            fills: Fills::default(),
            docs: Arc::new(Docs::new(recheck)),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &CacheStats {
        &self.disk.stats
    }

    /// Bytes and files held.
    pub fn held(&self) -> (u64, usize) {
        self.disk.held()
    }

    /// The size bound.
    pub fn max_size(&self) -> u64 {
        self.disk.max_size()
    }

    /// Documents served from the cache while their last revalidation failed.
    pub fn stale_documents(&self) -> usize {
        self.docs.failing()
    }
}

/// The folder name of a source: a digest of where it is, without credentials.
pub fn area(source: &Source) -> String {
    let id = match source {
        Source::Dir(root) => format!("dir {}", root.display()),
        Source::Http { base, .. } => format!("http {}", crate::config::redact_userinfo(base)),
        Source::S3(s3) => format!("s3 {} {} {}", s3.endpoint, s3.bucket, s3.prefix),
    };
    hex::encode(&Sha256::digest(id.as_bytes())[..8])
}

/// What kind of file a path is, to the cache.
enum Kind {
    /// A package: immutable, verified against the subdir's `repodata.json`.
    Package,
    /// A shard: immutable, named by its sha256.
    Shard([u8; 32]),
    /// A repodata form or shard index: held and revalidated in the background.
    Document,
    /// Anything else: passed through.
    Other,
}

/// The repodata forms: what the views read whole, and what an unrestricted token may get as the upstream has it.
const DOCUMENTS: [&str; 5] =
    ["repodata.json", "repodata.json.zst", "repodata.json.bz2", "current_repodata.json", "repodata_shards.msgpack.zst"];

fn kind(rel: &str) -> Kind {
    let mut parts = rel.rsplit('/');
    let name = parts.next().unwrap_or_default();
    if name.ends_with(".conda") || name.ends_with(".tar.bz2") {
        return Kind::Package;
    }
    if DOCUMENTS.contains(&name) {
        return Kind::Document;
    }
    if parts.next() == Some("shards") {
        let mut hash = [0u8; 32];
        if let Some(hex) = name.strip_suffix(".msgpack.zst") {
            if hex::decode_to_slice(hex, &mut hash).is_ok() {
                return Kind::Shard(hash);
            }
        }
    }
    Kind::Other
}

/// A remote upstream behind the cache.
#[derive(Debug)]
pub struct Cached {
    inner: Arc<dyn Upstream>,
    cache: Arc<Cache>,
    area: String,
}

impl Cached {
    /// `inner` (the upstream of `source`) behind `cache`.
    pub fn new(inner: Arc<dyn Upstream>, cache: Arc<Cache>, source: &Source) -> Self {
        let area = area(source);
        let note = cache.disk.path(&area).join(index::SOURCE);
        if !note.exists() {
            // For people reading the folder; nothing depends on it.
            let _ = std::fs::create_dir_all(cache.disk.path(&area))
                .and_then(|()| std::fs::write(&note, format!("{}\n", source.shown())));
        }
        Cached { inner, cache, area }
    }

    /// The cache key of `rel`; refused (as not found) when a segment could leave the folder. The router only lets
    /// conda's grammar through; this is the second wall.
    fn key(&self, rel: &str) -> Result<String, Error> {
        if rel.split('/').any(|s| s.is_empty() || s == "." || s == ".." || s.contains('\\')) {
            return Err(Error::NotFound);
        }
        Ok(format!("{}/{rel}", self.area))
    }

    /// The sha256 a package at `rel` must have: the one its subdir's `repodata.json` lists.
    async fn expected(&self, rel: &str) -> Option<[u8; 32]> {
        let (dir, name) = rel.rsplit_once('/')?;
        let repodata = format!("{dir}/repodata.json");
        let key = self.key(&repodata).ok()?;
        let held = self.cache.docs.get(&self.cache.disk, &*self.inner, &key, &repodata).await.ok()?;
        self.cache.docs.revalidate_if_due(&self.cache.disk, &self.inner, &key, &repodata, &held);
        self.cache.docs.sha256(&key, &held, name).await
    }

    /// Serves a repodata form as the upstream has it, from the held copy.
    async fn document_file(&self, rel: &str, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, Error> {
        let key = self.key(rel)?;
        let held = self.cache.docs.get(&self.cache.disk, &*self.inner, &key, rel).await?;
        self.cache.docs.revalidate_if_due(&self.cache.disk, &self.inner, &key, rel, &held);
        let doc = &held.doc;
        let validators = Validators::new(&quoted_etag(&doc.validator), doc.modified)
            .map_err(|e| Error::Internal(format!("an ETag that is no header value: {e}")))?;
        let mut resp = conditional::respond(&doc.bytes, &validators, method, headers)
            .ok_or(Error::RangeNotSatisfiable { size: doc.bytes.len() as u64 })?;
        if let Some(age) = doc.age() {
            resp.headers_mut().insert(AGE, HeaderValue::from(age));
        }
        Ok(resp)
    }

    /// Serves a cached file from disk.
    async fn hit(&self, key: &str, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, Error> {
        let resp = super::dir::serve_file(&self.cache.disk.path(key), method, headers).await?;
        let stats = &self.cache.disk.stats;
        stats.hits.fetch_add(1, Relaxed);
        if method != Method::HEAD {
            let sent = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            stats.hit_bytes.fetch_add(sent.unwrap_or(0), Relaxed);
        }
        self.cache.disk.touch(key);
        Ok(resp)
    }
}

#[async_trait]
impl Upstream for Cached {
    async fn get(&self, rel: &str, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, Error> {
        let expected = match kind(rel) {
            Kind::Other => return self.inner.get(rel, method, headers).await,
            Kind::Shard(hash) => Some(hash),
            Kind::Package => None,
            Kind::Document => return self.document_file(rel, method, headers).await,
        };
        let key = self.key(rel)?;
        if let Some(fill) = self.cache.fills.get(&key) {
            self.cache.disk.stats.misses.fetch_add(1, Relaxed);
            return fill::respond(&fill, method, headers).await;
        }
        match self.hit(&key, method, headers).await {
            Err(Error::NotFound) => {}
            done => return done,
        }
        let expected = match expected {
            Some(e) => e,
            None => match self.expected(rel).await {
                Some(e) => e,
                None => {
                    // Nothing to check the bytes against: served as the upstream sends them, and not kept.
                    self.cache.disk.stats.unverifiable.fetch_add(1, Relaxed);
                    return self.inner.get(rel, method, headers).await;
                }
            },
        };
        let job = Job {
            disk: Arc::clone(&self.cache.disk),
            inner: Arc::clone(&self.inner),
            key,
            rel: rel.to_owned(),
            expected,
        };
        let key = job.key.clone();
        match self.cache.fills.join_or_start(job) {
            Found::Cached => self.hit(&key, method, headers).await,
            Found::Filling(fill) => {
                self.cache.disk.stats.misses.fetch_add(1, Relaxed);
                fill::respond(&fill, method, headers).await
            }
        }
    }

    async fn document(&self, rel: &str, held: Option<&str>) -> Result<Refetch, Error> {
        let key = self.key(rel)?;
        let doc = self.cache.docs.get(&self.cache.disk, &*self.inner, &key, rel).await?;
        self.cache.docs.revalidate_if_due(&self.cache.disk, &self.inner, &key, rel, &doc);
        if held == Some(doc.doc.validator.as_str()) {
            return Ok(Refetch::Unchanged);
        }
        Ok(Refetch::Changed(doc.doc.clone()))
    }

    fn unchanged(&self, rel: &str, held: &Document) -> Option<Result<bool, Error>> {
        let key = self.key(rel).ok()?;
        let doc = self.cache.docs.in_memory(&key)?;
        self.cache.docs.revalidate_if_due(&self.cache.disk, &self.inner, &key, rel, &doc);
        Some(Ok(doc.doc.validator == held.validator))
    }

    async fn probe(&self) -> Result<(), String> {
        self.inner.probe().await
    }
}
