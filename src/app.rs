//! The shared state of a running server, and reloading it without dropping a request.
//!
//! Every request takes one [`Snapshot`] (configuration, compiled policy, token table) at its start and uses only that,
//! so a reload swaps the whole state atomically: a request sees the old state or the new one, never a mix. A file
//! that fails to parse or check is refused and the old state keeps serving; the failure shows in `/healthz`.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::auth::throttle::Throttle;
use crate::auth::Checks;
use crate::clock::Clock;
use crate::conda::view::Views;
use crate::config::{Config, Group};
use crate::http::tls::CertStore;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::tokens::store::{self, Freshness, TokenStore};
use crate::tokens::TokenTable;
use crate::upstream::cache::Cache;
use crate::upstream::health::UpstreamHealth;
use crate::upstream::{ChannelUpstreams, Upstreams};

/// One consistent state: what a request is served under.
pub struct Snapshot {
    /// The checked configuration.
    pub config: Arc<Config>,
    /// Its compiled authorization rules.
    pub policy: Arc<Policy>,
    /// The tokens.
    pub tokens: Arc<TokenTable>,
    /// Each channel's upstream.
    pub upstreams: Arc<ChannelUpstreams>,
    /// `Cache-Control` of repodata responses, public and private, formatted once per configuration.
    pub repodata_cache_control: [http::HeaderValue; 2],
}

impl Snapshot {
    /// The state of a new configuration: its policy compiled and its channels' upstreams opened.
    fn new(config: Config, upstreams: &Upstreams, tokens: Arc<TokenTable>) -> Self {
        let policy = Arc::new(Policy::new(&config));
        let upstreams = Arc::new(upstreams.open_all(&config));
        let config = Arc::new(config);
        let age = config.server.repodata_max_age.as_secs();
        let value = |scope: &str| {
            http::HeaderValue::try_from(format!("{scope}, max-age={age}"))
                .unwrap_or(http::HeaderValue::from_static("no-cache"))
        };
        // What everyone may see may be kept by any cache. A per-token view is marked `s-maxage=0` (which implies
        // `proxy-revalidate`) rather than `private`: a shared cache may store it but must ask condagate again on
        // every use, so the token is checked each time, while a client that judges responses as a shared cache does
        // (rattler's shard-index cache) keeps the validators and revalidates with a cheap 304 instead of
        // downloading the index again. See README, "Caching of per-token views".
        let shared = http::HeaderValue::try_from(format!("max-age={age}, s-maxage=0"))
            .unwrap_or(http::HeaderValue::from_static("no-cache"));
        Snapshot { repodata_cache_control: [value("public"), shared], config, policy, tokens, upstreams }
    }

    /// This state with other groups (from the store that keeps them) and tokens: the policy compiled again.
    fn with_groups(&self, groups: Vec<Group>, tokens: Arc<TokenTable>) -> Self {
        let mut config = Config::clone(&self.config);
        config.groups = groups;
        Snapshot {
            policy: Arc::new(Policy::new(&config)),
            config: Arc::new(config),
            tokens,
            upstreams: Arc::clone(&self.upstreams),
            repodata_cache_control: self.repodata_cache_control.clone(),
        }
    }

    /// This state with what the store gave: other tokens, and other groups when the store keeps them.
    fn with_store(&self, tokens: Arc<TokenTable>, groups: Option<Vec<Group>>) -> Self {
        match groups {
            Some(groups) => self.with_groups(groups, tokens),
            None => self.with_tokens(tokens),
        }
    }

    /// This state with other tokens.
    fn with_tokens(&self, tokens: Arc<TokenTable>) -> Self {
        Snapshot {
            config: Arc::clone(&self.config),
            policy: Arc::clone(&self.policy),
            tokens,
            upstreams: Arc::clone(&self.upstreams),
            repodata_cache_control: self.repodata_cache_control.clone(),
        }
    }
}

/// What the writers of the serving state leave for readers: the generations being served and the failures still
/// standing.
#[derive(Debug, Default, Clone)]
pub struct ReloadStatus {
    /// How many configurations have been put in force (1 = the one started with).
    pub config_generation: u64,
    /// How many token tables have been put in force (1 = the one started with).
    pub tokens_generation: u64,
    /// Why the last configuration reload was refused; cleared only by a configuration reload that succeeds.
    pub config_error: Option<String>,
    /// Why the last tokens reload was refused; cleared by the next tokens reload that succeeds.
    pub tokens_error: Option<String>,
    /// Why the last certificate reload was refused; cleared by the next one that succeeds.
    pub tls_error: Option<String>,
}

impl ReloadStatus {
    /// The standing failures, configuration first, or `None` when every part last loaded fine.
    pub fn error(&self) -> Option<String> {
        let all: Vec<&str> = [&self.config_error, &self.tokens_error, &self.tls_error]
            .into_iter()
            .filter_map(|e| e.as_deref())
            .collect();
        (!all.is_empty()).then(|| all.join("; "))
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The tokens could not be loaded (the message names the file or the database).
    #[error(transparent)]
    Tokens(#[from] crate::tokens::StoreError),
    /// The TLS certificate or key could not be read.
    #[error("server.tls: {0}")]
    Tls(String),
    /// The listener or the worker threads failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The upstream cache's folder could not be opened.
    #[error("upstream.cache.dir {0}")]
    Cache(String),
}

/// A pause between reading the tokens and putting them in force, for tests that need an update to be slow.
type Hook = Arc<dyn Fn() + Send + Sync>;

/// Everything a running server shares between connections.
///
/// Every update of the serving state (a configuration reload, a tokens reload, an admin API write) holds one lock,
/// `updates`, from reading the current snapshot to storing the next: updates are serialized, each builds on the state
/// the previous one stored, and only the part that changed is rebuilt. None can undo another. Readers never take
/// that lock; they read the snapshot, and the status under a lock held only to copy it.
pub struct App {
    snapshot: ArcSwap<Snapshot>,
    /// Opens the channels' upstreams.
    pub upstreams: Upstreams,
    /// Where the tokens are kept.
    pub store: Arc<dyn TokenStore>,
    /// How current the token table is known to be.
    pub freshness: Arc<Freshness>,
    /// Cached repodata views.
    pub views: Views,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Failed token checks per client address.
    pub throttle: Throttle,
    /// The TLS certificate in use, when TLS is on.
    pub tls: Option<Arc<CertStore>>,
    /// What is known of each channel's upstream.
    pub health: Arc<UpstreamHealth>,
    /// The clock token expiry is judged by.
    pub clock: Clock,
    /// Signed-in browsers of the token pages.
    pub sessions: crate::auth::session::Sessions,
    updates: tokio::sync::Mutex<()>,
    status: Mutex<ReloadStatus>,
    /// Test support: a request for exactly this path, which must be one condagate does not serve, panics in its
    /// handler (see [`App::set_panic_path`]).
    #[doc(hidden)]
    pub panic_path: std::sync::OnceLock<String>,
    tokens_read_hook: Mutex<Option<Hook>>,
}

/// Runs blocking work (reading files) off the worker threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(work).await.map_err(|e| format!("a reload task failed: {e}"))
}

impl App {
    /// Builds the state from a checked configuration, loading its tokens.
    pub async fn new(config: Config) -> Result<Self, StartError> {
        let store = store::open(&config).await?;
        let freshness = store.freshness();
        let tokens = TokenTable::new(store.load().await?);
        let mut config = config;
        if let Some(groups) = store.groups().await? {
            config.groups = groups;
        }
        let mut upstreams = Upstreams::new(config.upstream_timeouts, config.upstream_max_document);
        if let Some(c) = config.upstream_cache.clone() {
            let recheck = config.upstream_recheck;
            let shown = c.dir.display().to_string();
            let cache = blocking(move || Cache::open(&c.dir, c.max_size, recheck))
                .await
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| StartError::Cache(format!("{shown}: {e}")))?;
            upstreams = upstreams.with_cache(Arc::new(cache));
        }
        let views = Views::new(config.cache_max_bytes, config.upstream_recheck);
        let t = config.server.throttle;
        let throttle = Throttle::new(t.failures, t.window, t.cooldown).with_ipv6_prefix(t.ipv6_prefix);
        let tls = match config.server.tls.clone() {
            Some(paths) => {
                let certs = blocking(move || CertStore::new(&paths.cert, &paths.key)).await.and_then(|c| c);
                Some(Arc::new(certs.map_err(StartError::Tls)?))
            }
            None => None,
        };
        let snapshot = Snapshot::new(config, &upstreams, Arc::new(tokens));
        let status = ReloadStatus { config_generation: 1, tokens_generation: 1, ..Default::default() };
        Ok(App {
            snapshot: ArcSwap::from_pointee(snapshot),
            upstreams,
            store,
            freshness,
            views,
            metrics: Metrics::default(),
            throttle,
            tls,
            health: Arc::default(),
            clock: Clock::default(),
            sessions: Default::default(),
            updates: tokio::sync::Mutex::new(()),
            status: Mutex::new(status),
            panic_path: std::sync::OnceLock::new(),
            tokens_read_hook: Mutex::new(None),
        })
    }

    /// The current state.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current state, for the length of a request: reading it writes to nothing other threads share (no
    /// reference count), unlike [`App::snapshot`].
    pub fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// What a token check needs besides the table.
    pub fn checks(&self) -> Checks<'_> {
        Checks { throttle: &self.throttle, metrics: &self.metrics, clock: &self.clock, freshness: &self.freshness }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, ReloadStatus> {
        // A panic while holding the lock left the status as it was before that update: still consistent.
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The generations served and the failures still standing.
    pub fn reload_status(&self) -> ReloadStatus {
        self.status().clone()
    }

    /// The standing reload failures, configuration first, or `None` when every part last loaded fine.
    pub fn reload_error(&self) -> Option<String> {
        self.status().error()
    }

    /// Test support: a request for exactly `path` (a path condagate does not serve) panics in its handler, to show
    /// that a panic still gets an answer.
    #[doc(hidden)]
    pub fn set_panic_path(&self, path: &str) {
        let _ = self.panic_path.set(path.to_owned());
    }

    /// Test support: `hook` runs in every tokens reload after the tokens are read and before they are put in force.
    #[doc(hidden)]
    pub fn set_tokens_read_hook(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.tokens_read_hook.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(hook));
    }

    async fn after_tokens_read(&self) {
        let hook = self.tokens_read_hook.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(h) = hook {
            let _ = blocking(move || h()).await;
        }
    }

    /// Reads the tokens from the store again; on failure the old tokens stay in force.
    pub async fn reload_tokens(&self) -> Result<(), String> {
        let _turn = self.updates.lock().await;
        let snap = self.snapshot();
        let (tokens, groups) = self.read_tokens().await?;
        self.snapshot.store(Arc::new(snap.with_store(tokens, groups)));
        tracing::info!(tokens_generation = self.status().tokens_generation, "tokens reloaded");
        Ok(())
    }

    /// Reads the tokens (and the groups, from a store that keeps them) for the next snapshot, noting the new
    /// generation or the failure.
    async fn read_tokens(&self) -> Result<(Arc<TokenTable>, Option<Vec<Group>>), String> {
        let loaded = match self.store.load().await {
            Ok(records) => self.store.groups().await.map(|g| (records, g)),
            Err(e) => Err(e),
        };
        let loaded = loaded.map_err(|e| e.to_string());
        self.after_tokens_read().await;
        let mut status = self.status();
        match loaded {
            Ok((records, groups)) => {
                status.tokens_generation += 1;
                status.tokens_error = None;
                Ok((Arc::new(TokenTable::keeping_uses(records, &self.current().tokens)), groups))
            }
            Err(e) => {
                tracing::error!(error = %e, "tokens reload refused; the previous tokens stay in force");
                status.tokens_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Re-reads the configuration file (when the server was started from one), the tokens and the certificate. The
    /// listen address, the tokens store, upstream timeouts and cache size are fixed at start; everything else takes
    /// effect at once. A configuration that fails its checks is refused whole and reported until one passes; tokens
    /// that fail to load keep the previous tokens in force beside the new configuration, and are reported on their
    /// own.
    pub async fn reload_all(&self) -> Result<(), String> {
        let _turn = self.updates.lock().await;
        let snap = self.snapshot();
        let tls = match self.tls.clone() {
            Some(t) => blocking(move || t.reload()).await.and_then(|r| r),
            None => Ok(()),
        };
        self.status().tls_error = tls.as_ref().err().cloned();
        if let Err(e) = &tls {
            tracing::error!(error = %e, "certificate reload refused; the previous certificate keeps serving");
        }
        let Some(path) = snap.config.path.clone() else {
            let (tokens, groups) = self.read_tokens().await?;
            self.snapshot.store(Arc::new(snap.with_store(tokens, groups)));
            return tls;
        };
        let shown = path.display().to_string();
        let mut config = match blocking(move || Config::load(&path)).await? {
            Ok(c) => c,
            Err(e) => {
                let why = e.problems.join("; ");
                tracing::error!(error = %why, file = %shown, "configuration reload refused; the previous one keeps serving");
                self.status().config_error = Some(why.clone());
                return Err(why);
            }
        };
        if config.server.listen != snap.config.server.listen {
            tracing::warn!("server.listen changed; the new address takes effect after a restart");
        }
        if config.upstream_cache != snap.config.upstream_cache {
            tracing::warn!("upstream.cache changed; the new cache takes effect after a restart");
        }
        let store_url = |c: &Config| c.tokens_postgres.as_ref().map(|p| p.url().to_owned());
        if config.tokens_file != snap.config.tokens_file || store_url(&config) != store_url(&snap.config) {
            tracing::warn!(
                "the token store (tokens.file or tokens.postgres) changed; the new one takes effect after a restart"
            );
        }
        let tokens = self.read_tokens().await;
        let table = match &tokens {
            Ok((t, groups)) => {
                if let Some(g) = groups {
                    config.groups = g.clone();
                }
                Arc::clone(t)
            }
            // The groups the store gave last stay in force with the tokens.
            Err(_) => {
                if self.store.is_shared() {
                    config.groups = snap.config.groups.clone();
                }
                Arc::clone(&snap.tokens)
            }
        };
        self.snapshot.store(Arc::new(Snapshot::new(config, &self.upstreams, table)));
        let mut status = self.status();
        status.config_generation += 1;
        status.config_error = None;
        tracing::info!(
            config_generation = status.config_generation,
            tokens_generation = status.tokens_generation,
            "configuration reloaded"
        );
        tokens.map(|_| ()).and(tls)
    }
}
