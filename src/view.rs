//! Stage 3: choose the repodata view a token gets, and cache it.
//!
//! A view is identified by what it was made from and for: the channel, the upstream path and validator of the source
//! document, and the fingerprint of the visible package set. Tokens with the same access therefore share one cached
//! copy, and a new upstream version makes a new key (old entries age out of the LRU). The cache is bounded by bytes;
//! concurrent misses for one key compute it once (the others wait on the first).
//!
//! A token that sees everything is served the upstream file untouched, unless the upstream document carries an
//! absolute base URL, which is then rewritten for everyone.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use sha2::{Digest as _, Sha256};

use crate::body::{empty, full, Body};
use crate::conditional::{self, RangeAsk};
use crate::config::{Channel, Source};
use crate::error::Error;
use crate::filter::{self, ShardIndex};
use crate::policy::View;
use crate::route::{ChannelPath, FileKind};
use crate::upstream::{Document, Refetch, Upstreams};

/// The forms a view is rendered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Form {
    Json,
    Zst,
    ShardIndex,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ViewKey {
    channel: String,
    /// Upstream path of the source document.
    source: String,
    validator: String,
    form: Form,
    /// `None` for a rewrite of the whole document (base URLs only).
    fingerprint: Option<[u8; 16]>,
}

/// A rendered view.
#[derive(Debug)]
pub struct Rendered {
    bytes: Bytes,
    etag: String,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<ViewKey, Arc<Rendered>> for ByBytes {
    fn weight(&self, key: &ViewKey, val: &Arc<Rendered>) -> u64 {
        (val.bytes.len() + key.source.len() + key.validator.len() + 128) as u64
    }
}

/// How long a document from an HTTP upstream that gives no `max-age` is used before asking again. Local files are
/// checked (one `stat`) on every request.
const HTTP_MIN_FRESH: Duration = Duration::from_secs(1);

/// An upstream document as last fetched, and what was derived from it.
struct Held {
    doc: Document,
    /// When the upstream last confirmed this version.
    checked: Mutex<Instant>,
    absolute_base_url: bool,
    shard_names: Option<Arc<std::collections::HashMap<[u8; 32], String>>>,
    index: Option<Arc<ShardIndex>>,
}

/// The view cache and the upstream documents it is computed from.
pub struct Views {
    cache: Cache<ViewKey, Arc<Rendered>, ByBytes>,
    docs: DashMap<(String, String), Arc<Held>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

fn view_etag(validator: &str, fingerprint: Option<[u8; 16]>, form: Form) -> String {
    let mut h = Sha256::new();
    h.update(validator.as_bytes());
    h.update(fingerprint.unwrap_or([0xff; 16]));
    h.update([form as u8]);
    format!("\"v-{}\"", hex::encode(&h.finalize()[..16]))
}

fn source_id(source: &Source) -> String {
    match source {
        Source::Dir(p) => format!("dir:{}", p.display()),
        Source::Http { base, .. } => format!("url:{base}"),
    }
}

impl Views {
    /// An empty cache holding at most `max_bytes` of rendered views.
    pub fn new(max_bytes: u64) -> Self {
        // quick_cache wants an item count estimate for sizing; views are few and large.
        let cache = Cache::with_weighter(1024, max_bytes.max(1), ByBytes);
        Views { cache, docs: DashMap::new(), hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    /// Views served from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    /// Views computed.
    pub fn misses(&self) -> u64 {
        self.misses.load(Relaxed)
    }

    /// Bytes of rendered views held.
    pub fn bytes(&self) -> u64 {
        self.cache.weight()
    }

    /// The current upstream document at `rel`, fetched or revalidated.
    async fn document(&self, up: &Upstreams, channel: &Channel, rel: &str) -> Result<Arc<Held>, Error> {
        let key = (source_id(&channel.source), rel.to_owned());
        let held = self.docs.get(&key).map(|h| Arc::clone(&h));
        if let (Some(h), Source::Http { .. }) = (&held, &channel.source) {
            let fresh_for = h.doc.max_age.unwrap_or(HTTP_MIN_FRESH);
            if h.checked.lock().map(|c| c.elapsed() < fresh_for).unwrap_or(false) {
                return Ok(Arc::clone(h));
            }
        }
        match up.refetch(&channel.source, rel, held.as_ref().map(|h| h.doc.validator.as_str())).await {
            Ok(Refetch::Unchanged) => {
                let h = held.ok_or_else(|| Error::Internal("unchanged document not held".into()))?;
                if let Ok(mut c) = h.checked.lock() {
                    *c = Instant::now();
                }
                Ok(h)
            }
            Ok(Refetch::Changed(doc)) => {
                let (absolute_base_url, shard_names, index) = if rel.ends_with("repodata_shards.msgpack.zst") {
                    let idx = ShardIndex::decode(&doc.bytes)
                        .map_err(|e| Error::Upstream(format!("{}: {rel}: {e}", channel.name)))?;
                    (idx.has_absolute_urls(), Some(Arc::new(idx.names_by_hash())), Some(Arc::new(idx)))
                } else {
                    let abs = filter::has_absolute_base_url(&doc.bytes)
                        .map_err(|e| Error::Upstream(format!("{}: {rel}: {e}", channel.name)))?;
                    (abs, None, None)
                };
                let held =
                    Arc::new(Held { doc, checked: Mutex::new(Instant::now()), absolute_base_url, shard_names, index });
                self.docs.insert(key, Arc::clone(&held));
                Ok(held)
            }
            Err(e) => {
                if matches!(e, Error::NotFound) {
                    self.docs.remove(&key);
                }
                Err(e)
            }
        }
    }

    /// Whether shard `hash` of the path's subdir belongs to a package `view` shows.
    pub async fn shard_visible(
        &self,
        up: &Upstreams,
        channel: &Channel,
        path: &ChannelPath,
        view: &View,
        hash: &[u8; 32],
    ) -> Result<bool, Error> {
        let View::Restricted(visible) = view else {
            return Ok(true);
        };
        let index_path = ChannelPath { file: FileKind::ShardIndex, token: None, ..path.clone() }.upstream_path();
        let held = match self.document(up, channel, &index_path).await {
            Ok(h) => h,
            Err(Error::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(held.shard_names.as_ref().and_then(|m| m.get(hash)).is_some_and(|name| visible.allows(name)))
    }

    /// Serves a repodata form (`repodata.json[.zst|.bz2]`, `current_repodata.json`, the shard index) for `view`.
    /// `Ok(None)` means "serve the upstream file as it is".
    pub async fn serve(
        &self,
        up: &Upstreams,
        channel: &Channel,
        path: &ChannelPath,
        view: &View,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Option<Response<Body>>, Error> {
        let (form, source_file) = match path.file {
            FileKind::RepodataJson => (Form::Json, FileKind::RepodataJson),
            FileKind::CurrentRepodata => (Form::Json, FileKind::CurrentRepodata),
            FileKind::RepodataZst => (Form::Zst, FileKind::RepodataJson),
            // A filtered .bz2 would cost a slow compression for a form every client can do without: clients that
            // get 404 fall back to .zst or .json (PROTOCOL.md), so restricted or rewritten views answer 404.
            FileKind::RepodataBz2 => (Form::Json, FileKind::RepodataJson),
            FileKind::ShardIndex => (Form::ShardIndex, FileKind::ShardIndex),
            FileKind::Shard(_) | FileKind::Package(_) | FileKind::Notices => return Ok(None),
        };
        let source = ChannelPath { file: source_file.clone(), token: None, ..path.clone() }.upstream_path();
        let held = match self.document(up, channel, &source).await {
            Ok(h) => h,
            // An upstream that has only repodata.json.zst: serve it as it is when that is allowed.
            Err(Error::NotFound) if form == Form::Zst && matches!(view, View::Full) => return Ok(None),
            Err(e) => return Err(e),
        };
        let fingerprint = match view {
            // The document is in memory already: serve its bytes as they are, with the upstream's validator.
            View::Full if !held.absolute_base_url && source_file == path.file => {
                let etag = quoted_etag(&held.doc.validator);
                return Ok(Some(respond(&held.doc.bytes, &etag, held.doc.modified, method, headers)?));
            }
            View::Full if !held.absolute_base_url => return Ok(None),
            View::Full => None,
            View::Restricted(v) => Some(v.fingerprint),
        };
        if path.file == FileKind::RepodataBz2 {
            return Err(Error::NotFound);
        }
        let key =
            ViewKey { channel: channel.name.clone(), source, validator: held.doc.validator.clone(), form, fingerprint };
        let rendered = match self.cache.get_value_or_guard_async(&key).await {
            Ok(r) => {
                self.hits.fetch_add(1, Relaxed);
                r
            }
            Err(guard) => {
                self.misses.fetch_add(1, Relaxed);
                let r = Arc::new(render(&held, &key, view).await?);
                let _ = guard.insert(Arc::clone(&r));
                r
            }
        };
        Ok(Some(respond(&rendered.bytes, &rendered.etag, None, method, headers)?))
    }
}

async fn render(held: &Arc<Held>, key: &ViewKey, view: &View) -> Result<Rendered, Error> {
    let held = Arc::clone(held);
    let view = view.clone();
    let form = key.form;
    let etag = view_etag(&key.validator, key.fingerprint, form);
    // Filtering a large document is CPU work: keep it off the reactor threads.
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let allow = |name: &str| view.allows(name);
        match form {
            Form::ShardIndex => {
                let idx = held.index.as_ref().ok_or("shard index not decoded")?;
                idx.encode_filtered(&allow).map_err(|e| e.to_string())
            }
            Form::Json | Form::Zst => {
                let mut out = Vec::new();
                filter::filter_repodata(&held.doc.bytes, &allow, &mut out).map_err(|e| e.to_string())?;
                if form == Form::Zst {
                    out = zstd::bulk::compress(&out, 3).map_err(|e| e.to_string())?;
                }
                Ok(out)
            }
        }
    })
    .await
    .map_err(|e| Error::Internal(format!("view task: {e}")))?
    .map_err(|e| Error::Upstream(format!("{}: cannot filter: {e}", key.source)))?;
    Ok(Rendered { bytes: Bytes::from(bytes), etag })
}

/// An upstream validator as a strong ETag: kept when it is one, else a digest of it (a Last-Modified date).
fn quoted_etag(validator: &str) -> String {
    if validator.starts_with('"') && validator.ends_with('"') && validator.len() >= 2 {
        validator.to_owned()
    } else {
        format!("\"u-{}\"", hex::encode(&Sha256::digest(validator.as_bytes())[..12]))
    }
}

/// Answers from bytes in memory: validators, 304, ranges, HEAD. Filtered views pass no `modified`: a view also
/// changes when the visible set does, which no upstream date shows, so clients revalidate by the ETag.
fn respond(
    bytes: &Bytes,
    etag: &str,
    modified: Option<std::time::SystemTime>,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response<Body>, Error> {
    let mut resp = Response::new(empty());
    let h = resp.headers_mut();
    h.insert(ETAG, HeaderValue::from_str(etag).map_err(|e| Error::Internal(e.to_string()))?);
    if let Some(v) = modified.and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()) {
        h.insert(http::header::LAST_MODIFIED, v);
    }
    if conditional::not_modified(headers, etag, modified) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(resp);
    }
    let len = bytes.len() as u64;
    let body = match conditional::range(headers, len, etag, modified) {
        RangeAsk::Whole => bytes.clone(),
        RangeAsk::Unsatisfiable => return Err(Error::RangeNotSatisfiable { size: len }),
        RangeAsk::Part { start, end } => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                resp.headers_mut().insert(CONTENT_RANGE, v);
            }
            bytes.slice(start as usize..=end as usize)
        }
    };
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if method != Method::HEAD {
        *resp.body_mut() = full(body);
    }
    Ok(resp)
}
