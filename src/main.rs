//! The `condagate` command: parses flags and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use condagate::config::Config;

mod cli;

use cli::cache::CacheCommand;
use cli::store::StoreCommand;
use cli::token::TokenCommand;
use cli::DEFAULT_CONFIG;

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
    /// Prepare and fill the PostgreSQL store (`tokens.postgres`).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Inspect, verify and prune the upstream cache (`upstream.cache`).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
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

/// Runs a command on a runtime of its own thread.
fn current_thread(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(work)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cli::serve::serve(&config, listen))),
        Command::CheckConfig { config } => match Config::load(&config).map(|c| {
            let problems = cli::serve::files_problems(&c);
            (c, problems)
        }) {
            Ok((c, problems)) if problems.is_empty() => {
                let groups = match &c.tokens_postgres {
                    Some(_) => "groups in PostgreSQL".to_owned(),
                    None => format!("{} groups", c.groups.len()),
                };
                println!("{}: ok ({} channels, {groups})", config.display(), c.channels.len());
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
        Command::Token { command } => current_thread(cli::token::run(command)),
        Command::Store { command } => current_thread(cli::store::run(command)),
        Command::Cache { command } => match cli::cache::run(command) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Explain { config, user, channel } => current_thread(cli::token::explain(config, user, channel)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
