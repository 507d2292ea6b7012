//! Instants kept in atomics, as nanoseconds after a base instant, so that hot paths read and write them without a
//! lock: when a connection last answered, when the throttle's latest cool-down ends, when a document was checked.

use std::time::{Duration, Instant};

/// `at` as nanoseconds after `base`: 0 if it is earlier, `u64::MAX` if it is more than 584 years later.
pub(crate) fn nanos_after(base: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `nanos` nanoseconds after `base`.
pub(crate) fn after(base: Instant, nanos: u64) -> Instant {
    base + Duration::from_nanos(nanos)
}
