//! Where tokens are kept. Requests never ask a store: they read the in-memory [`TokenTable`](super::TokenTable), and
//! the store fills it ([`TokenStore::load`]), says when it should be filled again ([`TokenStore::changed`]), and takes
//! the admin API's and the CLI's writes. The tokens file ([`FileStore`]) is the embedded default.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::file::{self, StoreError};
use super::{Digest, TokenRecord};
use crate::config::{Config, Group};
use crate::stamp::FileStamp;

/// A place that keeps token records (digests, never secrets).
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// What the store is, for logs and `/healthz`: never a credential.
    fn describe(&self) -> String;

    /// Every record, to build a new table from.
    async fn load(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Resolves once the stored records may differ from those of the last [`TokenStore::load`].
    async fn changed(&self);

    /// Stores a new record, refusing it when its user already has an active token of that name.
    async fn create(&self, record: TokenRecord) -> Result<(), StoreError>;

    /// Revokes the active token `name` (of `user`, when given) at `now`, and returns its record. A name several
    /// users share needs the user.
    async fn revoke(&self, name: &str, user: Option<&str>, now: OffsetDateTime) -> Result<TokenRecord, StoreError>;

    /// Whether replicas share this store: it then keeps the channels' groups (instead of the configuration file),
    /// the download counts and the last uses of tokens, and can change behind this process.
    fn is_shared(&self) -> bool {
        false
    }

    /// The channels' groups, when this store keeps them.
    async fn groups(&self) -> Result<Option<Vec<Group>>, StoreError> {
        Ok(None)
    }

    /// Adds (`add`) or removes `item` in the `what` list (`members` or `packages`) of a group this store keeps.
    async fn change_group(
        &self,
        channel: &str,
        group: &str,
        what: &str,
        item: &str,
        add: bool,
    ) -> Result<(), StoreError> {
        let _ = (channel, group, what, item, add);
        Err(StoreError::Refused("this store does not keep groups".into()))
    }

    /// How current the table loaded from this store is known to be.
    fn freshness(&self) -> Arc<Freshness> {
        Arc::new(Freshness::new(None))
    }

    /// Adds download counts (channel, package, completed downloads) counted since the last call.
    async fn add_downloads(&self, counts: Vec<(String, String, u64)>) -> Result<(), StoreError> {
        let _ = counts;
        Ok(())
    }

    /// Saves last-used times (digest, when), for a store that keeps them.
    async fn add_last_used(&self, uses: Vec<(Digest, OffsetDateTime)>) -> Result<(), StoreError> {
        let _ = uses;
        Ok(())
    }

    /// Every replica's download counts, when this store keeps them.
    async fn downloads(&self) -> Result<Option<Vec<(String, String, u64)>>, StoreError> {
        Ok(None)
    }
}

/// When the token table was last known to match its store, and how old that may get (`tokens.max_stale`) before
/// token checks fail closed: a replica that cannot hear its store would otherwise keep honouring revoked tokens.
#[derive(Debug)]
pub struct Freshness {
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last sign of currency.
    at: AtomicU64,
    max_stale: Option<Duration>,
}

impl Freshness {
    /// Fresh from now on; with `max_stale` `None` the table never goes stale (the tokens file, read locally).
    pub fn new(max_stale: Option<Duration>) -> Self {
        Freshness { epoch: Instant::now(), at: AtomicU64::new(0), max_stale }
    }

    /// Notes that the table matches the store now.
    pub fn touch(&self) {
        self.at.store(crate::clock::nanos_after(self.epoch, Instant::now()), Relaxed);
    }

    /// How long since the table was last known to match the store, when that is tracked.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.max_stale.map(|_| now.saturating_duration_since(crate::clock::after(self.epoch, self.at.load(Relaxed))))
    }

    /// Whether the table is too old to decide on.
    pub fn is_stale(&self, now: Instant) -> bool {
        match self.max_stale {
            None => false,
            Some(limit) => self.age(now).is_some_and(|a| a > limit),
        }
    }
}

/// The store a configuration names, connected (and, for PostgreSQL, its schema checked).
pub async fn open(config: &Config) -> Result<Arc<dyn TokenStore>, StoreError> {
    Ok(match &config.tokens_postgres {
        Some(pg) => Arc::new(super::postgres::PgStore::connect(pg, true).await?),
        None => Arc::new(FileStore::new(config.tokens_file.clone(), config.tokens_watch_interval)),
    })
}

/// The tokens file: read whole, written atomically under a lock, watched by its modification time and size.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    poll: Duration,
    /// The file's stamp when it was last loaded (or last seen changed): what [`TokenStore::changed`] compares with.
    seen: Mutex<Option<FileStamp>>,
}

impl FileStore {
    /// The store in the file at `path`, looked at every `poll` for changes.
    pub fn new(path: PathBuf, poll: Duration) -> Self {
        FileStore { path, poll, seen: Mutex::new(None) }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Option<FileStamp>> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs blocking file work off the worker threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || work(&path)).await.map_err(|e| self.failed(e))?
    }

    fn failed(&self, e: tokio::task::JoinError) -> StoreError {
        StoreError::Io { path: self.path.clone(), source: std::io::Error::other(e) }
    }
}

#[async_trait]
impl TokenStore for FileStore {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn load(&self) -> Result<Vec<TokenRecord>, StoreError> {
        // The stamp is taken before the read, so that a change landing during the read is seen again next time
        // rather than lost. It is noted even when the file fails to parse: a broken file is reported once, not at
        // every poll.
        let path = self.path.clone();
        let (stamp, loaded) = tokio::task::spawn_blocking(move || (FileStamp::read(&path), file::load(&path)))
            .await
            .map_err(|e| self.failed(e))?;
        *self.seen() = stamp;
        loaded
    }

    async fn changed(&self) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let path = self.path.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || FileStamp::read(&path)).await else { continue };
            let mut seen = self.seen();
            if *seen != now {
                *seen = now;
                return;
            }
        }
    }

    async fn create(&self, record: TokenRecord) -> Result<(), StoreError> {
        self.blocking(move |path| file::insert(path, record)).await
    }

    async fn revoke(&self, name: &str, user: Option<&str>, now: OffsetDateTime) -> Result<TokenRecord, StoreError> {
        let (name, user) = (name.to_owned(), user.map(str::to_owned));
        self.blocking(move |path| file::revoke(path, &name, user.as_deref(), now)).await
    }
}
