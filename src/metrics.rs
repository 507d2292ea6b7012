//! Counters for `GET /metrics`, in the Prometheus text format. Label sets are fixed and small: per-package counts
//! belong in the access log, not here.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use dashmap::DashMap;

use strum::{EnumCount, IntoEnumIterator};

use crate::error::Reason;
use crate::http::conn::Connections;

/// Upper bounds of the request duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// How many copies of the per-response counters there are; a thread adds to one of them (see [`shard`]).
const SHARDS: usize = 8;

/// The counters every response adds to. Each thread adds to its own shard, aligned to its own cache lines, so that
/// worker threads never write to the same line once per request; `/metrics` adds the shards up.
#[derive(Debug, Default)]
#[repr(align(128))]
struct ResponseCounters {
    by_class: [AtomicU64; 5],
    bytes: AtomicU64,
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_us: AtomicU64,
}

/// The shard of the calling thread: threads take shards in turn as they first count something.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS);
    SHARD.with(|s| *s)
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    responses: [ResponseCounters; SHARDS],
    upstream_errors: AtomicU64,
    /// Unserved requests by [`Reason`], indexed by the reason's position.
    refusals: [AtomicU64; Reason::COUNT],
    throttled: AtomicU64,
    panics: AtomicU64,
    /// Completed package downloads per (channel, package): for the admin API, never a metric label. Bounded by
    /// the packages that exist, since only served files are counted.
    downloads: DashMap<(String, String), u64>,
    /// Connection gauges, kept by the connection loop.
    pub connections: Arc<Connections>,
}

impl Metrics {
    /// Counts a finished response.
    pub fn response(&self, status: u16, bytes: u64, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let r = &self.responses[shard()];
        r.by_class[class].fetch_add(1, Relaxed);
        r.bytes.fetch_add(bytes, Relaxed);
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            r.duration_buckets[i].fetch_add(1, Relaxed);
        }
        r.duration_count.fetch_add(1, Relaxed);
        r.duration_sum_us.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    /// Counts a request that was not served, by why.
    pub fn refusal(&self, reason: Reason) {
        self.refusals[reason as usize].fetch_add(1, Relaxed);
    }

    /// Counts a completed download of `package` from `channel`.
    pub fn download(&self, channel: &str, package: &str) {
        *self.downloads.entry((channel.to_owned(), package.to_owned())).or_insert(0) += 1;
    }

    /// Completed downloads per package of the channels `include` accepts, sorted.
    pub fn downloads(&self, include: impl Fn(&str) -> bool) -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = self
            .downloads
            .iter()
            .filter(|e| include(&e.key().0))
            .map(|e| (e.key().0.clone(), e.key().1.clone(), *e.value()))
            .collect();
        v.sort();
        v
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }

    /// Counts an address starting a cool-down.
    /// Counts a request whose handler panicked (answered 500).
    pub fn panicked(&self) {
        self.panics.fetch_add(1, Relaxed);
    }

    /// Counts a cool-down started.
    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }

    /// A per-response counter added up over the shards.
    fn total(&self, counter: impl Fn(&ResponseCounters) -> &AtomicU64) -> u64 {
        self.responses.iter().map(|r| counter(r).load(Relaxed)).sum()
    }

    /// Renders every counter, plus the gauges given.
    pub fn render(&self, view_hits: u64, view_misses: u64, view_bytes: u64, blocked_now: usize) -> String {
        let mut s = String::with_capacity(2048);
        let _ = writeln!(s, "# TYPE condagate_requests_total counter");
        for i in 0..5 {
            let n = self.total(|r| &r.by_class[i]);
            let _ = writeln!(s, "condagate_requests_total{{class=\"{}xx\"}} {n}", i + 1);
        }
        let _ = writeln!(s, "# TYPE condagate_response_bytes_total counter");
        let _ = writeln!(s, "condagate_response_bytes_total {}", self.total(|r| &r.bytes));
        let _ = writeln!(s, "# TYPE condagate_request_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.total(|r| &r.duration_buckets[i]);
            let _ = writeln!(s, "condagate_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.total(|r| &r.duration_count);
        let _ = writeln!(s, "condagate_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ =
            writeln!(s, "condagate_request_duration_seconds_sum {}", self.total(|r| &r.duration_sum_us) as f64 / 1e6);
        let _ = writeln!(s, "condagate_request_duration_seconds_count {count}");
        let _ = writeln!(s, "# TYPE condagate_upstream_errors_total counter");
        let _ = writeln!(s, "condagate_upstream_errors_total {}", self.upstream_errors.load(Relaxed));
        for (auth, name) in [(true, "condagate_auth_refusals_total"), (false, "condagate_errors_total")] {
            let _ = writeln!(s, "# TYPE {name} counter");
            for r in Reason::iter().filter(|r| r.is_auth() == auth) {
                let n = self.refusals[r as usize].load(Relaxed);
                let _ = writeln!(s, "{name}{{reason=\"{}\"}} {n}", r.as_str());
            }
        }
        let _ = writeln!(s, "# TYPE condagate_panics_total counter");
        let _ = writeln!(s, "condagate_panics_total {}", self.panics.load(Relaxed));
        let _ = writeln!(s, "# TYPE condagate_throttled_total counter");
        let _ = writeln!(s, "condagate_throttled_total {}", self.throttled.load(Relaxed));
        let _ = writeln!(s, "# TYPE condagate_throttled_addresses gauge");
        let _ = writeln!(s, "condagate_throttled_addresses {blocked_now}");
        let _ = writeln!(s, "# TYPE condagate_view_cache_hits_total counter");
        let _ = writeln!(s, "condagate_view_cache_hits_total {view_hits}");
        let _ = writeln!(s, "# TYPE condagate_view_cache_misses_total counter");
        let _ = writeln!(s, "condagate_view_cache_misses_total {view_misses}");
        self.connections.render(&mut s);
        let _ = writeln!(s, "# TYPE condagate_view_cache_bytes gauge");
        let _ = writeln!(s, "condagate_view_cache_bytes {view_bytes}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_counted_under_its_own_label() {
        let m = Metrics::default();
        for (i, r) in Reason::iter().enumerate() {
            for _ in 0..=i {
                m.refusal(r);
            }
        }
        let text = m.render(0, 0, 0, 0);
        for (i, r) in Reason::iter().enumerate() {
            let name = if r.is_auth() { "condagate_auth_refusals_total" } else { "condagate_errors_total" };
            let line = format!("{name}{{reason=\"{}\"}} {}\n", r.as_str(), i + 1);
            assert!(text.contains(&line), "{line:?} is missing from\n{text}");
        }
    }

    #[test]
    fn responses_counted_on_many_threads_add_up_over_the_shards() {
        let m = Metrics::default();
        std::thread::scope(|s| {
            for _ in 0..SHARDS + 3 {
                s.spawn(|| (0..100).for_each(|_| m.response(200, 10, 0.0002)));
            }
        });
        m.response(404, 1, 2.0);
        let text = m.render(0, 0, 0, 0);
        for want in [
            "condagate_requests_total{class=\"2xx\"} 1100\n",
            "condagate_requests_total{class=\"4xx\"} 1\n",
            "condagate_response_bytes_total 11001\n",
            "condagate_request_duration_seconds_bucket{le=\"0.0005\"} 1100\n",
            "condagate_request_duration_seconds_bucket{le=\"1\"} 1100\n",
            "condagate_request_duration_seconds_bucket{le=\"5\"} 1101\n",
            "condagate_request_duration_seconds_count 1101\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
