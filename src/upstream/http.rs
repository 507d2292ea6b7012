//! An HTTP(S) mirror or an S3 bucket as upstream: one pooled keep-alive client for every channel; validators, ranges
//! and conditionals are forwarded and the answer relayed. Nothing from the client's request goes upstream but the
//! validator and range headers: no token, no `Authorization`, no hop-by-hop headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED,
    RANGE, USER_AGENT,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Frame;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::s3::Objects;
use super::{shown_url, too_large, upstream_url, Document, Refetch, Upstream};
use crate::config::UpstreamTimeouts;
use crate::error::{chain, Error, UpstreamError};
use crate::http::body::{empty, Body, BoxError};

const UA: &str = concat!("condagate/", env!("CARGO_PKG_VERSION"));

/// The pooled client every mirror shares.
pub type Pool = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A pooled client with the given timeouts, trusting the webpki roots for https mirrors.
pub fn pool(timeouts: UpstreamTimeouts) -> Pool {
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
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

/// A header sent with every request to a mirror.
type Header = (HeaderName, HeaderValue);

/// Where a mirror's files are.
pub enum Target {
    /// Below a base URL, sent these headers on every request.
    Url {
        /// The channel root's URL.
        base: String,
        /// Extra headers (the mirror's credentials, typically).
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// Below a prefix in a bucket, each request signed.
    S3(Box<Objects>),
}

impl Target {
    /// The URL for `rel` (the root itself for `None`), and the headers to send with it.
    fn url(&self, rel: Option<&str>, method: &Method) -> Result<(String, &[Header]), Error> {
        match self {
            Target::Url { base, headers } => Ok((upstream_url(base, rel.unwrap_or("")), headers)),
            Target::S3(objects) => {
                let url = match rel {
                    None => objects.bucket_url(),
                    Some(rel) => {
                        objects.object_url(&objects.key(rel).map_err(|_| Error::NotFound)?, method == Method::HEAD)
                    }
                };
                Ok((url, &[]))
            }
        }
    }

    /// How errors and logs name `rel`: no credentials, no signature.
    fn shown(&self, rel: &str) -> String {
        match self {
            Target::Url { base, .. } => shown_url(base, rel),
            Target::S3(objects) => objects.shown(rel),
        }
    }
}

/// A channel's files at a mirror or in a bucket.
pub struct Mirror {
    client: Pool,
    timeouts: UpstreamTimeouts,
    max_document: u64,
    target: Target,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The headers may hold the mirror's credentials, and the base its user information.
        f.debug_struct("Mirror").field("at", &self.target.shown("")).finish_non_exhaustive()
    }
}

impl Mirror {
    /// The files at `target`, through `client`.
    pub fn new(client: Pool, timeouts: UpstreamTimeouts, max_document: u64, target: Target) -> Self {
        Mirror { client, timeouts, max_document, target }
    }

    /// How errors and logs name `rel`.
    fn shown(&self, rel: &str) -> String {
        self.target.shown(rel)
    }

    async fn send(
        &self,
        rel: Option<&str>,
        method: Method,
        forward: impl Iterator<Item = (http::HeaderName, HeaderValue)>,
    ) -> Result<Response<hyper::body::Incoming>, Error> {
        let (url, headers) = self.target.url(rel, &method)?;
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .body(Empty::new())
            .map_err(|e| Error::Internal(format!("building the upstream request: {e}")))?;
        let h = req.headers_mut();
        h.insert(USER_AGENT, HeaderValue::from_static(UA));
        for (k, v) in headers {
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
                Err(Error::Upstream(UpstreamError::caused_by(self.shown(rel.unwrap_or("")), e)))
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

#[async_trait]
impl Upstream for Mirror {
    async fn get(&self, rel: &str, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, Error> {
        let forward = [RANGE, IF_RANGE, IF_NONE_MATCH, IF_MODIFIED_SINCE]
            .into_iter()
            .filter_map(|k| headers.get(&k).map(|v| (k, v.clone())));
        let resp = self.send(Some(rel), method.clone(), forward).await?;
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
            other => return Err(Error::Upstream(UpstreamError::new(format!("{}: status {other}", self.shown(rel))))),
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

    async fn document(&self, rel: &str, held: Option<&str>) -> Result<Refetch, Error> {
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
        let resp = self.send(Some(rel), Method::GET, forward).await?;
        match resp.status() {
            StatusCode::NOT_MODIFIED if held.is_some() => return Ok(Refetch::Unchanged),
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::GONE => return Err(Error::NotFound),
            other => return Err(Error::Upstream(UpstreamError::new(format!("{}: status {other}", self.shown(rel))))),
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
            return Err(too_large(rel, self.max_document));
        }
        // Bounded in size and in time: a body that grows without end is cut at the cap, and one that stalls
        // between two chunks for longer than the upstream timeout fails, as a streamed package does.
        let body = resp.into_body().map_err(boxed);
        let body = IdleTimeout::new(body, self.timeouts.first_byte);
        let limit = usize::try_from(self.max_document).unwrap_or(usize::MAX);
        let bytes = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(rel, self.max_document)),
            Err(e) if e.is::<Stalled>() => return Err(Error::UpstreamTimeout),
            Err(e) => return Err(Error::Upstream(UpstreamError::caused_by(self.shown(rel), e))),
        };
        // Without a validator the document is identified by its content.
        let validator = if validator.is_empty() { content_validator(&bytes) } else { validator };
        Ok(Refetch::Changed(Document { bytes, validator, modified, max_age, stamp: None, validated: None }))
    }

    fn unchanged(&self, _rel: &str, _held: &Document) -> Option<Result<bool, Error>> {
        None
    }

    async fn probe(&self) -> Result<(), String> {
        self.send(None, Method::HEAD, std::iter::empty()).await.map(|_| ()).map_err(|e| chain(&e))
    }
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
