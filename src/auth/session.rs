//! Sign-in sessions of the token pages (`crate::web`): a random id in an `HttpOnly`, `SameSite=Strict` cookie, kept here by its
//! digest with the digest of the token that opened it, never the token itself.
//!
//! A session ends at sign-out, after [`LIFETIME`], at its token's own expiry, whichever comes first, and as soon as
//! its token is revoked (every request looks the token up again). Sessions live in this process: behind a load
//! balancer, replicas need sticky sessions for the pages (the API and the channels need nothing of the kind).

use std::fmt;

use dashmap::DashMap;
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};

use crate::tokens::{Digest, Token};

/// The longest a session lasts.
pub const LIFETIME: Duration = Duration::hours(12);

/// The most sessions held at once: a bound on memory whatever is thrown at the sign-in form.
const MAX_SESSIONS: usize = 10_000;

/// A random secret for a cookie or a form: 32 bytes from the operating system, as 64 hex digits.
pub fn secret() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the operating system's random number generator failed");
    hex::encode(raw)
}

/// Whether two secrets are equal, comparing every byte whatever the first difference.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    /// The digest of the token it was opened with.
    pub token: Digest,
    /// The form token every state-changing form of this session must send back.
    pub csrf: String,
    /// When it ends.
    pub expires: OffsetDateTime,
    /// A token just created, to be shown once (then forgotten).
    pub created: Option<Created>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("expires", &self.expires).finish_non_exhaustive()
    }
}

/// A token created through the pages, held until its one showing.
#[derive(Clone, Debug)]
pub struct Created {
    /// Its name.
    pub name: String,
    /// The secret ([`Token`] never prints it).
    pub token: Token,
    /// The channels it was narrowed to, if any.
    pub channels: Option<Vec<String>>,
}

/// Every session of this process, by the digest of its id.
#[derive(Debug, Default)]
pub struct Sessions(DashMap<[u8; 32], Session>);

impl Sessions {
    /// Opens a session for `token` ending at `expires`; returns its id (for the cookie), or `None` when the table is
    /// full of sessions that have not ended.
    pub fn open(&self, token: Digest, expires: OffsetDateTime, now: OffsetDateTime) -> Option<String> {
        if self.0.len() >= MAX_SESSIONS {
            self.0.retain(|_, s| s.expires > now);
            if self.0.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let id = secret();
        self.0.insert(key(&id), Session { token, csrf: secret(), expires, created: None });
        Some(id)
    }

    /// The session with this id, if it has not ended.
    pub fn get(&self, id: &str, now: OffsetDateTime) -> Option<Session> {
        let k = key(id);
        let s = self.0.get(&k).map(|s| s.clone())?;
        if s.expires <= now {
            self.0.remove(&k);
            return None;
        }
        Some(s)
    }

    /// Keeps a created token for its one showing.
    pub fn hold_created(&self, id: &str, created: Created) {
        if let Some(mut s) = self.0.get_mut(&key(id)) {
            s.created = Some(created);
        }
    }

    /// Takes the created token held for its showing: a second call finds nothing.
    pub fn take_created(&self, id: &str) -> Option<Created> {
        self.0.get_mut(&key(id)).and_then(|mut s| s.created.take())
    }

    /// Ends the session with this id.
    pub fn close(&self, id: &str) {
        self.0.remove(&key(id));
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_and_shows_a_created_token_once() {
        let s = Sessions::default();
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let id = s.open(Digest([7; 32]), now + Duration::hours(1), now).unwrap();
        assert!(s.get("not-the-id", now).is_none());
        let got = s.get(&id, now).unwrap();
        assert_eq!(got.token, Digest([7; 32]));
        assert!(!format!("{got:?}").contains(&got.csrf), "a session does not print its form token");
        s.hold_created(&id, Created { name: "n".into(), token: Token::generate(), channels: None });
        assert!(s.take_created(&id).is_some());
        assert!(s.take_created(&id).is_none(), "shown once");
        assert!(s.get(&id, now + Duration::hours(2)).is_none(), "ended");
        assert!(s.is_empty());
    }

    #[test]
    fn secrets_compare_whole() {
        let a = secret();
        assert_eq!(a.len(), 64);
        assert!(same_secret(&a, &a.clone()));
        assert!(!same_secret(&a, &secret()));
        assert!(!same_secret(&a, &a[..63]));
    }
}
