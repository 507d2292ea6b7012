//! Filtering repodata for a view: `repodata.json` in one pass over its bytes, and the CEP-16 shard index.
//!
//! Views of a held document are made from its span index ([`super::spans`]), which uses this module's scanner once
//! per document; [`filter_repodata`] stays as the single-pass reference the index is tested and fuzzed against.
//!
//! The JSON filter does not build a document tree. It walks the top-level object and the package maps
//! (`packages`, `packages.conda`, and the maps under `v3`) with a byte scanner, copies every kept record's bytes
//! through untouched and skips the others, so its cost is one read of the input and one write of the output, and its
//! memory is the output. Only `info` is parsed, to drop an absolute `base_url` that would send clients around the
//! proxy. `removed` is kept, less the file names of hidden packages (their names must not leak).

use std::collections::HashMap;

use memchr::memchr2;

use crate::conda::route::package_name_of_key;

/// A document that is not the JSON or msgpack shape repodata has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed repodata at byte {at}: {what}")]
pub struct FilterError {
    /// Byte offset of the problem.
    pub at: usize,
    /// What was expected.
    pub what: &'static str,
}

pub(super) struct Scanner<'a> {
    pub(super) b: &'a [u8],
    pub(super) i: usize,
}

/// Bytes that end a scalar (number, `true`, `false`, `null`).
fn ends_scalar(c: u8) -> bool {
    matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
}

impl<'a> Scanner<'a> {
    pub(super) fn err(&self, what: &'static str) -> FilterError {
        FilterError { at: self.i, what }
    }

    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    pub(super) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), FilterError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// With `i` at an opening quote, moves past the closing one. Returns whether the string held escapes.
    fn string(&mut self) -> Result<bool, FilterError> {
        let mut escaped = false;
        let mut j = self.i + 1;
        loop {
            let k = memchr2(b'"', b'\\', &self.b[j..]).ok_or_else(|| self.err("an unterminated string"))?;
            j += k;
            if self.b[j] == b'"' {
                self.i = j + 1;
                return Ok(escaped);
            }
            escaped = true;
            j += 2;
            if j > self.b.len() {
                return Err(self.err("an unterminated string"));
            }
        }
    }

    /// Skips one value of any kind; returns its byte range.
    pub(super) fn value(&mut self) -> Result<(usize, usize), FilterError> {
        let start = match self.peek() {
            Some(_) => self.i,
            None => return Err(self.err("a value")),
        };
        match self.b[start] {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    let Some(&c) = self.b.get(self.i) else {
                        return Err(self.err("a closing bracket"));
                    };
                    match c {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while self.b.get(self.i).is_some_and(|&c| !ends_scalar(c)) {
                    self.i += 1;
                }
                if self.i == start {
                    return Err(self.err("a value"));
                }
            }
        }
        Ok((start, self.i))
    }

    /// Reads an object key with `i` at its quote: the raw bytes with quotes, and the decoded text.
    fn key(&mut self) -> Result<(&'a [u8], std::borrow::Cow<'a, str>), FilterError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("an object key"));
        }
        let start = self.i;
        let escaped = self.string()?;
        let raw = &self.b[start..self.i];
        let text = if escaped {
            std::borrow::Cow::Owned(serde_json::from_slice::<String>(raw).map_err(|_| self.err("a valid key"))?)
        } else {
            std::borrow::Cow::Borrowed(std::str::from_utf8(&raw[1..raw.len() - 1]).map_err(|_| self.err("UTF-8"))?)
        };
        self.expect(b':', "':' after a key")?;
        Ok((raw, text))
    }

    /// Walks an object, calling `member` with each key (raw and decoded) while `i` is at the member's value; the
    /// callback must consume the value. Handles commas and the closing brace.
    pub(super) fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, &'a [u8], &str) -> Result<(), FilterError>,
    ) -> Result<(), FilterError> {
        self.expect(b'{', "an object")?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            let (raw, text) = self.key()?;
            member(self, raw, &text)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("',' or '}'")),
            }
        }
    }
}

/// Writes `"key":value` members with commas between them.
struct ObjectWriter<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> ObjectWriter<'o> {
    fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, first: true }
    }
    fn key(&mut self, raw_key: &[u8]) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(raw_key);
        self.out.push(b':');
        self.out
    }
    fn close(self) {
        self.out.push(b'}');
    }
}

/// Remembers the last decision: records of one package sit next to each other in repodata, so most lookups repeat.
struct Decider<'f> {
    allow: &'f dyn Fn(&str) -> bool,
    last: Option<(String, bool)>,
}

impl Decider<'_> {
    fn key_allowed(&mut self, key: &str) -> bool {
        let Some(name) = package_name_of_key(key) else {
            return false;
        };
        if let Some((n, d)) = &self.last {
            if n == name {
                return *d;
            }
        }
        let d = (self.allow)(name);
        self.last = Some((name.to_owned(), d));
        d
    }
}

fn filter_package_map(s: &mut Scanner<'_>, out: &mut Vec<u8>, decide: &mut Decider<'_>) -> Result<(), FilterError> {
    if s.peek() != Some(b'{') {
        let (a, b) = s.value()?;
        out.extend_from_slice(&s.b[a..b]);
        return Ok(());
    }
    let mut w = ObjectWriter::open(out);
    s.object(|s, raw, key| {
        let (a, b) = s.value()?;
        if decide.key_allowed(key) {
            w.key(raw).extend_from_slice(&s.b[a..b]);
        }
        Ok(())
    })?;
    w.close();
    Ok(())
}

pub(super) fn is_absolute_url(u: &str) -> bool {
    u.contains("://") || u.starts_with("//")
}

fn rewrite_info(raw: &[u8], out: &mut Vec<u8>, at: usize) -> Result<(), FilterError> {
    let mut info: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(raw).map_err(|_| FilterError { at, what: "an info object" })?;
    if info.get("base_url").and_then(|v| v.as_str()).is_some_and(is_absolute_url) {
        info.remove("base_url");
        serde_json::to_writer(out, &info).map_err(|_| FilterError { at, what: "a writable info object" })?;
    } else {
        out.extend_from_slice(raw);
    }
    Ok(())
}

fn filter_removed(raw: &[u8], out: &mut Vec<u8>, decide: &mut Decider<'_>, at: usize) -> Result<(), FilterError> {
    let removed: Vec<serde_json::Value> =
        serde_json::from_slice(raw).map_err(|_| FilterError { at, what: "a removed list" })?;
    let kept: Vec<&serde_json::Value> =
        removed.iter().filter(|v| v.as_str().is_some_and(|k| decide.key_allowed(k))).collect();
    serde_json::to_writer(out, &kept).map_err(|_| FilterError { at, what: "a writable removed list" })
}

/// Filters a `repodata.json` document: keeps the records of packages `allow` accepts in every package map, drops
/// an absolute `info.base_url`, and copies everything else. Appends the result to `out`.
pub fn filter_repodata(input: &[u8], allow: &dyn Fn(&str) -> bool, out: &mut Vec<u8>) -> Result<(), FilterError> {
    let mut s = Scanner { b: input, i: 0 };
    let mut decide = Decider { allow, last: None };
    out.reserve(input.len() / 4);
    let mut w = ObjectWriter::open(out);
    s.object(|s, raw, key| {
        let at = s.i;
        match key {
            "packages" | "packages.conda" => filter_package_map(s, w.key(raw), &mut decide),
            "v3" if s.peek() == Some(b'{') => {
                let mut v3 = ObjectWriter::open(w.key(raw));
                s.object(|s, raw, _| filter_package_map(s, v3.key(raw), &mut decide))?;
                v3.close();
                Ok(())
            }
            "info" => {
                let (a, b) = s.value()?;
                rewrite_info(&s.b[a..b], w.key(raw), at)
            }
            "removed" => {
                let (a, b) = s.value()?;
                filter_removed(&s.b[a..b], w.key(raw), &mut decide, at)
            }
            _ => {
                let (a, b) = s.value()?;
                w.key(raw).extend_from_slice(&s.b[a..b]);
                Ok(())
            }
        }
    })?;
    w.close();
    if s.peek().is_some() {
        return Err(s.err("the end of the document"));
    }
    Ok(())
}

/// Whether a `repodata.json` document has an absolute `info.base_url` (and so must be rewritten even for a token
/// that sees everything). Reads only as far as `info`.
pub fn has_absolute_base_url(input: &[u8]) -> Result<bool, FilterError> {
    let mut s = Scanner { b: input, i: 0 };
    let mut found = false;
    s.object(|s, _, key| {
        let (a, b) = s.value()?;
        if key == "info" {
            let info: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&s.b[a..b]).map_err(|_| s.err("an info object"))?;
            found = info.get("base_url").and_then(|v| v.as_str()).is_some_and(is_absolute_url);
        }
        Ok(())
    })?;
    Ok(found)
}

/// A decoded CEP-16 shard index: `{"info": {...}, "shards": {name: sha256}}`.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    info: Vec<(rmpv::Value, rmpv::Value)>,
    other: Vec<(rmpv::Value, rmpv::Value)>,
    /// Package name to the sha256 of its shard file.
    pub shards: Vec<(String, [u8; 32])>,
}

fn bad(what: &'static str) -> FilterError {
    FilterError { at: 0, what }
}

impl ShardIndex {
    /// Decodes a shard index from its zstd-compressed msgpack bytes.
    pub fn decode(compressed: &[u8]) -> Result<Self, FilterError> {
        let raw = zstd::decode_all(compressed).map_err(|_| bad("a zstd stream"))?;
        let value = rmpv::decode::read_value(&mut raw.as_slice()).map_err(|_| bad("msgpack"))?;
        let rmpv::Value::Map(top) = value else {
            return Err(bad("a msgpack map"));
        };
        let mut info = Vec::new();
        let mut other = Vec::new();
        let mut shards = Vec::new();
        for (k, v) in top {
            match (k.as_str(), v) {
                (Some("info"), rmpv::Value::Map(m)) => info = m,
                (Some("shards"), rmpv::Value::Map(m)) => {
                    shards.reserve(m.len());
                    for (name, hash) in m {
                        let name = name.as_str().ok_or_else(|| bad("shard names as strings"))?.to_owned();
                        let hash: [u8; 32] = match &hash {
                            rmpv::Value::Binary(b) => b.as_slice().try_into().ok(),
                            _ => None,
                        }
                        .ok_or_else(|| bad("32-byte shard hashes"))?;
                        shards.push((name, hash));
                    }
                }
                (_, v) => other.push((k, v)),
            }
        }
        Ok(ShardIndex { info, other, shards })
    }

    /// Whether `info.base_url` or `info.shards_base_url` is absolute.
    pub fn has_absolute_urls(&self) -> bool {
        self.info.iter().any(|(k, v)| {
            matches!(k.as_str(), Some("base_url" | "shards_base_url")) && v.as_str().is_some_and(is_absolute_url)
        })
    }

    /// Shard hash to package name.
    pub fn names_by_hash(&self) -> HashMap<[u8; 32], String> {
        self.shards.iter().map(|(n, h)| (*h, n.clone())).collect()
    }

    /// Encodes the index keeping only the names `allow` accepts, with absolute base URLs made relative so clients
    /// fetch packages and shards through the proxy; zstd-compressed.
    pub fn encode_filtered(&self, allow: &dyn Fn(&str) -> bool) -> Result<Vec<u8>, FilterError> {
        let info = self
            .info
            .iter()
            .map(|(k, v)| {
                let v = match (k.as_str(), v.as_str()) {
                    (Some("base_url"), Some(u)) if is_absolute_url(u) => rmpv::Value::from(""),
                    (Some("shards_base_url"), Some(u)) if is_absolute_url(u) => rmpv::Value::from("./shards/"),
                    _ => v.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        let shards = self
            .shards
            .iter()
            .filter(|(n, _)| allow(n))
            .map(|(n, h)| (rmpv::Value::from(n.as_str()), rmpv::Value::Binary(h.to_vec())))
            .collect();
        let mut top = vec![
            (rmpv::Value::from("info"), rmpv::Value::Map(info)),
            (rmpv::Value::from("shards"), rmpv::Value::Map(shards)),
        ];
        top.extend(self.other.iter().cloned());
        let mut raw = Vec::new();
        rmpv::encode::write_value(&mut raw, &rmpv::Value::Map(top)).map_err(|_| bad("an encodable index"))?;
        zstd::encode_all(raw.as_slice(), 3).map_err(|_| bad("a compressible index"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn run(input: &str, allow: &[&str]) -> Value {
        let f = |n: &str| allow.contains(&n);
        let mut out = Vec::new();
        filter_repodata(input.as_bytes(), &f, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("invalid output {e}: {}", String::from_utf8_lossy(&out)))
    }

    const DOC: &str = r#"{
  "info": {"subdir": "noarch", "base_url": "https://cdn.example/c/"},
  "packages": {
    "alpha-1.0-0.tar.bz2": {"name": "alpha", "depends": ["beta >=1"], "size": 12},
    "secret-thing-1.0-0.tar.bz2": {"name": "secret-thing", "depends": []}
  },
  "packages.conda": {
    "beta-1.0-0.conda": {"name": "beta", "weird": "a \"quoted\" } ] { [ string\\"},
    "secret-thing-2.0-0.conda": {"name": "secret-thing", "nested": {"a": [1, {"b": null}]}}
  },
  "removed": ["secret-thing-0.1-0.tar.bz2", "alpha-0.1-0.tar.bz2"],
  "repodata_version": 1,
  "v3": {"whl": {"secret-thing-3.0-py_0": {"name": "secret-thing"}, "alpha-3.0-py_0": {"name": "alpha"}}}
}"#;

    #[test]
    fn hidden_names_vanish_from_every_map() {
        let v = run(DOC, &["alpha", "beta"]);
        assert_eq!(v["packages"].as_object().unwrap().keys().collect::<Vec<_>>(), ["alpha-1.0-0.tar.bz2"]);
        assert_eq!(v["packages.conda"].as_object().unwrap().keys().collect::<Vec<_>>(), ["beta-1.0-0.conda"]);
        assert_eq!(v["packages.conda"]["beta-1.0-0.conda"]["weird"], "a \"quoted\" } ] { [ string\\");
        assert_eq!(v["v3"]["whl"].as_object().unwrap().keys().collect::<Vec<_>>(), ["alpha-3.0-py_0"]);
        assert_eq!(v["removed"], json!(["alpha-0.1-0.tar.bz2"]));
        assert_eq!(v["repodata_version"], 1);
        assert_eq!(v["info"], json!({"subdir": "noarch"}));
        let mut out = Vec::new();
        filter_repodata(DOC.as_bytes(), &|n| n == "alpha" || n == "beta", &mut out).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("secret"));
    }

    #[test]
    fn everything_allowed_keeps_every_record_and_drops_only_the_absolute_base_url() {
        let v = run(DOC, &["alpha", "beta", "secret-thing"]);
        let mut want: Value = serde_json::from_str(DOC).unwrap();
        want["info"].as_object_mut().unwrap().remove("base_url");
        assert_eq!(v, want);
        assert!(has_absolute_base_url(DOC.as_bytes()).unwrap());
        assert!(!has_absolute_base_url(br#"{"info": {"base_url": "../x"}}"#).unwrap());
    }

    #[test]
    fn escaped_and_unicode_keys_are_decoded_before_matching() {
        let doc = r#"{"packages": {"\u0061lpha-1-0.tar.bz2": {}, "b\u00e9ta-1-0.tar.bz2": {"x": "ünï"}, "gamma-1-0.tar.bz2": {}}}"#;
        let v = run(doc, &["alpha", "béta"]);
        assert_eq!(v["packages"].as_object().unwrap().len(), 2);
        assert_eq!(v["packages"]["béta-1-0.tar.bz2"]["x"], "ünï");
    }

    #[test]
    fn empty_maps_and_no_survivors_stay_valid() {
        assert_eq!(
            run(r#"{"packages": {}, "packages.conda": {"a-1-0.conda": {}}}"#, &[]),
            json!({"packages": {}, "packages.conda": {}})
        );
        assert_eq!(run("{}", &[]), json!({}));
    }

    #[test]
    fn huge_records_pass_through_whole() {
        let big = "x".repeat(5 << 20);
        let doc = format!(r#"{{"packages": {{"alpha-1-0.tar.bz2": {{"blob": "{big}", "n": [1.5e3, true, null]}}}}}}"#);
        let v = run(&doc, &["alpha"]);
        assert_eq!(v["packages"]["alpha-1-0.tar.bz2"]["blob"].as_str().unwrap().len(), 5 << 20);
    }

    #[test]
    fn malformed_documents_are_errors_not_panics() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"packages": {"a-1-0.conda": }}"#,
            r#"{"packages": {"a-1-0.conda": {"x": "unterminated}}}"#,
            r#"{"a": 1} trailing"#,
            r#"{"a" 1}"#,
        ] {
            let mut out = Vec::new();
            assert!(filter_repodata(bad.as_bytes(), &|_| true, &mut out).is_err(), "{bad:?}");
        }
    }

    fn index_bytes(base: &str) -> Vec<u8> {
        let v = rmpv::Value::Map(vec![
            (
                "info".into(),
                rmpv::Value::Map(vec![
                    ("subdir".into(), "noarch".into()),
                    ("base_url".into(), base.into()),
                    ("shards_base_url".into(), format!("{base}shards/").into()),
                ]),
            ),
            (
                "shards".into(),
                rmpv::Value::Map(vec![
                    ("alpha".into(), rmpv::Value::Binary(vec![1; 32])),
                    ("secret".into(), rmpv::Value::Binary(vec![2; 32])),
                ]),
            ),
        ]);
        let mut raw = Vec::new();
        rmpv::encode::write_value(&mut raw, &v).unwrap();
        zstd::encode_all(raw.as_slice(), 1).unwrap()
    }

    #[test]
    fn the_shard_index_keeps_visible_names_and_relative_urls() {
        let idx = ShardIndex::decode(&index_bytes("https://cdn.example/noarch/")).unwrap();
        assert!(idx.has_absolute_urls());
        assert_eq!(idx.names_by_hash()[&[2; 32]], "secret");
        let out = idx.encode_filtered(&|n| n == "alpha").unwrap();
        let back = ShardIndex::decode(&out).unwrap();
        assert_eq!(back.shards, vec![("alpha".to_owned(), [1; 32])]);
        assert!(!back.has_absolute_urls());
        let raw = zstd::decode_all(out.as_slice()).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"secret"));
        assert!(!ShardIndex::decode(&index_bytes("./")).unwrap().has_absolute_urls());
        assert!(ShardIndex::decode(b"not zstd").is_err());
    }
}
