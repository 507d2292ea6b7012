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
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, Method, Response};
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use sha2::{Digest as _, Sha256};

use crate::clock;
use crate::conda::filter::ShardIndex;
use crate::conda::route::{ChannelPath, FileKind};
use crate::conda::spans::Spans;
use crate::config::{Channel, Source};
use crate::error::{Error, UpstreamError};
use crate::http::body::Body;
use crate::http::conditional::{self, quoted_etag, Validators};
use crate::policy::Grant;
use crate::upstream::{Document, Refetch, Upstream};

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
    validators: Validators,
    /// The length of the JSON it holds (before compression): what rendering it again would cost.
    json_len: usize,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<ViewKey, Arc<Rendered>> for ByBytes {
    fn weight(&self, key: &ViewKey, val: &Arc<Rendered>) -> u64 {
        (val.bytes.len() + key.source.len() + key.validator.len() + 128) as u64
    }
}

/// An upstream document as last fetched, and what was derived from it.
struct Held {
    /// The document as last fetched: its validator is what the upstream is asked with.
    doc: Document,
    /// The validator of the first fetch of these bytes: views are keyed by it and answered with the ETag it makes,
    /// so a new validator for the same bytes (a `touch`) changes neither.
    generation: String,
    /// Where it came from: a reload may point a channel elsewhere.
    source: Source,
    /// The upstream's validators, as served for a full view.
    validators: Validators,
    /// When the upstream last confirmed this version, in nanoseconds after [`Views::epoch`]. An atomic rather than a
    /// lock, as every request for the document reads it.
    checked: AtomicU64,
    absolute_base_url: bool,
    shard_names: Option<Arc<std::collections::HashMap<[u8; 32], String>>>,
    index: Option<Arc<ShardIndex>>,
    /// For a JSON document: where each package's records are, so a view costs what it holds.
    spans: Option<Arc<Spans>>,
    /// The generation this one replaced (same channel source and path): its big views are served while the new
    /// ones render.
    previous_generation: Option<String>,
}

/// The view cache and the upstream documents it is computed from.
pub struct Views {
    cache: Arc<Cache<ViewKey, Arc<Rendered>, ByBytes>>,
    /// Upstream documents by channel name, then path.
    /// Read by every repodata request and changed only when a document is fetched, so it is swapped whole rather
    /// than locked: reading it writes to nothing other threads share.
    docs: ArcSwap<Docs>,
    loading: DashMap<(String, String), Arc<Gate>>,
    /// Bounds the documents fetched and parsed at once, whatever their number: each may be hundreds of megabytes.
    loads: tokio::sync::Semaphore,
    /// Bounds the views rendered at once (one per core): each holds its output until it is cached, so cold renders
    /// of many distinct permission sets add at most this many views' bytes at a time.
    renders: Arc<tokio::sync::Semaphore>,
    /// Views rendered in the background while the previous generation's copy is served: one render per key.
    rendering: Arc<DashMap<ViewKey, ()>>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// How long a held document is trusted without asking the upstream (`upstream.recheck`).
    recheck: Duration,
    /// What `Held::checked` counts from.
    epoch: Instant,
}

/// What a fetched document turned out to be.
enum Parsed {
    /// The bytes of the version held: only its stamp or validator moved.
    Same(Document, Arc<Held>),
    /// A new version, scanned (and, for a shard index, decoded).
    New {
        doc: Document,
        absolute_base_url: bool,
        shard_names: Option<Arc<std::collections::HashMap<[u8; 32], String>>>,
        index: Option<Arc<ShardIndex>>,
        spans: Option<Arc<Spans>>,
    },
}

/// Compares a fetched document with the version held and scans a new one. Blocking: a large document takes a pass
/// over hundreds of megabytes.
fn parse(doc: Document, previous: Option<Arc<Held>>, channel: &str, rel: &str) -> Result<Parsed, Error> {
    debug_assert!(!crate::http::workers::on_a_serving_thread(), "a document parsed on a serving thread");
    if let Some(previous) = previous.filter(|p| p.doc.bytes == doc.bytes) {
        return Ok(Parsed::Same(doc, previous));
    }
    let bad = |e: String| Error::Upstream(UpstreamError::caused_by(format!("{channel}: {rel}"), e));
    if rel.ends_with("repodata_shards.msgpack.zst") {
        let idx = ShardIndex::decode(&doc.bytes).map_err(|e| bad(e.to_string()))?;
        let (abs, names) = (idx.has_absolute_urls(), Some(Arc::new(idx.names_by_hash())));
        let index = Some(Arc::new(idx));
        return Ok(Parsed::New { doc, absolute_base_url: abs, shard_names: names, index, spans: None });
    }
    let spans = Spans::index(&doc.bytes).map_err(|e| bad(e.to_string()))?;
    let abs = spans.has_absolute_base_url();
    Ok(Parsed::New { doc, absolute_base_url: abs, shard_names: None, index: None, spans: Some(Arc::new(spans)) })
}

/// Views holding more JSON than this are, after an upstream change, served from the previous generation while the
/// new one renders; smaller ones render in a few milliseconds, and are waited for.
pub const STALE_WHILE_RENDER: usize = 8 << 20;

/// Documents fetched and parsed at once, at most.
pub const MAX_CONCURRENT_LOADS: usize = 4;

/// One document's fetches: one at a time, and the outcome of the last shared with those that waited for it.
#[derive(Default)]
struct Gate {
    /// Fetches finished through this gate.
    attempts: AtomicU64,
    /// Held while fetching; holds the last fetch's failure.
    turn: tokio::sync::Mutex<Option<Error>>,
}

/// A document's turn to be fetched, shared by the requests that want it at the same time. The last one to leave
/// removes it, so paths asked for once (a subdir a channel lacks, say) leave nothing behind.
struct LoadGate<'a> {
    views: &'a Views,
    key: (String, String),
    lock: Arc<Gate>,
}

impl<'a> LoadGate<'a> {
    fn new(views: &'a Views, key: (String, String)) -> Self {
        let lock = Arc::clone(views.loading.entry(key.clone()).or_default().value());
        LoadGate { views, key, lock }
    }
}

impl Drop for LoadGate<'_> {
    fn drop(&mut self) {
        // Two references left (the map's and this one) means no other request holds the gate; the map's shard lock
        // keeps a new request from taking it meanwhile.
        self.views
            .loading
            .remove_if(&self.key, |_, lock| Arc::ptr_eq(lock, &self.lock) && Arc::strong_count(lock) == 2);
    }
}

/// Held documents by channel name, then path. hashbrown's maps hash with foldhash: they are read on every repodata
/// request, with keys from the config and existing files only.
type Docs = hashbrown::HashMap<String, hashbrown::HashMap<String, Arc<Held>>>;

fn view_etag(validator: &str, fingerprint: Option<[u8; 16]>, form: Form) -> String {
    let mut h = Sha256::new();
    h.update(validator.as_bytes());
    h.update(fingerprint.unwrap_or([0xff; 16]));
    h.update([form as u8]);
    format!("\"v-{}\"", hex::encode(&h.finalize()[..16]))
}

impl Views {
    /// An empty cache holding at most `max_bytes` of rendered views.
    pub fn new(max_bytes: u64, recheck: Duration) -> Self {
        // quick_cache wants an item count estimate for sizing; views are few and large.
        // One shard: quick_cache refuses an entry heavier than its shard, and split by core count a shard is a
        // fraction of `max_bytes` (an eighth on 2 cores), so the biggest views, the costliest to render, were never
        // kept. Lookups take the shard's read lock only.
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(1024)
            .weight_capacity(max_bytes.max(1))
            .shards(1)
            .build()
            .expect("the view cache options are valid");
        let cache = Cache::with_options(options, ByBytes, Default::default(), Default::default());
        Views {
            cache: Arc::new(cache),
            rendering: Arc::default(),
            docs: ArcSwap::default(),
            epoch: Instant::now(),
            loading: DashMap::new(),
            loads: tokio::sync::Semaphore::new(MAX_CONCURRENT_LOADS),
            renders: Arc::new(tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, usize::from))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            recheck,
        }
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
    async fn document(&self, up: &dyn Upstream, channel: &Channel, rel: &str) -> Result<Arc<Held>, Error> {
        if let Some(h) = self.current(up, channel, rel)? {
            return Ok(h);
        }
        // Boxed: the fetch is the cold path, and its state would make every request's future larger.
        Box::pin(self.load(up, channel, rel)).await
    }

    /// Fetches a document that is not held, or has changed, and holds it.
    async fn load(&self, up: &dyn Upstream, channel: &Channel, rel: &str) -> Result<Arc<Held>, Error> {
        // One fetch per document at a time: a burst of first requests reads a large repodata once, not once each.
        // Requests that waited for another's fetch take its outcome, failure included: a mirror that just timed out is
        // not asked again once per waiting request, each waiting out the timeout in turn.
        let gate = LoadGate::new(self, (channel.name.clone(), rel.to_owned()));
        let before = gate.lock.attempts.load(Relaxed);
        let mut turn = gate.lock.turn.lock().await;
        if gate.lock.attempts.load(Relaxed) != before {
            if let Some(e) = turn.as_ref() {
                return Err(e.clone());
            }
        }
        if let Some(h) = self.current(up, channel, rel)? {
            return Ok(h);
        }
        let result = {
            let _slot = self.loads.acquire().await.map_err(|_| Error::Internal("the load bound is closed".into()))?;
            self.fetch(up, channel, rel).await
        };
        *turn = result.as_ref().err().cloned();
        gate.lock.attempts.fetch_add(1, Relaxed);
        result
    }

    /// Asks the upstream for a document and holds what comes back.
    async fn fetch(&self, up: &dyn Upstream, channel: &Channel, rel: &str) -> Result<Arc<Held>, Error> {
        let held = self.held(channel, rel);
        match up.document(rel, held.as_ref().map(|h| h.doc.validator.as_str())).await {
            Ok(Refetch::Unchanged) => {
                let h = held.ok_or_else(|| Error::Internal("unchanged document not held".into()))?;
                h.checked.store(self.now(), Relaxed);
                Ok(h)
            }
            Ok(Refetch::Changed(doc)) => {
                // Comparing, scanning and decoding walk the whole document: off the serving threads.
                let (previous, name, path) = (held.clone(), channel.name.clone(), rel.to_owned());
                let parsed = tokio::task::spawn_blocking(move || parse(doc, previous, &name, &path))
                    .await
                    .map_err(|e| Error::Internal(format!("document task: {e}")))??;
                let held = match parsed {
                    Parsed::Same(doc, previous) => {
                        // The same bytes under a new stamp or validator (a `touch`, a re-sync writing the same file):
                        // the previous generation stays, with its ETag, so every view made from it stays too; the
                        // upstream is asked with the new validator from now on.
                        Arc::new(Held {
                            generation: previous.generation.clone(),
                            doc,
                            source: channel.source.clone(),
                            validators: previous.validators.clone(),
                            checked: AtomicU64::new(self.now()),
                            absolute_base_url: previous.absolute_base_url,
                            shard_names: previous.shard_names.clone(),
                            index: previous.index.clone(),
                            spans: previous.spans.clone(),
                            previous_generation: previous.previous_generation.clone(),
                        })
                    }
                    Parsed::New { doc, absolute_base_url, shard_names, index, spans } => {
                        let previous_generation =
                            held.as_ref().filter(|p| p.source == channel.source).map(|p| p.generation.clone());
                        let validators =
                            Validators::new(&quoted_etag(&doc.validator), doc.modified).map_err(bad_etag)?;
                        Arc::new(Held {
                            generation: doc.validator.clone(),
                            doc,
                            source: channel.source.clone(),
                            validators,
                            checked: AtomicU64::new(self.now()),
                            absolute_base_url,
                            shard_names,
                            index,
                            spans,
                            previous_generation,
                        })
                    }
                };
                self.docs.rcu(|docs| {
                    let mut docs = Docs::clone(docs);
                    docs.entry(channel.name.clone()).or_default().insert(rel.to_owned(), Arc::clone(&held));
                    docs
                });
                Ok(held)
            }
            Err(e) => {
                if matches!(e, Error::NotFound) {
                    self.forget(channel, rel);
                }
                Err(e)
            }
        }
    }

    /// The document held for `rel` of `channel`, if it came from the channel's current source.
    fn held(&self, channel: &Channel, rel: &str) -> Option<Arc<Held>> {
        let docs = self.docs.load();
        let h = docs.get(&channel.name)?.get(rel)?;
        (h.source == channel.source).then(|| Arc::clone(h))
    }

    fn forget(&self, channel: &Channel, rel: &str) {
        // A path that was never held (a subdir the channel lacks, asked for by every client) changes nothing: the
        // map is copied only to drop something.
        let holds = |docs: &Docs| docs.get(&channel.name).is_some_and(|held| held.contains_key(rel));
        if !holds(&self.docs.load()) {
            return;
        }
        self.docs.rcu(|docs| {
            let mut docs = Docs::clone(docs);
            if let Some(held) = docs.get_mut(&channel.name) {
                held.remove(rel);
            }
            docs
        });
    }

    /// Nanoseconds since `epoch`.
    fn now(&self) -> u64 {
        clock::nanos_after(self.epoch, Instant::now())
    }

    /// The held document if it is known to be current without fetching: checked within `upstream.recheck` (or
    /// within the `max-age` an HTTP upstream gave), or a local file whose modification time and size still match.
    fn current(&self, up: &dyn Upstream, channel: &Channel, rel: &str) -> Result<Option<Arc<Held>>, Error> {
        let Some(h) = self.held(channel, rel) else {
            return Ok(None);
        };
        let fresh_for = h.doc.max_age.unwrap_or(self.recheck);
        let age = Duration::from_nanos(self.now().saturating_sub(h.checked.load(Relaxed)));
        if age < fresh_for {
            return Ok(Some(h));
        }
        match up.unchanged(rel, &h.doc) {
            None | Some(Ok(false)) => Ok(None),
            Some(Ok(true)) => {
                h.checked.store(self.now(), Relaxed);
                Ok(Some(h))
            }
            Some(Err(e)) => {
                self.forget(channel, rel);
                Err(e)
            }
        }
    }

    /// Whether shard `hash` of the path's subdir belongs to a package `view` shows.
    pub async fn shard_visible(
        &self,
        up: &dyn Upstream,
        channel: &Channel,
        path: &ChannelPath,
        view: &Grant,
        hash: &[u8; 32],
    ) -> Result<bool, Error> {
        let Grant::Restricted(visible) = view else {
            return Ok(true);
        };
        let index_path = path.upstream_path_for(&FileKind::ShardIndex);
        let held = match self.document(up, channel, &index_path).await {
            Ok(h) => h,
            Err(Error::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(held.shard_names.as_ref().and_then(|m| m.get(hash)).is_some_and(|name| visible.allows(name)))
    }

    /// The previous generation's copy of the view `key` asks for, when there is one and it is big enough that
    /// waiting for a new render would be felt ([`STALE_WHILE_RENDER`]).
    fn previous_view(&self, held: &Held, key: &ViewKey) -> Option<Arc<Rendered>> {
        let previous = held.previous_generation.as_ref()?;
        let old = ViewKey { validator: previous.clone(), ..key.clone() };
        self.cache.get(&old).filter(|r| r.json_len > STALE_WHILE_RENDER)
    }

    /// Renders `key` on its own task and caches it, unless that is under way already.
    fn render_in_background(&self, held: &Arc<Held>, key: &ViewKey, view: &Grant) {
        if self.rendering.insert(key.clone(), ()).is_some() {
            return;
        }
        let (cache, renders, rendering) =
            (Arc::clone(&self.cache), Arc::clone(&self.renders), Arc::clone(&self.rendering));
        let (held, key, view) = (Arc::clone(held), key.clone(), view.clone());
        tokio::spawn(async move {
            if let Ok(_turn) = renders.acquire_owned().await {
                match render(&held, &key, &view).await {
                    Ok(r) => cache.insert(key.clone(), Arc::new(r)),
                    Err(e) => {
                        tracing::warn!(channel = %key.channel, source = %key.source, error = %e, "a view could not be rendered")
                    }
                }
            }
            rendering.remove(&key);
        });
    }

    /// Serves a repodata form (`repodata.json[.zst|.bz2]`, `current_repodata.json`, the shard index) for `view`.
    /// `Ok(None)` means "serve the upstream file as it is".
    pub async fn serve(
        &self,
        up: &dyn Upstream,
        channel: &Channel,
        path: &ChannelPath,
        view: &Grant,
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
        let source = path.upstream_path_for(&source_file);
        let held = match self.document(up, channel, &source).await {
            Ok(h) => h,
            // An upstream that has only repodata.json.zst: serve it as it is when that is allowed.
            Err(Error::NotFound) if form == Form::Zst && matches!(view, Grant::Full) => return Ok(None),
            Err(e) => return Err(e),
        };
        let fingerprint = match view {
            // The document is in memory already: serve its bytes as they are, with the upstream's validator.
            Grant::Full if !held.absolute_base_url && source_file == path.file => {
                return Ok(Some(with_age(respond(&held.doc.bytes, &held.validators, method, headers)?, &held.doc)));
            }
            Grant::Full if !held.absolute_base_url => return Ok(None),
            Grant::Full => None,
            Grant::Restricted(v) => Some(v.fingerprint),
        };
        if path.file == FileKind::RepodataBz2 {
            return Err(Error::NotFound);
        }
        let key = ViewKey {
            channel: channel.name.clone(),
            source: source.into_owned(),
            validator: held.generation.clone(),
            form,
            fingerprint,
        };
        let rendered = match self.cache.get_value_or_guard_async(&key).await {
            Ok(r) => {
                self.hits.fetch_add(1, Relaxed);
                r
            }
            Err(guard) => {
                self.misses.fetch_add(1, Relaxed);
                if let Some(stale) = self.previous_view(&held, &key) {
                    // A big view of the generation before: served while the new one renders in the background.
                    drop(guard);
                    self.render_in_background(&held, &key, view);
                    return Ok(Some(with_age(respond(&stale.bytes, &stale.validators, method, headers)?, &held.doc)));
                }
                let _turn =
                    self.renders.acquire().await.map_err(|_| Error::Internal("the render bound is closed".into()))?;
                let r = Arc::new(Box::pin(render(&held, &key, view)).await?);
                let _ = guard.insert(Arc::clone(&r));
                r
            }
        };
        Ok(Some(with_age(respond(&rendered.bytes, &rendered.validators, method, headers)?, &held.doc)))
    }
}

/// Answers from bytes in memory; a range outside them is a 416.
fn respond(bytes: &Bytes, v: &Validators, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, Error> {
    conditional::respond(bytes, v, method, headers).ok_or(Error::RangeNotSatisfiable { size: bytes.len() as u64 })
}

fn bad_etag(e: http::header::InvalidHeaderValue) -> Error {
    Error::Internal(format!("an ETag that is no header value: {e}"))
}

/// Adds `Age` to a response made from a document the upstream cache holds: how long ago the upstream last
/// confirmed it. It grows while the upstream is down and the cached copy is served.
fn with_age(mut resp: Response<Body>, doc: &Document) -> Response<Body> {
    if let Some(age) = doc.age() {
        resp.headers_mut().insert(http::header::AGE, http::HeaderValue::from(age));
    }
    resp
}

/// Views up to this size are compressed at zstd's level 3, as conda-forge's own `.zst` files are; bigger ones at
/// level 1 on several threads (see [`zst_settings`]).
pub const ZST_SMALL_VIEW: usize = 8 << 20;

/// The zstd level and worker threads for a view of `len` JSON bytes. A view's `.zst` is one zstd frame, compressed
/// as the view is assembled: clients read only the first frame of a `.zst` (py-rattler 0.28 stops there, and so
/// does python-zstandard's `decompress`), so a view cannot be stitched from frames made in advance. Up to
/// [`ZST_SMALL_VIEW`]: level 3 on the rendering thread. Beyond: level 1 (about half level 3's CPU time on
/// repodata, for a file of about the same size), split over up to four of zstd's threads within the one frame.
pub fn zst_settings(len: usize) -> (i32, u32) {
    if len <= ZST_SMALL_VIEW {
        return (3, 0);
    }
    (1, std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4) as u32)
}

async fn render(held: &Arc<Held>, key: &ViewKey, view: &Grant) -> Result<Rendered, Error> {
    let held = Arc::clone(held);
    let view = view.clone();
    let form = key.form;
    let etag = view_etag(&key.validator, key.fingerprint, form);
    // Filtering a large document is CPU work: keep it off the reactor threads.
    let (bytes, json_len) = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, usize), String> {
        debug_assert!(!crate::http::workers::on_a_serving_thread(), "a view rendered on a serving thread");
        let allow = |name: &str| view.allows(name);
        match form {
            Form::ShardIndex => {
                let idx = held.index.as_ref().ok_or("shard index not decoded")?;
                idx.encode_filtered(&allow).map(|b| (b, 0)).map_err(|e| e.to_string())
            }
            Form::Json => {
                let spans = held.spans.as_ref().ok_or("repodata not indexed")?;
                let mut out = Vec::new();
                spans.render(&held.doc.bytes, &allow, &mut out);
                let len = out.len();
                Ok((out, len))
            }
            Form::Zst => {
                let spans = held.spans.as_ref().ok_or("repodata not indexed")?;
                let len = spans.view_len(&allow);
                let (level, workers) = zst_settings(len);
                spans.render_zst(&held.doc.bytes, &allow, level, workers).map(|b| (b, len)).map_err(|e| e.to_string())
            }
        }
    })
    .await
    .map_err(|e| Error::Internal(format!("view task: {e}")))?
    .map_err(|e| Error::Upstream(UpstreamError::caused_by(format!("{}: cannot filter", key.source), e)))?;
    // No Last-Modified on a view: it also changes when the visible set does, which no upstream date shows, so
    // clients revalidate by the ETag, which covers both.
    Ok(Rendered { bytes: Bytes::from(bytes), validators: Validators::new(&etag, None).map_err(bad_etag)?, json_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn paths_that_do_not_exist_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("channels/c/noarch")).unwrap();
        let repodata = r#"{"info":{"subdir":"noarch"},"packages":{},"packages.conda":{}}"#;
        std::fs::write(dir.path().join("channels/c/noarch/repodata.json"), repodata).unwrap();
        let text = "[upstream]\ndir = \"channels\"\n[[channels]]\nname = \"c\"\naccess = \"public\"\n";
        let cfg = Config::from_toml_str(text, dir.path()).unwrap();
        let channel = cfg.channel("c").unwrap();
        let up =
            crate::upstream::Upstreams::new(cfg.upstream_timeouts, cfg.upstream_max_document).open(&channel.source);
        let views = Views::new(1 << 20, Duration::from_secs(1));
        for i in 0..50 {
            let missing = views.document(&*up, channel, &format!("sub-{i}/repodata.json")).await;
            assert!(matches!(missing, Err(Error::NotFound)), "{:?}", missing.err());
        }
        assert!(views.document(&*up, channel, "noarch/repodata.json").await.is_ok());
        assert_eq!(views.loading.len(), 0, "load gates left behind");
        assert_eq!(views.docs.load().get("c").map_or(0, |d| d.len()), 1, "only the document that exists is held");
    }

    #[test]
    fn a_big_view_compresses_to_one_frame_that_decodes_to_it() {
        let mut doc = b"{\"packages\":{".to_vec();
        let mut i = 0u64;
        while doc.len() <= 2 * ZST_SMALL_VIEW {
            doc.extend_from_slice(
                format!("\"p{i}-1.0-0.conda\":{{\"name\":\"p{i}\",\"size\":{}}},", i * 7919).as_bytes(),
            );
            i += 1;
        }
        doc.extend_from_slice(b"\"z-1-0.conda\":{}}}");
        let spans = Spans::index(&doc).unwrap();
        // Every name but a few: a view above the small-view size, so compressed on zstd's threads.
        let allow = |n: &str| !n.ends_with('7');
        let len = spans.view_len(&allow);
        assert!(len > ZST_SMALL_VIEW);
        let (level, workers) = zst_settings(len);
        let zst = spans.render_zst(&doc, &allow, level, workers).unwrap();
        let mut one = Vec::new();
        let mut d = zstd::stream::read::Decoder::new(&zst[..]).unwrap().single_frame();
        std::io::Read::read_to_end(&mut d, &mut one).unwrap();
        let mut json = Vec::new();
        spans.render(&doc, &allow, &mut json);
        assert!(one == json, "the first frame holds the whole view");
    }

    #[test]
    fn a_view_almost_as_big_as_the_cache_is_kept() {
        let max = 8 << 20;
        let views = Views::new(max, Duration::from_secs(1));
        let key = |n: u8| ViewKey {
            channel: "c".into(),
            source: "noarch/repodata.json".into(),
            validator: format!("v{n}"),
            form: Form::Json,
            fingerprint: Some([n; 16]),
        };
        let rendered = |len: usize| {
            Arc::new(Rendered {
                bytes: Bytes::from(vec![b' '; len]),
                validators: Validators::new("\"e\"", None).unwrap(),
                json_len: len,
            })
        };
        // Nine tenths of the cache: more than any one of several shards would hold.
        views.cache.insert(key(1), rendered(max as usize * 9 / 10));
        assert!(views.cache.get(&key(1)).is_some(), "a big view was refused by the cache");
        // A second big one evicts the first rather than being refused.
        views.cache.insert(key(2), rendered(max as usize * 9 / 10));
        assert!(views.cache.get(&key(2)).is_some());
        assert!(views.bytes() <= max, "{} bytes held of {max}", views.bytes());
    }
}
