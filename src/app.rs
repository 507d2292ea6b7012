//! The shared state of a running server, and reloading it without dropping a request.
//!
//! Every request takes one [`Snapshot`] (configuration, compiled policy, token table) at its start and uses only that,
//! so a reload swaps the whole state atomically: a request sees the old state or the new one, never a mix. A file
//! that fails to parse or check is refused and the old state keeps serving; the failure shows in `/healthz`.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::auth::throttle::Throttle;
use crate::conda::view::Views;
use crate::config::Config;
use crate::http::tls::CertStore;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::stamp::FileStamp;
use crate::tokens::{file, TokenTable};
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

/// What the writers of the serving state keep between updates, under one lock: the generations being served, the
/// failures still standing, and the tokens file's stamp.
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
    tokens_stamp: Option<FileStamp>,
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

/// A pause between reading a tokens file and putting it in force, for tests that need an update to be slow.
type Hook = Arc<dyn Fn() + Send + Sync>;

/// Everything a running server shares between connections.
///
/// Every update of the serving state (a configuration reload, a tokens reload, an admin API write) holds one lock,
/// `updates`, from reading the current snapshot to storing the next: updates are serialized, each builds on the state
/// the previous one stored, and only the part that changed is rebuilt. None can undo another. Readers never take
/// the lock.
pub struct App {
    snapshot: ArcSwap<Snapshot>,
    /// The upstream client.
    pub upstreams: Upstreams,
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
    updates: Mutex<ReloadStatus>,
    /// Test support: a request for exactly this path, which must be one condagate does not serve, panics in its
    /// handler (see [`App::set_panic_path`]).
    #[doc(hidden)]
    pub panic_path: std::sync::OnceLock<String>,
    tokens_read_hook: Mutex<Option<Hook>>,
}

impl App {
    /// Builds the state from a checked configuration, reading its tokens file.
    pub fn new(config: Config) -> Result<Self, anyhow::Error> {
        let tokens_stamp = FileStamp::read(&config.tokens_file);
        let tokens = TokenTable::new(file::load(&config.tokens_file)?);
        let upstreams = Upstreams::new(config.upstream_timeouts, config.upstream_max_document);
        let views = Views::new(config.cache_max_bytes, config.upstream_recheck);
        let t = config.server.throttle;
        let throttle = Throttle::new(t.failures, t.window, t.cooldown).with_ipv6_prefix(t.ipv6_prefix);
        let tls = match &config.server.tls {
            Some(paths) => Some(Arc::new(CertStore::new(&paths.cert, &paths.key).map_err(anyhow::Error::msg)?)),
            None => None,
        };
        let snapshot = Snapshot::new(config, &upstreams, Arc::new(tokens));
        let status = ReloadStatus { config_generation: 1, tokens_generation: 1, tokens_stamp, ..Default::default() };
        Ok(App {
            snapshot: ArcSwap::from_pointee(snapshot),
            upstreams,
            views,
            metrics: Metrics::default(),
            throttle,
            tls,
            health: Arc::default(),
            updates: Mutex::new(status),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadStatus> {
        // A panic while holding the lock left the status as it was before that update: still consistent.
        self.updates.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The generations served and the failures still standing.
    pub fn reload_status(&self) -> ReloadStatus {
        self.lock().clone()
    }

    /// The standing reload failures, configuration first, or `None` when every part last loaded fine.
    pub fn reload_error(&self) -> Option<String> {
        self.lock().error()
    }

    /// Test support: a request for exactly `path` (a path condagate does not serve) panics in its handler, to show
    /// that a panic still gets an answer.
    #[doc(hidden)]
    pub fn set_panic_path(&self, path: &str) {
        let _ = self.panic_path.set(path.to_owned());
    }

    /// Test support: `hook` runs in every tokens reload after the file is read and before it is put in force.
    #[doc(hidden)]
    pub fn set_tokens_read_hook(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.tokens_read_hook.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(hook));
    }

    fn after_tokens_read(&self) {
        let hook = self.tokens_read_hook.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(h) = hook {
            h();
        }
    }

    /// Re-reads the tokens file if it changed since the last look. Returns whether it reloaded.
    pub fn reload_tokens_if_changed(&self) -> Result<bool, String> {
        let mut status = self.lock();
        let now = FileStamp::read(&self.current().config.tokens_file);
        if status.tokens_stamp == now {
            return Ok(false);
        }
        self.reload_tokens_locked(&mut status).map(|()| true)
    }

    /// Re-reads the tokens file; on failure the old tokens stay in force.
    pub fn reload_tokens(&self) -> Result<(), String> {
        let mut status = self.lock();
        self.reload_tokens_locked(&mut status)
    }

    fn reload_tokens_locked(&self, status: &mut ReloadStatus) -> Result<(), String> {
        let snap = self.snapshot();
        let tokens = self.read_tokens(&snap.config.tokens_file, status)?;
        self.snapshot.store(Arc::new(snap.with_tokens(tokens)));
        tracing::info!(tokens_generation = status.tokens_generation, "tokens reloaded");
        Ok(())
    }

    /// Reads the tokens file at `path` for the next snapshot, noting in `status` its stamp (even on failure, so a
    /// broken file is reported once, not every poll), the new generation or the failure.
    fn read_tokens(&self, path: &std::path::Path, status: &mut ReloadStatus) -> Result<Arc<TokenTable>, String> {
        status.tokens_stamp = FileStamp::read(path);
        let loaded = file::load(path).map_err(|e| e.to_string());
        self.after_tokens_read();
        match loaded {
            Ok(records) => {
                status.tokens_generation += 1;
                status.tokens_error = None;
                Ok(Arc::new(TokenTable::new(records)))
            }
            Err(e) => {
                tracing::error!(error = %e, "tokens reload refused; the previous tokens stay in force");
                status.tokens_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Re-reads the configuration file (when the server was started from one) and the tokens file. The listen
    /// address, upstream timeouts and cache size are fixed at start; everything else takes effect at once. A
    /// configuration that fails its checks is refused whole and reported until one passes; a tokens file that fails
    /// keeps the previous tokens in force beside the new configuration, and is reported on its own.
    pub fn reload_all(&self) -> Result<(), String> {
        let mut status = self.lock();
        let snap = self.snapshot();
        let tls = self.tls.as_ref().map_or(Ok(()), |t| t.reload());
        status.tls_error = tls.as_ref().err().cloned();
        if let Err(e) = &tls {
            tracing::error!(error = %e, "certificate reload refused; the previous certificate keeps serving");
        }
        let Some(path) = snap.config.path.clone() else {
            return self.reload_tokens_locked(&mut status).and(tls);
        };
        let config = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                let why = e.problems.join("; ");
                tracing::error!(error = %why, file = %path.display(), "configuration reload refused; the previous one keeps serving");
                status.config_error = Some(why.clone());
                return Err(why);
            }
        };
        if config.server.listen != snap.config.server.listen {
            tracing::warn!("server.listen changed; the new address takes effect after a restart");
        }
        let tokens = self.read_tokens(&config.tokens_file, &mut status);
        let table = tokens.as_ref().map_or_else(|_| Arc::clone(&snap.tokens), Arc::clone);
        self.snapshot.store(Arc::new(Snapshot::new(config, &self.upstreams, table)));
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
