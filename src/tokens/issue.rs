//! Issuing tokens, shared by the CLI and the admin API: the request checked against the configuration, the secret made.

use time::{Duration, OffsetDateTime};

use crate::clock::format_time;
use crate::config::Config;
use crate::names::name_problem;
use crate::tokens::file::{self, StoreError};
use crate::tokens::{Scope, Token, TokenRecord};

/// How long a token lives when no expiry is given: one year, as on anaconda.org.
pub const DEFAULT_LIFETIME: Duration = Duration::days(365);

/// What a new token should be.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Its name, unique per user.
    pub name: String,
    /// The user it acts for.
    pub user: String,
    /// Scope names as given (checked here).
    pub scopes: Vec<String>,
    /// When it expires; `None` for never.
    pub expires: Option<OffsetDateTime>,
    /// Channels it is limited to.
    pub channels: Option<Vec<String>>,
    /// A shorter secret ([`Token::generate_weak`]) instead of the strong one.
    pub weak: bool,
}

/// Parses scope names, refusing unknown ones with the list of valid ones.
pub fn parse_scopes(names: &[String]) -> Result<Vec<Scope>, StoreError> {
    if names.is_empty() {
        return Err(StoreError::Refused(format!("no scope given (valid scopes: {})", Scope::valid_names())));
    }
    let mut scopes =
        names.iter().map(|s| s.parse::<Scope>().map_err(StoreError::Refused)).collect::<Result<Vec<_>, _>>()?;
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// Makes a token: checks the request against the configuration and returns the secret (to be shown once) and the
/// record to store.
pub fn prepare(config: &Config, new: NewToken, now: OffsetDateTime) -> Result<(Token, TokenRecord), StoreError> {
    if let Some(why) = name_problem(&new.name) {
        return Err(StoreError::Refused(format!("the token name {:?} {why}", new.name)));
    }
    if let Some(why) = name_problem(&new.user) {
        return Err(StoreError::Refused(format!("the user name {:?} {why}", new.user)));
    }
    let scopes = parse_scopes(&new.scopes)?;
    if let Some(chs) = &new.channels {
        if let Some(unknown) = chs.iter().find(|c| config.channel(c).is_none()) {
            return Err(StoreError::Refused(format!("channel {unknown:?} is not configured")));
        }
    }
    if let Some(e) = new.expires.filter(|e| *e <= now) {
        return Err(StoreError::Refused(format!(
            "the token's expiry time {} is not after now ({})",
            format_time(e),
            format_time(now)
        )));
    }
    let token = if new.weak { Token::generate_weak() } else { Token::generate() };
    let record = TokenRecord {
        name: new.name.into(),
        user: new.user.into(),
        digest: token.digest(),
        scopes: scopes.into_iter().collect(),
        created: now,
        expires: new.expires,
        revoked: None,
        channels: new.channels,
        seen: Default::default(),
    };
    Ok((token, record))
}

/// Creates a token in the tokens file of `config` (for the CLI against the file store, and for tests).
pub fn create(config: &Config, new: NewToken, now: OffsetDateTime) -> Result<(Token, TokenRecord), StoreError> {
    let (token, record) = prepare(config, new, now)?;
    file::insert(&config.tokens_file, record.clone())?;
    Ok((token, record))
}
