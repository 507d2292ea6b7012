//! The configuration file as serde reads it: loosely typed sections, each read on its own so that one wrong type or
//! unknown key hides no problem elsewhere, and parser messages stripped of the values they quote.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The file's sections, each read on its own by [`read_sections`] (so a problem in one hides none in another).
#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) tokens: RawTokens,
    pub(super) upstream: Option<RawUpstream>,
    pub(super) cache: RawCache,
    pub(super) log: RawLog,
    pub(super) channels: Vec<RawChannel>,
    pub(super) groups: Vec<RawGroup>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) base_path: Option<String>,
    pub(super) repodata_max_age: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) send_timeout: Option<String>,
    pub(super) max_connections: Option<i64>,
    pub(super) workers: Option<i64>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) throttle: Option<RawThrottle>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThrottle {
    pub(super) failures: Option<i64>,
    pub(super) window: Option<String>,
    pub(super) cooldown: Option<String>,
    pub(super) ipv6_prefix: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    pub(super) file: Option<String>,
    pub(super) watch_interval: Option<String>,
    pub(super) postgres: Option<String>,
    pub(super) postgres_password_file: Option<String>,
    pub(super) max_stale: Option<String>,
    pub(super) resync_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) dir: Option<String>,
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) recheck: Option<String>,
    pub(super) probe_interval: Option<String>,
    pub(super) max_document: Option<toml::Value>,
    pub(super) s3: Option<RawS3>,
    pub(super) cache: Option<RawUpstreamCache>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    pub(super) bucket: String,
    #[serde(default)]
    pub(super) prefix: String,
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) path_style: Option<bool>,
    pub(super) access_key_id_file: Option<String>,
    pub(super) secret_access_key_file: Option<String>,
    pub(super) session_token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamCache {
    pub(super) dir: Option<String>,
    pub(super) max_size: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) max_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    pub(super) name: String,
    pub(super) access: Option<String>,
    #[serde(default)]
    pub(super) owners: Vec<String>,
    pub(super) upstream: Option<RawUpstream>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) name: String,
    pub(super) channel: String,
    #[serde(default)]
    pub(super) members: Vec<String>,
    #[serde(default)]
    pub(super) packages: Vec<String>,
    pub(super) labels: Option<Vec<String>>,
}

/// The sections of a parsed file, each read on its own; every problem is named by its key.
pub(super) fn read_sections(table: toml::Table, problems: &mut Vec<String>) -> RawConfig {
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
pub(super) fn without_values(msg: &str) -> String {
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
pub(super) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
