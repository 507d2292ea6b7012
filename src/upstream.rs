//! Stage 4: fetch a file from the channel's upstream and stream it, never holding a package whole.
//!
//! Two kinds of upstream share one interface: a local folder (read in large chunks, validators from the file's
//! metadata, ranges and conditional requests answered here) and an HTTP(S) mirror (one pooled keep-alive client;
//! validators, ranges and conditionals are forwarded and the answer relayed). Nothing from the client's request goes
//! upstream but the validator and range headers: no token, no `Authorization`, no hop-by-hop headers.

use std::future::Future;
use std::io::SeekFrom;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED,
    RANGE, USER_AGENT,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::body::{empty, Body, BoxError};
use crate::conditional::{self, RangeAsk};
use crate::config::{redact_userinfo, Source, UpstreamTimeouts};
use crate::error::Error;

/// Chunk size for reading local files: large enough that a 24 MB package is ~100 reads.
const READ_CHUNK: usize = 256 * 1024;

const UA: &str = concat!("condagate/", env!("CARGO_PKG_VERSION"));

/// A whole upstream document (repodata, shard index) with its validator.
#[derive(Debug, Clone)]
pub struct Document {
    /// The bytes.
    pub bytes: Bytes,
    /// Identifies this version of the document: the upstream ETag, or its Last-Modified, or mtime and size.
    pub validator: String,
    /// When the upstream says it last changed.
    pub modified: Option<SystemTime>,
    /// How long the upstream says the document stays fresh (`Cache-Control: max-age`); `None` when it does not say.
    pub max_age: Option<Duration>,
    /// For a local file: its modification time and size when read, to notice changes with one `stat`.
    pub stamp: Option<FileStamp>,
}

/// A local file's modification time and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileStamp { modified: meta.modified().ok(), len: meta.len() }
    }

    /// The stamp of whatever is at `path` now, or `None` when nothing readable is there: to notice that a file
    /// (tokens, certificate) changed without reading it.
    pub fn read(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }

    /// The file's strong ETag.
    pub fn etag(&self) -> String {
        file_etag(self.modified, self.len)
    }
}

/// The result of asking for a document again.
#[derive(Debug)]
pub enum Refetch {
    /// The copy held is still current.
    Unchanged,
    /// A new version.
    Changed(Document),
}

/// The upstream side: the pooled HTTP client and its timeouts.
#[derive(Clone)]
pub struct Upstreams {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeouts: UpstreamTimeouts,
    /// The largest document [`Upstreams::refetch`] reads (`upstream.max_document`).
    max_document: u64,
}

fn io_error(e: std::io::Error) -> Error {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound | NotADirectory | IsADirectory | PermissionDenied => Error::NotFound,
        _ => Error::Internal(format!("reading the local upstream: {e}")),
    }
}

fn file_etag(modified: Option<SystemTime>, len: u64) -> String {
    let nanos = modified.and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    format!("\"{nanos:x}-{len:x}\"")
}

fn header(v: impl TryInto<HeaderValue>) -> Option<HeaderValue> {
    v.try_into().ok()
}

impl Upstreams {
    /// A client with the given timeouts, trusting the webpki roots for https upstreams.
    pub fn new(timeouts: UpstreamTimeouts) -> Self {
        Self::with_max_document(timeouts, crate::config::DEFAULT_MAX_DOCUMENT)
    }

    /// A client with the given timeouts that reads documents of at most `max_document` bytes.
    pub fn with_max_document(timeouts: UpstreamTimeouts, max_document: u64) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeouts.connect));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(https);
        Upstreams { client, timeouts, max_document }
    }

    /// Serves `rel` (a path checked by the router) of `source` as the answer to a GET or HEAD with `headers`.
    /// The response carries status, length, validators and range headers; the caller adds type and caching.
    pub async fn serve(
        &self,
        source: &Source,
        rel: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, Error> {
        match source {
            Source::Dir(root) => serve_file(&root.join(rel), method, headers).await,
            Source::Http { base, headers: extra } => self.serve_http(base, extra, rel, method, headers).await,
        }
    }

    async fn send(
        &self,
        base: &str,
        extra: &[(http::HeaderName, HeaderValue)],
        rel: &str,
        method: Method,
        forward: impl Iterator<Item = (http::HeaderName, HeaderValue)>,
    ) -> Result<Response<hyper::body::Incoming>, Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(upstream_url(base, rel))
            .body(Empty::new())
            .map_err(|e| Error::Internal(format!("building the upstream request: {e}")))?;
        let h = req.headers_mut();
        h.insert(USER_AGENT, HeaderValue::from_static(UA));
        for (k, v) in extra {
            h.insert(k.clone(), v.clone());
        }
        for (k, v) in forward {
            h.insert(k, v);
        }
        match tokio::time::timeout(self.timeouts.first_byte, self.client.request(req)).await {
            Err(_) => Err(Error::UpstreamTimeout),
            Ok(Err(e)) => {
                // A connect timeout is the upstream being too slow, like a late first byte: 504, not 502.
                let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
                while let Some(c) = cause {
                    if c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
                        return Err(Error::UpstreamTimeout);
                    }
                    cause = c.source();
                }
                let why = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
                Err(Error::Upstream(format!("{}: {why}", shown_url(base, rel))))
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    async fn serve_http(
        &self,
        base: &str,
        extra: &[(http::HeaderName, HeaderValue)],
        rel: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, Error> {
        let forward = [RANGE, IF_RANGE, IF_NONE_MATCH, IF_MODIFIED_SINCE]
            .into_iter()
            .filter_map(|k| headers.get(&k).map(|v| (k, v.clone())));
        let resp = self.send(base, extra, rel, method.clone(), forward).await?;
        let status = resp.status();
        match status {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED => {}
            StatusCode::NOT_FOUND | StatusCode::GONE => return Err(Error::NotFound),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let size = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes */"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                return Err(Error::RangeNotSatisfiable { size });
            }
            other => return Err(Error::Upstream(format!("{}: status {other}", shown_url(base, rel)))),
        }
        let (parts, incoming) = resp.into_parts();
        let mut out = Response::new(if method == Method::HEAD || status == StatusCode::NOT_MODIFIED {
            empty()
        } else {
            // An upstream that stops mid-body, or stalls longer than the upstream timeout between two chunks, makes
            // this body fail, and hyper then aborts the client's transfer instead of ending it: a short file never
            // looks complete, and a stalled mirror does not hold the client forever.
            Body::stream(IdleTimeout::new(incoming.map_err(|e| -> BoxError { Box::new(e) }), self.timeouts.first_byte))
        });
        *out.status_mut() = status;
        let h = out.headers_mut();
        for k in [CONTENT_LENGTH, CONTENT_RANGE, ETAG, LAST_MODIFIED, ACCEPT_RANGES] {
            if let Some(v) = parts.headers.get(&k) {
                h.insert(k, v.clone());
            }
        }
        Ok(out)
    }

    fn too_large(&self, rel: &str) -> Error {
        Error::Upstream(format!("{rel} is larger than upstream.max_document ({} bytes)", self.max_document))
    }

    /// Whether the upstream answers at all: the folder exists, or the mirror answers a HEAD of the channel root with
    /// any HTTP status within the connect and first-byte timeouts.
    pub async fn probe(&self, source: &Source) -> Result<(), String> {
        match source {
            Source::Dir(root) => match tokio::fs::metadata(root).await {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(format!("{} is not a folder", root.display())),
                Err(e) => Err(format!("{}: {e}", root.display())),
            },
            Source::Http { base, headers } => self
                .send(base, headers, "", Method::HEAD, std::iter::empty())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    /// Fetches a whole document, or says the held copy (with validator `held`) is still current.
    pub async fn refetch(&self, source: &Source, rel: &str, held: Option<&str>) -> Result<Refetch, Error> {
        match source {
            Source::Dir(root) => {
                let path = root.join(rel);
                let meta = std::fs::metadata(&path).map_err(io_error)?;
                if !meta.is_file() {
                    return Err(Error::NotFound);
                }
                let stamp = FileStamp::of(&meta);
                let modified = stamp.modified;
                if held == Some(stamp.etag().as_str()) {
                    return Ok(Refetch::Unchanged);
                }
                if meta.len() > self.max_document {
                    return Err(self.too_large(rel));
                }
                let bytes = tokio::fs::read(&path).await.map_err(io_error)?;
                // The file may have changed between the two calls; a validator from the bytes' own length keeps a
                // torn pair from being cached under the new name.
                let stamp = FileStamp { modified, len: bytes.len() as u64 };
                let validator = stamp.etag();
                Ok(Refetch::Changed(Document {
                    bytes: bytes.into(),
                    validator,
                    modified,
                    max_age: None,
                    stamp: Some(stamp),
                }))
            }
            Source::Http { base, headers: extra } => {
                let forward = held
                    .filter(|v| v.starts_with('"') || v.starts_with("W/"))
                    .and_then(|v| HeaderValue::from_str(v).ok())
                    .map(|v| (IF_NONE_MATCH, v))
                    .into_iter()
                    .chain(
                        held.filter(|v| !v.starts_with('"') && !v.starts_with("W/"))
                            .and_then(|v| HeaderValue::from_str(v).ok())
                            .map(|v| (IF_MODIFIED_SINCE, v)),
                    );
                let resp = self.send(base, extra, rel, Method::GET, forward).await?;
                match resp.status() {
                    StatusCode::NOT_MODIFIED if held.is_some() => return Ok(Refetch::Unchanged),
                    StatusCode::OK => {}
                    StatusCode::NOT_FOUND | StatusCode::GONE => return Err(Error::NotFound),
                    other => return Err(Error::Upstream(format!("{}: status {other}", shown_url(base, rel)))),
                }
                let h = resp.headers();
                let max_age = h
                    .get(http::header::CACHE_CONTROL)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok()))
                    .map(Duration::from_secs);
                let modified =
                    h.get(LAST_MODIFIED).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok());
                let validator = h
                    .get(ETAG)
                    .or_else(|| h.get(LAST_MODIFIED))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .unwrap_or_default();
                let announced = h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if announced.is_some_and(|n| n > self.max_document) {
                    return Err(self.too_large(rel));
                }
                // Bounded in size and in time: a body that grows without end is cut at the cap, and one that stalls
                // between two chunks for longer than the upstream timeout fails, as a streamed package does.
                let body = resp.into_body().map_err(boxed);
                let body = IdleTimeout::new(body, self.timeouts.first_byte);
                let limit = usize::try_from(self.max_document).unwrap_or(usize::MAX);
                let bytes = match http_body_util::Limited::new(body, limit).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(self.too_large(rel)),
                    Err(e) if e.is::<Stalled>() => return Err(Error::UpstreamTimeout),
                    Err(e) => return Err(Error::Upstream(format!("{}: {e}", shown_url(base, rel)))),
                };
                // Without a validator the document is identified by its content.
                let validator = if validator.is_empty() { content_validator(&bytes) } else { validator };
                Ok(Refetch::Changed(Document { bytes, validator, modified, max_age, stamp: None }))
            }
        }
    }
}

/// Bytes that go into an upstream URL as themselves: RFC 3986's unreserved characters. Everything else is
/// percent-encoded, segment by segment.
const KEEP: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The URL of `rel` (a `/`-separated path the router checked) below the channel root `base`. Each segment is
/// encoded again, so that the upstream reads the very names that were authorized: a mirror that decodes the path
/// (as static servers do) gets back exactly the checked segment, never a `/`, `?`, `#` or `..` of its own making.
/// The router already keeps segments to conda's grammar; this is the second wall.
pub fn upstream_url(base: &str, rel: &str) -> String {
    let mut url = String::with_capacity(base.len() + rel.len() + 8);
    url.push_str(base);
    url.push('/');
    for (i, seg) in rel.split('/').enumerate() {
        if i > 0 {
            url.push('/');
        }
        url.extend(percent_encoding::utf8_percent_encode(seg, KEEP));
    }
    url
}

/// The URL of `rel` below `base` as errors and logs show it: any `user:password@` of the base is redacted.
pub fn shown_url(base: &str, rel: &str) -> String {
    format!("{}/{rel}", redact_userinfo(base))
}

fn boxed(e: hyper::Error) -> BoxError {
    Box::new(e)
}

/// What a body that stalled fails with.
#[derive(Debug)]
struct Stalled;

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upstream stalled mid-body")
    }
}

impl std::error::Error for Stalled {}

/// A body that fails when no frame arrives for `limit`.
struct IdleTimeout<B> {
    inner: B,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleTimeout<B> {
    fn new(inner: B, limit: Duration) -> Self {
        IdleTimeout { inner, limit, timer: Box::pin(tokio::time::sleep(limit)) }
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + self.limit;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(frame)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn content_validator(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("\"sha256-{}\"", hex::encode(&Sha256::digest(bytes)[..16]))
}

/// A local file's stamp, from one `stat`. It is called on the reactor thread on purpose: a `stat` of a file the
/// kernel has cached takes about a microsecond, far less than handing it to the blocking pool and back.
pub fn file_stamp(path: &Path) -> Result<FileStamp, Error> {
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if !meta.is_file() {
        return Err(Error::NotFound);
    }
    Ok(FileStamp::of(&meta))
}

/// Serves a local file: validators, 304, ranges, HEAD, and a streamed body read in large chunks.
async fn serve_file(path: &Path, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, Error> {
    let mut file = tokio::fs::File::open(path).await.map_err(io_error)?;
    let meta = file.metadata().await.map_err(io_error)?;
    if !meta.is_file() {
        return Err(Error::NotFound);
    }
    let len = meta.len();
    let modified = meta.modified().ok();
    let etag = file_etag(modified, len);
    let mut resp = Response::new(empty());
    let h = resp.headers_mut();
    if let Some(v) = header(etag.as_str()) {
        h.insert(ETAG, v);
    }
    if let Some(v) = modified.and_then(|m| header(httpdate::fmt_http_date(m))) {
        h.insert(LAST_MODIFIED, v);
    }
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if conditional::not_modified(headers, &etag, modified) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(resp);
    }
    let (start, count) = match conditional::range(headers, len, &etag, modified) {
        RangeAsk::Whole => (0, len),
        RangeAsk::Unsatisfiable => return Err(Error::RangeNotSatisfiable { size: len }),
        RangeAsk::Part { start, end } => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Some(v) = header(format!("bytes {start}-{end}/{len}")) {
                resp.headers_mut().insert(CONTENT_RANGE, v);
            }
            (start, end - start + 1)
        }
    };
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(count));
    if method == Method::HEAD {
        return Ok(resp);
    }
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await.map_err(io_error)?;
    }
    let stream = ReaderStream::with_capacity(file.take(count), READ_CHUNK)
        .map_ok(Frame::data)
        .map_err(|e| -> BoxError { Box::new(e) });
    *resp.body_mut() = Body::stream(StreamBody::new(stream));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_segment_is_encoded_again() {
        assert_eq!(upstream_url("http://m/c", "noarch/a+b-1!0-0.conda"), "http://m/c/noarch/a%2Bb-1%210-0.conda");
        assert_eq!(
            upstream_url("http://m/c", "label/x%2F..%2F/noarch/repodata.json"),
            "http://m/c/label/x%252F..%252F/noarch/repodata.json"
        );
        assert_eq!(upstream_url("http://m/c", "a?b#c;d\\e"), "http://m/c/a%3Fb%23c%3Bd%5Ce");
        assert_eq!(upstream_url("http://m/c", ""), "http://m/c/");
    }

    #[test]
    fn user_information_is_never_shown() {
        assert_eq!(shown_url("http://u:p@m:8/c", "x"), "http://<redacted>@m:8/c/x");
        assert_eq!(shown_url("https://m/c@d", "x"), "https://m/c@d/x");
        assert_eq!(redact_userinfo("http://a@b@m/"), "http://<redacted>@m/");
        assert_eq!(redact_userinfo("m"), "m");
    }
}
