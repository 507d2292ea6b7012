//! `condagate cache`: what the upstream cache holds, a full re-verification, and pruning, for operators.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use condagate::config::Config;
use condagate::internals::upstream::cache::{self, ops};

use super::{load_config, DEFAULT_CONFIG};

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Show what the cache folder holds, per source.
    Stats {
        /// Configuration file (its upstream.cache).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Read every cached package and shard again and check its sha256; files that do not match are deleted. Exits
    /// with 1 when any did not match.
    Verify {
        /// Configuration file (its upstream.cache).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Delete the folders of sources no channel uses any more, then the least recently used files (by access time)
    /// beyond the size bound.
    Prune {
        /// Configuration file (its upstream.cache).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Prune to this many bytes instead of upstream.cache.max_size ("10GiB", "500MiB" or a number).
        #[arg(long)]
        max_size: Option<String>,
    },
}

fn cache_of(config: &Config) -> anyhow::Result<condagate::config::UpstreamCache> {
    config.upstream_cache.clone().context("this configuration has no [upstream.cache]")
}

pub fn run(cmd: CacheCommand) -> anyhow::Result<bool> {
    match cmd {
        CacheCommand::Stats { config } => {
            let config = load_config(&config)?;
            let c = cache_of(&config)?;
            let areas = ops::stats(&c.dir).with_context(|| format!("reading {}", c.dir.display()))?;
            let used: HashSet<String> =
                config.channels.iter().filter(|ch| ch.source.is_remote()).map(|ch| cache::area(&ch.source)).collect();
            let total: u64 = areas.values().map(|a| a.bytes).sum();
            println!("{}: {total} of {} bytes held", c.dir.display(), c.max_size);
            for (name, a) in &areas {
                let note = if used.contains(name) { "" } else { " (no channel uses it: prune deletes it)" };
                println!(
                    "  {name}  {}  {} files, {} documents, {} bytes{note}",
                    a.source, a.files, a.documents, a.bytes
                );
            }
            Ok(true)
        }
        CacheCommand::Verify { config } => {
            let c = cache_of(&load_config(&config)?)?;
            let v = ops::verify(&c.dir).with_context(|| format!("verifying {}", c.dir.display()))?;
            println!("{} files match their sha256", v.good);
            for k in &v.unknown {
                println!("no sha256 to check against (its subdir's repodata.json is not cached): {k}");
            }
            for k in &v.bad {
                println!("MISMATCH, deleted: {k}");
            }
            Ok(v.bad.is_empty())
        }
        CacheCommand::Prune { config, max_size } => {
            let config = load_config(&config)?;
            let c = cache_of(&config)?;
            let bound = match max_size.as_deref() {
                Some(t) => condagate::config::parse_size(t).with_context(|| {
                    format!("--max-size {t:?} is not a size like \"10GiB\", \"500MiB\" or a number")
                })?,
                None => c.max_size,
            };
            let keep: HashSet<String> =
                config.channels.iter().filter(|ch| ch.source.is_remote()).map(|ch| cache::area(&ch.source)).collect();
            let p = ops::prune(&c.dir, &keep, bound).with_context(|| format!("pruning {}", c.dir.display()))?;
            for s in &p.unused_sources {
                println!("deleted the folder of a source no channel uses: {s}");
            }
            println!("evicted {} files; {} bytes freed", p.evicted, p.freed);
            Ok(true)
        }
    }
}
