//! Stage 4: where a channel's files come from, streamed, never holding a package whole.
//!
//! [`Upstream`] is the seam: a local folder ([`dir::Dir`]) and an HTTP(S) mirror ([`http::Mirror`]) implement it, and
//! a cache or another store can wrap or implement it without the conda code knowing. [`Upstreams`] opens one for each
//! channel's configured source, sharing one pooled HTTP client.

pub mod cache;
pub mod dir;
pub mod health;
pub mod http;
pub mod s3;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::http::{HeaderMap, Method, Response};
use async_trait::async_trait;
use bytes::Bytes;

use crate::config::{redact_userinfo, Config, Source, UpstreamTimeouts};
use crate::error::{Error, UpstreamError};
use crate::http::body::Body;
use crate::stamp::FileStamp;

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
    /// For a document from the upstream cache: when the upstream last confirmed it (milliseconds since the Unix epoch),
    /// kept current by the cache's revalidations; responses carry the `Age` it implies.
    pub validated: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Document {
    /// For a document from the upstream cache: the seconds since the upstream last confirmed it, as `Age` says.
    pub fn age(&self) -> Option<u64> {
        let validated = self.validated.as_ref()?.load(std::sync::atomic::Ordering::Relaxed);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Some(now.saturating_sub(validated) / 1000)
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

/// Where one channel's files come from. `rel` is always a path the router checked, relative to the channel's root.
#[async_trait]
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// Answers a GET or HEAD of `rel` with the client's validator and range `headers`: status, length, validators
    /// and range headers, and a streamed body; the caller adds type and caching.
    async fn get(&self, rel: &str, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, Error>;

    /// Fetches the whole document at `rel`, at most `upstream.max_document` bytes, or says that the copy held (with
    /// validator `held`) is still current.
    async fn document(&self, rel: &str, held: Option<&str>) -> Result<Refetch, Error>;

    /// Whether the document held for `rel` is still current, when this upstream can tell without a fetch (a local
    /// file's stamp); `None` when only [`Upstream::document`] can tell.
    fn unchanged(&self, rel: &str, held: &Document) -> Option<Result<bool, Error>>;

    /// Whether the upstream answers at all.
    async fn probe(&self) -> Result<(), String>;
}

/// An upstream that cannot be used (an S3 endpoint that cannot address a bucket): every request is a 502 that says
/// why, and the probe reports it, rather than the configuration being refused at a reload.
#[derive(Debug)]
struct Unusable(String);

#[async_trait]
impl Upstream for Unusable {
    async fn get(&self, _: &str, _: &Method, _: &HeaderMap) -> Result<Response<Body>, Error> {
        Err(Error::Upstream(UpstreamError::new(self.0.clone())))
    }

    async fn document(&self, _: &str, _: Option<&str>) -> Result<Refetch, Error> {
        Err(Error::Upstream(UpstreamError::new(self.0.clone())))
    }

    fn unchanged(&self, _: &str, _: &Document) -> Option<Result<bool, Error>> {
        None
    }

    async fn probe(&self) -> Result<(), String> {
        Err(self.0.clone())
    }
}

/// The error for a document larger than the limit.
fn too_large(rel: &str, max_document: u64) -> Error {
    Error::Upstream(UpstreamError::new(format!("{rel} is larger than upstream.max_document ({max_document} bytes)")))
}

/// Opens channels' upstreams: the pooled HTTP client they share, its timeouts, and the document size limit.
#[derive(Clone)]
pub struct Upstreams {
    pool: http::Pool,
    timeouts: UpstreamTimeouts,
    max_document: u64,
    cache: Option<Arc<cache::Cache>>,
}

impl Upstreams {
    /// A client with the given timeouts that reads documents of at most `max_document` bytes.
    pub fn new(timeouts: UpstreamTimeouts, max_document: u64) -> Self {
        Upstreams { pool: http::pool(timeouts), timeouts, max_document, cache: None }
    }

    /// These upstreams with every remote one behind `cache`.
    pub fn with_cache(mut self, cache: Arc<cache::Cache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The cache in front of remote upstreams, if one is set.
    pub fn cache(&self) -> Option<&Arc<cache::Cache>> {
        self.cache.as_ref()
    }

    /// The upstream of a configured source: behind the cache when it is remote and a cache is set.
    pub fn open(&self, source: &Source) -> Arc<dyn Upstream> {
        let up = self.open_uncached(source);
        match &self.cache {
            Some(cache) if source.is_remote() => Arc::new(cache::Cached::new(up, Arc::clone(cache), source)),
            _ => up,
        }
    }

    /// The upstream of a configured source, without the cache.
    pub fn open_uncached(&self, source: &Source) -> Arc<dyn Upstream> {
        match source {
            Source::Dir(root) => Arc::new(dir::Dir::new(root.clone(), self.max_document)),
            Source::Http { base, headers } => Arc::new(http::Mirror::new(
                self.pool.clone(),
                self.timeouts,
                self.max_document,
                http::Target::Url { base: base.clone(), headers: headers.clone() },
            )),
            Source::S3(s3) => match s3::Objects::new(s3) {
                Ok(objects) => Arc::new(http::Mirror::new(
                    self.pool.clone(),
                    self.timeouts,
                    self.max_document,
                    http::Target::S3(Box::new(objects)),
                )),
                Err(why) => Arc::new(Unusable(why)),
            },
        }
    }

    /// The upstream of every channel of `config`.
    pub fn open_all(&self, config: &Config) -> ChannelUpstreams {
        ChannelUpstreams(config.channels.iter().map(|c| (c.name.clone(), self.open(&c.source))).collect())
    }
}

/// Each channel's upstream, by channel name, opened once per configuration.
#[derive(Debug, Default)]
pub struct ChannelUpstreams(HashMap<String, Arc<dyn Upstream>>);

impl ChannelUpstreams {
    /// The upstream of `channel`.
    pub fn get(&self, channel: &str) -> Option<&Arc<dyn Upstream>> {
        self.0.get(channel)
    }

    /// Every channel's name and upstream.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Upstream>)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
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
