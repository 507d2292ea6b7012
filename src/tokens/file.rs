//! The tokens file: digests and metadata only, read into a lookup table, written atomically under a lock.
//!
//! Format (TOML), one `[[token]]` table per token:
//! ```toml
//! [[token]]
//! name = "ci"
//! user = "bob"
//! digest = "sha256:…"
//! scopes = ["conda:download"]
//! created = "2026-11-29T14:00:00Z"
//! expires = "2027-11-29T14:00:00Z"   # absent: never
//! revoked = "2026-12-01T09:00:00Z"   # absent: not revoked
//! channels = ["mychan"]              # absent: every channel the user may read
//! ```

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasherDefault;
use std::io::Write;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::clock::format_time;
use crate::tokens::table::DigestHasher;
use crate::tokens::{Digest, Scope, Scopes, TokenRecord};

/// A failure reading or writing tokens. For the tokens file the message names the file and, where it can, the key at
/// fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape, or a value in it is invalid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which key, and what is wrong with it.
        message: String,
    },
    /// An operation was refused (duplicate name, unknown token, ...).
    #[error("{0}")]
    Refused(String),
    /// The store cannot be reached (PostgreSQL down): the operation may succeed later.
    #[error("the token store is unavailable: {0}")]
    Unavailable(String),
    /// What was asked for is not there (a group of a channel).
    #[error("{0}")]
    NotFound(String),
    /// The store's data is not what this condagate can use (a schema of another version, a row that does not parse).
    #[error("{0}")]
    Schema(String),
}

impl StoreError {
    /// The refusal of a second active token of one name for one user, whichever store refuses it.
    pub fn name_taken(record: &TokenRecord) -> Self {
        StoreError::Refused(format!(
            "user {:?} already has a token named {:?} (revoke it first, or choose another name)",
            record.user, record.name
        ))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, rename = "token")]
    tokens: Vec<RawRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    name: String,
    user: String,
    digest: String,
    scopes: Vec<String>,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<String>>,
}

fn parse_time(path: &Path, key: &str, value: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|e| StoreError::Invalid {
        path: path.to_owned(),
        message: format!("{key}: {value:?} is not an RFC 3339 time ({e})"),
    })
}

fn from_raw(path: &Path, index: usize, raw: RawRecord) -> Result<TokenRecord, StoreError> {
    let key = |field: &str| format!("token[{index}].{field}");
    let invalid = |message: String| StoreError::Invalid { path: path.to_owned(), message };
    let digest = raw.digest.parse::<Digest>().map_err(|e| invalid(format!("{}: {e}", key("digest"))))?;
    let scopes = raw
        .scopes
        .iter()
        .map(|s| s.parse::<Scope>().map_err(|e| invalid(format!("{}: {e}", key("scopes")))))
        .collect::<Result<Scopes, _>>()?;
    Ok(TokenRecord {
        name: raw.name.into(),
        user: raw.user.into(),
        digest,
        scopes,
        created: parse_time(path, &key("created"), &raw.created)?,
        expires: raw.expires.as_deref().map(|v| parse_time(path, &key("expires"), v)).transpose()?,
        revoked: raw.revoked.as_deref().map(|v| parse_time(path, &key("revoked"), v)).transpose()?,
        channels: raw.channels,
        seen: Default::default(),
    })
}

fn to_raw(r: &TokenRecord) -> RawRecord {
    RawRecord {
        name: r.name.to_string(),
        user: r.user.to_string(),
        digest: r.digest.to_stored(),
        scopes: r.scopes.iter().map(|s| s.name().to_owned()).collect(),
        created: format_time(r.created),
        expires: r.expires.map(format_time),
        revoked: r.revoked.map(format_time),
        channels: r.channels.clone(),
    }
}

/// Reads the tokens file. A missing file is an empty table; an invalid one is an error naming the key at fault.
pub fn load(path: &Path) -> Result<Vec<TokenRecord>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Io { path: path.to_owned(), source }),
    };
    parse(path, &text)
}

/// A basic TOML string with nothing to unescape, or `None`.
fn plain_string(v: &str) -> Option<&str> {
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    // One pass over the bytes; characters are decoded only if there is something beyond ASCII (C1 controls).
    let (mut special, mut wide) = (false, false);
    for b in inner.bytes() {
        special |= b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f;
        wide |= b >= 0x80;
    }
    let odd = special || (wide && inner.chars().any(char::is_control));
    (!odd).then_some(inner)
}

/// A one-line array of plain strings, or `None`.
fn plain_array(v: &str) -> Option<Vec<&str>> {
    let inner = v.strip_prefix('[')?.strip_suffix(']')?;
    inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(plain_string).collect()
}

/// Reads the layout [`render`] writes (`[[token]]` headers, one `key = value` per line, plain strings, one-line
/// arrays) without building a TOML document, on every core: a million tokens load in about a second instead of
/// twenty, in a fraction of the memory. Anything else, or any invalid value, gives `None`, and the general TOML
/// parser reads the file instead, so hand-edited files still work and errors still name their key.
fn parse_canonical(text: &str) -> Option<Vec<TokenRecord>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads < 2 || text.len() < (1 << 20) {
        return parse_canonical_part(text);
    }
    // Cut the text into pieces that each start at a `[[token]]` line.
    let mut cuts = vec![0];
    for i in 1..threads {
        let from = (text.len() * i / threads).max(*cuts.last().unwrap_or(&0));
        match text[from..].find("\n[[token]]") {
            Some(at) => cuts.push(from + at + 1),
            None => break,
        }
    }
    cuts.push(text.len());
    cuts.dedup();
    let parts: Vec<Option<Vec<TokenRecord>>> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            cuts.windows(2).map(|w| scope.spawn(move || parse_canonical_part(&text[w[0]..w[1]]))).collect();
        handles.into_iter().map(|h| h.join().ok().flatten()).collect()
    });
    let mut out = Vec::new();
    for p in parts {
        out.extend(p?);
    }
    Some(out)
}

fn parse_canonical_part(text: &str) -> Option<Vec<TokenRecord>> {
    #[derive(Default)]
    struct Partial<'a> {
        name: Option<&'a str>,
        user: Option<&'a str>,
        digest: Option<&'a str>,
        scopes: Option<Vec<&'a str>>,
        created: Option<&'a str>,
        expires: Option<&'a str>,
        revoked: Option<&'a str>,
        channels: Option<Vec<&'a str>>,
    }
    fn time(s: Option<&str>) -> Option<Option<OffsetDateTime>> {
        s.map(|v| OffsetDateTime::parse(v, &Rfc3339).ok()).map_or(Some(None), |t| t.map(Some))
    }
    fn finish(p: Partial<'_>) -> Option<TokenRecord> {
        Some(TokenRecord {
            name: p.name?.into(),
            user: p.user?.into(),
            digest: p.digest?.parse().ok()?,
            scopes: p.scopes?.iter().map(|s| s.parse().ok()).collect::<Option<_>>()?,
            created: OffsetDateTime::parse(p.created?, &Rfc3339).ok()?,
            expires: time(p.expires)?,
            revoked: time(p.revoked)?,
            channels: p.channels.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
            seen: Default::default(),
        })
    }
    fn set<T>(slot: &mut Option<T>, v: Option<T>) -> Option<()> {
        if slot.is_some() {
            return None;
        }
        *slot = Some(v?);
        Some(())
    }
    let mut out = Vec::with_capacity(text.len() / 200);
    let mut current: Option<Partial<'_>> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "[[token]]" {
            if let Some(p) = current.take() {
                out.push(finish(p)?);
            }
            current = Some(Partial::default());
            continue;
        }
        let p = current.as_mut()?;
        let (key, value) = line.split_once('=')?;
        let value = value.trim();
        match key.trim() {
            "name" => set(&mut p.name, plain_string(value))?,
            "user" => set(&mut p.user, plain_string(value))?,
            "digest" => set(&mut p.digest, plain_string(value))?,
            "scopes" => set(&mut p.scopes, plain_array(value))?,
            "created" => set(&mut p.created, plain_string(value))?,
            "expires" => set(&mut p.expires, plain_string(value))?,
            "revoked" => set(&mut p.revoked, plain_string(value))?,
            "channels" => set(&mut p.channels, plain_array(value))?,
            _ => return None,
        }
    }
    if let Some(p) = current.take() {
        out.push(finish(p)?);
    }
    Some(out)
}

/// Reads the text of a tokens file (`path` only names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Vec<TokenRecord>, StoreError> {
    let records = match parse_canonical(text) {
        Some(records) => records,
        None => {
            let raw: RawFile = toml::from_str(text)
                .map_err(|e| StoreError::Invalid { path: path.to_owned(), message: e.to_string() })?;
            raw.tokens.into_iter().enumerate().map(|(i, r)| from_raw(path, i, r)).collect::<Result<_, _>>()?
        }
    };
    let mut seen: HashMap<Digest, usize, BuildHasherDefault<DigestHasher>> =
        HashMap::with_capacity_and_hasher(records.len(), Default::default());
    for (i, rec) in records.iter().enumerate() {
        if let Some(prev) = seen.insert(rec.digest, i) {
            return Err(StoreError::Invalid {
                path: path.to_owned(),
                message: format!("token[{i}].digest: the same digest as token[{prev}]"),
            });
        }
    }
    Ok(records)
}

/// Writes the file in the one-key-per-line layout [`parse_canonical`] reads quickly; values are quoted by the toml
/// crate, so any name is written correctly (an unusual one just takes the general parser's path when read back).
fn render(records: &[TokenRecord]) -> Result<String, StoreError> {
    use std::fmt::Write as _;
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let list = |items: &mut dyn Iterator<Item = &str>| format!("[{}]", items.map(q).collect::<Vec<_>>().join(", "));
    let mut out = String::with_capacity(64 + records.len() * 256);
    out.push_str("# condagate tokens. Only SHA-256 digests of the secrets are stored here.\n");
    for r in records.iter().map(to_raw) {
        let _ = write!(
            out,
            "\n[[token]]\nname = {}\nuser = {}\ndigest = {}\nscopes = {}\ncreated = {}\n",
            q(&r.name),
            q(&r.user),
            q(&r.digest),
            list(&mut r.scopes.iter().map(String::as_str)),
            q(&r.created)
        );
        for (key, v) in [("expires", &r.expires), ("revoked", &r.revoked)] {
            if let Some(v) = v {
                let _ = writeln!(out, "{key} = {}", q(v));
            }
        }
        if let Some(c) = &r.channels {
            let _ = writeln!(out, "channels = {}", list(&mut c.iter().map(String::as_str)));
        }
    }
    Ok(out)
}

/// Runs `change` on the file's records under an exclusive lock and writes the result back atomically (temporary
/// file, fsync, rename, fsync of the folder). Concurrent writers, in this process or another, queue on the lock, so
/// none loses another's change. If `change` fails, the file is left untouched.
pub fn update<T>(
    path: &Path,
    change: impl FnOnce(&mut Vec<TokenRecord>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let io = |source| StoreError::Io { path: path.to_owned(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let lock_path = lock_path(path);
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io)?;
    lock.lock_exclusive().map_err(io)?;

    let mut records = load(path)?;
    let out = change(&mut records)?;
    let text = render(&records)?;

    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    let result = write().map_err(io);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    // The lock is released when `lock` drops.
    drop(lock);
    result.map(|()| out)
}

/// Adds a new record, refusing it when its user already has an active token of that name.
pub fn insert(path: &Path, record: TokenRecord) -> Result<(), StoreError> {
    update(path, move |records| {
        if records.iter().any(|r| r.user == record.user && r.name == record.name && r.revoked.is_none()) {
            return Err(StoreError::name_taken(&record));
        }
        records.push(record);
        Ok(())
    })
}

/// Revokes the active token `name` (of `user`, when given) in the file at `path`.
pub fn revoke(path: &Path, name: &str, user: Option<&str>, now: OffsetDateTime) -> Result<TokenRecord, StoreError> {
    update(path, |records| revoke_in(records, name, user, now))
}

/// Revokes the one active record named `name` (of `user`, when given) among `records`.
pub fn revoke_in(
    records: &mut [TokenRecord],
    name: &str,
    user: Option<&str>,
    now: OffsetDateTime,
) -> Result<TokenRecord, StoreError> {
    let matching: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| *r.name == *name && r.revoked.is_none() && user.is_none_or(|u| *r.user == *u))
        .map(|(i, _)| i)
        .collect();
    match matching.as_slice() {
        [] => Err(StoreError::Refused(match user {
            Some(u) => format!("user {u:?} has no active token named {name:?}"),
            None => format!("no active token is named {name:?}"),
        })),
        [i] => {
            records[*i].revoked = Some(now);
            Ok(records[*i].clone())
        }
        _ => Err(StoreError::Refused(format!(
            "{} users have a token named {name:?}; say which with --user",
            matching.len()
        ))),
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{Token, TokenTable};

    fn record(name: &str, secret: &str) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            user: "bob".into(),
            digest: Token::parse(secret).unwrap().digest(),
            scopes: [Scope::CondaDownload].into_iter().collect(),
            created: OffsetDateTime::UNIX_EPOCH,
            expires: None,
            revoked: None,
            channels: Some(vec!["mychan".into()]),
            seen: Default::default(),
        }
    }

    #[test]
    fn records_round_trip_and_the_file_holds_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        update(&path, |r| {
            r.push(record("ci", "cg-secretvalue1"));
            Ok(())
        })
        .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("secretvalue1"));
        let back = load(&path).unwrap();
        assert_eq!(back, vec![record("ci", "cg-secretvalue1")]);
        let table = TokenTable::new(back);
        assert!(table.lookup(&Token::parse("cg-secretvalue1").unwrap()).is_some());
        assert!(table.lookup(&Token::parse("cg-secretvalue2").unwrap()).is_none());
    }

    #[test]
    fn a_bad_file_names_the_key() {
        let p = Path::new("t.toml");
        let err = parse(p, "[[token]]\nname='a'\nuser='b'\ndigest='sha256:00'\nscopes=[]\ncreated='x'\n").unwrap_err();
        assert!(err.to_string().contains("token[0].digest"), "{err}");
        let d = record("a", "cg-zz").digest.to_stored();
        let text =
            format!("[[token]]\nname='a'\nuser='b'\ndigest='{d}'\nscopes=['bogus']\ncreated='2020-01-01T00:00:00Z'\n");
        assert!(parse(p, &text).unwrap_err().to_string().contains("token[0].scopes"));
        let text = format!("[[token]]\nname='a'\nuser='b'\ndigest='{d}'\nscopes=[]\ncreated='yesterday'\n");
        assert!(parse(p, &text).unwrap_err().to_string().contains("token[0].created"));
    }

    #[test]
    fn the_fast_reader_and_the_toml_parser_agree() {
        let mut odd = record("we\"ird, name", "cg-odd1");
        odd.channels = Some(vec!["a,b".into(), "c".into()]);
        odd.expires = Some(OffsetDateTime::UNIX_EPOCH + time::Duration::days(1));
        let records = vec![record("ci", "cg-plain1"), odd];
        let text = render(&records).unwrap();
        let toml_view: RawFile = toml::from_str(&text).unwrap();
        let back = parse(Path::new("t.toml"), &text).unwrap();
        assert_eq!(back, records);
        assert_eq!(toml_view.tokens.len(), 2);
        // The plain record alone takes the fast path; the odd one needs the general parser.
        assert_eq!(parse_canonical(&render(&records[..1]).unwrap()).unwrap(), records[..1]);
        assert!(parse_canonical(&text).is_none());
        // Comments and blank lines are fine on the fast path; an unknown key is not.
        let plain = render(&records[..1]).unwrap().replace("[[token]]", "# a note\n[[token]]\n");
        assert!(parse_canonical(&plain).is_some());
        assert!(parse_canonical(&format!("{plain}extra = \"x\"\n")).is_none());
        // A backslash or a control character (ASCII or C1) in a string leaves the file to the general parser;
        // other text beyond ASCII stays on the fast path.
        let one = |name: &str| render(&[record(name, "cg-one1")]).unwrap();
        assert!(parse_canonical(&one("zoë")).is_some());
        for odd in ["back\\slash", "bell\u{7}", "nel\u{85}"] {
            assert!(parse_canonical(&one(odd)).is_none(), "{odd:?}");
            assert_eq!(&*parse(Path::new("t.toml"), &one(odd)).unwrap()[0].name, odd);
        }
        assert!(parse(Path::new("t.toml"), &format!("{plain}extra = \"x\"\n"))
            .unwrap_err()
            .to_string()
            .contains("extra"));
    }

    #[test]
    fn a_failed_change_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        update(&path, |r| {
            r.push(record("a", "cg-aaaa"));
            Ok(())
        })
        .unwrap();
        let before = fs::read(&path).unwrap();
        let err = update(&path, |r| -> Result<(), _> {
            r.clear();
            Err(StoreError::Refused("no".into()))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), before);
    }
}
