//! The cache's folder: where files go, the index of what is held, eviction, and the counters. Fills and documents
//! build on it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use super::index::{self, Index, PARTIAL};

/// What `/metrics` reports of the cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Packages and shards served from the folder.
    pub hits: AtomicU64,
    /// Packages and shards not in the folder (each joined or started a fill).
    pub misses: AtomicU64,
    /// Bytes sent from cached files.
    pub hit_bytes: AtomicU64,
    /// Bytes written to the folder by fills.
    pub filled_bytes: AtomicU64,
    /// Files evicted to stay within `max_size`.
    pub evictions: AtomicU64,
    /// Requests sent to upstreams by the cache: fills, first document reads and revalidations.
    pub fetches: AtomicU64,
    /// Fills whose bytes did not match the expected sha256 (not cached; the clients' transfers aborted).
    pub verify_failures: AtomicU64,
    /// Packages served without being cached, because the upstream's repodata names no sha256 for them.
    pub unverifiable: AtomicU64,
    /// Revalidations of a held document that failed (the held copy kept being served).
    pub revalidation_failures: AtomicU64,
    /// Documents served from the folder or memory without waiting on the upstream.
    pub document_hits: AtomicU64,
}

/// The folder of one `[upstream.cache]`.
#[derive(Debug)]
pub struct Disk {
    root: PathBuf,
    max_size: u64,
    index: Mutex<Index>,
    /// The counters.
    pub stats: CacheStats,
}

/// Locks a mutex whose holder may have panicked: every critical section here leaves the data consistent.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Disk {
    /// Opens the cache in `root` (created if missing): partial files from an earlier run are deleted, the index is
    /// rebuilt from the folder (use order from access times), and files beyond `max_size` are evicted. Blocks:
    /// call it off the serving threads.
    pub fn open(root: &Path, max_size: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let found = index::scan(root, true)?;
        let mut idx = Index::default();
        let mut evicted = Vec::new();
        for f in found {
            evicted.extend(idx.insert(&f.key, f.size, max_size));
        }
        for key in &evicted {
            index::delete(root, key);
        }
        let cache = Disk { root: root.to_path_buf(), max_size, index: Mutex::new(idx), stats: CacheStats::default() };
        cache.stats.evictions.fetch_add(evicted.len() as u64, Relaxed);
        Ok(cache)
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The size bound.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Bytes and files held.
    pub fn held(&self) -> (u64, usize) {
        let idx = lock(&self.index);
        (idx.total(), idx.len())
    }

    /// The final path of `key`.
    pub(super) fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// A fresh path for a file being written.
    pub(super) fn partial_path(&self) -> PathBuf {
        let mut id = [0u8; 12];
        // Without randomness the name still only has to differ from other fills' names under way.
        if getrandom::fill(&mut id).is_err() {
            id[..8].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
        }
        self.root.join(PARTIAL).join(format!("{}.part", hex::encode(id)))
    }

    /// Notes a use of `key`.
    pub(super) fn touch(&self, key: &str) {
        lock(&self.index).touch(key);
    }

    /// Counts `key` (now at its final path, `size` bytes with any sidecar) and evicts the least recently used files
    /// beyond the bound. Blocks on file deletions: call it off the serving threads.
    pub(super) fn committed(&self, key: &str, size: u64) {
        let evicted = lock(&self.index).insert(key, size, self.max_size);
        for k in &evicted {
            index::delete(&self.root, k);
            tracing::debug!(key = %k, "evicted from the upstream cache");
        }
        self.stats.evictions.fetch_add(evicted.len() as u64, Relaxed);
    }

    /// Forgets `key` and deletes its files. Blocks.
    pub(super) fn discard(&self, key: &str) {
        lock(&self.index).remove(key);
        index::delete(&self.root, key);
    }
}

/// Seconds since the Unix epoch, now.
pub(super) fn now_secs() -> u64 {
    now_millis() / 1000
}

/// Milliseconds since the Unix epoch, now.
pub(super) fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
