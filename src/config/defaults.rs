//! Every default of the configuration, named once. The README's configuration reference lists the same values.

use std::time::Duration;

/// `server.listen`.
pub const LISTEN: &str = "127.0.0.1:8080";
/// `server.max_connections`.
pub const MAX_CONNECTIONS: usize = 10_000;
/// `server.repodata_max_age`.
pub const REPODATA_MAX_AGE: Duration = Duration::from_secs(60);
/// `server.header_read_timeout`.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.send_timeout`.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// `server.shutdown_grace`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `server.throttle.failures`.
pub const THROTTLE_FAILURES: u32 = 20;
/// `server.throttle.window`.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);
/// `server.throttle.cooldown`.
pub const THROTTLE_COOLDOWN: Duration = Duration::from_secs(60);
/// `server.throttle.ipv6_prefix`.
pub const THROTTLE_IPV6_PREFIX: u8 = 64;
/// `tokens.file`.
pub const TOKENS_FILE: &str = "tokens.toml";
/// `tokens.watch_interval`.
pub const TOKENS_WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// `tokens.max_stale`.
pub const TOKENS_MAX_STALE: Duration = Duration::from_secs(300);
/// `tokens.resync_interval`.
pub const TOKENS_RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// `upstream.connect_timeout`.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `upstream.timeout`.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// `upstream.recheck`.
pub const UPSTREAM_RECHECK: Duration = Duration::from_secs(1);
/// `upstream.probe_interval`.
pub const UPSTREAM_PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// `upstream.max_document`: conda-forge's largest subdir (linux-64, about 250 MB of JSON in 2026) fits four times
/// over.
pub const MAX_DOCUMENT: u64 = 1 << 30;
/// `cache.max_bytes`.
pub const CACHE_MAX_BYTES: u64 = 256 << 20;
/// `upstream.cache.max_size`.
pub const UPSTREAM_CACHE_MAX_SIZE: u64 = 20 << 30;
/// `upstream.s3.region`.
pub const S3_REGION: &str = "us-east-1";
