//! The `condagate` command: parses flags and calls into the library.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use condagate::config::{Config, LogFormat};
use condagate::internals::clock::format_time;
use condagate::internals::policy::{self, Policy};
use condagate::internals::tokens::issue::{self, NewToken};
use condagate::internals::tokens::Token;
use condagate::internals::tokens::{store, TokenTable};
use condagate::Server;

const DEFAULT_CONFIG: &str = "config/condagate.toml";

#[derive(Parser)]
#[command(name = "condagate", version, about = "An authorizing reverse proxy in front of a conda channel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured channels.
    Serve {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Listen address, overriding server.listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Check a configuration file and print every problem.
    CheckConfig {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Create, list, revoke and inspect tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Show which channels, labels and packages a user can reach, and why.
    Explain {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The user.
        #[arg(long)]
        user: String,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
    },
}

/// What a configuration that passed its checks still cannot serve with, found without serving: upstream folders
/// that are not there, and TLS files that are missing or do not hold a certificate and key.
fn files_problems(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, ch) in c.channels.iter().enumerate() {
        if let condagate::config::Source::Dir(root) = &ch.source {
            if !root.is_dir() {
                out.push(format!(
                    "channels[{i}] ({}): the upstream folder {} does not exist (upstream.dir, or the channel's own \
                     upstream.dir); every file would be a 404",
                    ch.name,
                    root.display()
                ));
            }
        }
    }
    if let Some(tls) = &c.server.tls {
        if let Err(e) = condagate::internals::http::tls::CertStore::new(&tls.cert, &tls.key) {
            out.push(format!("server.tls: {e}"));
        }
    }
    out
}

#[derive(Subcommand)]
enum TokenCommand {
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

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in files or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config_path: &Path, listen: Option<String>) -> anyhow::Result<()> {
    let mut config = load_config(config_path)?;
    init_logging(config.log_format);
    if let Some(l) = listen {
        config.server.listen = l.parse().with_context(|| format!("--listen: {l:?} is not an address"))?;
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let server = Server::new(config).await?;
    let app = server.app();
    tracing::info!(%addr, "condagate listening");
    println!("condagate listening on http://{addr}");

    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let app = Arc::clone(&app);
                let _ = app.reload_all().await;
            }
        });
    }
    let shutdown = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = tokio::signal::ctrl_c() => {},
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    drop(app);
    Ok(server.run(listener, shutdown).await?)
}

fn split_list(s: &str) -> Vec<String> {
    s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_owned).collect()
}

async fn token_command(cmd: TokenCommand) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    match cmd {
        TokenCommand::Create { config, name, user, scopes, expires_in, expires, no_expiry, channels } => {
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
            };
            let (token, record) = issue::prepare(&config, new, now)?;
            store::open(&config).create(record.clone()).await?;
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
            let records = store::open(&config).load().await?;
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
            let r = store::open(&config).revoke(&name, user.as_deref(), now).await?;
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
            let table = TokenTable::new(store::open(&config).load().await?);
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

fn print_reach(config: &Config, user: &str, channel: Option<&str>, token_channels: Option<&[String]>) {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(serve(&config, listen))),
        Command::CheckConfig { config } => match Config::load(&config).map(|c| {
            let problems = files_problems(&c);
            (c, problems)
        }) {
            Ok((c, problems)) if problems.is_empty() => {
                println!("{}: ok ({} channels, {} groups)", config.display(), c.channels.len(), c.groups.len());
                Ok(())
            }
            Ok((_, problems)) => {
                eprintln!("error: {} problem(s) in {}:", problems.len(), config.display());
                for p in problems {
                    eprintln!("  {p}");
                }
                return ExitCode::from(2);
            }
            Err(e) => {
                eprint!("error: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Token { command } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(token_command(command))),
        Command::Explain { config, user, channel } => {
            load_config(&config).map(|c| print_reach(&c, &user, channel.as_deref(), None))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
