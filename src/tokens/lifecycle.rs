//! Token operations shared by the CLI (and the admin API): create, list, revoke, inspect.

use std::path::Path;

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

/// Creates a token: checks the request, stores the digest, and returns the secret (to be shown once) and record.
pub fn create(config: &Config, new: NewToken, now: OffsetDateTime) -> Result<(Token, TokenRecord), StoreError> {
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
    let token = Token::generate();
    let record = TokenRecord {
        name: new.name.into(),
        user: new.user.into(),
        digest: token.digest(),
        scopes: scopes.into_iter().collect(),
        created: now,
        expires: new.expires,
        revoked: None,
        channels: new.channels,
    };
    let stored = record.clone();
    file::update(&config.tokens_file, move |records| {
        if records.iter().any(|r| r.user == stored.user && r.name == stored.name && r.revoked.is_none()) {
            return Err(StoreError::Refused(format!(
                "user {:?} already has a token named {:?} (revoke it first, or choose another name)",
                stored.user, stored.name
            )));
        }
        records.push(stored);
        Ok(())
    })?;
    Ok((token, record))
}

/// Revokes the active token `name` (of `user`, when given). A name several users share needs the user.
pub fn revoke(
    tokens_file: &Path,
    name: &str,
    user: Option<&str>,
    now: OffsetDateTime,
) -> Result<TokenRecord, StoreError> {
    file::update(tokens_file, |records| {
        let matching: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| *r.name == *name && r.revoked.is_none() && user.is_none_or(|u| *r.user == *u))
            .map(|(i, _)| i)
            .collect();
        match matching.as_slice() {
            [] => Err(StoreError::Refused(match user {
                Some(u) => format!("user {u:?} has no active token named {name:?}"),
                None => format!("no active token is named {name:?}"),
            })),
            [i] => {
                records[*i].revoked = Some(now);
                Ok(records[*i].clone())
            }
            _ => Err(StoreError::Refused(format!(
                "{} users have a token named {name:?}; say which with --user",
                matching.len()
            ))),
        }
    })
}
