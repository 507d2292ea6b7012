//! Checking the raw sections into a [`Config`]: one short function per section, sharing the helpers that read a
//! duration, a size, a number in a range or one of a set of words. Every problem is collected and names its key.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::defaults as d;
use super::raw::{RawChannel, RawConfig, RawGroup, RawS3, RawServer, RawThrottle, RawTls, RawUpstream};
use super::{
    parse_size, redact_userinfo, valid_segment_name, Access, Channel, Config, Group, IpNet, LogFormat, Packages,
    PostgresConfig, S3Credentials, S3Source, ServerConfig, Source, ThrottleConfig, TlsPaths, UpstreamCache,
    UpstreamTimeouts,
};
use crate::names::name_problem;

/// Path segments that mean something else to condagate and so cannot be channel names.
const RESERVED: [&str; 7] = ["t", "api", "admin", "healthz", "readyz", "metrics", "label"];

/// The problems found so far, each `key: what is wrong`.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    fn add(&mut self, key: impl fmt::Display, msg: impl fmt::Display) {
        self.0.push(format!("{key}: {msg}"));
    }

    fn duration(&mut self, key: &str, v: Option<&String>, default: Duration) -> Duration {
        match v {
            None => default,
            // humantime's own words ("expected number at 0") say nothing a reader can act on.
            Some(s) => humantime::parse_duration(s).unwrap_or_else(|_| {
                self.add(
                    key,
                    format!("{s:?} is not a duration: a positive number and a unit, like \"30s\", \"500ms\" or \"5m\""),
                );
                default
            }),
        }
    }

    /// A whole number in `range`, or `default` when it is not given.
    fn ranged<T: TryFrom<i64> + Copy>(
        &mut self,
        key: &str,
        v: Option<i64>,
        range: std::ops::RangeInclusive<i64>,
        what: &str,
        default: T,
    ) -> T {
        match v {
            None => default,
            Some(n) if range.contains(&n) => T::try_from(n).unwrap_or(default),
            Some(n) => {
                self.add(key, format!("{n} is not {what}between {} and {}", range.start(), range.end()));
                default
            }
        }
    }

    /// One of the `words`, or `default` when it is not given.
    fn one_of<T: Copy>(&mut self, key: &str, v: Option<&str>, words: &[(&str, T)], default: T) -> T {
        let Some(v) = v else { return default };
        match words.iter().find(|(w, _)| *w == v) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
                self.add(key, format!("{v:?} is not one of {}", names.join(", ")));
                default
            }
        }
    }
}

/// A size: a number of bytes, or a string [`parse_size`] reads.
fn size(v: &toml::Value) -> Option<u64> {
    match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(s) => parse_size(s),
        _ => None,
    }
}

/// Checks every section.
pub(super) fn check(raw: RawConfig, base_dir: &Path, p: &mut Problems) -> Config {
    let server = server(p, &raw.server, base_dir);
    let tokens_file = base_dir.join(raw.tokens.file.as_deref().unwrap_or(d::TOKENS_FILE));
    let tokens_watch_interval =
        p.duration("tokens.watch_interval", raw.tokens.watch_interval.as_ref(), d::TOKENS_WATCH_INTERVAL);
    let tokens_postgres = postgres(p, &raw, base_dir);
    let up = raw.upstream.as_ref();
    let upstream_timeouts = UpstreamTimeouts {
        connect: p.duration(
            "upstream.connect_timeout",
            up.and_then(|u| u.connect_timeout.as_ref()),
            d::UPSTREAM_CONNECT_TIMEOUT,
        ),
        first_byte: p.duration("upstream.timeout", up.and_then(|u| u.timeout.as_ref()), d::UPSTREAM_TIMEOUT),
    };
    let upstream_recheck = p.duration("upstream.recheck", up.and_then(|u| u.recheck.as_ref()), d::UPSTREAM_RECHECK);
    let upstream_probe_interval =
        p.duration("upstream.probe_interval", up.and_then(|u| u.probe_interval.as_ref()), d::UPSTREAM_PROBE_INTERVAL);
    if upstream_probe_interval.is_zero() {
        p.add("upstream.probe_interval", "must be longer than zero, like \"30s\"");
    }
    let upstream_max_document = match up.and_then(|u| u.max_document.as_ref()) {
        None => d::MAX_DOCUMENT,
        Some(v) => size(v).filter(|n| *n > 0).unwrap_or_else(|| {
            p.add("upstream.max_document", format!("{v} is not a size like \"1GiB\", \"512MiB\" or a number of bytes"));
            d::MAX_DOCUMENT
        }),
    };
    let upstream_cache = upstream_cache(p, up, base_dir);
    let cache_max_bytes = match raw.cache.max_bytes {
        None => d::CACHE_MAX_BYTES,
        Some(n) => u64::try_from(n).unwrap_or_else(|_| {
            p.add("cache.max_bytes", format!("{n} is negative"));
            0
        }),
    };
    let log_format = p.one_of(
        "log.format",
        raw.log.format.as_deref(),
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        LogFormat::Text,
    );
    let channels = channels(p, &raw.channels, raw.upstream.as_ref(), base_dir);
    let names: HashSet<&str> = raw.channels.iter().map(|c| c.name.as_str()).collect();
    let groups = groups(p, &raw.groups, &names);
    Config {
        path: None,
        server,
        tokens_file,
        tokens_watch_interval,
        tokens_postgres,
        upstream_timeouts,
        upstream_recheck,
        upstream_probe_interval,
        upstream_max_document,
        upstream_cache,
        cache_max_bytes,
        log_format,
        channels,
        groups,
    }
}

fn postgres(p: &mut Problems, raw: &RawConfig, base_dir: &Path) -> Option<PostgresConfig> {
    let t = &raw.tokens;
    let Some(url) = &t.postgres else {
        for (key, set) in [
            ("tokens.postgres_password_file", t.postgres_password_file.is_some()),
            ("tokens.max_stale", t.max_stale.is_some()),
            ("tokens.resync_interval", t.resync_interval.is_some()),
        ] {
            if set {
                p.add(key, "only applies with tokens.postgres");
            }
        }
        return None;
    };
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://"))
        || url.parse::<tokio_postgres::Config>().is_err()
    {
        p.add("tokens.postgres", format!("{:?} is not a postgresql:// URL", redact_userinfo(url)));
    }
    if t.file.is_some() {
        p.add("tokens.file", "set either tokens.file or tokens.postgres, not both");
    }
    if !raw.groups.is_empty() {
        p.add(
            "groups",
            "with tokens.postgres the groups live in PostgreSQL: move them there with `condagate store import \
             --groups-from <this file>`, then remove [[groups]] from this file",
        );
    }
    let max_stale = p.duration("tokens.max_stale", t.max_stale.as_ref(), d::TOKENS_MAX_STALE);
    let resync_interval = p.duration("tokens.resync_interval", t.resync_interval.as_ref(), d::TOKENS_RESYNC_INTERVAL);
    if resync_interval.is_zero() {
        p.add("tokens.resync_interval", "must be longer than zero, like \"60s\"");
    }
    Some(PostgresConfig {
        url: url.clone(),
        password_file: t.postgres_password_file.as_ref().map(|f| base_dir.join(f)),
        max_stale,
        resync_interval,
    })
}

fn server(p: &mut Problems, s: &RawServer, base_dir: &Path) -> ServerConfig {
    let listen_str = s.listen.as_deref().unwrap_or(d::LISTEN);
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
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    ServerConfig {
        listen,
        base_path,
        repodata_max_age: p.duration("server.repodata_max_age", s.repodata_max_age.as_ref(), d::REPODATA_MAX_AGE),
        header_read_timeout: p.duration(
            "server.header_read_timeout",
            s.header_read_timeout.as_ref(),
            d::HEADER_READ_TIMEOUT,
        ),
        send_timeout: p.duration("server.send_timeout", s.send_timeout.as_ref(), d::SEND_TIMEOUT),
        max_connections: p.ranged("server.max_connections", s.max_connections, 1..=1_000_000, "", d::MAX_CONNECTIONS),
        workers: p.ranged("server.workers", s.workers, 1..=1024, "", cores),
        shutdown_grace: p.duration("server.shutdown_grace", s.shutdown_grace.as_ref(), d::SHUTDOWN_GRACE),
        tls: s.tls.as_ref().and_then(|t| tls(p, t, base_dir)),
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
        throttle: throttle(p, s.throttle.as_ref()),
    }
}

fn tls(p: &mut Problems, t: &RawTls, base_dir: &Path) -> Option<TlsPaths> {
    match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some(TlsPaths { cert: base_dir.join(c), key: base_dir.join(k) }),
        (None, _) => {
            p.add("server.tls.cert", "missing (a PEM certificate chain)");
            None
        }
        (_, None) => {
            p.add("server.tls.key", "missing (a PEM private key)");
            None
        }
    }
}

fn throttle(p: &mut Problems, t: Option<&RawThrottle>) -> ThrottleConfig {
    ThrottleConfig {
        failures: p.ranged(
            "server.throttle.failures",
            t.and_then(|t| t.failures),
            1..=1_000_000,
            "",
            d::THROTTLE_FAILURES,
        ),
        ipv6_prefix: p.ranged(
            "server.throttle.ipv6_prefix",
            t.and_then(|t| t.ipv6_prefix),
            1..=128,
            "a prefix length ",
            d::THROTTLE_IPV6_PREFIX,
        ),
        window: p.duration("server.throttle.window", t.and_then(|t| t.window.as_ref()), d::THROTTLE_WINDOW),
        cooldown: p.duration("server.throttle.cooldown", t.and_then(|t| t.cooldown.as_ref()), d::THROTTLE_COOLDOWN),
    }
}

fn channels(p: &mut Problems, raw: &[RawChannel], global: Option<&RawUpstream>, base_dir: &Path) -> Vec<Channel> {
    let mut channels = Vec::new();
    let mut names = HashSet::new();
    if raw.is_empty() {
        p.add("channels", "no channel is configured (add a [[channels]] table)");
    }
    for (i, c) in raw.iter().enumerate() {
        let key = format!("channels[{i}]");
        if !valid_segment_name(&c.name) || RESERVED.contains(&c.name.as_str()) {
            p.add(format!("{key}.name"), format!("{:?} is not a usable channel name", c.name));
        } else if !names.insert(c.name.as_str()) {
            p.add(format!("{key}.name"), format!("{:?} is configured twice", c.name));
        }
        let access = p.one_of(
            &format!("{key}.access"),
            c.access.as_deref(),
            &Access::ALL.map(|a| (a.name(), a)),
            Access::Private,
        );
        let src = match (&c.upstream, global) {
            (Some(own), _) => source(p, &format!("{key}.upstream"), own, base_dir, None),
            (None, Some(global)) => source(p, "upstream", global, base_dir, Some(&c.name)),
            (None, None) => {
                p.add(format!("{key}.upstream"), "no upstream: set [upstream] dir or url, or this channel's own");
                None
            }
        };
        if let Some(source) = src {
            for (j, o) in c.owners.iter().enumerate() {
                if let Some(why) = name_problem(o) {
                    p.add(format!("{key}.owners[{j}]"), format!("{o:?} {why}"));
                }
            }
            channels.push(Channel { name: c.name.clone(), access, owners: c.owners.clone(), source });
        }
    }
    // A global upstream that is broken is reported once per channel using it; keep one.
    p.0.dedup();
    channels
}

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
    let kinds = [raw.dir.is_some(), raw.url.is_some(), raw.s3.is_some()];
    if kinds.iter().filter(|k| **k).count() > 1 {
        p.add(key, "set one of dir, url and s3, not several");
        return None;
    }
    if !raw.headers.is_empty() && raw.url.is_none() {
        p.add(format!("{key}.headers"), "headers only apply to an url upstream");
    }
    if channel.is_none() && raw.cache.is_some() {
        p.add(format!("{key}.cache"), "the cache is set once for every channel, in the top-level [upstream.cache]");
    }
    if let Some(dir) = &raw.dir {
        let mut root = base_dir.join(dir);
        if let Some(c) = channel {
            root.push(c);
        }
        return Some(Source::Dir(root));
    }
    if let Some(s3) = &raw.s3 {
        return s3_source(p, &format!("{key}.s3"), s3, base_dir, channel);
    }
    let Some(url) = &raw.url else {
        p.add(key, "set dir (a local folder), url (an HTTP mirror) or s3 (a bucket)");
        return None;
    };
    let trimmed = url.trim_end_matches('/');
    let ok = trimmed
        .parse::<Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() && u.query().is_none());
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

/// An S3 source: the bucket and prefix (the channel's name appended for the top-level `[upstream]`), the endpoint
/// (AWS's for the region unless set) and the credentials, from the `*_file` keys or else the usual AWS variables.
fn s3_source(p: &mut Problems, key: &str, raw: &RawS3, base_dir: &Path, channel: Option<&str>) -> Option<Source> {
    let bucket_ok = (3..=63).contains(&raw.bucket.len())
        && raw.bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        p.add(
            format!("{key}.bucket"),
            format!("{:?} is not an S3 bucket name (3 to 63 of a-z, 0-9, - and .)", raw.bucket),
        );
    }
    let mut prefix = raw.prefix.trim_matches('/').to_owned();
    if prefix.split('/').any(|s| s.is_empty() || s == "." || s == "..") && !prefix.is_empty() {
        p.add(format!("{key}.prefix"), format!("{:?} has an empty, . or .. segment", raw.prefix));
    }
    if let Some(c) = channel {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(c);
    }
    let region = raw.region.clone().unwrap_or_else(|| d::S3_REGION.to_owned());
    let endpoint = match &raw.endpoint {
        Some(e) => {
            let trimmed = e.trim_end_matches('/');
            let ok = trimmed.parse::<Uri>().ok().filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.path() == "/"
            });
            if ok.is_none() {
                p.add(format!("{key}.endpoint"), format!("{e:?} is not an http:// or https:// URL without a path"));
            }
            trimmed.to_owned()
        }
        None => format!("https://s3.{region}.amazonaws.com"),
    };
    let path_style = raw.path_style.unwrap_or(raw.endpoint.is_some());
    let read = |p: &mut Problems, name: &str, file: &Option<String>| -> Option<String> {
        let path = base_dir.join(file.as_ref()?);
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) => {
                p.add(format!("{key}.{name}"), format!("{}: {e}", path.display()));
                None
            }
        }
    };
    let from_files = (
        read(p, "access_key_id_file", &raw.access_key_id_file),
        read(p, "secret_access_key_file", &raw.secret_access_key_file),
        read(p, "session_token_file", &raw.session_token_file),
    );
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let credentials = match (raw.access_key_id_file.is_some(), raw.secret_access_key_file.is_some()) {
        (true, true) => match from_files {
            (Some(key_id), Some(secret), session_token) => Some(S3Credentials { key_id, secret, session_token }),
            _ => None,
        },
        (true, false) | (false, true) => {
            p.add(key, "set both access_key_id_file and secret_access_key_file, or neither");
            None
        }
        (false, false) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(key_id), Some(secret)) => {
                Some(S3Credentials { key_id, secret, session_token: env("AWS_SESSION_TOKEN") })
            }
            _ => None,
        },
    };
    bucket_ok
        .then(|| Source::S3(S3Source { endpoint, bucket: raw.bucket.clone(), prefix, region, path_style, credentials }))
}

/// `[upstream.cache]`: the folder (relative to the config file) and the size bound.
fn upstream_cache(p: &mut Problems, up: Option<&RawUpstream>, base_dir: &Path) -> Option<UpstreamCache> {
    let raw = up?.cache.as_ref()?;
    let Some(dir) = &raw.dir else {
        p.add("upstream.cache.dir", "is missing: the folder the cache keeps its files in");
        return None;
    };
    let max_size = match &raw.max_size {
        None => d::UPSTREAM_CACHE_MAX_SIZE,
        Some(v) => size(v).filter(|n| *n > 0).unwrap_or_else(|| {
            p.add(
                "upstream.cache.max_size",
                format!("{v} is not a size like \"20GiB\", \"512MiB\" or a number of bytes"),
            );
            d::UPSTREAM_CACHE_MAX_SIZE
        }),
    };
    Some(UpstreamCache { dir: base_dir.join(dir), max_size })
}

fn groups(p: &mut Problems, raw: &[RawGroup], channels: &HashSet<&str>) -> Vec<Group> {
    let mut groups = Vec::new();
    let mut group_names: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, g) in raw.iter().enumerate() {
        let key = format!("groups[{i}]");
        if !channels.contains(g.channel.as_str()) {
            p.add(format!("{key}.channel"), format!("{:?} is not a configured channel", g.channel));
        }
        if let Some(prev) = group_names.insert((&g.channel, &g.name), i) {
            p.add(format!("{key}.name"), format!("{:?} is already groups[{prev}] of this channel", g.name));
        }
        if g.packages.is_empty() {
            p.add(format!("{key}.packages"), "is empty (use [\"*\"] for every package)");
        }
        let packages = Packages::new(&g.packages).unwrap_or_else(|e| {
            p.add(format!("{key}.packages"), e);
            Packages::new(&[]).expect("an empty glob set always builds")
        });
        if let Some(why) = name_problem(&g.name) {
            p.add(format!("{key}.name"), format!("{:?} {why}", g.name));
        }
        for (j, m) in g.members.iter().enumerate() {
            if let Some(why) = name_problem(m) {
                p.add(format!("{key}.members[{j}]"), format!("{m:?} {why}"));
            }
        }
        for l in g.labels.iter().flatten().filter(|l| !valid_segment_name(l)) {
            p.add(format!("{key}.labels"), format!("{l:?} is not a usable label name"));
        }
        groups.push(Group {
            name: g.name.clone(),
            channel: g.channel.clone(),
            members: g.members.clone(),
            packages,
            labels: g.labels.clone(),
        });
    }
    groups
}
