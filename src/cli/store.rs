//! `condagate store`: the PostgreSQL store's schema, and imports from a file set-up.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use condagate::config::Config;
use condagate::internals::tokens::{file, TokenStore};

use super::{load_config, DEFAULT_CONFIG};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Create or upgrade the database schema (embedded, versioned migrations). Safe to run again, and from several
    /// replicas at once.
    Migrate {
        /// Configuration file (its tokens.postgres is migrated).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Copy the tokens of a tokens file and the groups of an older configuration into PostgreSQL. Running it again
    /// changes nothing.
    Import {
        /// Configuration file (with tokens.postgres).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The tokens file to import.
        #[arg(long)]
        tokens_file: Option<PathBuf>,
        /// A configuration file (file mode) whose [[groups]] to import.
        #[arg(long)]
        groups_from: Option<PathBuf>,
    },
}

/// `config` with the groups of `store`, when the store keeps them.
pub async fn with_store_groups(mut config: Config, store: &dyn TokenStore) -> anyhow::Result<Config> {
    if let Some(groups) = store.groups().await? {
        config.groups = groups;
    }
    Ok(config)
}

pub async fn run(cmd: StoreCommand) -> anyhow::Result<()> {
    use condagate::internals::tokens::postgres::PgStore;
    let postgres = |config: &Config| {
        config.tokens_postgres.clone().context("this configuration has no tokens.postgres: nothing to migrate into")
    };
    match cmd {
        StoreCommand::Migrate { config } => {
            let config = load_config(&config)?;
            let store = PgStore::connect(&postgres(&config)?, false).await?;
            let (before, after) = store.migrate().await?;
            if before == after {
                println!("{}: schema version {after}, nothing to do", store.describe());
            } else {
                println!("{}: schema migrated from version {before} to {after}", store.describe());
            }
        }
        StoreCommand::Import { config, tokens_file, groups_from } => {
            let config = load_config(&config)?;
            let store = PgStore::connect(&postgres(&config)?, true).await?;
            let records = match &tokens_file {
                Some(f) => file::load(f)?,
                None => Vec::new(),
            };
            let groups = match &groups_from {
                Some(f) => {
                    let old = load_config(f)?;
                    for g in &old.groups {
                        anyhow::ensure!(
                            config.channel(&g.channel).is_some(),
                            "{}: group {:?} is of channel {:?}, which {} does not configure",
                            f.display(),
                            g.name,
                            g.channel,
                            config.path.as_deref().unwrap_or(Path::new("the configuration")).display()
                        );
                    }
                    old.groups
                }
                None => Vec::new(),
            };
            anyhow::ensure!(
                !records.is_empty() || !groups.is_empty(),
                "nothing to import: give --tokens-file and/or --groups-from"
            );
            let (t, g) = store.import(records, groups).await?;
            println!("{}: {t} token(s) and {g} group(s) imported", store.describe());
        }
    }
    Ok(())
}
