//! Tokens: the secret type, its digest, scopes and the records kept about them.
//!
//! A [`Token`] is the secret a client presents. It cannot be printed: `Debug` and `Display` both redact it, and the
//! only way to read it back is [`Token::reveal`], which the CLI calls exactly once, when the token is created.
//! Everything condagate stores or compares is the SHA-256 [`Digest`] of the token, so a lookup is a hash-map probe on
//! 32 uniformly random bytes: its cost does not depend on how much of a guessed token matches a real one.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

/// The prefix of every token condagate issues, so that secret scanners can recognise them.
pub const TOKEN_PREFIX: &str = "cg-";

/// Shortest and longest token string accepted from a client. libmamba needs at least two characters; the upper bound
/// only keeps hostile input from being hashed at length.
const MIN_LEN: usize = 2;
const MAX_LEN: usize = 256;

/// A secret token as presented by a client or freshly generated.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

/// Why a presented credential is not even shaped like a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token is malformed (expected 2 to 256 characters of A-Z, a-z, 0-9 and '-')")]
pub struct MalformedToken;

impl Token {
    /// Accepts a client-supplied token if it uses only the characters conda's URL handling keeps (`[A-Za-z0-9-]`).
    pub fn parse(s: &str) -> Result<Self, MalformedToken> {
        well_formed(s).map(|s| Token(s.to_owned()))
    }

    /// The digest of a client-supplied token, checked as [`Token::parse`] checks it, without keeping the secret.
    pub fn digest_of(s: &str) -> Result<Digest, MalformedToken> {
        well_formed(s).map(digest_bytes)
    }

    /// A new token: the fixed prefix and 160 bits from the operating system's CSPRNG, in base 62.
    pub fn generate() -> Self {
        Self::random::<20>()
    }

    /// A weak token: 80 random bits instead of 160, shorter to type (anaconda.org's `--strength weak`). Still far
    /// beyond online guessing under the failure throttle, but not meant for long-lived, widely shared use.
    pub fn generate_weak() -> Self {
        Self::random::<10>()
    }

    fn random<const N: usize>() -> Self {
        let mut raw = [0u8; N];
        getrandom::fill(&mut raw).expect("the operating system's random number generator failed");
        Token(format!("{TOKEN_PREFIX}{}", base62(&raw)))
    }

    /// The digest under which this token is stored and looked up.
    pub fn digest(&self) -> Digest {
        digest_bytes(&self.0)
    }

    /// The secret itself. Call only to show a freshly created token to its owner, once.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

/// The bytes a token may hold: `[A-Za-z0-9-]`.
static TOKEN_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric() || b == b'-' as usize;
        b += 1;
    }
    table
};

fn well_formed(s: &str) -> Result<&str, MalformedToken> {
    let ok_len = (MIN_LEN..=MAX_LEN).contains(&s.len());
    // Every byte is looked at, without an early exit: one pass without branches.
    if ok_len && s.bytes().fold(true, |ok, b| ok & TOKEN_BYTE[usize::from(b)]) {
        Ok(s)
    } else {
        Err(MalformedToken)
    }
}

fn digest_bytes(s: &str) -> Digest {
    Digest(Sha256::digest(s.as_bytes()).into())
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Big-endian base 62 of `bytes`, fixed width for a fixed input length.
fn base62(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    // ceil(len * 8 / log2(62)) digits always suffice.
    let width = (bytes.len() * 8 * 1000).div_ceil(5954);
    let mut digits = vec![0u8; width];
    for &byte in bytes {
        let mut carry = u32::from(byte);
        for d in digits.iter_mut().rev() {
            let v = u32::from(*d) * 256 + carry;
            *d = (v % 62) as u8;
            carry = v / 62;
        }
    }
    digits.iter().map(|&d| ALPHABET[d as usize] as char).collect()
}

/// SHA-256 of a token. The only form in which tokens are stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The stored form: `sha256:<64 hex>`.
    pub fn to_stored(&self) -> String {
        format!("sha256:{}", hex::encode(self.0))
    }
}

/// The value of a hex digit (either case), or 0x80 for a byte that is not one.
static HEX_VALUE: [u8; 256] = {
    let mut table = [0x80u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => 0x80,
        };
        b += 1;
    }
    table
};

/// The value of a hex digit, either case.
pub(crate) fn hex_digit(b: u8) -> Option<u8> {
    let v = HEX_VALUE[usize::from(b)];
    (v & 0x80 == 0).then_some(v)
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").ok_or_else(|| format!("{s:?} does not start with \"sha256:\""))?;
        let bad = || format!("{s:?} is not \"sha256:\" followed by 64 hex digits");
        let hex_part = hex_part.as_bytes();
        if hex_part.len() != 64 {
            return Err(bad());
        }
        // A table look-up per digit: a tokens file holds a million of these.
        let mut out = [0u8; 32];
        let mut invalid = 0u8;
        for (o, pair) in out.iter_mut().zip(hex_part.chunks_exact(2)) {
            let (hi, lo) = (HEX_VALUE[usize::from(pair[0])], HEX_VALUE[usize::from(pair[1])]);
            invalid |= (hi | lo) & 0x80;
            *o = hi << 4 | (lo & 0x0f);
        }
        if invalid != 0 {
            return Err(bad());
        }
        Ok(Digest(out))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not secret, but a short form is all a log needs.
        write!(f, "sha256:{}…", hex::encode(&self.0[..4]))
    }
}

/// What a token may be used for. The names are anaconda.org's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Everything.
    All,
    /// All package repositories.
    Repos,
    /// Conda repositories (download).
    Conda,
    /// Download conda packages.
    CondaDownload,
    /// The whole admin API.
    Api,
    /// Read the admin API.
    ApiRead,
    /// Create and revoke tokens through the admin API.
    ApiWrite,
    /// Change groups through the admin API.
    ApiModifyGroup,
    /// PyPI repositories (not served by condagate; accepted for compatibility).
    Pypi,
    /// Download from PyPI repositories (not served by condagate).
    PypiDownload,
}

impl Scope {
    /// Every scope with its name and a description, in the order `anaconda auth --list-scopes` shows them.
    pub const ALL: [(Scope, &'static str, &'static str); 10] = [
        (Scope::All, "all", "Everything: downloads and the whole admin API"),
        (Scope::Repos, "repos", "Download from every package repository"),
        (Scope::Conda, "conda", "Download conda packages"),
        (Scope::CondaDownload, "conda:download", "Download conda packages"),
        (Scope::Api, "api", "The whole admin API (read, write, modify-group)"),
        (Scope::ApiRead, "api:read", "Read tokens, channels and groups through the admin API"),
        (Scope::ApiWrite, "api:write", "Create and revoke tokens through the admin API"),
        (Scope::ApiModifyGroup, "api:modify-group", "Change group members and packages"),
        (Scope::Pypi, "pypi", "PyPI repositories (not served by condagate)"),
        (Scope::PypiDownload, "pypi:download", "PyPI downloads (not served by condagate)"),
    ];

    /// The scope's name as written in token files and on the command line.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(s, _, _)| *s == self).map(|(_, n, _)| *n).unwrap_or("?")
    }

    /// Whether this scope allows downloading conda packages and repodata.
    pub fn allows_download(self) -> bool {
        matches!(self, Scope::All | Scope::Repos | Scope::Conda | Scope::CondaDownload)
    }

    /// Whether this scope grants `wanted` on the admin API.
    pub fn grants_api(self, wanted: Scope) -> bool {
        self == wanted || matches!(self, Scope::All | Scope::Api)
    }

    /// Whether a token with this scope may hand `other` to a token it creates (no scope can create a wider one).
    pub fn covers(self, other: Scope) -> bool {
        self == other
            || match self {
                Scope::All => true,
                Scope::Repos => {
                    matches!(other, Scope::Conda | Scope::CondaDownload | Scope::Pypi | Scope::PypiDownload)
                }
                Scope::Conda => other == Scope::CondaDownload,
                Scope::Api => matches!(other, Scope::ApiRead | Scope::ApiWrite | Scope::ApiModifyGroup),
                Scope::Pypi => other == Scope::PypiDownload,
                Scope::CondaDownload
                | Scope::ApiRead
                | Scope::ApiWrite
                | Scope::ApiModifyGroup
                | Scope::PypiDownload => false,
            }
    }

    /// The valid scope names, for error messages.
    pub fn valid_names() -> String {
        Self::ALL.iter().map(|(_, n, _)| *n).collect::<Vec<_>>().join(", ")
    }
}

impl Scope {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of scopes, kept as bits: a token record carries one without a heap allocation.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u16);

impl Scopes {
    /// Whether `s` is in the set.
    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    /// The scopes in the set, in [`Scope::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.iter().map(|(s, _, _)| *s).filter(move |s| self.contains(*s))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(Scope::name)).finish()
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .find(|(_, n, _)| *n == s)
            .map(|(scope, _, _)| *scope)
            .ok_or_else(|| format!("unknown scope {s:?} (valid scopes: {})", Self::valid_names()))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What condagate knows about one token: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Name given at creation, unique per user. (`Box<str>`, not `String`: a million records save 16 MB.)
    pub name: Box<str>,
    /// The user the token acts for.
    pub user: Box<str>,
    /// SHA-256 of the secret.
    pub digest: Digest,
    /// What the token may do.
    pub scopes: Scopes,
    /// When it was created.
    pub created: OffsetDateTime,
    /// When it stops working; `None` for never.
    pub expires: Option<OffsetDateTime>,
    /// When it was revoked, if it was.
    pub revoked: Option<OffsetDateTime>,
    /// Channels it is limited to; `None` for all its user can reach.
    pub channels: Option<Vec<String>>,
    /// When it was last used, to the second, as far as this process knows.
    pub seen: Seen,
}

/// When a token was last used: Unix seconds in an atomic, so that the request path notes a use with one relaxed load
/// (and a store at most once a second per token) on a cache line the lookup already read. Two records are equal
/// whatever their uses; a copy takes the value.
#[derive(Default)]
pub struct Seen(std::sync::atomic::AtomicU32);

impl Seen {
    /// Notes a use at `unix_seconds`.
    #[inline]
    pub fn note(&self, unix_seconds: u32) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.0.load(Relaxed) < unix_seconds {
            self.0.store(unix_seconds, Relaxed);
        }
    }

    /// The last use, if one is known.
    pub fn last(&self) -> Option<OffsetDateTime> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            s => OffsetDateTime::from_unix_timestamp(i64::from(s)).ok(),
        }
    }

    /// A record of a use at `at` (`None`: never).
    pub fn at(at: Option<OffsetDateTime>) -> Self {
        let s = at.map_or(0, |t| u32::try_from(t.unix_timestamp()).unwrap_or(0));
        Seen(std::sync::atomic::AtomicU32::new(s))
    }
}

impl Clone for Seen {
    fn clone(&self) -> Self {
        Seen::at(self.last())
    }
}

impl PartialEq for Seen {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Seen {}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.last().fmt(f)
    }
}

/// A record's state at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// Usable.
    Active,
    /// Past its expiry time.
    Expired(OffsetDateTime),
    /// Revoked.
    Revoked,
}

impl TokenRecord {
    /// The record's status at `now`.
    pub fn status(&self, now: OffsetDateTime) -> TokenStatus {
        if self.revoked.is_some() {
            TokenStatus::Revoked
        } else if let Some(at) = self.expires.filter(|at| *at <= now) {
            TokenStatus::Expired(at)
        } else {
            TokenStatus::Active
        }
    }

    /// The token's status at the time `now` gives; `now` is called only for a token that can expire.
    pub fn status_lazily(&self, now: impl FnOnce() -> OffsetDateTime) -> TokenStatus {
        match (self.revoked, self.expires) {
            (None, None) => TokenStatus::Active,
            _ => self.status(now()),
        }
    }

    /// Whether any of the token's scopes allows downloads.
    pub fn can_download(&self) -> bool {
        self.scopes.iter().any(|s| s.allows_download())
    }

    /// Whether the token may use the admin API for `wanted` (one of the `api:*` scopes).
    pub fn can_api(&self, wanted: Scope) -> bool {
        self.scopes.iter().any(|s| s.grants_api(wanted))
    }

    /// Whether the token's own channel list lets it reach `channel`.
    pub fn reaches_channel(&self, channel: &str) -> bool {
        self.channels.as_ref().is_none_or(|list| list.iter().any(|c| c == channel))
    }
}

impl fmt::Display for TokenStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenStatus::Active => f.write_str("active"),
            TokenStatus::Expired(_) => f.write_str("expired"),
            TokenStatus::Revoked => f.write_str("revoked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_prints_itself() {
        let t = Token::parse("cg-SuperSecret123").unwrap();
        assert_eq!(format!("{t}"), "<redacted>");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(!format!("{:?}", Some(&t)).contains("SuperSecret"));
    }

    #[test]
    fn generated_tokens_have_the_prefix_the_alphabet_and_enough_entropy() {
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a, b);
        let s = a.reveal();
        assert!(s.starts_with(TOKEN_PREFIX));
        // 160 bits need 27 base-62 digits.
        assert_eq!(s.len(), TOKEN_PREFIX.len() + 27);
        assert!(Token::parse(s).is_ok());
    }

    #[test]
    fn base62_is_positional() {
        assert_eq!(base62(&[0]), "00");
        assert_eq!(base62(&[61]), "0z");
        assert_eq!(base62(&[62]), "10");
        assert_eq!(base62(&[255]), "47");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in ["", "a", "has space", "slash/y", "dot.dot", "ünï", "under_score", "end\0", &"x".repeat(257)] {
            assert_eq!(Token::parse(bad), Err(MalformedToken), "{bad:?}");
            assert_eq!(Token::digest_of(bad), Err(MalformedToken), "{bad:?}");
        }
        for good in ["ab", "cg-AZaz09-", &"x".repeat(256)] {
            assert_eq!(Token::digest_of(good), Ok(Token::parse(good).unwrap().digest()), "{good:?}");
        }
    }

    #[test]
    fn digests_round_trip_through_their_stored_form() {
        let d = Token::parse("cg-abc").unwrap().digest();
        assert_eq!(d.to_stored().parse::<Digest>().unwrap(), d);
        assert!("md5:00".parse::<Digest>().is_err());
        assert!("sha256:zz".parse::<Digest>().is_err());
        let hex = d.to_stored()[7..].to_owned();
        assert_eq!(format!("sha256:{}", hex.to_uppercase()).parse::<Digest>().unwrap(), d);
        for bad in [&hex[1..], &format!("{hex}0"), &format!("g{}", &hex[1..]), &format!("{}\u{e9}", &hex[2..])] {
            assert!(format!("sha256:{bad}").parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_parse_and_gate() {
        assert_eq!("conda:download".parse::<Scope>(), Ok(Scope::CondaDownload));
        let err = "conda:upload".parse::<Scope>().unwrap_err();
        assert!(err.contains("valid scopes: all, repos"), "{err}");
        assert!(Scope::Repos.allows_download());
        assert!(!Scope::Api.allows_download());
        assert!(!Scope::Pypi.allows_download());
        assert!(Scope::Api.grants_api(Scope::ApiWrite));
        assert!(Scope::All.grants_api(Scope::ApiModifyGroup));
        assert!(!Scope::ApiRead.grants_api(Scope::ApiWrite));
        assert!(!Scope::Conda.grants_api(Scope::ApiRead));
    }
}
