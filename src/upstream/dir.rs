//! A local folder as upstream: read in large chunks, validators from the file's metadata, ranges and conditional
//! requests answered here.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::TryStreamExt;
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{too_large, Document, Refetch, Upstream};
use crate::error::Error;
use crate::http::body::{empty, Body, BoxError};
use crate::http::conditional::{self, RangeAsk};
use crate::stamp::{file_etag, FileStamp};

/// Chunk size for reading local files: large enough that a 24 MB package is ~100 reads.
const READ_CHUNK: usize = 256 * 1024;

/// A channel's files in a local folder.
#[derive(Debug)]
pub struct Dir {
    root: PathBuf,
    max_document: u64,
}

impl Dir {
    /// The channel rooted at `root`, reading documents of at most `max_document` bytes.
    pub fn new(root: PathBuf, max_document: u64) -> Self {
        Dir { root, max_document }
    }
}

fn io_error(e: std::io::Error) -> Error {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound | NotADirectory | IsADirectory | PermissionDenied => Error::NotFound,
        _ => Error::Internal(format!("reading the local upstream: {e}")),
    }
}

fn header(v: impl TryInto<HeaderValue>) -> Option<HeaderValue> {
    v.try_into().ok()
}

/// A local file's stamp, from one `stat`. It is called on the reactor thread on purpose: a `stat` of a file the
/// kernel has cached takes about a microsecond, far less than handing it to the blocking pool and back.
fn file_stamp(path: &Path) -> Result<FileStamp, Error> {
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if !meta.is_file() {
        return Err(Error::NotFound);
    }
    Ok(FileStamp::of(&meta))
}

#[async_trait]
impl Upstream for Dir {
    async fn get(&self, rel: &str, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, Error> {
        serve_file(&self.root.join(rel), method, headers).await
    }

    async fn document(&self, rel: &str, held: Option<&str>) -> Result<Refetch, Error> {
        let path = self.root.join(rel);
        let meta = std::fs::metadata(&path).map_err(io_error)?;
        if !meta.is_file() {
            return Err(Error::NotFound);
        }
        let stamp = FileStamp::of(&meta);
        let modified = stamp.modified();
        if held == Some(stamp.etag().as_str()) {
            return Ok(Refetch::Unchanged);
        }
        if meta.len() > self.max_document {
            return Err(too_large(rel, self.max_document));
        }
        let bytes = tokio::fs::read(&path).await.map_err(io_error)?;
        // The file may have changed between the two calls; a validator from the bytes' own length keeps a torn pair
        // from being cached under the new name.
        let stamp = FileStamp::new(modified, bytes.len() as u64);
        let validator = stamp.etag();
        Ok(Refetch::Changed(Document {
            bytes: bytes.into(),
            validator,
            modified,
            max_age: None,
            stamp: Some(stamp),
            validated: None,
        }))
    }

    fn unchanged(&self, rel: &str, held: &Document) -> Option<Result<bool, Error>> {
        Some(file_stamp(&self.root.join(rel)).map(|stamp| Some(stamp) == held.stamp))
    }

    async fn probe(&self) -> Result<(), String> {
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!("{} is not a folder", self.root.display())),
            Err(e) => Err(format!("{}: {e}", self.root.display())),
        }
    }
}

/// Serves a local file: validators, 304, ranges, HEAD, and a streamed body read in large chunks.
pub(super) async fn serve_file(path: &Path, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, Error> {
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
