//! HTTP validators and byte ranges (RFC 9110 §13 and §14) for the responses condagate builds itself: local files and
//! cached repodata views. Responses relayed from an HTTP upstream keep the upstream's own handling.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    InvalidHeaderValue, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED,
    RANGE,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::http::body::{empty, full, Body};

/// Response validators, formatted once when a document or view is made rather than on every request.
#[derive(Debug, Clone)]
pub struct Validators {
    etag: HeaderValue,
    last_modified: Option<HeaderValue>,
    modified: Option<SystemTime>,
}

impl Validators {
    /// The validators of a representation with strong ETag `etag`, last modified at `modified`.
    pub fn new(etag: &str, modified: Option<SystemTime>) -> Result<Self, InvalidHeaderValue> {
        Ok(Validators {
            etag: HeaderValue::from_str(etag)?,
            last_modified: modified.and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()),
            modified,
        })
    }
}

/// An upstream validator as a strong ETag: kept when it is one, else a digest of it (a Last-Modified date).
pub fn quoted_etag(validator: &str) -> String {
    if validator.starts_with('"') && validator.ends_with('"') && validator.len() >= 2 {
        validator.to_owned()
    } else {
        format!("\"u-{}\"", hex::encode(&Sha256::digest(validator.as_bytes())[..12]))
    }
}

/// Answers a GET or HEAD from bytes in memory: validators, 304, ranges. `None` for a range outside the bytes (416).
pub fn respond(bytes: &Bytes, v: &Validators, method: &Method, headers: &HeaderMap) -> Option<Response<Body>> {
    let mut resp = Response::new(empty());
    let h = resp.headers_mut();
    h.insert(ETAG, v.etag.clone());
    if let Some(lm) = &v.last_modified {
        h.insert(LAST_MODIFIED, lm.clone());
    }
    let etag = v.etag.to_str().unwrap_or_default();
    let modified = v.modified;
    if not_modified(headers, etag, modified) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return Some(resp);
    }
    let len = bytes.len() as u64;
    let body = match range(headers, len, etag, modified) {
        RangeAsk::Whole => bytes.clone(),
        RangeAsk::Unsatisfiable => return None,
        RangeAsk::Part { start, end } => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                resp.headers_mut().insert(CONTENT_RANGE, v);
            }
            bytes.slice(usize::try_from(start).ok()?..=usize::try_from(end).ok()?)
        }
    };
    if method == Method::HEAD {
        resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    } else {
        // hyper writes `Content-Length` from the body's exact size, with no header value to allocate.
        *resp.body_mut() = full(body);
    }
    Some(resp)
}

/// What a request's `Range` header asks of a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsk {
    /// The whole representation (no `Range`, one condagate ignores, or an `If-Range` that no longer matches).
    Whole,
    /// Bytes `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// A range outside the representation: 416.
    Unsatisfiable,
}

/// Whether `If-None-Match` / `If-Modified-Since` say the client's copy is current (answer 304).
/// `If-None-Match` wins when present, as RFC 9110 §13.2.2 orders.
pub fn not_modified(headers: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    if let Some(inm) = headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return inm.split(',').map(str::trim).any(|t| t == "*" || weak_eq(t, etag));
    }
    if let (Some(ims), Some(modified)) = (
        headers.get(IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok()),
        modified,
    ) {
        return truncate_to_secs(modified) <= ims;
    }
    false
}

fn weak_eq(a: &str, b: &str) -> bool {
    a.trim_start_matches("W/") == b.trim_start_matches("W/")
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

/// Reads `Range` (and `If-Range`) for a representation of `len` bytes. Only a single `bytes=` range is honoured;
/// several ranges are answered with the whole file, which RFC 9110 allows.
pub fn range(headers: &HeaderMap, len: u64, etag: &str, modified: Option<SystemTime>) -> RangeAsk {
    let Some(spec) = headers.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAsk::Whole;
    };
    if let Some(if_range) = headers.get(IF_RANGE).and_then(|v| v.to_str().ok()) {
        let still = if if_range.starts_with('"') {
            if_range == etag
        } else {
            httpdate::parse_http_date(if_range).ok().zip(modified).is_some_and(|(d, m)| truncate_to_secs(m) == d)
        };
        if !still {
            return RangeAsk::Whole;
        }
    }
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if set.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let num = |s: &str| {
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse::<u64>().map(Some)
        }
    };
    let (Ok(a), Ok(b)) = (num(a.trim()), num(b.trim())) else {
        return RangeAsk::Whole;
    };
    match (a, b) {
        (Some(start), _) if start >= len => RangeAsk::Unsatisfiable,
        (Some(start), None) => RangeAsk::Part { start, end: len - 1 },
        (Some(start), Some(end)) if end >= start => RangeAsk::Part { start, end: end.min(len - 1) },
        (Some(_), Some(_)) => RangeAsk::Whole,
        (None, Some(0)) => RangeAsk::Unsatisfiable,
        (None, Some(_)) if len == 0 => RangeAsk::Unsatisfiable,
        (None, Some(suffix)) => RangeAsk::Part { start: len.saturating_sub(suffix), end: len - 1 },
        (None, None) => RangeAsk::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn ranges() {
        let e = "\"x\"";
        assert_eq!(range(&h(&[(RANGE, "bytes=0-9")]), 100, e, None), RangeAsk::Part { start: 0, end: 9 });
        assert_eq!(range(&h(&[(RANGE, "bytes=90-")]), 100, e, None), RangeAsk::Part { start: 90, end: 99 });
        assert_eq!(range(&h(&[(RANGE, "bytes=90-500")]), 100, e, None), RangeAsk::Part { start: 90, end: 99 });
        assert_eq!(range(&h(&[(RANGE, "bytes=-10")]), 100, e, None), RangeAsk::Part { start: 90, end: 99 });
        assert_eq!(range(&h(&[(RANGE, "bytes=100-")]), 100, e, None), RangeAsk::Unsatisfiable);
        assert_eq!(range(&h(&[(RANGE, "bytes=0-1,5-6")]), 100, e, None), RangeAsk::Whole);
        assert_eq!(range(&h(&[(RANGE, "items=0-1")]), 100, e, None), RangeAsk::Whole);
        assert_eq!(range(&h(&[(RANGE, "bytes=5-1")]), 100, e, None), RangeAsk::Whole);
        assert_eq!(range(&h(&[(RANGE, "bytes=0-1"), (IF_RANGE, "\"old\"")]), 100, e, None), RangeAsk::Whole);
        assert_eq!(
            range(&h(&[(RANGE, "bytes=0-1"), (IF_RANGE, e)]), 100, e, None),
            RangeAsk::Part { start: 0, end: 1 }
        );
    }

    #[test]
    fn validators() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_500);
        let date = httpdate::fmt_http_date(t);
        assert!(not_modified(&h(&[(IF_NONE_MATCH, "\"a\", \"b\"")]), "\"b\"", None));
        assert!(not_modified(&h(&[(IF_NONE_MATCH, "W/\"b\"")]), "\"b\"", None));
        assert!(!not_modified(&h(&[(IF_NONE_MATCH, "\"a\""), (IF_MODIFIED_SINCE, &date)]), "\"b\"", Some(t)));
        assert!(not_modified(&h(&[(IF_MODIFIED_SINCE, &date)]), "\"b\"", Some(t)));
        let earlier = httpdate::fmt_http_date(t - std::time::Duration::from_secs(5));
        assert!(!not_modified(&h(&[(IF_MODIFIED_SINCE, &earlier)]), "\"b\"", Some(t)));
    }
}
