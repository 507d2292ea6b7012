//! Instants kept in atomics, as nanoseconds after a base instant, so that hot paths read and write them without a
//! lock: when a connection last answered, when the throttle's latest cool-down ends, when a document was checked.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `at` as nanoseconds after `base`: 0 if it is earlier, `u64::MAX` if it is more than 584 years later.
pub fn nanos_after(base: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `nanos` nanoseconds after `base`.
pub fn after(base: Instant, nanos: u64) -> Instant {
    base + Duration::from_nanos(nanos)
}

/// The wall clock a server reads for token expiry: the system's, plus an offset that only tests move, so that
/// expiry is tested without sleeping.
#[derive(Debug)]
pub struct Clock {
    ahead_ns: AtomicI64,
    /// An instant and the Unix time it was read at, to turn instants into Unix seconds without a clock call.
    base: (Instant, i64),
}

impl Default for Clock {
    fn default() -> Self {
        Clock { ahead_ns: AtomicI64::new(0), base: (Instant::now(), OffsetDateTime::now_utc().unix_timestamp()) }
    }
}

impl Clock {
    /// The Unix second of `at` by this clock (for last-used times, to the second; no clock call).
    pub fn unix_seconds(&self, at: Instant) -> u32 {
        let since = i64::try_from(at.saturating_duration_since(self.base.0).as_secs()).unwrap_or(0);
        let ahead = self.ahead_ns.load(Relaxed) / 1_000_000_000;
        u32::try_from(self.base.1 + since + ahead).unwrap_or(0)
    }

    /// The time now, by this clock.
    pub fn now_utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::nanoseconds(self.ahead_ns.load(Relaxed))
    }

    /// Test support: moves this clock `by` ahead of the system's.
    #[doc(hidden)]
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        self.ahead_ns.fetch_add(by, Relaxed);
    }
}

/// Formats a time the way the tokens file and the CLI show it.
pub fn format_time(t: OffsetDateTime) -> String {
    // Whole seconds: enough for expiry, and columns line up.
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}
