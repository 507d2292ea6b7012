//! The shared state of a running server, and reloading it without dropping a request.
//!
//! Every request takes one [`Snapshot`] (configuration, compiled policy, token table) at its start and uses only that,
//! so a reload swaps the whole state atomically: a request sees the old state or the new one, never a mix. A file
//! that fails to parse or check is refused and the old state keeps serving; the failure shows in `/healthz`.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::store::{self, TokenTable};
use crate::throttle::Throttle;
use crate::tls::CertStore;
use crate::upstream::{FileStamp, Upstreams};
use crate::view::Views;

/// One consistent state: what a request is served under.
pub struct Snapshot {
    /// The checked configuration.
    pub config: Arc<Config>,
    /// Its compiled authorization rules.
    pub policy: Arc<Policy>,
    /// The tokens.
    pub tokens: Arc<TokenTable>,
    /// `Cache-Control` of repodata responses, public and private, formatted once per configuration.
    pub repodata_cache_control: [http::HeaderValue; 2],
}

impl Snapshot {
    fn new(config: Arc<Config>, policy: Arc<Policy>, tokens: Arc<TokenTable>) -> Self {
        let age = config.server.repodata_max_age.as_secs();
        let value = |scope: &str| {
            http::HeaderValue::try_from(format!("{scope}, max-age={age}"))
                .unwrap_or(http::HeaderValue::from_static("no-cache"))
        };
        Snapshot { repodata_cache_control: [value("public"), value("private")], config, policy, tokens }
    }
}

/// Everything a running server shares between connections.
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
    reload_error: Mutex<Option<String>>,
    /// The tokens file's stamp at the last (re)load, to notice changes with one `stat`.
    tokens_stamp: Mutex<Option<FileStamp>>,
}

impl App {
    /// Builds the state from a checked configuration, reading its tokens file.
    pub fn new(config: Config) -> Result<Self, anyhow::Error> {
        let tokens_stamp = FileStamp::read(&config.tokens_file);
        let tokens = TokenTable::new(store::load(&config.tokens_file)?);
        let upstreams = Upstreams::new(config.upstream_timeouts);
        let views = Views::new(config.cache_max_bytes, config.upstream_recheck);
        let t = config.server.throttle;
        let throttle = Throttle::new(t.failures, t.window, t.cooldown);
        let tls = match &config.server.tls {
            Some(paths) => Some(Arc::new(CertStore::new(&paths.cert, &paths.key).map_err(anyhow::Error::msg)?)),
            None => None,
        };
        let policy = Arc::new(Policy::new(&config));
        let snapshot = Snapshot::new(Arc::new(config), policy, Arc::new(tokens));
        Ok(App {
            snapshot: ArcSwap::from_pointee(snapshot),
            upstreams,
            views,
            metrics: Metrics::default(),
            throttle,
            tls,
            reload_error: Mutex::new(None),
            tokens_stamp: Mutex::new(tokens_stamp),
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

    /// The last reload's failure, if the last reload failed.
    pub fn reload_error(&self) -> Option<String> {
        self.reload_error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    fn record(&self, result: Result<(), String>) -> Result<(), String> {
        if let Ok(mut e) = self.reload_error.lock() {
            *e = result.as_ref().err().cloned();
        }
        match &result {
            Ok(()) => tracing::info!("reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the previous state keeps serving")
            }
        }
        result
    }

    /// Re-reads the tokens file if it changed since the last look. Returns whether it reloaded.
    pub fn reload_tokens_if_changed(&self) -> Result<bool, String> {
        let snap = self.snapshot();
        let now = FileStamp::read(&snap.config.tokens_file);
        {
            let held = self.tokens_stamp.lock().map_err(|_| "poisoned lock".to_owned())?;
            if *held == now {
                return Ok(false);
            }
        }
        self.reload_tokens().map(|()| true)
    }

    /// Re-reads the tokens file; on failure the old tokens stay in force.
    pub fn reload_tokens(&self) -> Result<(), String> {
        let snap = self.snapshot();
        let path = &snap.config.tokens_file;
        let now = FileStamp::read(path);
        let result = store::load(path).map_err(|e| e.to_string()).map(|records| {
            self.snapshot.store(Arc::new(Snapshot::new(
                Arc::clone(&snap.config),
                Arc::clone(&snap.policy),
                Arc::new(TokenTable::new(records)),
            )));
        });
        if let Ok(mut s) = self.tokens_stamp.lock() {
            // Remember the stamp even on failure, so a broken file is reported once, not every poll.
            *s = now;
        }
        self.record(result)
    }

    /// Re-reads the configuration file (when the server was started from one) and the tokens file. The listen
    /// address, upstream timeouts and cache size are fixed at start; everything else takes effect at once.
    pub fn reload_all(&self) -> Result<(), String> {
        let snap = self.snapshot();
        let tls = self.tls.as_ref().map_or(Ok(()), |t| t.reload());
        let Some(path) = snap.config.path.clone() else {
            return self.reload_tokens().and(tls);
        };
        let result = Config::load(&path).map_err(|e| e.to_string().trim_end().to_owned()).and_then(|config| {
            let now = FileStamp::read(&config.tokens_file);
            let records = store::load(&config.tokens_file).map_err(|e| e.to_string())?;
            if config.server.listen != snap.config.server.listen {
                tracing::warn!("server.listen changed; the new address takes effect after a restart");
            }
            let policy = Arc::new(Policy::new(&config));
            self.snapshot.store(Arc::new(Snapshot::new(Arc::new(config), policy, Arc::new(TokenTable::new(records)))));
            if let Ok(mut s) = self.tokens_stamp.lock() {
                *s = now;
            }
            Ok(())
        });
        self.record(result.and(tls))
    }
}
