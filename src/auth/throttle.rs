//! Brute-force throttling: failed token checks are counted per client (an IPv4 address, or an IPv6 prefix, /64 by
//! default), and a client past the bound is refused with 429 for a cool-down, except with a valid token: tokens are
//! 160-bit secrets, so letting a right one through cannot help a guesser, and one user behind a NAT cannot lock out
//! the rest. Memory is bounded and the table fails closed: it holds at most [`MAX_TRACKED`] clients, and a full table
//! evicts its coldest entries (those that failed least recently) to track a new one. Every operation is O(1); nothing
//! scans the table on the request path.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use crate::clock;

/// Most clients tracked at once.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

/// The key a client is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

/// Failure counters per client.
pub struct Throttle {
    entries: Cache<ClientKey, Arc<Mutex<Entry>>>,
    base: Instant,
    /// When the latest cool-down ends, in nanoseconds after `base`. Past it no client is cooling down, and
    /// [`Throttle::blocked`] answers without a look-up.
    cooling_until: AtomicU64,
    /// The end of each cool-down started, for the gauge of clients cooling down (read by `/metrics` only).
    cooldowns: Mutex<std::collections::VecDeque<Instant>>,
    /// Failures allowed per window.
    pub max_failures: u32,
    /// Length of the counting window.
    pub window: Duration,
    /// How long a client is refused once past the bound.
    pub cooldown: Duration,
    /// Leading bits of an IPv6 address that name one client.
    pub ipv6_prefix: u8,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").field("tracked", &self.entries.len()).finish_non_exhaustive()
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(20, Duration::from_secs(60), Duration::from_secs(60))
    }
}

impl Throttle {
    /// `max_failures` per `window` per client, then `cooldown` of 429s; IPv6 clients by /64.
    pub fn new(max_failures: u32, window: Duration, cooldown: Duration) -> Self {
        Self::with_capacity(max_failures, window, cooldown, MAX_TRACKED)
    }

    /// As [`Throttle::new`], tracking at most `capacity` clients.
    pub fn with_capacity(max_failures: u32, window: Duration, cooldown: Duration, capacity: usize) -> Self {
        Throttle {
            entries: Cache::new(capacity.max(1)),
            base: Instant::now(),
            cooling_until: AtomicU64::new(0),
            cooldowns: Mutex::default(),
            max_failures,
            window,
            cooldown,
            ipv6_prefix: 64,
        }
    }

    /// Counts IPv6 clients by `bits` leading bits.
    pub fn with_ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.clamp(1, 128);
        self
    }

    /// The key `addr` is counted under: an IPv4 address (IPv4-mapped IPv6 included) as itself, an IPv6 address by
    /// its prefix.
    pub fn key(&self, addr: IpAddr) -> ClientKey {
        match addr {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let mask = u128::MAX.checked_shl(u32::from(128 - self.ipv6_prefix)).unwrap_or(0);
                    ClientKey(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
                }
            },
        }
    }

    /// If `addr` is cooling down, the seconds left.
    pub fn blocked(&self, addr: IpAddr, now: Instant) -> Option<u64> {
        if now >= clock::after(self.base, self.cooling_until.load(Relaxed)) {
            return None;
        }
        let entry = self.entries.get(&self.key(addr))?;
        let until = entry.lock().ok()?.blocked_until?;
        (until > now).then(|| (until - now).as_secs().max(1))
    }

    /// Counts a failed token check from `addr`; returns true when this failure starts a cool-down.
    pub fn failure(&self, addr: IpAddr, now: Instant) -> bool {
        let key = self.key(addr);
        let entry = match self.entries.get(&key) {
            Some(e) => e,
            None => {
                let fresh = Arc::new(Mutex::new(Entry { window_start: now, failures: 0, blocked_until: None }));
                // Two first failures at once may both insert; one counter wins, and one failure is lost: harmless.
                self.entries.insert(key, Arc::clone(&fresh));
                fresh
            }
        };
        let Ok(mut e) = entry.lock() else { return false };
        if now.saturating_duration_since(e.window_start) >= self.window {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures > self.max_failures && e.blocked_until.is_none_or(|u| u <= now) {
            let until = now + self.cooldown;
            e.blocked_until = Some(until);
            self.cooling_until.fetch_max(clock::nanos_after(self.base, until), Relaxed);
            e.failures = 0;
            e.window_start = now;
            drop(e);
            if let Ok(mut c) = self.cooldowns.lock() {
                c.push_back(until);
                // Ends arrive in order (one cool-down length): expired ones are at the front.
                while c.front().is_some_and(|u| *u <= now) || c.len() > MAX_TRACKED {
                    c.pop_front();
                }
            }
            return true;
        }
        false
    }

    /// Clients whose cool-down started and has not ended (an upper bound when a cooling client was evicted).
    pub fn blocked_count(&self, now: Instant) -> usize {
        self.cooldowns.lock().map(|c| c.iter().filter(|u| **u > now).count()).unwrap_or(0)
    }

    /// How many clients are tracked.
    pub fn tracked(&self) -> usize {
        self.entries.len()
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
    fn a_full_table_still_tracks_new_clients() {
        let t = Throttle::with_capacity(3, Duration::from_secs(60), Duration::from_secs(60), 1000);
        let now = Instant::now();
        for i in 0..5000u32 {
            t.failure(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(t.tracked() <= 1100, "{}", t.tracked());
        let late: IpAddr = "192.0.2.1".parse().unwrap();
        let started = (0..10).map(|_| t.failure(late, now)).filter(|b| *b).count();
        assert_eq!(started, 1);
        assert!(t.blocked(late, now).is_some());
        assert_eq!(t.blocked_count(now), 1);
    }

    #[test]
    fn ipv6_clients_are_counted_by_prefix() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..21u16 {
            t.failure(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i)), now);
        }
        assert!(t.blocked("2001:db8:1:2::99".parse().unwrap(), now).is_some());
        assert!(t.blocked("2001:db8:1:3::99".parse().unwrap(), now).is_none());
        let t = Throttle::default().with_ipv6_prefix(128);
        assert_ne!(t.key("2001:db8::1".parse().unwrap()), t.key("2001:db8::2".parse().unwrap()));
        assert_eq!(t.key("::ffff:10.0.0.1".parse().unwrap()), t.key("10.0.0.1".parse().unwrap()));
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
