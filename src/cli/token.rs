//! `condagate token`: tokens made, listed, revoked and inspected through the configured store.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use condagate::config::Config;
use condagate::internals::clock::format_time;
use condagate::internals::policy::{self, Policy};
use condagate::internals::tokens::issue::{self, NewToken};
use condagate::internals::tokens::{store, Token, TokenTable};

use super::store::with_store_groups;
use super::{load_config, DEFAULT_CONFIG};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once) as the last line.
    Create {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Token name, unique per user.
        #[arg(long)]
        name: String,
        /// The user it acts for.
        #[arg(long)]
        user: String,
        /// Space- or comma-separated scopes: all, repos, conda, conda:download, api, api:read, api:write, ...
        #[arg(long)]
        scopes: String,
        /// Lifetime, like 90d, 12h or 3s (default: one year).
        #[arg(long, conflicts_with_all = ["expires", "no_expiry"])]
        expires_in: Option<String>,
        /// Expiry time (RFC 3339).
        #[arg(long, conflicts_with = "no_expiry")]
        expires: Option<String>,
        /// Never expire.
        #[arg(long)]
        no_expiry: bool,
        /// Comma-separated channels the token is limited to.
        #[arg(long)]
        channels: Option<String>,
        /// `strong` (160 random bits, the default) or `weak` (80 bits: shorter, for URLs typed by hand).
        #[arg(long, default_value = "strong", value_parser = ["strong", "weak"])]
        strength: String,
    },
    /// List tokens (never their secrets).
    List {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by name.
    Revoke {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The token's name.
        name: String,
        /// Its user (needed when several users have a token of that name).
        #[arg(long)]
        user: Option<String>,
    },
    /// Tell which record a token is, its status and what it can reach. `-` reads the token from stdin.
    Info {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The token, or `-`.
        token: String,
    },
}

fn split_list(s: &str) -> Vec<String> {
    s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_owned).collect()
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    match cmd {
        TokenCommand::Create { config, name, user, scopes, expires_in, expires, no_expiry, channels, strength } => {
            let config = load_config(&config)?;
            let expires = if no_expiry {
                None
            } else if let Some(d) = expires_in {
                let d = humantime::parse_duration(&d).map_err(|_| {
                    anyhow::anyhow!("--expires-in: {d:?} is not a duration: a number and a unit, like 90d, 12h or 30m")
                })?;
                Some(now + d)
            } else if let Some(at) = expires {
                Some(OffsetDateTime::parse(&at, &Rfc3339).map_err(|_| {
                    anyhow::anyhow!(
                        "--expires: {at:?} is not an RFC 3339 time with a zone, like 2027-01-01T00:00:00Z \
                         (or use --expires-in 90d)"
                    )
                })?)
            } else {
                Some(now + issue::DEFAULT_LIFETIME)
            };
            let new = NewToken {
                name,
                user,
                scopes: split_list(&scopes),
                expires,
                channels: channels.as_deref().map(split_list),
                weak: strength == "weak",
            };
            let (token, record) = issue::prepare(&config, new, now)?;
            store::open(&config).await?.create(record.clone()).await?;
            println!(
                "created token {:?} for user {:?}: scopes {}, expires {}",
                record.name,
                record.user,
                record.scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(" "),
                record.expires.map(format_time).unwrap_or_else(|| "never".into())
            );
            println!("store it now: it is shown only this once and cannot be recovered.");
            println!("{}", token.reveal());
        }
        TokenCommand::List { config, user } => {
            let config = load_config(&config)?;
            let records = store::open(&config).await?.load().await?;
            println!("{:<20} {:<12} {:<30} {:<21} {:<21} STATUS", "NAME", "USER", "SCOPES", "CREATED", "EXPIRES");
            for r in records.iter().filter(|r| user.as_deref().is_none_or(|u| *r.user == *u)) {
                let scopes = r.scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(" ");
                println!(
                    "{:<20} {:<12} {:<30} {:<21} {:<21} {}",
                    r.name,
                    r.user,
                    scopes,
                    format_time(r.created),
                    r.expires.map(format_time).unwrap_or_else(|| "never".into()),
                    r.status(now)
                );
            }
        }
        TokenCommand::Revoke { config, name, user } => {
            let config = load_config(&config)?;
            let r = store::open(&config).await?.revoke(&name, user.as_deref(), now).await?;
            println!("revoked token {:?} of user {:?}", r.name, r.user);
        }
        TokenCommand::Info { config, token } => {
            let config = load_config(&config)?;
            let secret = if token == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s.trim().to_owned()
            } else {
                token
            };
            let token = Token::parse(&secret).map_err(|e| anyhow::anyhow!("{e}"))?;
            let store = store::open(&config).await?;
            let table = TokenTable::new(store.load().await?);
            let config = with_store_groups(config, &*store).await?;
            let r = table.lookup(&token).context("no such token")?;
            println!("name:    {}", r.name);
            println!("user:    {}", r.user);
            println!("scopes:  {}", r.scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(" "));
            println!("status:  {}", r.status(now));
            println!("expires: {}", r.expires.map(format_time).unwrap_or_else(|| "never".into()));
            if r.can_download() && Policy::check_token(r, now).is_ok() {
                print_reach(&config, &r.user, None, r.channels.as_deref());
            }
        }
    }
    Ok(())
}

/// `condagate explain`: what `user` can reach (of `channel`), with the groups of the configured store.
pub async fn explain(config: PathBuf, user: String, channel: Option<String>) -> anyhow::Result<()> {
    let config = load_config(&config)?;
    let store = store::open(&config).await?;
    let config = with_store_groups(config, &*store).await?;
    print_reach(&config, &user, channel.as_deref(), None);
    Ok(())
}

pub fn print_reach(config: &Config, user: &str, channel: Option<&str>, token_channels: Option<&[String]>) {
    let reach = policy::explain(config, user, channel, token_channels);
    if reach.is_empty() {
        println!("{user} can reach no channel{}", channel.map(|c| format!(" named {c}")).unwrap_or_default());
    }
    for r in reach {
        println!("{} ({})", r.channel, r.access.name());
        for why in r.reasons {
            println!("  {why}");
        }
    }
}
