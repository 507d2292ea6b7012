//! Stage 1: turn a request path into what it asks for, or refuse it.
//!
//! Accepted shapes, all below `server.base_path`:
//! ```text
//! [/t/<TOKEN>]/<channel>[/label/<label>]/<subdir>/<file>
//! [/t/<TOKEN>]/<channel>[/label/<label>]/<subdir>/shards/<64 hex>.msgpack.zst
//! [/t/<TOKEN>]/<channel>/notices.json
//! /api/…  /healthz  /readyz  /metrics
//! ```
//! Each segment is percent-decoded on its own and must then be valid UTF-8 without `/`, `\`, NUL or control
//! characters, and must not be `.`, `..` or start with a dot; so no request can name a file outside its channel.
//! Only the conda file kinds in [`FileKind`] are served: anything else is "not found".

use std::borrow::Cow;
use std::ops::Range;

use crate::token::{hex_digit, Digest, MalformedToken, Token};

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
    /// Liveness.
    Health,
    /// Readiness.
    Ready,
    /// Prometheus metrics.
    Metrics,
}

/// Byte classes of a path segment, as bit flags: `%`, bytes no segment may hold (`/`, `\`, ASCII control
/// characters), and bytes beyond ASCII.
const PERCENT: u8 = 1;
const BAD: u8 = 2;
const NON_ASCII: u8 = 4;

static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'%' => PERCENT,
            b'/' | b'\\' | 0..=0x1f | 0x7f => BAD,
            0x80.. => NON_ASCII,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// The classes of every byte of `s`, in one pass without branches.
fn classes(s: &str) -> u8 {
    s.bytes().fold(0, |flags, b| flags | CLASS[usize::from(b)])
}

/// Percent-decodes one segment and checks it can name nothing but itself. Borrows when nothing is encoded.
fn decode_segment(raw: &str) -> Result<Cow<'_, str>, RouteError> {
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
fn check_segment(s: Cow<'_, str>, flags: u8) -> Result<Cow<'_, str>, RouteError> {
    // Characters are looked at only when there is something beyond ASCII, for the C1 control characters.
    let bad = flags & BAD != 0 || (flags & NON_ASCII != 0 && s.chars().any(char::is_control));
    if s == "." || s == ".." || bad {
        return Err(RouteError::BadPath);
    }
    if s.is_empty() || s.starts_with('.') || s.len() > 255 {
        return Err(RouteError::NotServed);
    }
    Ok(s)
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
pub fn parse(path: &str, base_path: &str) -> Result<Route, RouteError> {
    let rest = path.strip_prefix(base_path).ok_or(RouteError::NotServed)?;
    let rest = rest.strip_prefix('/').ok_or(RouteError::NotServed)?;
    let mut raw = rest.split('/');
    let first = decode_segment(raw.next().unwrap_or_default())?;
    if first == "api" {
        let segs = raw.map(|r| decode_segment(r).map(Cow::into_owned)).collect::<Result<_, _>>()?;
        return Ok(Route::Api(segs));
    }
    // Every segment is decoded and checked, however many there are, so a hostile path is refused as such; a channel
    // path never has more than `MAX_SEGMENTS`, so no more are kept.
    let mut kept: [Cow<'_, str>; MAX_SEGMENTS] = Default::default();
    kept[0] = first;
    let mut n = 1;
    for r in raw {
        let seg = decode_segment(r)?;
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
    let token = if segs[0] == "t" {
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

/// A request path that displays itself redacted (see [`redact_path`]).
pub struct Redacted<'a>(pub &'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_path(self.0))
    }
}

/// The path with any `/t/<TOKEN>` segment replaced by `/t/<redacted>`, for logs and spans. Works on raw, unparsed
/// paths, so even a refused request is logged without its token: the segment after *every* `t` segment is redacted,
/// wherever it stands (a client configured with the wrong base path, a token repeated, `%74` that the router decodes
/// to `t`), not only after `base_path`. Over-redacting a path that merely has a `t` segment is the safe mistake.
pub fn redact_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    let mut redact_next = false;
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if redact_next {
            out.push_str("<redacted>");
            redact_next = false;
            continue;
        }
        out.push_str(seg);
        redact_next = i > 0 && (seg == "t" || seg == "%74");
    }
    out
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

    #[test]
    fn malformed_path_tokens_are_kept_as_malformed() {
        let c = chan("/t/a/c/noarch/repodata.json");
        assert_eq!(c.token, Some(Err(MalformedToken)));
    }

    #[test]
    fn segments_beyond_ascii_are_checked_by_character() {
        // U+0085 (NEL) is a C1 control character: refused, encoded or not; é is an ordinary one.
        assert_eq!(parse("/c/noarch/a%c2%85-1-0.conda", ""), Err(RouteError::BadPath));
        assert_eq!(parse("/c/noarch/a\u{85}-1-0.conda", ""), Err(RouteError::BadPath));
        assert_eq!(chan("/c/noarch/caf%c3%a9-1-0.conda").file_name(), "caf\u{e9}-1-0.conda");
        assert_eq!(chan("/c/noarch/caf\u{e9}-1-0.conda").file_name(), "caf\u{e9}-1-0.conda");
        // A literal `%` once decoded is just a character.
        assert_eq!(chan("/c/noarch/a%2525-1-0.conda").file_name(), "a%25-1-0.conda");
    }

    #[test]
    fn long_paths_are_checked_whole() {
        let deep = "/t/tok/c/label/dev/noarch/shards/x/y/z";
        assert_eq!(parse(deep, ""), Err(RouteError::NotServed));
        assert_eq!(parse("/t/tok/c/label/dev/noarch/a/b/c/../repodata.json", ""), Err(RouteError::BadPath));
        let api = parse("/api/a/b/c/d/e/f/g/h/i/j%20k", "").unwrap();
        let want = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j k"].map(String::from);
        assert_eq!(api, Route::Api(want.to_vec()));
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
    }

    #[test]
    fn redaction_finds_tokens_anywhere() {
        assert_eq!(redact_path("/conda/t/cg-secret/c/noarch/x"), "/conda/t/<redacted>/c/noarch/x");
        assert_eq!(redact_path("/t/cg-a/t/cg-b/c"), "/t/<redacted>/t/<redacted>/c");
        assert_eq!(redact_path("/%74/cg-secret/c"), "/%74/<redacted>/c");
        assert_eq!(redact_path("/api/t/cg-secret"), "/api/t/<redacted>");
        assert_eq!(redact_path("/t/"), "/t/<redacted>");
        assert!(matches!(
            parse("/%74/cg-secret/c/noarch/repodata.json", ""),
            Ok(Route::Channel(ChannelPath { token: Some(Ok(_)), .. }))
        ));
    }
}
