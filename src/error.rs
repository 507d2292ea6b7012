//! The request path's one error type, and the one place it becomes a response.
//!
//! [`Error::status`] is an exhaustive `match`: a new variant does not compile until someone decides its status.
//! Every refusal is answered with an `application/problem+json` body (RFC 9457) whose `detail` says why in words a
//! conda user can act on. No variant holds a token, so no body can contain one.

use crate::clock::format_time;
use crate::http::body::{full, Body};
use crate::policy::Denied;
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

/// Everything that can stop a request from being served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Refused by authentication or authorization.
    #[error("{0:?}")]
    Denied(Denied),
    /// A path that cannot be decoded or tries to leave its folder.
    #[error("malformed path")]
    BadPath,
    /// Missing, hidden from this token, or not a file kind condagate serves: deliberately indistinguishable.
    #[error("not found")]
    NotFound,
    /// A request target longer than condagate reads.
    #[error("request target too long")]
    UriTooLong,
    /// A method other than GET and HEAD (or, on the admin API, other than the route's).
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// A `Range` outside the file.
    #[error("range not satisfiable")]
    RangeNotSatisfiable {
        /// The file's length.
        size: u64,
    },
    /// Too many failed token checks from this address.
    #[error("too many failed attempts")]
    Throttled {
        /// Seconds until the address may try again.
        retry_after: u64,
    },
    /// The upstream could not be reached, or answered with an error.
    #[error("upstream failed: {0}")]
    Upstream(#[source] UpstreamError),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The token table has not been known current for longer than `tokens.max_stale`: token checks fail closed.
    #[error("the token store has not been reachable for too long")]
    TokensStale,
    /// condagate's own fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What failed upstream: where (the URL with any credentials redacted, or the channel and file), and the error
/// underneath when there is one, kept as the [`std::error::Error::source`] so that logs show the whole chain.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    what: String,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl UpstreamError {
    /// A failure described by `what` alone (a status the upstream answered, a document too large).
    pub fn new(what: impl Into<String>) -> Self {
        UpstreamError { what: what.into(), source: None }
    }

    /// A failure at `what`, caused by `source`.
    pub fn caused_by(what: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        UpstreamError { what: what.into(), source: Some(std::sync::Arc::from(source.into())) }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for UpstreamError {
    fn eq(&self, other: &Self) -> bool {
        chain(self) == chain(other)
    }
}

impl Eq for UpstreamError {}

/// An error and every cause below it, `: `-separated, for logs and `/healthz`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // Some errors repeat their cause in their own message; say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Why a request was not served: a fixed, small set, named in the problem `type`, the access log and the metrics.
/// Every reason is counted in `/metrics` (see [`crate::metrics`]), so a new one cannot go uncounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumCount, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum Reason {
    /// No token on a channel that needs one.
    NoCredentials,
    /// A token that is not one condagate could have issued.
    MalformedToken,
    /// A well-formed token that is not in the table.
    UnknownToken,
    /// A revoked token.
    RevokedToken,
    /// An expired token.
    ExpiredToken,
    /// A token whose scopes do not allow downloads.
    MissingScope,
    /// A user who may not read the channel or label.
    NotAllowed,
    /// A malformed path.
    BadPath,
    /// A request target that is too long.
    UriTooLong,
    /// Missing, hidden or not served.
    NotFound,
    /// The wrong method.
    MethodNotAllowed,
    /// A range outside the file.
    RangeNotSatisfiable,
    /// Too many failed token checks.
    Throttled,
    /// The upstream failed.
    UpstreamError,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The token table is too stale to decide on.
    TokensStale,
    /// condagate failed.
    InternalError,
}

impl Reason {
    /// The reason's name, as clients and dashboards see it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the reason is a refusal of the credentials (authentication or authorization).
    pub fn is_auth(self) -> bool {
        matches!(
            self,
            Reason::NoCredentials
                | Reason::MalformedToken
                | Reason::UnknownToken
                | Reason::RevokedToken
                | Reason::ExpiredToken
                | Reason::MissingScope
                | Reason::NotAllowed
        )
    }
}

/// Who is to blame for an error, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something it may not have, or that is wrong.
    Client,
    /// The upstream failed.
    Upstream,
    /// condagate failed.
    Proxy,
}

impl From<Denied> for Error {
    fn from(d: Denied) -> Self {
        Error::Denied(d)
    }
}

impl Error {
    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Denied(d) => match d {
                Denied::NoCredentials | Denied::Malformed | Denied::Unknown | Denied::Revoked | Denied::Expired(_) => {
                    StatusCode::UNAUTHORIZED
                }
                Denied::NoDownloadScope | Denied::NotAllowed => StatusCode::FORBIDDEN,
            },
            Error::BadPath => StatusCode::BAD_REQUEST,
            Error::UriTooLong => StatusCode::URI_TOO_LONG,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
            Error::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Error::TokensStale => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Who is to blame.
    pub fn blame(&self) -> Blame {
        match self {
            Error::Denied(_)
            | Error::BadPath
            | Error::UriTooLong
            | Error::NotFound
            | Error::MethodNotAllowed(_)
            | Error::RangeNotSatisfiable { .. }
            | Error::Throttled { .. } => Blame::Client,
            Error::Upstream(_) | Error::UpstreamTimeout => Blame::Upstream,
            Error::TokensStale | Error::Internal(_) => Blame::Proxy,
        }
    }

    /// Why, as one of a fixed set of reasons.
    pub fn reason(&self) -> Reason {
        match self {
            Error::Denied(d) => match d {
                Denied::NoCredentials => Reason::NoCredentials,
                Denied::Malformed => Reason::MalformedToken,
                Denied::Unknown => Reason::UnknownToken,
                Denied::Revoked => Reason::RevokedToken,
                Denied::Expired(_) => Reason::ExpiredToken,
                Denied::NoDownloadScope => Reason::MissingScope,
                Denied::NotAllowed => Reason::NotAllowed,
            },
            Error::BadPath => Reason::BadPath,
            Error::UriTooLong => Reason::UriTooLong,
            Error::NotFound => Reason::NotFound,
            Error::MethodNotAllowed(_) => Reason::MethodNotAllowed,
            Error::RangeNotSatisfiable { .. } => Reason::RangeNotSatisfiable,
            Error::Throttled { .. } => Reason::Throttled,
            Error::Upstream(_) => Reason::UpstreamError,
            Error::UpstreamTimeout => Reason::UpstreamTimeout,
            Error::TokensStale => Reason::TokensStale,
            Error::Internal(_) => Reason::InternalError,
        }
    }

    fn detail(&self) -> String {
        match self {
            Error::Denied(d) => match d {
                Denied::NoCredentials => {
                    "This channel needs a token: use https://HOST/t/<TOKEN>/<channel> or an Authorization header."
                        .to_owned()
                }
                Denied::Malformed => "The token given is malformed.".to_owned(),
                Denied::Unknown => "The token given is invalid.".to_owned(),
                Denied::Revoked => "The token given has been revoked.".to_owned(),
                Denied::Expired(at) => format!("The token given expired at {}.", format_time(*at)),
                Denied::NoDownloadScope => {
                    "The token's scopes do not allow downloads (it needs one of all, repos, conda, conda:download)."
                        .to_owned()
                }
                Denied::NotAllowed => "The token's user may not read this channel or label.".to_owned(),
            },
            Error::BadPath => "The request path is malformed.".to_owned(),
            Error::UriTooLong => format!("The request target is longer than {} bytes.", crate::http::MAX_URI),
            Error::NotFound => "No such file.".to_owned(),
            Error::MethodNotAllowed(allow) => format!("Only {allow} are allowed here."),
            Error::RangeNotSatisfiable { size } => format!("The requested range is outside the file ({size} bytes)."),
            Error::Throttled { retry_after } => {
                format!("Too many failed token checks from this address; try again in {retry_after} s.")
            }
            Error::Upstream(_) => "The package store behind this server failed.".to_owned(),
            Error::UpstreamTimeout => "The package store behind this server did not answer in time.".to_owned(),
            Error::TokensStale => "The server cannot reach its token store and will not decide on tokens it may no \
                                   longer know; try again shortly."
                .to_owned(),
            Error::Internal(_) => "The server failed; the error was logged.".to_owned(),
        }
    }

    /// The response: status, problem+json body, and the headers the status calls for.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let body = problem_json(status, self.reason().as_str(), &self.detail());
        let mut resp = Response::new(full(body.clone()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        match &self {
            Error::Denied(Denied::NoCredentials) => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"condagate\""));
                h.append(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"condagate\""));
            }
            Error::Denied(Denied::Malformed | Denied::Unknown | Denied::Revoked | Denied::Expired(_)) => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"condagate\", error=\"invalid_token\""),
                );
            }
            Error::MethodNotAllowed(allow) => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            Error::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::try_from(format!("bytes */{size}")) {
                    h.insert(CONTENT_RANGE, v);
                }
            }
            Error::Throttled { retry_after } => {
                h.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Error::TokensStale => {
                h.insert(RETRY_AFTER, HeaderValue::from(5));
            }
            Error::Denied(Denied::NoDownloadScope | Denied::NotAllowed)
            | Error::BadPath
            | Error::UriTooLong
            | Error::NotFound
            | Error::Upstream(_)
            | Error::UpstreamTimeout
            | Error::Internal(_) => {}
        }
        resp
    }
}

/// A problem+json body.
pub fn problem_json(status: StatusCode, reason: &str, detail: &str) -> Bytes {
    let v = serde_json::json!({
        "type": format!("https://condagate.dev/problems/{reason}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_error_keeps_its_cause_and_logs_show_the_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = Error::Upstream(UpstreamError::caused_by("http://<redacted>@m/c/noarch/repodata.json", io));
        let cause = std::error::Error::source(&e).and_then(std::error::Error::source).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("connection refused"));
        assert_eq!(chain(&e), "upstream failed: http://<redacted>@m/c/noarch/repodata.json: connection refused");
        assert_eq!(chain(&Error::Upstream(UpstreamError::new("m: status 500"))), "upstream failed: m: status 500");
    }
    use time::OffsetDateTime;

    #[test]
    fn statuses_follow_the_table() {
        let cases = [
            (Error::Denied(Denied::NoCredentials), 401),
            (Error::Denied(Denied::Malformed), 401),
            (Error::Denied(Denied::Unknown), 401),
            (Error::Denied(Denied::Revoked), 401),
            (Error::Denied(Denied::Expired(OffsetDateTime::UNIX_EPOCH)), 401),
            (Error::Denied(Denied::NoDownloadScope), 403),
            (Error::Denied(Denied::NotAllowed), 403),
            (Error::NotFound, 404),
            (Error::BadPath, 400),
            (Error::UriTooLong, 414),
            (Error::MethodNotAllowed("GET, HEAD"), 405),
            (Error::RangeNotSatisfiable { size: 3 }, 416),
            (Error::Throttled { retry_after: 5 }, 429),
            (Error::Upstream(UpstreamError::new("x")), 502),
            (Error::UpstreamTimeout, 504),
            (Error::Internal("x".into()), 500),
        ];
        for (e, want) in cases {
            assert_eq!(e.status().as_u16(), want, "{e:?}");
            let resp = e.into_response();
            assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
        }
    }

    #[test]
    fn an_expired_token_says_when() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let d = Error::Denied(Denied::Expired(at)).detail();
        assert!(d.contains("expired at 2023-11-14T22:13:20Z"), "{d}");
    }
}
