//! Configuration: loosely typed raw sections read by serde, then checked into the [`Config`] the server runs on.
//!
//! Checking collects every problem instead of stopping at the first, and each problem names the key that holds it
//! (`channels[1].access: "publik" is not one of public, authenticated, private`). Relative paths are resolved against
//! the folder of the configuration file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};
use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;

/// Every problem found in a configuration file, one per line, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file the problems are in, if it came from a file.
    pub source: Option<PathBuf>,
    /// One line per problem: `key: what is wrong`.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = self.source.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default();
        writeln!(f, "{} problem(s){from}:", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The file's sections, each read on its own by [`read_sections`] (so a problem in one hides none in another).
#[derive(Debug, Default)]
struct RawConfig {
    server: RawServer,
    tokens: RawTokens,
    upstream: Option<RawUpstream>,
    cache: RawCache,
    log: RawLog,
    channels: Vec<RawChannel>,
    groups: Vec<RawGroup>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    base_path: Option<String>,
    repodata_max_age: Option<String>,
    header_read_timeout: Option<String>,
    send_timeout: Option<String>,
    max_connections: Option<i64>,
    workers: Option<i64>,
    shutdown_grace: Option<String>,
    tls: Option<RawTls>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    throttle: Option<RawThrottle>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    failures: Option<i64>,
    window: Option<String>,
    cooldown: Option<String>,
    ipv6_prefix: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    file: Option<String>,
    watch_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    dir: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    connect_timeout: Option<String>,
    timeout: Option<String>,
    recheck: Option<String>,
    probe_interval: Option<String>,
    max_document: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    max_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: String,
    access: Option<String>,
    #[serde(default)]
    owners: Vec<String>,
    upstream: Option<RawUpstream>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    channel: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    packages: Vec<String>,
    labels: Option<Vec<String>>,
}

/// Who may read a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a token (a token that is presented must still be valid).
    Public,
    /// Any valid token with a download scope.
    Authenticated,
    /// The channel's owners, and members of its groups for what the groups grant.
    Private,
}

impl Access {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Access::Public),
            "authenticated" => Some(Access::Authenticated),
            "private" => Some(Access::Private),
            _ => None,
        }
    }

    /// The name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Authenticated => "authenticated",
            Access::Private => "private",
        }
    }
}

/// Where a channel's files come from. Both kinds hold `<subdir>/<file>` and `label/<label>/<subdir>/<file>` below
/// the channel's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local folder: the channel's root.
    Dir(PathBuf),
    /// An HTTP(S) mirror: the channel root's URL (no trailing slash) and headers to send with every request.
    Http {
        /// The channel root's URL, without a trailing slash.
        base: String,
        /// Extra headers sent upstream (credentials, typically).
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// Timeouts for HTTP upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// Time allowed to open a connection.
    pub connect: Duration,
    /// Time allowed until the response head arrives.
    pub first_byte: Duration,
}

/// A channel condagate serves.
#[derive(Debug, Clone)]
pub struct Channel {
    /// Its name, the first path segment after the token.
    pub name: String,
    /// Who may read it.
    pub access: Access,
    /// Users who see every package and label.
    pub owners: Vec<String>,
    /// Where its files come from.
    pub source: Source,
}

/// A set of package-name globs.
#[derive(Debug, Clone)]
pub struct Packages {
    /// The globs as written, sorted and deduplicated.
    pub patterns: Vec<String>,
    /// Whether one of them is `*` (every package).
    pub everything: bool,
    /// The compiled matcher.
    pub matcher: GlobSet,
}

impl Packages {
    /// Compiles a list of globs (`alpha`, `beta*`, `*`).
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut sorted: Vec<String> = patterns.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut builder = GlobSetBuilder::new();
        for p in &sorted {
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("{p:?} is not a valid glob ({})", e.kind()))?;
            builder.add(glob);
        }
        let matcher = builder.build().map_err(|e| e.to_string())?;
        Ok(Packages { everything: sorted.iter().any(|p| p == "*"), patterns: sorted, matcher })
    }

    /// Whether `name` is one of these packages.
    pub fn matches(&self, name: &str) -> bool {
        self.everything || self.matcher.is_match(name)
    }
}

/// A group: some users' access to some packages (and labels) of one channel.
#[derive(Debug, Clone)]
pub struct Group {
    /// Its name, shown by `explain`.
    pub name: String,
    /// The channel it grants access to.
    pub channel: String,
    /// Its members (user names).
    pub members: Vec<String>,
    /// The packages it grants.
    pub packages: Packages,
    /// The labels it grants; `None` for all. The channel root is the label `main`.
    pub labels: Option<Vec<String>>,
}

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Path prefix everything is served under (`""` or `/conda`).
    pub base_path: String,
    /// `max-age` of repodata responses.
    pub repodata_max_age: Duration,
    /// Time a client has to send a request's head; also how long an idle keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// How long a response may go without moving (the client not reading) before its connection is closed.
    pub send_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Threads serving connections, each with its own single-threaded runtime.
    pub workers: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// TLS certificate and key (PEM); `None` serves plain HTTP.
    pub tls: Option<TlsPaths>,
    /// Peers whose `X-Forwarded-For` is believed (addresses or CIDR blocks).
    pub trusted_proxies: Vec<IpNet>,
    /// Brute-force throttling of failed token checks.
    pub throttle: ThrottleConfig,
}

/// Where the TLS certificate chain and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Throttling settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failed token checks allowed per address and window.
    pub failures: u32,
    /// The counting window.
    pub window: Duration,
    /// How long an address is refused once past the bound.
    pub cooldown: Duration,
    /// IPv6 clients are counted by this many leading bits of their address (a client usually holds a whole /64).
    pub ipv6_prefix: u8,
}

/// An address block: `10.0.0.0/8`, `::1/128`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, or the IPv6 forms.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: std::net::IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
        };
        Some(IpNet { addr, prefix })
    }

    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) if self.addr.is_ipv4() => match v6.to_ipv4_mapped() {
                Some(v4) => std::net::IpAddr::V4(v4),
                None => return false,
            },
            other => other,
        };
        match (self.addr, ip) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, if any.
    pub path: Option<PathBuf>,
    /// Listener settings.
    pub server: ServerConfig,
    /// The tokens file.
    pub tokens_file: PathBuf,
    /// How often the tokens file is checked for changes.
    pub tokens_watch_interval: Duration,
    /// Timeouts for HTTP upstreams.
    pub upstream_timeouts: UpstreamTimeouts,
    /// How long a repodata document read from the upstream is used before the upstream is asked again (a `stat`
    /// for a local folder, a conditional GET for a mirror that sends no `max-age`).
    pub upstream_recheck: Duration,
    /// How often each channel's upstream is probed in the background (health only; requests never wait for it).
    pub upstream_probe_interval: Duration,
    /// The largest repodata document or shard index read from an upstream to filter; a larger one is refused (502).
    pub upstream_max_document: u64,
    /// Bytes of filtered repodata views kept in memory.
    pub cache_max_bytes: u64,
    /// Log line format.
    pub log_format: LogFormat,
    /// The channels, in file order.
    pub channels: Vec<Channel>,
    /// The groups, in file order.
    pub groups: Vec<Group>,
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: Some(path.to_owned()),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut cfg = Self::from_toml_str(&text, base).map_err(|mut e| {
            e.source = Some(path.to_owned());
            e
        })?;
        cfg.path = Some(path.to_owned());
        Ok(cfg)
    }

    /// Checks a configuration given as text; relative paths are resolved against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        // The parser's own message and where, never its snippet of the line: the line may hold a secret (an
        // upstream credential), and the message is shown in logs and to health checks.
        let at = |span: Option<std::ops::Range<usize>>| {
            span.map(|s| line_col(text, s.start)).map(|(l, c)| format!("line {l}, column {c}: ")).unwrap_or_default()
        };
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigErrors {
            source: None,
            problems: vec![format!("{}{}", at(e.span()), e.message().trim_end())],
        })?;
        // Each table, and each entry of the arrays of tables, is read on its own, so that one wrong type or unknown
        // key does not hide the problems of the rest.
        let mut problems = Vec::new();
        let raw = read_sections(table, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigErrors { source: None, problems });
        }
        let mut p = Problems::default();
        let cfg = check(raw, base_dir, &mut p);
        if p.0.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors { source: None, problems: p.0 })
        }
    }

    /// The channel called `name`.
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }
}

/// `url` with the user information of its authority (`user:password@`) replaced by `<redacted>@`.
pub fn redact_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.into() };
    let authority_end = url[scheme_end..].find(['/', '?', '#']).map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..scheme_end], &url[scheme_end + at..]).into(),
        None => url.into(),
    }
}

/// The sections of a parsed file, each read on its own; every problem is named by its key.
fn read_sections(table: toml::Table, problems: &mut Vec<String>) -> RawConfig {
    fn one<T: serde::de::DeserializeOwned + Default>(key: &str, v: toml::Value, problems: &mut Vec<String>) -> T {
        T::deserialize(v).unwrap_or_else(|e| {
            problems.push(format!("{key}: {}", without_values(e.message().trim_end())));
            T::default()
        })
    }
    fn many<T: serde::de::DeserializeOwned>(key: &str, v: toml::Value, problems: &mut Vec<String>) -> Vec<T> {
        match v {
            toml::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    T::deserialize(item)
                        .map_err(|e| problems.push(format!("{key}[{i}]: {}", without_values(e.message().trim_end()))))
                        .ok()
                })
                .collect(),
            _ => {
                problems.push(format!("{key}: must be an array of tables ([[{key}]])"));
                Vec::new()
            }
        }
    }
    let mut raw = RawConfig::default();
    for (key, value) in table {
        match key.as_str() {
            "server" => raw.server = one(&key, value, problems),
            "tokens" => raw.tokens = one(&key, value, problems),
            "upstream" => raw.upstream = Some(one(&key, value, problems)),
            "cache" => raw.cache = one(&key, value, problems),
            "log" => raw.log = one(&key, value, problems),
            "channels" => raw.channels = many(&key, value, problems),
            "groups" => raw.groups = many(&key, value, problems),
            other => problems.push(format!(
                "{other}: unknown key (the sections are server, tokens, upstream, cache, log, channels and groups)"
            )),
        }
    }
    raw
}

/// A deserializer's message without the string value it quotes (`invalid type: string "Bearer …", expected …`): a
/// mistyped value may be a credential, and the message goes to logs and health checks.
fn without_values(msg: &str) -> String {
    let mut out = msg.to_owned();
    for marker in ["string \"", "value \""] {
        while let Some(start) = out.find(marker) {
            let open = start + marker.len();
            let Some(close) = out[open..].rfind("\", expected").or_else(|| out[open..].rfind('"')) else { break };
            out.replace_range(start..open + close + 1, "a string");
        }
    }
    out
}

/// Line and column (from 1) of byte `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Default `upstream.max_document`: conda-forge's largest subdir (linux-64, about 250 MB of JSON in 2026) fits four
/// times over.
pub const DEFAULT_MAX_DOCUMENT: u64 = 1 << 30;

/// A size: a number of bytes, or a string of digits with an optional unit (`B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`,
/// `GB`).
fn size(v: &toml::Value) -> Option<u64> {
    match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(s) => {
            let s = s.trim();
            let digits = s.bytes().take_while(u8::is_ascii_digit).count();
            let n: u64 = s[..digits].parse().ok()?;
            let unit: u64 = match s[digits..].trim() {
                "" | "B" => 1,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                "GiB" => 1 << 30,
                "KB" => 1_000,
                "MB" => 1_000_000,
                "GB" => 1_000_000_000,
                _ => return None,
            };
            n.checked_mul(unit)
        }
        _ => None,
    }
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, key: impl fmt::Display, msg: impl fmt::Display) {
        self.0.push(format!("{key}: {msg}"));
    }
}

fn duration(p: &mut Problems, key: &str, v: Option<&String>, default: Duration) -> Duration {
    match v {
        None => default,
        // humantime's own words ("expected number at 0") say nothing a reader can act on.
        Some(s) => humantime::parse_duration(s).unwrap_or_else(|_| {
            p.add(
                key,
                format!("{s:?} is not a duration: a positive number and a unit, like \"30s\", \"500ms\" or \"5m\""),
            );
            default
        }),
    }
}

/// Names of channels, labels and groups: what can stand in one URL path segment without surprises.
pub fn valid_segment_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Path segments that mean something else to condagate and so cannot be channel names.
const RESERVED: [&str; 6] = ["t", "api", "healthz", "readyz", "metrics", "label"];

fn source(p: &mut Problems, key: &str, raw: &RawUpstream, base_dir: &Path, channel: Option<&str>) -> Option<Source> {
    let mut headers = Vec::new();
    for (name, value) in &raw.headers {
        match (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            (Ok(n), Ok(mut v)) => {
                v.set_sensitive(true);
                headers.push((n, v));
            }
            (Err(_), _) => p.add(format!("{key}.headers"), format!("{name:?} is not a valid header name")),
            (_, Err(_)) => p.add(format!("{key}.headers.{name}"), "the value is not a valid header value"),
        }
    }
    match (&raw.dir, &raw.url) {
        (Some(_), Some(_)) => {
            p.add(key, "set either dir or url, not both");
            None
        }
        (None, None) => {
            p.add(key, "set dir (a local folder) or url (an HTTP mirror)");
            None
        }
        (Some(dir), None) => {
            if !raw.headers.is_empty() {
                p.add(format!("{key}.headers"), "headers only apply to an url upstream");
            }
            let mut root = base_dir.join(dir);
            if let Some(c) = channel {
                root.push(c);
            }
            Some(Source::Dir(root))
        }
        (None, Some(url)) => {
            let trimmed = url.trim_end_matches('/');
            let ok = trimmed.parse::<Uri>().ok().filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() && u.query().is_none()
            });
            if ok.is_none() {
                let shown = redact_userinfo(url);
                p.add(format!("{key}.url"), format!("{shown:?} is not an http:// or https:// URL without a query"));
                return None;
            }
            let base = match channel {
                Some(c) => format!("{trimmed}/{c}"),
                None => trimmed.to_owned(),
            };
            Some(Source::Http { base, headers })
        }
    }
}

fn check(raw: RawConfig, base_dir: &Path, p: &mut Problems) -> Config {
    let s = &raw.server;
    let listen_str = s.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let listen = listen_str.parse::<SocketAddr>().unwrap_or_else(|_| {
        p.add("server.listen", format!("{listen_str:?} is not an address like \"127.0.0.1:8080\""));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let base_path = match s.base_path.as_deref().map(|b| b.trim_end_matches('/')) {
        None | Some("") => String::new(),
        Some(b) => {
            let ok = b.starts_with('/') && b[1..].split('/').all(valid_segment_name);
            if !ok {
                p.add("server.base_path", format!("{b:?} must look like \"/conda\" (segments of A-Z a-z 0-9 - _ .)"));
            }
            b.to_owned()
        }
    };
    let max_connections = match s.max_connections {
        None => 10_000,
        Some(n) if (1..=1_000_000).contains(&n) => n as usize,
        Some(n) => {
            p.add("server.max_connections", format!("{n} is not between 1 and 1000000"));
            10_000
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = match s.workers {
        None => cores,
        Some(n) if (1..=1024).contains(&n) => n as usize,
        Some(n) => {
            p.add("server.workers", format!("{n} is not between 1 and 1024"));
            cores
        }
    };
    let server = ServerConfig {
        listen,
        base_path,
        repodata_max_age: duration(p, "server.repodata_max_age", s.repodata_max_age.as_ref(), Duration::from_secs(60)),
        header_read_timeout: duration(
            p,
            "server.header_read_timeout",
            s.header_read_timeout.as_ref(),
            Duration::from_secs(10),
        ),
        send_timeout: duration(p, "server.send_timeout", s.send_timeout.as_ref(), Duration::from_secs(60)),
        max_connections,
        workers,
        shutdown_grace: duration(p, "server.shutdown_grace", s.shutdown_grace.as_ref(), Duration::from_secs(30)),
        tls: s.tls.as_ref().and_then(|t| match (&t.cert, &t.key) {
            (Some(c), Some(k)) => Some(TlsPaths { cert: base_dir.join(c), key: base_dir.join(k) }),
            (None, _) => {
                p.add("server.tls.cert", "missing (a PEM certificate chain)");
                None
            }
            (_, None) => {
                p.add("server.tls.key", "missing (a PEM private key)");
                None
            }
        }),
        trusted_proxies: s
            .trusted_proxies
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let net = IpNet::parse(t);
                if net.is_none() {
                    p.add(format!("server.trusted_proxies[{i}]"), format!("{t:?} is not an address or CIDR block"));
                }
                net
            })
            .collect(),
        throttle: {
            let t = s.throttle.as_ref();
            let failures = match t.and_then(|t| t.failures) {
                None => 20,
                Some(n) if (1..=1_000_000).contains(&n) => n as u32,
                Some(n) => {
                    p.add("server.throttle.failures", format!("{n} is not between 1 and 1000000"));
                    20
                }
            };
            let ipv6_prefix = match t.and_then(|t| t.ipv6_prefix) {
                None => 64,
                Some(n) if (1..=128).contains(&n) => n as u8,
                Some(n) => {
                    p.add("server.throttle.ipv6_prefix", format!("{n} is not a prefix length between 1 and 128"));
                    64
                }
            };
            ThrottleConfig {
                failures,
                ipv6_prefix,
                window: duration(
                    p,
                    "server.throttle.window",
                    t.and_then(|t| t.window.as_ref()),
                    Duration::from_secs(60),
                ),
                cooldown: duration(
                    p,
                    "server.throttle.cooldown",
                    t.and_then(|t| t.cooldown.as_ref()),
                    Duration::from_secs(60),
                ),
            }
        },
    };

    let tokens_file = base_dir.join(raw.tokens.file.as_deref().unwrap_or("tokens.toml"));
    let tokens_watch_interval =
        duration(p, "tokens.watch_interval", raw.tokens.watch_interval.as_ref(), Duration::from_millis(250));

    let upstream_timeouts = {
        let u = raw.upstream.as_ref();
        UpstreamTimeouts {
            connect: duration(
                p,
                "upstream.connect_timeout",
                u.and_then(|u| u.connect_timeout.as_ref()),
                Duration::from_secs(5),
            ),
            first_byte: duration(p, "upstream.timeout", u.and_then(|u| u.timeout.as_ref()), Duration::from_secs(30)),
        }
    };

    let upstream_recheck =
        duration(p, "upstream.recheck", raw.upstream.as_ref().and_then(|u| u.recheck.as_ref()), Duration::from_secs(1));
    let up = raw.upstream.as_ref();
    let upstream_probe_interval =
        duration(p, "upstream.probe_interval", up.and_then(|u| u.probe_interval.as_ref()), Duration::from_secs(30));
    if upstream_probe_interval.is_zero() {
        p.add("upstream.probe_interval", "must be longer than zero, like \"30s\"");
    }
    let upstream_max_document = match up.and_then(|u| u.max_document.as_ref()) {
        None => DEFAULT_MAX_DOCUMENT,
        Some(v) => size(v).filter(|n| *n > 0).unwrap_or_else(|| {
            p.add("upstream.max_document", format!("{v} is not a size like \"1GiB\", \"512MiB\" or a number of bytes"));
            DEFAULT_MAX_DOCUMENT
        }),
    };
    let cache_max_bytes = match raw.cache.max_bytes {
        None => 256 << 20,
        Some(n) if n >= 0 => n as u64,
        Some(n) => {
            p.add("cache.max_bytes", format!("{n} is negative"));
            0
        }
    };
    let log_format = match raw.log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.add("log.format", format!("{other:?} is not one of text, json"));
            LogFormat::Text
        }
    };

    let mut channels = Vec::new();
    let mut names = HashSet::new();
    if raw.channels.is_empty() {
        p.add("channels", "no channel is configured (add a [[channels]] table)");
    }
    for (i, c) in raw.channels.iter().enumerate() {
        let key = format!("channels[{i}]");
        if !valid_segment_name(&c.name) || RESERVED.contains(&c.name.as_str()) {
            p.add(format!("{key}.name"), format!("{:?} is not a usable channel name", c.name));
        } else if !names.insert(c.name.clone()) {
            p.add(format!("{key}.name"), format!("{:?} is configured twice", c.name));
        }
        let access = match c.access.as_deref() {
            None => Access::Private,
            Some(a) => Access::parse(a).unwrap_or_else(|| {
                p.add(format!("{key}.access"), format!("{a:?} is not one of public, authenticated, private"));
                Access::Private
            }),
        };
        let src = match (&c.upstream, &raw.upstream) {
            (Some(own), _) => source(p, &format!("{key}.upstream"), own, base_dir, None),
            (None, Some(global)) => source(p, "upstream", global, base_dir, Some(&c.name)),
            (None, None) => {
                p.add(format!("{key}.upstream"), "no upstream: set [upstream] dir or url, or this channel's own");
                None
            }
        };
        if let Some(source) = src {
            for (j, o) in c.owners.iter().enumerate() {
                if let Some(why) = crate::names::name_problem(o) {
                    p.add(format!("{key}.owners[{j}]"), format!("{o:?} {why}"));
                }
            }
            channels.push(Channel { name: c.name.clone(), access, owners: c.owners.clone(), source });
        }
    }
    // A global upstream that is broken is reported once per channel using it; keep one.
    p.0.dedup();

    let mut groups = Vec::new();
    let mut group_names: HashMap<(String, String), usize> = HashMap::new();
    for (i, g) in raw.groups.iter().enumerate() {
        let key = format!("groups[{i}]");
        if !names.contains(&g.channel) {
            p.add(format!("{key}.channel"), format!("{:?} is not a configured channel", g.channel));
        }
        if let Some(prev) = group_names.insert((g.channel.clone(), g.name.clone()), i) {
            p.add(format!("{key}.name"), format!("{:?} is already groups[{prev}] of this channel", g.name));
        }
        if g.packages.is_empty() {
            p.add(format!("{key}.packages"), "is empty (use [\"*\"] for every package)");
        }
        let packages = Packages::new(&g.packages).unwrap_or_else(|e| {
            p.add(format!("{key}.packages"), e);
            Packages::new(&[]).expect("an empty glob set always builds")
        });
        if let Some(why) = crate::names::name_problem(&g.name) {
            p.add(format!("{key}.name"), format!("{:?} {why}", g.name));
        }
        for (j, m) in g.members.iter().enumerate() {
            if let Some(why) = crate::names::name_problem(m) {
                p.add(format!("{key}.members[{j}]"), format!("{m:?} {why}"));
            }
        }
        if let Some(labels) = &g.labels {
            for l in labels.iter().filter(|l| !valid_segment_name(l)) {
                p.add(format!("{key}.labels"), format!("{l:?} is not a usable label name"));
            }
        }
        groups.push(Group {
            name: g.name.clone(),
            channel: g.channel.clone(),
            members: g.members.clone(),
            packages,
            labels: g.labels.clone(),
        });
    }

    Config {
        path: None,
        server,
        tokens_file,
        tokens_watch_interval,
        upstream_timeouts,
        upstream_recheck,
        upstream_probe_interval,
        upstream_max_document,
        cache_max_bytes,
        log_format,
        channels,
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wrong_type_does_not_hide_the_other_problems() {
        let text = r#"
[server]
workers = "two"
[tokens]
file = 5
[[channels]]
name = "a"
acces = "public"
[[channels]]
name = "b"
[[groups]]
name = 7
[extra]
"#;
        let e = Config::from_toml_str(text, Path::new(".")).unwrap_err();
        for want in ["server: ", "tokens: ", "channels[0]: unknown field `acces`", "groups[0]: ", "extra: unknown key"]
        {
            assert!(e.problems.iter().any(|p| p.starts_with(want)), "{want:?} missing from {:?}", e.problems);
        }
        assert!(!e.problems.iter().any(|p| p.starts_with("channels[1]")), "{:?}", e.problems);
        let e = Config::from_toml_str("[upstream]\nheaders = \"Bearer s3cret\"\n", Path::new(".")).unwrap_err();
        assert!(!e.problems[0].contains("s3cret") && e.problems[0].starts_with("upstream: "), "{:?}", e.problems);
        let e = Config::from_toml_str("[server\nlisten = 1", Path::new(".")).unwrap_err();
        assert!(e.problems[0].starts_with("line 1, column "), "{:?}", e.problems);
    }

    const ISSUE_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"
# base_path = "/conda"

[tokens]
file = "tokens.toml"

[upstream]
dir = "channels"

[[channels]]
name = "mychan"
access = "private"
owners = ["alice"]

[[channels]]
name = "pubchan"
access = "public"

[[groups]]
name = "eng"
channel = "mychan"
members = ["bob"]
packages = ["alpha", "beta*"]
"#;

    #[test]
    fn the_documented_example_is_accepted() {
        let cfg = Config::from_toml_str(ISSUE_EXAMPLE, Path::new("/etc/cg")).unwrap();
        assert_eq!(cfg.channels.len(), 2);
        assert_eq!(cfg.channels[0].source, Source::Dir(PathBuf::from("/etc/cg/channels/mychan")));
        assert_eq!(cfg.tokens_file, PathBuf::from("/etc/cg/tokens.toml"));
        // One worker per core unless set.
        assert_eq!(cfg.server.workers, std::thread::available_parallelism().map_or(1, usize::from));
        assert!(cfg.groups[0].packages.matches("beta-utils"));
        assert!(!cfg.groups[0].packages.matches("alphabet"));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
[server]
listen = "nowhere"
repodata_max_age = "soon"
workers = 0
[upstream]
url = "ftp://x"
[[channels]]
name = "a"
access = "publik"
[[channels]]
name = "a"
[[groups]]
name = "g"
channel = "zzz"
packages = ["[oops"]
"#;
        let err = Config::from_toml_str(text, Path::new(".")).unwrap_err();
        let all = err.problems.join("\n");
        for want in [
            "server.listen: \"nowhere\"",
            "server.repodata_max_age: \"soon\"",
            "server.workers: 0 is not between 1 and 1024",
            "upstream.url: \"ftp://x\"",
            "channels[0].access: \"publik\" is not one of public, authenticated, private",
            "channels[1].name: \"a\" is configured twice",
            "groups[0].channel: \"zzz\"",
            "groups[0].packages: \"[oops\"",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml_str("[server]\nlisten_addr = 'x'\n", Path::new(".")).unwrap_err();
        assert!(err.problems[0].contains("listen_addr"), "{err}");
    }

    #[test]
    fn per_channel_upstreams_point_at_the_channel_root() {
        let text = r#"
[[channels]]
name = "m"
access = "public"
upstream = { url = "https://mirror.example/conda-forge/", headers = { Authorization = "Bearer x" } }
"#;
        let cfg = Config::from_toml_str(text, Path::new(".")).unwrap();
        match &cfg.channels[0].source {
            Source::Http { base, headers } => {
                assert_eq!(base, "https://mirror.example/conda-forge");
                assert_eq!(headers[0].0, "authorization");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn address_blocks() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(IpNet::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn tls_needs_both_files() {
        let err = Config::from_toml_str(
            "[server.tls]\ncert='c.pem'\n[upstream]\ndir='c'\n[[channels]]\nname='a'\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.problems[0].starts_with("server.tls.key"), "{err}");
    }

    #[test]
    fn reserved_names_are_refused() {
        let err = Config::from_toml_str("[upstream]\ndir='c'\n[[channels]]\nname='t'\n", Path::new(".")).unwrap_err();
        assert!(err.problems[0].starts_with("channels[0].name"), "{err}");
    }
}
