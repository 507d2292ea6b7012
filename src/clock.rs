//! Instants kept in atomics, as nanoseconds after a base instant, so that hot paths read and write them without a
//! lock: when a connection last answered, when the throttle's latest cool-down ends, when a document was checked.

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

/// Formats a time the way the tokens file and the CLI show it.
pub fn format_time(t: OffsetDateTime) -> String {
    // Whole seconds: enough for expiry, and columns line up.
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}
