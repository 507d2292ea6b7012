//! What `condagate cache stats|verify|prune` do to a cache folder, with or without a server running on it: they
//! never touch the partial files of fills under way, and a file they delete is only a miss to a running server.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::docs::Shas;
use super::index::{self, Found, SOURCE};

/// One source's folder.
#[derive(Debug, Default)]
pub struct AreaStats {
    /// What the `SOURCE` file says.
    pub source: String,
    /// Packages and shards held.
    pub files: usize,
    /// Documents held.
    pub documents: usize,
    /// Bytes of both.
    pub bytes: u64,
}

fn is_document(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or_default();
    super::DOCUMENTS.contains(&name)
}

/// Every source folder with what it holds, by folder name.
pub fn stats(root: &Path) -> std::io::Result<BTreeMap<String, AreaStats>> {
    let mut areas: BTreeMap<String, AreaStats> = BTreeMap::new();
    for f in index::scan(root, false)? {
        let area = f.key.split('/').next().unwrap_or_default().to_owned();
        let a = areas.entry(area.clone()).or_insert_with(|| AreaStats {
            source: std::fs::read_to_string(root.join(&area).join(SOURCE)).unwrap_or_default().trim().to_owned(),
            ..AreaStats::default()
        });
        a.bytes += f.size;
        if is_document(&f.key) {
            a.documents += 1;
        } else {
            a.files += 1;
        }
    }
    Ok(areas)
}

/// What a verification found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Files whose bytes match their expected sha256.
    pub good: usize,
    /// Files whose bytes did not match, deleted.
    pub bad: Vec<String>,
    /// Packages with nothing to check against (no held `repodata.json` of their subdir lists them).
    pub unknown: Vec<String>,
}

fn sha256_of(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// Reads every package and shard again and checks it against the sha256 its held `repodata.json` lists (a shard:
/// its name); a file that does not match is deleted.
pub fn verify(root: &Path) -> std::io::Result<Verified> {
    let mut out = Verified::default();
    let mut shas: BTreeMap<String, Option<Shas>> = BTreeMap::new();
    for Found { key, .. } in index::scan(root, false)? {
        if is_document(&key) {
            continue;
        }
        let expected = match super::kind(key.split_once('/').map_or("", |(_, rel)| rel)) {
            super::Kind::Shard(hash) => Some(hash),
            super::Kind::Package => {
                let (dir, name) = key.rsplit_once('/').unwrap_or_default();
                let repodata = format!("{dir}/repodata.json");
                let held = shas.entry(repodata.clone()).or_insert_with(|| {
                    let bytes = Bytes::from(std::fs::read(root.join(&repodata)).ok()?);
                    Shas::parse(&bytes, String::new())
                });
                held.as_ref().and_then(|s| s.get(name))
            }
            _ => continue,
        };
        let Some(expected) = expected else {
            out.unknown.push(key);
            continue;
        };
        if sha256_of(&root.join(&key))? == expected {
            out.good += 1;
        } else {
            index::delete(root, &key);
            out.bad.push(key);
        }
    }
    Ok(out)
}

/// What a prune removed.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Folders of sources no configured channel uses any more, deleted whole.
    pub unused_sources: Vec<String>,
    /// Files evicted, least recently used first (by access time), to get within the size.
    pub evicted: usize,
    /// Bytes freed by both.
    pub freed: u64,
}

/// Deletes the folders of sources not in `keep`, then the least recently used files (by access time) until at most `max_size`
/// bytes are held.
pub fn prune(root: &Path, keep: &HashSet<String>, max_size: u64) -> std::io::Result<Pruned> {
    let mut out = Pruned::default();
    let found = index::scan(root, false)?;
    let mut total: u64 = 0;
    let mut kept = Vec::new();
    for f in found {
        let area = f.key.split('/').next().unwrap_or_default();
        if keep.contains(area) {
            total += f.size;
            kept.push(f);
        } else {
            out.freed += f.size;
        }
    }
    for e in std::fs::read_dir(root)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_dir() && name != index::PARTIAL && !keep.contains(&name) {
            std::fs::remove_dir_all(e.path())?;
            out.unused_sources.push(name);
        }
    }
    for f in kept {
        if total <= max_size {
            break;
        }
        index::delete(root, &f.key);
        total -= f.size;
        out.freed += f.size;
        out.evicted += 1;
    }
    Ok(out)
}
