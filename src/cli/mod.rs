//! The `condagate` command's subcommands; `main.rs` parses the flags and calls one of them.

pub mod cache;
pub mod serve;
pub mod store;
pub mod token;

use std::path::Path;

use condagate::config::Config;

/// Where the configuration is looked for when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "config/condagate.toml";

pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
}
