//! Single-flight fills of immutable files (packages and shards): one upstream GET however many clients ask at once,
//! written to a partial file that every one of them reads as it grows, verified, then renamed into place.
//!
//! The fill runs as its own task, so a client that leaves does not cancel it. Every client, the first included,
//! reads the bytes back from the partial file (from the page cache, in practice), and each holds back the last byte
//! it owes until the fill is verified: a transfer whose bytes did not match the expected sha256 is aborted, never
//! ended cleanly with wrong bytes, whatever its `Content-Length` or range.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, TryStreamExt};
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::disk::{lock, now_secs, Disk};
use crate::error::{Error, UpstreamError};
use crate::http::body::{empty, Body, BoxError};
use crate::http::conditional::{self, RangeAsk};
use crate::stamp::file_etag;
use crate::upstream::Upstream;

/// Bytes written, and read back, at a time.
const CHUNK: usize = 256 * 1024;

/// The fills under way, by key; shared by every channel's cached upstream.
#[derive(Debug, Default, Clone)]
pub struct Fills(Arc<Mutex<HashMap<String, Arc<Fill>>>>);

/// One fill under way.
#[derive(Debug)]
pub struct Fill {
    progress: watch::Sender<Progress>,
}

/// What a fill has done so far.
#[derive(Debug, Default, Clone)]
struct Progress {
    /// The upstream's answer, once it came.
    head: Option<Arc<Head>>,
    /// Bytes in the partial file.
    written: u64,
    /// `Ok` once verified and in place; `Err` when the fill failed (before or after the head).
    outcome: Option<Result<(), Error>>,
}

/// The upstream's answer to the fill's GET.
#[derive(Debug)]
struct Head {
    /// Its `Content-Length`, when it sent one.
    len: Option<u64>,
    /// Its `Last-Modified` (to the second), or when the fill began: the cached file gets it as modification time,
    /// so that it keeps the ETag served while it was filled.
    modified: SystemTime,
    /// The partial file, read by position (the handle stays valid after the rename).
    file: Arc<File>,
}

/// What a request for a file finds.
pub enum Found {
    /// The file is in the cache.
    Cached,
    /// A fill to read from (joined, or just started).
    Filling(Arc<Fill>),
}

/// Everything a fill needs, moved into its task.
pub struct Job {
    /// Where the file goes.
    pub disk: Arc<Disk>,
    /// The upstream.
    pub inner: Arc<dyn Upstream>,
    /// `<source folder>/<rel>`.
    pub key: String,
    /// The path at the upstream.
    pub rel: String,
    /// The sha256 the bytes must have.
    pub expected: [u8; 32],
}

impl Fills {
    /// The fill under way for `key`, if any.
    pub fn get(&self, key: &str) -> Option<Arc<Fill>> {
        lock(&self.0).get(key).cloned()
    }

    /// The fill under way for `job.key`, or the cached file (checked under the same lock, so that a fill that has
    /// just finished is never started again), or a fill started now.
    pub fn join_or_start(&self, job: Job) -> Found {
        let mut fills = lock(&self.0);
        if let Some(f) = fills.get(&job.key) {
            return Found::Filling(Arc::clone(f));
        }
        if job.disk.path(&job.key).is_file() {
            return Found::Cached;
        }
        let (tx, _) = watch::channel(Progress::default());
        let fill = Arc::new(Fill { progress: tx });
        fills.insert(job.key.clone(), Arc::clone(&fill));
        job.disk.stats.fetches.fetch_add(1, Relaxed);
        tokio::spawn(run(self.clone(), Arc::clone(&fill), job));
        Found::Filling(fill)
    }
}

/// Runs a fill to its end and publishes the outcome; the fill leaves the map only once its file is in place.
async fn run(fills: Fills, fill: Arc<Fill>, job: Job) {
    let outcome = write(&job, &fill.progress).await;
    if let Err(e) = &outcome {
        tracing::warn!(file = %job.rel, error = %crate::error::chain(e), "the upstream cache could not fill a file");
    }
    fill.progress.send_modify(|p| p.outcome = Some(outcome));
    lock(&fills.0).remove(&job.key);
}

fn failed(job: &Job, what: impl std::fmt::Display) -> Error {
    Error::Upstream(UpstreamError::new(format!("{}: {what}", job.rel)))
}

/// Fetches, writes, verifies and commits one file.
async fn write(job: &Job, progress: &watch::Sender<Progress>) -> Result<(), Error> {
    let resp = job.inner.get(&job.rel, &Method::GET, &HeaderMap::new()).await?;
    if resp.status() != StatusCode::OK {
        return Err(failed(job, format!("status {}", resp.status())));
    }
    let len = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let modified = resp
        .headers()
        .get(LAST_MODIFIED)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok())
        .unwrap_or_else(|| SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs()));
    let partial = job.disk.partial_path();
    let path = partial.clone();
    let file = blocking(move || File::options().read(true).write(true).create_new(true).open(path)).await?;
    let file = Arc::new(file);
    progress.send_modify(|p| p.head = Some(Arc::new(Head { len, modified, file: Arc::clone(&file) })));
    let result = copy(job, resp.into_body(), &file, progress).await;
    let result = match result {
        Ok((written, digest)) => commit(job, &file, &partial, written, digest, len, modified).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = blocking(move || std::fs::remove_file(partial)).await;
    }
    result
}

/// Streams the upstream body into the partial file, publishing progress as it goes; returns the bytes written and
/// their sha256. Bytes are written in chunks of up to [`CHUNK`], and whenever the upstream has nothing more ready, so
/// that readers of a slow upstream are not kept waiting for a chunk to fill.
async fn copy(
    job: &Job,
    mut body: Body,
    file: &Arc<File>,
    progress: &watch::Sender<Progress>,
) -> Result<(u64, [u8; 32]), Error> {
    let mut hasher = Sha256::new();
    let mut pending = BytesMut::with_capacity(CHUNK);
    let mut written = 0u64;
    loop {
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                written = flush(job, file, progress, &mut pending, written).await?;
                body.frame().await
            }
        };
        let Some(frame) = frame else {
            written = flush(job, file, progress, &mut pending, written).await?;
            return Ok((written, hasher.finalize().into()));
        };
        let frame = frame.map_err(|e| Error::Upstream(UpstreamError::caused_by(job.rel.clone(), e)))?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            pending.extend_from_slice(&data);
        }
        if pending.len() >= CHUNK {
            written = flush(job, file, progress, &mut pending, written).await?;
        }
    }
}

/// Writes what is pending at `written` and publishes the new length; returns it.
async fn flush(
    job: &Job,
    file: &Arc<File>,
    progress: &watch::Sender<Progress>,
    pending: &mut BytesMut,
    written: u64,
) -> Result<u64, Error> {
    if pending.is_empty() {
        return Ok(written);
    }
    let chunk = pending.split().freeze();
    let n = chunk.len() as u64;
    let f = Arc::clone(file);
    blocking(move || f.write_all_at(&chunk, written)).await?;
    job.disk.stats.filled_bytes.fetch_add(n, Relaxed);
    progress.send_modify(|p| p.written = written + n);
    Ok(written + n)
}

/// Checks length and digest, then puts the file in place and counts it.
async fn commit(
    job: &Job,
    file: &Arc<File>,
    partial: &std::path::Path,
    written: u64,
    digest: [u8; 32],
    len: Option<u64>,
    modified: SystemTime,
) -> Result<(), Error> {
    if len.is_some_and(|l| l != written) {
        return Err(failed(job, format!("the upstream sent {written} bytes of {}", len.unwrap_or_default())));
    }
    if digest != job.expected {
        job.disk.stats.verify_failures.fetch_add(1, Relaxed);
        tracing::warn!(
            file = %job.rel,
            expected = %hex::encode(job.expected),
            got = %hex::encode(digest),
            "an upstream file does not match the sha256 of its repodata: not cached, the transfers aborted"
        );
        return Err(failed(job, "the bytes do not match the expected sha256"));
    }
    let (disk, key, f, partial) = (Arc::clone(&job.disk), job.key.clone(), Arc::clone(file), partial.to_path_buf());
    blocking(move || {
        // The modification time keeps the ETag served while filling; the access time is when it was cached, which
        // orders eviction after a restart (with relatime the kernel moves it on when the file is read again, at
        // most daily).
        f.set_times(std::fs::FileTimes::new().set_modified(modified).set_accessed(SystemTime::now()))?;
        f.sync_data()?;
        let path = disk.path(&key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&partial, &path)?;
        disk.committed(&key, written);
        Ok(())
    })
    .await
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, Error> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Internal(format!("the upstream cache: {e}"))),
        Err(e) => Err(Error::Internal(format!("the upstream cache: {e}"))),
    }
}

/// Answers a GET or HEAD from a fill: validators, 304 and ranges as for a cached file, once the upstream has
/// answered; the body follows the fill.
pub async fn respond(fill: &Fill, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, Error> {
    let mut rx = fill.progress.subscribe();
    let head = loop {
        {
            let p = rx.borrow_and_update();
            // A fill already known to have failed is answered with its error rather than a head whose body would
            // end at once.
            if let Some(Err(e)) = &p.outcome {
                return Err(e.clone());
            }
            if let Some(h) = &p.head {
                break Arc::clone(h);
            }
        }
        if rx.changed().await.is_err() {
            return Err(Error::Internal("a fill ended without an outcome".into()));
        }
    };
    let mut resp = Response::new(empty());
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::try_from(httpdate::fmt_http_date(head.modified)) {
        h.insert(LAST_MODIFIED, v);
    }
    let (start, end) = match head.len {
        None => (0, None),
        Some(len) => {
            let etag = file_etag(Some(head.modified), len);
            if let Ok(v) = HeaderValue::try_from(etag.as_str()) {
                h.insert(ETAG, v);
            }
            h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if conditional::not_modified(headers, &etag, Some(head.modified)) {
                *resp.status_mut() = StatusCode::NOT_MODIFIED;
                *resp.headers_mut() = h;
                return Ok(resp);
            }
            match conditional::range(headers, len, &etag, Some(head.modified)) {
                RangeAsk::Whole => {
                    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
                    (0, Some(len))
                }
                RangeAsk::Unsatisfiable => return Err(Error::RangeNotSatisfiable { size: len }),
                RangeAsk::Part { start, end } => {
                    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                    if let Ok(v) = HeaderValue::try_from(format!("bytes {start}-{end}/{len}")) {
                        h.insert(CONTENT_RANGE, v);
                    }
                    h.insert(CONTENT_LENGTH, HeaderValue::from(end - start + 1));
                    (start, Some(end + 1))
                }
            }
        }
    };
    *resp.headers_mut() = h;
    if method == Method::HEAD {
        return Ok(resp);
    }
    let reader = Reader { rx, file: Arc::clone(&head.file), pos: start, end, done: false };
    let stream = futures_util::stream::unfold(reader, |mut r| async move { r.next().await.map(|c| (c, r)) });
    *resp.body_mut() = Body::stream(StreamBody::new(stream.map_ok(Frame::data)));
    Ok(resp)
}

/// One client's read of a fill.
struct Reader {
    rx: watch::Receiver<Progress>,
    file: Arc<File>,
    pos: u64,
    /// Where this client's bytes end (exclusive), when known before the fill ends.
    end: Option<u64>,
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<Bytes, BoxError>> {
        if self.done {
            return None;
        }
        loop {
            let (written, outcome) = {
                let p = self.rx.borrow_and_update();
                (p.written, p.outcome.clone())
            };
            let verified = match outcome {
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(Box::new(e)));
                }
                Some(Ok(())) => true,
                None => false,
            };
            let end = self.end.or(verified.then_some(written));
            // Until the fill is verified, the last byte owed stays back: with a known length, sending it would end
            // the transfer cleanly whatever the verdict.
            let readable = match end {
                Some(e) if verified => e.min(written),
                Some(e) => written.min(e.saturating_sub(1)),
                None => written,
            };
            if self.pos < readable {
                let n = usize::try_from(readable - self.pos).unwrap_or(CHUNK).min(CHUNK);
                let (file, at) = (Arc::clone(&self.file), self.pos);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; n];
                    file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                })
                .await;
                return match read {
                    Ok(Ok(bytes)) => {
                        self.pos += bytes.len() as u64;
                        Some(Ok(bytes))
                    }
                    Ok(Err(e)) => {
                        self.done = true;
                        Some(Err(Box::new(e)))
                    }
                    Err(e) => {
                        self.done = true;
                        Some(Err(Box::new(e)))
                    }
                };
            }
            if verified {
                return None;
            }
            if self.rx.changed().await.is_err() {
                self.done = true;
                return Some(Err("the fill stopped without an outcome".into()));
            }
        }
    }
}
