//! Stage 2: who is asking. The client's address (behind trusted proxies), the token from the path or the
//! `Authorization` header, and its check against the token table, with the throttle. The channel file path and the
//! admin API both come through here.

pub mod session;
pub mod throttle;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::clock::Clock;
use crate::config::IpNet;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::policy::{Denied, Policy};
use crate::tokens::store::Freshness;
use crate::tokens::{Digest, Token, TokenRecord, TokenTable};

use throttle::Throttle;

/// The client's address: the peer, or, when the peer is a trusted proxy, the last `X-Forwarded-For` hop that is not.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !trusted.iter().any(|n| n.contains(peer)) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map_while(|h| h.trim().parse::<IpAddr>().ok())
        .collect();
    let mut ip = peer;
    for hop in hops.iter().rev() {
        ip = *hop;
        if !trusted.iter().any(|n| n.contains(ip)) {
            break;
        }
    }
    ip
}

/// The `Authorization` schemes condagate reads a token from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer <T>` or `token <T>` (anaconda-client's): sent on purpose by scripts and clients.
    Bearer,
    /// `Basic` with the token as the password: what rattler's BasicHTTP credentials send, and what browsers attach
    /// on their own.
    Basic,
}

/// The header's scheme and the rest of its value, or `None` when there is no `Authorization` header; a header that
/// is not one of the schemes is malformed.
fn split_authorization(headers: &HeaderMap) -> Result<Option<(Scheme, &str)>, Denied> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| Denied::Malformed)?;
    let (scheme, rest) = value.trim().split_once(' ').ok_or(Denied::Malformed)?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("basic") {
        Scheme::Basic
    } else {
        return Err(Denied::Malformed);
    };
    Ok(Some((scheme, rest.trim())))
}

/// The scheme of the `Authorization` header, if it has one condagate reads.
pub fn header_scheme(headers: &HeaderMap) -> Option<Scheme> {
    split_authorization(headers).ok().flatten().map(|(scheme, _)| scheme)
}

/// Reads the token from the `Authorization` header: `Bearer <T>`, `token <T>`, or `Basic` with the token as the
/// password (any user name).
pub fn header_token(headers: &HeaderMap) -> Result<Option<Token>, Denied> {
    let Some((scheme, rest)) = split_authorization(headers)? else {
        return Ok(None);
    };
    let token = match scheme {
        Scheme::Bearer => Token::parse(rest),
        Scheme::Basic => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest).map_err(|_| Denied::Malformed)?;
            let text = std::str::from_utf8(&decoded).map_err(|_| Denied::Malformed)?;
            let (_, password) = text.split_once(':').ok_or(Denied::Malformed)?;
            Token::parse(password)
        }
    };
    token.map(Some).map_err(|_| Denied::Malformed)
}

/// What a token check reads and counts besides the table.
#[derive(Clone, Copy)]
pub struct Checks<'a> {
    /// Failed checks per client address.
    pub throttle: &'a Throttle,
    /// Where cool-downs are counted.
    pub metrics: &'a Metrics,
    /// The clock expiry is judged by.
    pub clock: &'a Clock,
    /// How current the table is.
    pub freshness: &'a Freshness,
}

/// Looks a presented token up and checks it, counting a failure against the client and refusing a client that is
/// cooling down, unless the token is valid: every token condagate issues holds 160 random bits, so a valid one
/// cannot have been guessed, and one user's typos behind a shared address must not lock out the rest. When the
/// access log is on, `seen` gets the record whenever the token is known, even if refused. The record is borrowed
/// from the table, which the caller holds for the request.
pub fn check_token<'s>(
    Checks { throttle, metrics, clock, freshness }: Checks<'_>,
    tokens: &'s TokenTable,
    token: &Digest,
    client: IpAddr,
    now: Instant,
    seen: &mut Option<Arc<TokenRecord>>,
) -> Result<&'s Arc<TokenRecord>, Error> {
    // A table that may miss revocations decides nothing (fail closed, `tokens.max_stale`).
    if freshness.is_stale(now) {
        return Err(Error::TokensStale);
    }
    let checked = tokens.by_digest(token).ok_or(Denied::Unknown).and_then(|r| {
        // Kept for the access log only, and only when it is written: a clone is a write to the record's reference
        // count, which every worker serving this token shares.
        if tracing::enabled!(target: "condagate::access", tracing::Level::INFO) {
            *seen = Some(Arc::clone(r));
        }
        Policy::check_token_lazily(r, || clock.now_utc()).map(|()| {
            r.seen.note(clock.unix_seconds(now));
            r
        })
    });
    match checked {
        Ok(r) => Ok(r),
        Err(d) => {
            if let Some(retry_after) = throttle.blocked(client, now) {
                return Err(Error::Throttled { retry_after });
            }
            if throttle.failure(client, now) {
                metrics.throttled();
                tracing::warn!(%client, "too many failed token checks; cooling down");
            }
            Err(Error::Denied(d))
        }
    }
}
