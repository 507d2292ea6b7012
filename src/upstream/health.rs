//! What condagate knows about each channel's upstream: learned from real traffic and from one background probe per
//! upstream per interval, never from a health check itself. A dead mirror of one channel shows here, in `/healthz`
//! and in `/metrics` (and is logged when it changes, so `serve` warns at start about each upstream it cannot reach);
//! it does not make the whole replica unready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;

use crate::config::Config;
use crate::upstream::ChannelUpstreams;

/// The last known state of one channel's upstream.
#[derive(Debug, Clone)]
pub struct UpstreamState {
    /// Whether the last request or probe reached it.
    pub up: bool,
    /// Why it did not, with any URL credentials redacted.
    pub error: Option<String>,
    /// When that was learned.
    pub at: SystemTime,
}

/// Per-channel upstream states.
#[derive(Default)]
pub struct UpstreamHealth {
    states: DashMap<String, UpstreamState>,
    /// Set when shutdown begins: `/readyz` then says to send no more traffic here.
    pub draining: AtomicBool,
}

impl UpstreamHealth {
    /// Notes a request to the upstream of `channel` that reached it (`Ok`) or failed on the upstream's side. Writes
    /// only when the state changes, so the hot path takes a read lock of one shard.
    pub fn record(&self, channel: &str, result: Result<(), String>) {
        let up = result.is_ok();
        let was_up = self.states.get(channel).map(|s| s.up);
        if up && was_up == Some(true) {
            return;
        }
        match (&result, was_up) {
            (Err(e), None | Some(true)) => tracing::warn!(channel, error = %e, "upstream unreachable"),
            (Ok(()), Some(false)) => tracing::info!(channel, "upstream reachable again"),
            _ => {}
        }
        let state = UpstreamState { up, error: result.err(), at: SystemTime::now() };
        self.states.insert(channel.to_owned(), state);
    }

    /// The states of the channels of `config`, in its order; channels not heard of yet are left out.
    pub fn states(&self, config: &Config) -> Vec<(String, UpstreamState)> {
        config.channels.iter().filter_map(|c| self.states.get(&c.name).map(|s| (c.name.clone(), s.clone()))).collect()
    }

    /// How many channels of `config` have an upstream known to be down.
    pub fn down(&self, config: &Config) -> usize {
        self.states(config).iter().filter(|(_, s)| !s.up).count()
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Probes every channel's upstream once, concurrently, and records the results.
    pub async fn probe_all(self: &Arc<Self>, upstreams: &ChannelUpstreams) {
        let probes = upstreams.iter().map(|(name, up)| async move { (name, up.probe().await) });
        for (name, result) in futures_util::future::join_all(probes).await {
            self.record(name, result);
        }
    }
}
