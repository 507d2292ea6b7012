//! Stage 1: turn a request path into what it asks for, or refuse it.
//!
//! Accepted shapes, all below `server.base_path`:
//! ```text
//! [/t/<TOKEN>]/<channel>[/label/<label>]/<subdir>/<file>
//! [/t/<TOKEN>]/<channel>[/label/<label>]/<subdir>/shards/<64 hex>.msgpack.zst
//! [/t/<TOKEN>]/<channel>/notices.json
//! /api/…  /admin/…  /healthz  /readyz  /metrics
//! ```
//! Each segment is percent-decoded once, on its own. A segment of a channel path must then hold only the characters
//! conda itself uses in channel, label, subdir and file names (`A-Z a-z 0-9 . _ - + !`), and must not be `.`, `..` or
//! start with a dot: no `%` survives decoding, so no upstream that decodes again (a static mirror, an object store)
//! can read a different name than the one that was checked, and no request can name a file outside its channel.
//! Only the conda file kinds in [`FileKind`] are served: anything else is "not found".

use std::borrow::Cow;
use std::ops::Range;

use crate::tokens::token::hex_digit;
use crate::tokens::{Digest, MalformedToken, Token};

/// Why a path is refused before any authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// Not decodable, or trying to leave its folder (`..`, encoded separators, NUL, backslashes).
    BadPath,
    /// Well-formed but not something condagate serves.
    NotServed,
}

/// The conda file kinds condagate serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `repodata.json`
    RepodataJson,
    /// `repodata.json.zst`
    RepodataZst,
    /// `repodata.json.bz2`
    RepodataBz2,
    /// `current_repodata.json`
    CurrentRepodata,
    /// `repodata_shards.msgpack.zst` (CEP-16 shard index)
    ShardIndex,
    /// `shards/<sha256>.msgpack.zst`
    Shard([u8; 32]),
    /// A package file, `<name>-<version>-<build>.tar.bz2` or `.conda`.
    Package(PackageFile),
    /// `<channel>/notices.json`
    Notices,
}

impl FileKind {
    /// Whether this is one of the repodata forms a per-token view applies to.
    pub fn is_repodata(&self) -> bool {
        matches!(
            self,
            FileKind::RepodataJson
                | FileKind::RepodataZst
                | FileKind::RepodataBz2
                | FileKind::CurrentRepodata
                | FileKind::ShardIndex
        )
    }

    /// The `Content-Type` condagate sends for this kind.
    pub fn content_type(&self) -> &'static str {
        match self {
            FileKind::RepodataJson | FileKind::CurrentRepodata | FileKind::Notices => "application/json",
            FileKind::RepodataZst | FileKind::ShardIndex | FileKind::Shard(_) => "application/zstd",
            FileKind::RepodataBz2 => "application/x-bzip2",
            FileKind::Package(p) if p.is_conda() => "application/octet-stream",
            FileKind::Package(_) => "application/x-bzip2",
        }
    }
}

/// A package file name split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackageFile {
    filename: String,
    name_len: usize,
}

impl PackageFile {
    /// Parses `<name>-<version>-<build>.tar.bz2` or `.conda`. Version and build hold no `-`; the name may.
    pub fn parse(filename: &str) -> Option<Self> {
        let stem = filename.strip_suffix(".tar.bz2").or_else(|| filename.strip_suffix(".conda"))?;
        let name_len = package_name_len(stem)?;
        Some(PackageFile { filename: filename.to_owned(), name_len })
    }

    /// The package name.
    pub fn name(&self) -> &str {
        &self.filename[..self.name_len]
    }

    /// The whole file name.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// Whether it is a `.conda` file.
    pub fn is_conda(&self) -> bool {
        self.filename.ends_with(".conda")
    }
}

/// Length of the name in `<name>-<version>-<build>`, if the stem has that shape with three non-empty parts.
pub fn package_name_len(stem: &str) -> Option<usize> {
    let build_dash = stem.rfind('-')?;
    let version_dash = stem[..build_dash].rfind('-')?;
    let ok = version_dash > 0 && build_dash > version_dash + 1 && build_dash + 1 < stem.len();
    ok.then_some(version_dash)
}

/// The package name of a repodata key: a file name with or without its extension.
pub fn package_name_of_key(key: &str) -> Option<&str> {
    let stem = key
        .strip_suffix(".tar.bz2")
        .or_else(|| key.strip_suffix(".conda"))
        .or_else(|| key.strip_suffix(".whl"))
        .unwrap_or(key);
    package_name_len(stem).map(|n| &key[..n])
}

/// A request for a file of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPath {
    /// The digest of the token from the path, if the path had `/t/<TOKEN>`. The secret itself is not kept.
    pub token: Option<Result<Digest, MalformedToken>>,
    /// `<channel>/[label/<label>/][<subdir>/]<file>`: the channel, then the file's path below the channel root. One
    /// string holds every name a request needs, so routing allocates it once.
    text: String,
    /// Where the channel name ends in `text` (a `/` follows).
    channel_end: usize,
    label: Option<Range<usize>>,
    subdir: Option<Range<usize>>,
    /// What is asked for.
    pub file: FileKind,
}

impl ChannelPath {
    /// A path of `channel`; `label` is `None` for the channel root, `subdir` is `None` for `notices.json`.
    pub fn new(channel: &str, label: Option<&str>, subdir: Option<&str>, file: FileKind) -> Self {
        let len = channel.len() + label.map_or(0, |l| l.len() + 7) + subdir.map_or(0, |s| s.len() + 1);
        let mut text = String::with_capacity(len + 1 + file_part_len(&file));
        text.push_str(channel);
        let channel_end = text.len();
        text.push('/');
        let mut part = |prefix: &str, name: &str| {
            text.push_str(prefix);
            let start = text.len();
            text.push_str(name);
            text.push('/');
            start..start + name.len()
        };
        let label = label.map(|l| part("label/", l));
        let subdir = subdir.map(|s| part("", s));
        push_file_part(&mut text, &file);
        ChannelPath { token: None, text, channel_end, label, subdir, file }
    }

    /// The channel name.
    pub fn channel(&self) -> &str {
        &self.text[..self.channel_end]
    }

    /// The label; `None` is the channel root (`label/main`).
    pub fn label(&self) -> Option<&str> {
        self.label.clone().map(|r| &self.text[r])
    }

    /// The label as groups name it: the channel root is `main`.
    pub fn label_name(&self) -> &str {
        self.label().unwrap_or("main")
    }

    /// The subdir (`noarch`, `linux-64`, …); `None` for `notices.json`.
    pub fn subdir(&self) -> Option<&str> {
        self.subdir.clone().map(|r| &self.text[r])
    }

    /// The file's path relative to the channel's root at the upstream.
    pub fn upstream_path(&self) -> &str {
        &self.text[self.channel_end + 1..]
    }

    /// The last segment of the path: the file name.
    pub fn file_name(&self) -> &str {
        self.text.rsplit('/').next().unwrap_or_default()
    }

    /// The path of another file of the same subdir (the shard index of a shard, say), relative to the channel root.
    pub fn upstream_path_for(&self, file: &FileKind) -> Cow<'_, str> {
        if *file == self.file {
            return Cow::Borrowed(self.upstream_path());
        }
        // The same folder: the upstream path up to the file's part, which follows the last folder name and its `/`.
        let dir_end = self.subdir.as_ref().or(self.label.as_ref()).map_or(self.channel_end, |r| r.end) + 1;
        let dir = &self.text[self.channel_end + 1..dir_end];
        let mut p = String::with_capacity(dir.len() + file_part_len(file));
        p.push_str(dir);
        push_file_part(&mut p, file);
        Cow::Owned(p)
    }
}

/// The file names of the kinds that have one fixed name.
fn fixed_name(file: &FileKind) -> Option<&'static str> {
    match file {
        FileKind::Notices => Some(NOTICES),
        kind => SUBDIR_FILES.iter().find(|(k, _)| k == kind).map(|(_, name)| *name),
    }
}

/// The kinds of file a subdir holds under one fixed name, and the names: one table for parsing and for building
/// paths.
static SUBDIR_FILES: [(FileKind, &str); 5] = [
    (FileKind::RepodataJson, "repodata.json"),
    (FileKind::RepodataZst, "repodata.json.zst"),
    (FileKind::RepodataBz2, "repodata.json.bz2"),
    (FileKind::CurrentRepodata, "current_repodata.json"),
    (FileKind::ShardIndex, "repodata_shards.msgpack.zst"),
];

/// A channel's notices, at its root.
const NOTICES: &str = "notices.json";

const SHARD_DIR: &str = "shards/";
const SHARD_SUFFIX: &str = ".msgpack.zst";

/// Length of a file's path below its subdir.
fn file_part_len(file: &FileKind) -> usize {
    match file {
        FileKind::Shard(_) => SHARD_DIR.len() + 64 + SHARD_SUFFIX.len(),
        FileKind::Package(f) => f.filename().len(),
        other => fixed_name(other).map_or(0, str::len),
    }
}

/// Appends a file's path below its subdir.
fn push_file_part(out: &mut String, file: &FileKind) {
    match file {
        FileKind::Shard(h) => {
            out.push_str(SHARD_DIR);
            out.push_str(&hex::encode(h));
            out.push_str(SHARD_SUFFIX);
        }
        FileKind::Package(f) => out.push_str(f.filename()),
        other => out.push_str(fixed_name(other).unwrap_or_default()),
    }
}

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A file of a channel.
    Channel(ChannelPath),
    /// The admin API; holds the decoded segments after `api`.
    Api(Vec<String>),
    /// The token pages; holds the decoded segments after `admin`.
    Admin(Vec<String>),
    /// Liveness.
    Health,
    /// Readiness.
    Ready,
    /// Prometheus metrics.
    Metrics,
}

/// Byte classes of a path segment, as bit flags: `%`, bytes no segment may hold (`/`, `\`, ASCII control
/// characters), bytes beyond ASCII, and bytes outside conda's name grammar (every byte but `A-Z a-z 0-9 . _ - + !`).
const PERCENT: u8 = 1;
const BAD: u8 = 2;
const NON_ASCII: u8 = 4;
const NOT_CONDA: u8 = 8;

static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'+' | b'!' => 0,
            b'%' => PERCENT | NOT_CONDA,
            b'/' | b'\\' | 0..=0x1f | 0x7f => BAD | NOT_CONDA,
            0x80.. => NON_ASCII | NOT_CONDA,
            _ => NOT_CONDA,
        };
        b += 1;
    }
    table
};

/// The classes of every byte of `s`, in one pass without branches.
fn classes(s: &str) -> u8 {
    s.bytes().fold(0, |flags, b| flags | CLASS[usize::from(b)])
}

/// Percent-decodes one segment and checks it can name nothing but itself; returns it with the byte classes of the
/// decoded text. Borrows when nothing is encoded.
fn decode_segment(raw: &str) -> Result<(Cow<'_, str>, u8), RouteError> {
    let flags = classes(raw);
    if flags & PERCENT == 0 {
        return check_segment(Cow::Borrowed(raw), flags);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_digit).ok_or(RouteError::BadPath)?;
            let lo = bytes.get(i + 2).copied().and_then(hex_digit).ok_or(RouteError::BadPath)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).map_err(|_| RouteError::BadPath)?;
    let flags = classes(&decoded);
    check_segment(Cow::Owned(decoded), flags)
}

/// Checks a decoded segment whose byte classes are `flags`.
fn check_segment(s: Cow<'_, str>, flags: u8) -> Result<(Cow<'_, str>, u8), RouteError> {
    // Characters are looked at only when there is something beyond ASCII, for the C1 control characters.
    let bad = flags & BAD != 0 || (flags & NON_ASCII != 0 && s.chars().any(char::is_control));
    if s == "." || s == ".." || bad {
        return Err(RouteError::BadPath);
    }
    if s.is_empty() || s.starts_with('.') || s.len() > 255 {
        return Err(RouteError::NotServed);
    }
    Ok((s, flags))
}

/// Decodes a segment of a channel path: it must also keep to conda's name grammar once decoded, so that what goes
/// upstream is exactly what was authorized, whatever the upstream decodes again.
fn channel_segment(raw: &str) -> Result<Cow<'_, str>, RouteError> {
    let (seg, flags) = decode_segment(raw)?;
    if flags & NOT_CONDA != 0 {
        return Err(RouteError::BadPath);
    }
    Ok(seg)
}

fn valid_subdir(s: &str) -> bool {
    s.len() <= 64
        && s.split('-').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

fn parse_shard_name(file: &str) -> Option<[u8; 32]> {
    let hex_part = file.strip_suffix(SHARD_SUFFIX)?;
    let mut out = [0u8; 32];
    // Only lower-case hex, as rattler writes it, so one shard has one URL.
    if hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

fn file_kind(file: &str) -> Option<FileKind> {
    match SUBDIR_FILES.iter().find(|(_, name)| *name == file) {
        Some((kind, _)) => Some(kind.clone()),
        None => PackageFile::parse(file).map(FileKind::Package),
    }
}

/// The most segments a channel path has: `t/<TOKEN>/<channel>/label/<label>/<subdir>/shards/<file>`.
const MAX_SEGMENTS: usize = 8;

/// Parses a request path (without the query) below `base_path` (`""` or `/prefix`).
///
/// Under a base path the token may also come first, before the base path (`/t/<TOKEN>/<base>/<channel>/…`): rattler's
/// stored `CondaToken` credentials put it right after the host, as anaconda.org's URLs do.
pub fn parse(path: &str, base_path: &str) -> Result<Route, RouteError> {
    fn below<'p>(p: &'p str, base_path: &str) -> Option<&'p str> {
        p.strip_prefix(base_path).and_then(|r| r.strip_prefix('/'))
    }
    let (lead_token, rest) = match below(path, base_path) {
        Some(rest) => (None, rest),
        None if !base_path.is_empty() => {
            let after = path.strip_prefix("/t/").ok_or(RouteError::NotServed)?;
            let (token, tail) = after.split_once('/').ok_or(RouteError::NotServed)?;
            let rest =
                below(&after[token.len()..], base_path).filter(|_| !tail.is_empty()).ok_or(RouteError::NotServed)?;
            (Some(channel_segment(token)?), rest)
        }
        None => return Err(RouteError::NotServed),
    };
    let mut raw = rest.split('/');
    let first_raw = raw.next().unwrap_or_default();
    if lead_token.is_some() && matches!(first_raw, "api" | "admin" | "healthz" | "readyz" | "metrics" | "t") {
        return Err(RouteError::NotServed);
    }
    if first_raw == "api" {
        let segs = raw.map(|r| decode_segment(r).map(|(s, _)| s.into_owned())).collect::<Result<_, _>>()?;
        return Ok(Route::Api(segs));
    }
    if first_raw == "admin" {
        // `/admin/` is `/admin`: a trailing slash names no page.
        let mut raw: Vec<&str> = raw.collect();
        if raw.last() == Some(&"") {
            raw.pop();
        }
        let segs = raw.into_iter().map(|r| decode_segment(r).map(|(s, _)| s.into_owned())).collect::<Result<_, _>>()?;
        return Ok(Route::Admin(segs));
    }
    let first = channel_segment(first_raw)?;
    // Every segment is decoded and checked, however many there are, so a hostile path is refused as such; a channel
    // path never has more than `MAX_SEGMENTS`, so no more are kept.
    let mut kept: [Cow<'_, str>; MAX_SEGMENTS] = Default::default();
    kept[0] = first;
    let mut n = 1;
    for r in raw {
        let seg = channel_segment(r)?;
        if let Some(slot) = kept.get_mut(n) {
            *slot = seg;
        }
        n += 1;
    }
    if n > MAX_SEGMENTS {
        return Err(RouteError::NotServed);
    }
    let segs = &kept[..n];
    match (&*segs[0], n) {
        ("healthz", 1) => return Ok(Route::Health),
        ("readyz", 1) => return Ok(Route::Ready),
        ("metrics", 1) => return Ok(Route::Metrics),
        _ => {}
    }
    let mut rest = segs;
    let token = if let Some(t) = &lead_token {
        Some(Token::digest_of(t))
    } else if segs[0] == "t" {
        let t = rest.get(1).ok_or(RouteError::NotServed)?;
        rest = &rest[2..];
        Some(Token::digest_of(t))
    } else {
        None
    };
    let (channel, mut rest) = rest.split_first().ok_or(RouteError::NotServed)?;
    if rest.len() == 1 && rest[0] == NOTICES {
        let path = ChannelPath { token, ..ChannelPath::new(channel, None, None, FileKind::Notices) };
        return Ok(Route::Channel(path));
    }
    let mut label = None;
    if rest.first().map(|s| &**s) == Some("label") {
        let l = rest.get(1).ok_or(RouteError::NotServed)?;
        label = (l != "main").then_some(&**l);
        rest = &rest[2..];
    }
    let (subdir, file) = match rest {
        [subdir, file] if valid_subdir(subdir) => (subdir, file_kind(file).ok_or(RouteError::NotServed)?),
        [subdir, shards, file] if valid_subdir(subdir) && shards == "shards" => {
            (subdir, FileKind::Shard(parse_shard_name(file).ok_or(RouteError::NotServed)?))
        }
        _ => return Err(RouteError::NotServed),
    };
    Ok(Route::Channel(ChannelPath { token, ..ChannelPath::new(channel, label, Some(subdir), file) }))
}

/// The path as logs and spans show it, with every token replaced by `<redacted>`. It works on raw, unparsed paths, so
/// even a refused request is logged without its token, and it finds tokens by what they are rather than where a
/// well-formed path puts them:
/// - the path is percent-decoded until nothing changes (at most a few rounds), so `%74`, `%2F` and double encodings
///   cannot hide a `t` segment or a separator;
/// - it is split at `/` and `\`; the first segment of substance (not empty, `.` or `..`) after any `t` or `T` segment
///   is redacted, wherever it stands (`/t//<T>`, `/t/./<T>`, `/T/<T>`, a wrong base path, a repeated token);
/// - any run shaped like a generated token (`cg-` and at least eight letters or digits) is redacted in any segment.
///
/// Bytes outside printable ASCII, and `%`, are written percent-encoded, so a log line cannot be broken or made to lie
/// by what a client sends. Over-redacting a path that merely has a `t` segment is the safe mistake.
pub fn redact_path(path: &str) -> String {
    // Token-shaped runs are taken out of the raw text first too, so that an escape next to one (`%6` before
    // `cg-…`) cannot change its prefix when the path is decoded.
    let mut bytes = without_token_runs(path.as_bytes());
    for _ in 0..4 {
        let decoded: Vec<u8> = percent_encoding::percent_decode(&bytes).collect();
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    let mut after_t = false;
    let mut first = true;
    for seg in bytes.split_inclusive(|&b| b == b'/' || b == b'\\') {
        let (name, sep) = match seg.split_last() {
            Some((&last, name)) if last == b'/' || last == b'\\' => (name, Some(last)),
            _ => (seg, None),
        };
        let filler = name.is_empty() || name == b"." || name == b"..";
        if after_t && !filler {
            out.push_str("<redacted>");
            after_t = false;
        } else {
            push_redacting_runs(&mut out, name);
            if !filler {
                after_t = !first && name.eq_ignore_ascii_case(b"t");
            }
        }
        first = false;
        if let Some(sep) = sep {
            out.push(char::from(sep));
        }
    }
    out
}

/// `raw` with every `cg-` token-shaped run replaced by `<redacted>`.
fn without_token_runs(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if let Some(run) = token_run_at(&raw[i..]) {
            out.extend_from_slice(b"<redacted>");
            i += run;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

/// The length of the token-shaped run (`cg-` and at least eight letters or digits) at the start of `s`, if any. A
/// run whose letters end in `cg` right before another token's `-` is glued to that token (`cg-abcdefgcg-<T>`): both
/// are taken.
fn token_run_at(s: &[u8]) -> Option<usize> {
    fn one(s: &[u8]) -> Option<usize> {
        if s.len() < 3 || !s[..3].eq_ignore_ascii_case(crate::tokens::TOKEN_PREFIX.as_bytes()) {
            return None;
        }
        let run = s[3..].iter().take_while(|b| b.is_ascii_alphanumeric()).count();
        (run >= 8).then_some(3 + run)
    }
    let mut end = one(s)?;
    while let Some(more) = one(&s[end - 2..]) {
        end += more - 2;
    }
    Some(end)
}

/// Appends `name`, escaped for a log line, with every `cg-` token-shaped run replaced by `<redacted>`.
fn push_redacting_runs(out: &mut String, name: &[u8]) {
    use std::fmt::Write;
    let mut i = 0;
    while i < name.len() {
        if let Some(run) = token_run_at(&name[i..]) {
            out.push_str("<redacted>");
            i += run;
            continue;
        }
        let b = name[i];
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        i += 1;
    }
}

/// A request path that displays itself redacted (see [`redact_path`]).
pub struct Redacted<'a>(pub &'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_path(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chan(p: &str) -> ChannelPath {
        match parse(p, "").unwrap() {
            Route::Channel(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_label_and_subdir_are_found() {
        let c = chan("/t/cg-abc/mychan/label/dev/noarch/repodata.json");
        assert_eq!(c.token, Some(Ok(Token::parse("cg-abc").unwrap().digest())));
        assert_eq!(c.channel(), "mychan");
        assert_eq!(c.label(), Some("dev"));
        assert_eq!(c.label_name(), "dev");
        assert_eq!(c.subdir(), Some("noarch"));
        assert_eq!(c.file_name(), "repodata.json");
        assert_eq!(c.file, FileKind::RepodataJson);
        assert_eq!(c.upstream_path(), "label/dev/noarch/repodata.json");
    }

    #[test]
    fn label_main_is_the_root() {
        let c = chan("/mychan/label/main/linux-64/alpha-1.0-0.tar.bz2");
        assert_eq!(c.label(), None);
        assert_eq!(c.label_name(), "main");
        assert_eq!(c.upstream_path(), "linux-64/alpha-1.0-0.tar.bz2");
        assert_eq!(c.upstream_path_for(&FileKind::ShardIndex), "linux-64/repodata_shards.msgpack.zst");
    }

    #[test]
    fn package_names_may_hold_dashes() {
        let p = PackageFile::parse("beta-utils-1.0-py_0.conda").unwrap();
        assert_eq!(p.name(), "beta-utils");
        assert!(p.is_conda());
        assert_eq!(PackageFile::parse("x-1-0.tar.bz2").unwrap().name(), "x");
        for bad in ["nodash.conda", "a-1.conda", "-1-0.conda", "a--0.conda", "a-1-.conda", "a-1-0.zip", "a-1-0.tar.gz"]
        {
            assert!(PackageFile::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(package_name_of_key("py-lib-2.0-h1_0"), Some("py-lib"));
        assert_eq!(package_name_of_key("py-lib-2.0-h1_0.whl"), Some("py-lib"));
    }

    #[test]
    fn shards_need_lowercase_hex() {
        let h = "ab".repeat(32);
        let c = chan(&format!("/c/noarch/shards/{h}.msgpack.zst"));
        assert_eq!(c.file, FileKind::Shard([0xab; 32]));
        let c = chan(&format!("/c/label/dev/noarch/shards/{h}.msgpack.zst"));
        assert_eq!(c.upstream_path(), format!("label/dev/noarch/shards/{h}.msgpack.zst"));
        assert_eq!(c.upstream_path_for(&FileKind::ShardIndex), "label/dev/noarch/repodata_shards.msgpack.zst");
        assert_eq!((c.channel(), c.label(), c.subdir()), ("c", Some("dev"), Some("noarch")));
        assert!(parse(&format!("/c/noarch/shards/{}.msgpack.zst", h.to_uppercase()), "").is_err());
        assert!(parse("/c/noarch/shards/abc.msgpack.zst", "").is_err());
    }

    #[test]
    fn base_path_is_required_when_set() {
        assert!(matches!(parse("/conda/t/xx/c/noarch/repodata.json", "/conda"), Ok(Route::Channel(_))));
        assert_eq!(parse("/t/xx/c/noarch/repodata.json", "/conda"), Err(RouteError::NotServed));
        assert_eq!(parse("/condax/c/noarch/repodata.json", "/conda"), Err(RouteError::NotServed));
    }

    /// A property, over many generated paths: whatever is accepted, the upstream URL built from it names, after the
    /// upstream decodes it once more, exactly the checked segments: none is `..`, none holds a separator, a `%`, a
    /// query or a fragment mark.
    #[test]
    fn accepted_paths_stay_inside_their_channel_after_one_more_decoding() {
        const PARTS: [&str; 28] = [
            "/",
            "t",
            "cg-abcdefghij",
            "c",
            "label",
            "dev",
            "main",
            "noarch",
            "linux-64",
            "shards",
            "repodata.json",
            "alpha-1.0-0.conda",
            "beta-1-0.tar.bz2",
            "..",
            ".",
            "%2e",
            "%2f",
            "%2F",
            "%25",
            "%252F",
            "%3f",
            "%23",
            "%5c",
            "\\",
            ";",
            "%00",
            "%c0%af",
            "+!",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut accepted, total) = (0, 200_000);
        // Mostly well-shaped paths whose segments are now and then replaced by, or glued to, hostile fragments.
        let shapes: [&[&str]; 4] = [
            &["c", "noarch", "alpha-1.0-0.conda"],
            &["t", "cg-abcdefghij", "c", "label", "dev", "linux-64", "repodata.json"],
            &["c", "label", "main", "noarch", "beta-1-0.tar.bz2"],
            &["t", "cg-abcdefghij", "c", "noarch", "alpha-1.0-0.conda"],
        ];
        for _ in 0..total {
            let shape = shapes[next(shapes.len())];
            let mut path = String::new();
            for seg in shape {
                path.push('/');
                match next(10) {
                    0 => path.push_str(PARTS[next(PARTS.len())]),
                    1 => {
                        path.push_str(seg);
                        path.push_str(PARTS[next(PARTS.len())]);
                    }
                    2 => {
                        path.push_str(PARTS[next(PARTS.len())]);
                        path.push_str(seg);
                    }
                    _ => path.push_str(seg),
                }
            }
            let Ok(Route::Channel(c)) = parse(&path, "") else { continue };
            accepted += 1;
            let url = crate::upstream::upstream_url("http://m/root", c.upstream_path());
            let rel = url.strip_prefix("http://m/root/").unwrap();
            let decoded = percent_encoding::percent_decode_str(rel).decode_utf8().unwrap();
            assert_eq!(decoded, c.upstream_path(), "{path}");
            for seg in decoded.split('/') {
                assert!(seg != ".." && seg != "." && !seg.is_empty(), "{path} -> {decoded}");
                assert_eq!(classes(seg) & NOT_CONDA, 0, "{path} -> {decoded}");
            }
        }
        assert!(accepted > 100, "only {accepted} of {total} generated paths were accepted: the test proves little");
    }

    #[test]
    fn a_token_may_come_before_the_base_path() {
        let c = match parse("/t/cg-abc/conda/c/label/dev/noarch/repodata.json", "/conda").unwrap() {
            Route::Channel(c) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(c.token, Some(Ok(Token::parse("cg-abc").unwrap().digest())));
        assert_eq!((c.channel(), c.label(), c.upstream_path()), ("c", Some("dev"), "label/dev/noarch/repodata.json"));
        for p in [
            "/t/cg-abc/conda/t/cg-abc/c/noarch/repodata.json",
            "/t/cg-abc/conda/api/authentications",
            "/t/cg-abc/conda/healthz",
            "/t/cg-abc/condax/c/noarch/repodata.json",
            "/t/cg-abc/c/noarch/repodata.json",
            "/t/cg-abc/conda",
            "/t/cg-abc/conda/",
        ] {
            assert!(parse(p, "/conda").is_err(), "{p}");
        }
        assert_eq!(parse("/t/a%3F/conda/c/noarch/repodata.json", "/conda"), Err(RouteError::BadPath));
    }

    #[test]
    fn malformed_path_tokens_are_kept_as_malformed() {
        let c = chan("/t/a/c/noarch/repodata.json");
        assert_eq!(c.token, Some(Err(MalformedToken)));
    }

    #[test]
    fn segments_keep_to_condas_name_grammar_once_decoded() {
        // Encoded characters of the grammar are fine: a client may encode `+` or `!`.
        assert_eq!(chan("/c/noarch/a%2Bb-1.0%21-0.conda").file_name(), "a+b-1.0!-0.conda");
        assert_eq!(chan("/c/label/rc_1.x-2/linux-64/A_b.c-1-0.tar.bz2").label(), Some("rc_1.x-2"));
        // Anything an upstream could decode again, or read as something else, is refused: a `%` that survives
        // decoding (double encoding), query and fragment marks, separators, controls, anything beyond ASCII.
        for p in [
            "/c/noarch/a%2525-1-0.conda",
            "/c/noarch/beta%252F..%252Fsecret-1.0-0.conda",
            "/c/label/x%252F..%252F..%252Fother/noarch/repodata.json",
            "/c/noarch/a%3Fx-1-0.conda",
            "/c/noarch/a%23x-1-0.conda",
            "/c/noarch/a;x-1-0.conda",
            "/c/noarch/a%3Bx-1-0.conda",
            "/c/noarch/a%20x-1-0.conda",
            "/c/noarch/a~x-1-0.conda",
            "/c/noarch/caf%c3%a9-1-0.conda",
            "/c/noarch/caf\u{e9}-1-0.conda",
            "/c/noarch/a%c2%85-1-0.conda",
            "/c/noarch/a%c0%af-1-0.conda",
            "/c/noarch/a%e0%80%af-1-0.conda",
            "/t/a%2Fb/c/noarch/repodata.json",
            "/c%3F/noarch/repodata.json",
        ] {
            assert_eq!(parse(p, ""), Err(RouteError::BadPath), "{p}");
        }
    }

    #[test]
    fn long_paths_are_checked_whole() {
        let deep = "/t/tok/c/label/dev/noarch/shards/x/y/z";
        assert_eq!(parse(deep, ""), Err(RouteError::NotServed));
        assert_eq!(parse("/t/tok/c/label/dev/noarch/a/b/c/../repodata.json", ""), Err(RouteError::BadPath));
        let api = parse("/api/a/b/c/d/e/f/g/h/i/j%20k", "").unwrap();
        let want = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j k"].map(String::from);
        assert_eq!(api, Route::Api(want.to_vec()));
        assert_eq!(parse("/admin/tokens/a%3Cb", "").unwrap(), Route::Admin(vec!["tokens".into(), "a<b".into()]));
        assert_eq!(parse("/base/admin/", "/base").unwrap(), Route::Admin(vec![]));
        assert_eq!(parse("/admin", "").unwrap(), Route::Admin(vec![]));
        assert_eq!(parse("/t/tok/base/admin/", "/base"), Err(RouteError::NotServed));
        assert_eq!(chan("/c/notices.json").upstream_path(), "notices.json");
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in [
            "/c/noarch/../../etc/passwd",
            "/c/noarch/%2e%2e/x.conda",
            "/c/%2E%2E/noarch/repodata.json",
            "/c/noarch%2frepodata.json",
            "/c/noarch/a%5cb-1-0.conda",
            "/c/noarch/a%00-1-0.conda",
            "/c/noarch/%ff-1-0.conda",
            "/c/noarch/%zz",
            "/c/noarch/.hidden",
            "/c/noarch/",
            "/c//noarch/repodata.json",
            "/c/noarch/repodata.json/",
            "/c/noarch/index.html",
            "/c/NOARCH/repodata.json",
            "/c/.cache/noarch/repodata.json",
            "/c",
            "/",
            "",
        ] {
            assert!(parse(p, "").is_err(), "{p} was accepted");
        }
    }

    #[test]
    fn redaction_hides_the_token_only() {
        assert_eq!(redact_path("/t/cg-secret/c/noarch/x"), "/t/<redacted>/c/noarch/x");
        assert_eq!(redact_path("/conda/t/cg-secret/c"), "/conda/t/<redacted>/c");
        assert_eq!(redact_path("/t/cg-secret"), "/t/<redacted>");
        assert_eq!(redact_path("/c/noarch/x"), "/c/noarch/x");
        assert_eq!(redact_path("/c/noarch/cg-1.0-0.conda"), "/c/noarch/cg-1.0-0.conda");
    }

    #[test]
    fn redaction_finds_tokens_anywhere() {
        let t = "cg-0123456789abcdefghijABCDEFG";
        let cases = [
            format!("/conda/t/{t}/c/noarch/x"),
            format!("/t/{t}/t/{t}/c"),
            format!("/%74/{t}/c"),
            format!("/api/t/{t}"),
            format!("/t//{t}/c"),
            format!("/t/./{t}/c"),
            format!("/t/../{t}/c"),
            format!("/T/{t}/c"),
            format!("/t%2F{t}/c"),
            format!("/t%252F{t}/c"),
            format!("/t\\{t}/c"),
            format!("/x/{t}/c"),
            format!("/x{t}y/c"),
            format!("/x/%63%67-{}/c", &t[3..]),
            format!("/cocg-xababacg-{}", &t[3..]),
            format!("/cg-abcdefghcg-{}", &t[3..]),
            "/t/imported-token-x/c".to_owned(),
            "/%54/imported-token-x/c".to_owned(),
        ];
        for p in &cases {
            let r = redact_path(p);
            assert!(!r.contains(&t[3..]) && !r.contains("imported-token-x"), "{p} logged as {r}");
            assert!(r.contains("<redacted>"), "{p} logged as {r}");
        }
        assert_eq!(redact_path("/t/"), "/t/");
        assert!(matches!(
            parse(&format!("/%74/{t}/c/noarch/repodata.json"), ""),
            Ok(Route::Channel(ChannelPath { token: Some(Ok(_)), .. }))
        ));
    }

    #[test]
    fn logged_paths_cannot_break_a_line() {
        assert_eq!(redact_path("/c/a%0Ab%20c\u{202e}"), "/c/a%0Ab%20c%E2%80%AE");
        assert_eq!(redact_path("/c/100%25"), "/c/100%25");
    }
}
