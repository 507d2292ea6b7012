//! What the cache holds on disk and in which order it was last used: the bookkeeping behind eviction, rebuilt from
//! the folder at start.
//!
//! The folder is the truth: a file is in the cache when it is at its final path (files arrive there only by a
//! rename, complete and verified). The index only counts bytes and remembers use, so that a file deleted behind the
//! server's back (by `condagate cache prune`, or by hand) is simply a miss, and one added is counted at the next start.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The folder of files being filled; emptied at start (a crash leaves only partial files there, never under a final
/// name).
pub const PARTIAL: &str = ".partial";

/// The suffix of a document's sidecar (its validator and when it was last validated).
pub const META: &str = ".meta";

/// The file in each source's folder that names the source, for people reading the folder.
pub const SOURCE: &str = "SOURCE";

/// Files by key (`<source folder>/<path>`), with their size and the tick of their last use.
#[derive(Debug, Default)]
pub struct Index {
    entries: HashMap<String, (u64, u64)>,
    by_use: BTreeMap<u64, String>,
    total: u64,
    tick: u64,
}

impl Index {
    /// Bytes held.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Files held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Notes that `key` (of `size` bytes) is held and was just used; returns the keys to evict, least recently used
    /// first, until the total is within `max_size`. `key` itself is never among them.
    pub fn insert(&mut self, key: &str, size: u64, max_size: u64) -> Vec<String> {
        self.remove(key);
        self.tick += 1;
        self.entries.insert(key.to_owned(), (size, self.tick));
        self.by_use.insert(self.tick, key.to_owned());
        self.total += size;
        let mut evicted = Vec::new();
        while self.total > max_size {
            let Some((&tick, oldest)) = self.by_use.iter().next() else { break };
            if oldest == key {
                break;
            }
            let oldest = oldest.clone();
            self.by_use.remove(&tick);
            if let Some((size, _)) = self.entries.remove(&oldest) {
                self.total -= size;
            }
            evicted.push(oldest);
        }
        evicted
    }

    /// Notes a use of `key`, if it is held.
    pub fn touch(&mut self, key: &str) {
        if let Some(entry) = self.entries.get_mut(key) {
            self.by_use.remove(&entry.1);
            self.tick += 1;
            entry.1 = self.tick;
            self.by_use.insert(self.tick, key.to_owned());
        }
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &str) {
        if let Some((size, tick)) = self.entries.remove(key) {
            self.by_use.remove(&tick);
            self.total -= size;
        }
    }
}

/// A file found in the folder.
#[derive(Debug)]
pub struct Found {
    /// `<source folder>/<path>`.
    pub key: String,
    /// Its bytes, with its sidecar's.
    pub size: u64,
    /// Its access time (for a package: when it was cached, moved on by reads at most daily under relatime), or
    /// its modification time: the order of use is rebuilt from it.
    pub used: SystemTime,
}

/// Every cached file below `root`, oldest first; with `clear_partial` (at a server's start), after emptying the
/// partial folder. Sidecars are counted with their document, and `SOURCE` files are not counted; sidecars without a
/// document are deleted.
pub fn scan(root: &Path, clear_partial: bool) -> std::io::Result<Vec<Found>> {
    let partial = root.join(PARTIAL);
    if clear_partial {
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        std::fs::create_dir_all(&partial)?;
    }
    let mut found: HashMap<String, Found> = HashMap::new();
    let mut sidecars: Vec<(String, u64)> = Vec::new();
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            if meta.is_dir() {
                if path != partial {
                    stack.push(path);
                }
                continue;
            }
            let Some(key) = path.strip_prefix(root).ok().and_then(|p| p.to_str()).map(|k| k.replace('\\', "/")) else {
                continue;
            };
            if !key.contains('/') || key.ends_with(&format!("/{SOURCE}")) {
                continue;
            }
            if let Some(doc) = key.strip_suffix(META) {
                sidecars.push((doc.to_owned(), meta.len()));
                continue;
            }
            let used = meta.accessed().or_else(|_| meta.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            found.insert(key.clone(), Found { key, size: meta.len(), used });
        }
    }
    for (doc, len) in sidecars {
        match found.get_mut(&doc) {
            Some(f) => f.size += len,
            // A sidecar whose document is gone describes nothing.
            None => {
                let _ = std::fs::remove_file(root.join(format!("{doc}{META}")));
            }
        }
    }
    let mut found: Vec<Found> = found.into_values().collect();
    found.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.key.cmp(&b.key)));
    Ok(found)
}

/// Deletes a cached file and its sidecar, if either is there.
pub fn delete(root: &Path, key: &str) {
    let _ = std::fs::remove_file(root.join(key));
    let _ = std::fs::remove_file(root.join(format!("{key}{META}")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_and_never_the_new_one() {
        let mut i = Index::default();
        assert!(i.insert("a", 10, 30).is_empty());
        assert!(i.insert("b", 10, 30).is_empty());
        assert!(i.insert("c", 10, 30).is_empty());
        i.touch("a");
        assert_eq!(i.insert("d", 10, 30), vec!["b".to_owned()]);
        assert_eq!(i.insert("e", 25, 30), vec!["c".to_owned(), "a".to_owned(), "d".to_owned()]);
        assert_eq!((i.total(), i.len()), (25, 1));
        // A file larger than the whole budget is kept alone rather than evicting itself.
        assert_eq!(i.insert("huge", 100, 30), vec!["e".to_owned()]);
        assert_eq!(i.total(), 100);
    }

    #[test]
    fn a_scan_counts_sidecars_with_their_document_and_clears_partials() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("abc/noarch")).unwrap();
        std::fs::create_dir_all(root.join(PARTIAL)).unwrap();
        std::fs::write(root.join(PARTIAL).join("x.part"), b"half").unwrap();
        std::fs::write(root.join("abc/noarch/repodata.json"), b"{}").unwrap();
        std::fs::write(root.join("abc/noarch/repodata.json.meta"), b"1234").unwrap();
        std::fs::write(root.join("abc/noarch/orphan.json.meta"), b"1234").unwrap();
        std::fs::write(root.join("abc/noarch/a-1-0.conda"), b"12345").unwrap();
        std::fs::write(root.join("abc").join(SOURCE), b"http://m/c").unwrap();
        let mut found = scan(root, true).unwrap();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        let got: Vec<(&str, u64)> = found.iter().map(|f| (f.key.as_str(), f.size)).collect();
        assert_eq!(got, [("abc/noarch/a-1-0.conda", 5), ("abc/noarch/repodata.json", 6)]);
        assert!(!root.join(PARTIAL).join("x.part").exists());
        assert!(!root.join("abc/noarch/orphan.json.meta").exists());
    }
}
