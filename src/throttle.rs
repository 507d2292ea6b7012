//! Brute-force throttling: failed token checks are counted per client address, and an address past the bound is
//! refused with 429 for a cool-down. Good tokens and other addresses are unaffected. Memory is bounded: past
//! [`MAX_TRACKED`] addresses, stale entries are swept, and if none are stale new addresses are not tracked (failing
//! open on counting, never on authentication).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::clock;

/// Most addresses tracked at once.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

/// Failure counters per address.
#[derive(Debug)]
pub struct Throttle {
    entries: DashMap<IpAddr, Entry>,
    base: Instant,
    /// When the latest cool-down ends, in nanoseconds after `base`. Past it no address is cooling down, and
    /// [`Throttle::blocked`] answers without a look-up.
    cooling_until: AtomicU64,
    /// Failures allowed per window.
    pub max_failures: u32,
    /// Length of the counting window.
    pub window: Duration,
    /// How long an address is refused once past the bound.
    pub cooldown: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(20, Duration::from_secs(60), Duration::from_secs(60))
    }
}

impl Throttle {
    /// `max_failures` per `window` per address, then `cooldown` of 429s.
    pub fn new(max_failures: u32, window: Duration, cooldown: Duration) -> Self {
        let (base, cooling_until) = (Instant::now(), AtomicU64::new(0));
        Throttle { entries: DashMap::new(), base, cooling_until, max_failures, window, cooldown }
    }

    /// If `addr` is cooling down, the seconds left.
    pub fn blocked(&self, addr: IpAddr, now: Instant) -> Option<u64> {
        if now >= clock::after(self.base, self.cooling_until.load(Relaxed)) {
            return None;
        }
        let e = self.entries.get(&addr)?;
        let until = e.blocked_until?;
        (until > now).then(|| (until - now).as_secs().max(1))
    }

    /// Counts a failed token check from `addr`; returns true when this failure starts a cool-down.
    pub fn failure(&self, addr: IpAddr, now: Instant) -> bool {
        if self.entries.len() >= MAX_TRACKED && !self.entries.contains_key(&addr) {
            self.entries.retain(|_, e| {
                now.duration_since(e.window_start) < self.window || e.blocked_until.is_some_and(|u| u > now)
            });
            if self.entries.len() >= MAX_TRACKED {
                return false;
            }
        }
        let mut e = self.entries.entry(addr).or_insert(Entry { window_start: now, failures: 0, blocked_until: None });
        if now.duration_since(e.window_start) >= self.window {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures += 1;
        if e.failures > self.max_failures && e.blocked_until.is_none_or(|u| u <= now) {
            e.blocked_until = Some(now + self.cooldown);
            self.cooling_until.fetch_max(clock::nanos_after(self.base, now + self.cooldown), Relaxed);
            e.failures = 0;
            e.window_start = now;
            return true;
        }
        false
    }

    /// Addresses currently cooling down.
    pub fn blocked_count(&self, now: Instant) -> usize {
        self.entries.iter().filter(|e| e.blocked_until.is_some_and(|u| u > now)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_past_the_bound_cools_down_alone() {
        let t = Throttle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let now = Instant::now();
        for _ in 0..20 {
            assert!(!t.failure(a, now));
        }
        assert_eq!(t.blocked(a, now), None);
        assert!(t.failure(a, now));
        assert_eq!(t.blocked(a, now), Some(60));
        assert_eq!(t.blocked(b, now), None);
        assert_eq!(t.blocked(a, now + Duration::from_secs(61)), None);
    }

    #[test]
    fn failures_in_old_windows_are_forgotten() {
        let t = Throttle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        for i in 0..100u64 {
            assert!(!t.failure(a, now + Duration::from_secs(i * 4)), "failure {i}");
        }
    }
}
