//! Configuration: loosely typed raw sections read by serde, then checked into the [`Config`] the server runs on.
//!
//! Checking collects every problem instead of stopping at the first, and each problem names the key that holds it
//! (`channels[1].access: "publik" is not one of public, authenticated, private`). Relative paths are resolved against
//! the folder of the configuration file.

mod check;
pub mod defaults;
mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};
use http::{HeaderName, HeaderValue};

use check::{check, Problems};
use raw::{line_col, read_sections};

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
    /// Every access level.
    pub const ALL: [Access; 3] = [Access::Public, Access::Authenticated, Access::Private];

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
    /// An S3-compatible object store: the channel's root is a key prefix in a bucket.
    S3(S3Source),
}

impl Source {
    /// Whether the files are fetched over the network (and so go through `upstream.cache` when one is set).
    pub fn is_remote(&self) -> bool {
        !matches!(self, Source::Dir(_))
    }

    /// The source as logs, errors and the cache folder's `SOURCE` file show it: no credentials.
    pub fn shown(&self) -> String {
        match self {
            Source::Dir(root) => root.display().to_string(),
            Source::Http { base, .. } => redact_userinfo(base).into_owned(),
            Source::S3(s3) => format!("s3://{}/{} at {}", s3.bucket, s3.prefix, s3.endpoint),
        }
    }
}

/// A channel's root in an S3-compatible bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Source {
    /// The service's URL, like `https://s3.us-east-1.amazonaws.com` or `http://127.0.0.1:8333`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The key prefix of the channel's root, without a leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    /// The region requests are signed for.
    pub region: String,
    /// Whether the bucket goes in the path (`endpoint/bucket/key`, as most self-hosted stores want) rather than in
    /// the host name (`bucket.endpoint/key`).
    pub path_style: bool,
    /// The credentials requests are signed with; `None` for anonymous requests.
    pub credentials: Option<S3Credentials>,
}

/// An access key for S3. Its `Debug` shows neither part.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id.
    pub key_id: String,
    /// The secret access key.
    pub secret: String,
    /// A session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Credentials(<redacted>)")
    }
}

/// The on-disk cache in front of remote upstreams (`[upstream.cache]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamCache {
    /// The folder it lives in.
    pub dir: PathBuf,
    /// The most bytes of files it keeps; the least recently used go first.
    pub max_size: u64,
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

/// Where the PostgreSQL store is, and how stale its table may get.
#[derive(Clone)]
pub struct PostgresConfig {
    url: String,
    /// A file holding the password (`tokens.postgres_password_file`).
    pub password_file: Option<PathBuf>,
    /// How long a replica may go without knowing its table current before token checks fail closed.
    pub max_stale: Duration,
    /// How often the whole table is loaded again even without a notification.
    pub resync_interval: Duration,
}

impl PostgresConfig {
    /// The connection URL (it may hold a password: never log it; [`fmt::Debug`] redacts it).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_userinfo(&self.url))
            .field("password_file", &self.password_file)
            .field("max_stale", &self.max_stale)
            .field("resync_interval", &self.resync_interval)
            .finish()
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
    /// The PostgreSQL store, instead of the tokens file, when `tokens.postgres` is set.
    pub tokens_postgres: Option<PostgresConfig>,
    /// Timeouts for HTTP upstreams.
    pub upstream_timeouts: UpstreamTimeouts,
    /// How long a repodata document read from the upstream is used before the upstream is asked again (a `stat`
    /// for a local folder, a conditional GET for a mirror that sends no `max-age`).
    pub upstream_recheck: Duration,
    /// How often each channel's upstream is probed in the background (health only; requests never wait for it).
    pub upstream_probe_interval: Duration,
    /// The largest repodata document or shard index read from an upstream to filter; a larger one is refused (502).
    pub upstream_max_document: u64,
    /// The on-disk cache for HTTP and S3 upstreams, when `[upstream.cache]` is set.
    pub upstream_cache: Option<UpstreamCache>,
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

/// A size written as digits and an optional unit (`B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`), in bytes; `None` when
/// it is not one or overflows.
pub fn parse_size(s: &str) -> Option<u64> {
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

/// `url` with the user information of its authority (`user:password@`) replaced by `<redacted>@`.
pub fn redact_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.into() };
    let authority_end = url[scheme_end..].find(['/', '?', '#']).map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..scheme_end], &url[scheme_end + at..]).into(),
        None => url.into(),
    }
}

/// Names of channels, labels and groups: what can stand in one URL path segment without surprises.
pub fn valid_segment_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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
    fn s3_sources_and_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "AKID\n").unwrap();
        std::fs::write(dir.path().join("s"), "sekrit\n").unwrap();
        let text = r#"
[upstream]
s3 = { bucket = "conda", prefix = "/channels/", endpoint = "http://127.0.0.1:8333", access_key_id_file = "k", secret_access_key_file = "s" }
cache = { dir = "cache", max_size = "2GiB" }
[[channels]]
name = "a"
[[channels]]
name = "b"
upstream = { s3 = { bucket = "other", prefix = "x/y", region = "eu-west-1" } }
"#;
        let cfg = Config::from_toml_str(text, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let Source::S3(a) = &cfg.channels[0].source else { panic!("{:?}", cfg.channels[0].source) };
        assert_eq!((a.bucket.as_str(), a.prefix.as_str(), a.path_style), ("conda", "channels/a", true));
        let creds = a.credentials.as_ref().unwrap();
        assert_eq!((creds.key_id.as_str(), creds.secret.as_str()), ("AKID", "sekrit"));
        assert!(!format!("{cfg:?}").contains("sekrit") && !format!("{cfg:?}").contains("AKID"));
        let Source::S3(b) = &cfg.channels[1].source else { panic!() };
        assert_eq!(b.prefix, "x/y", "a channel's own prefix is its root");
        assert_eq!((b.endpoint.as_str(), b.path_style), ("https://s3.eu-west-1.amazonaws.com", false));
        assert_eq!(cfg.upstream_cache, Some(UpstreamCache { dir: dir.path().join("cache"), max_size: 2 << 30 }));
        assert!(cfg.channels.iter().all(|c| c.source.is_remote()));
    }

    #[test]
    fn s3_and_cache_problems_name_their_keys() {
        let text = r#"
[upstream]
dir = "x"
cache = { max_size = "lots" }
[[channels]]
name = "a"
upstream = { s3 = { bucket = "No_Such", prefix = "a/../b", endpoint = "ftp://x", access_key_id_file = "missing" } }
[[channels]]
name = "b"
upstream = { url = "http://m", s3 = { bucket = "conda" }, cache = { dir = "c" } }
"#;
        let err = Config::from_toml_str(text, Path::new("/nonexistent")).unwrap_err();
        let all = err.problems.join("\n");
        for want in [
            "upstream.cache.dir: is missing",
            "channels[0].upstream.s3.bucket: \"No_Such\"",
            "channels[0].upstream.s3.prefix: \"a/../b\"",
            "channels[0].upstream.s3.endpoint: \"ftp://x\"",
            "channels[0].upstream.s3.access_key_id_file: /nonexistent/missing",
            "channels[0].upstream.s3: set both access_key_id_file and secret_access_key_file",
            "channels[1].upstream: set one of dir, url and s3",
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
