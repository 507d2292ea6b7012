//! What identifies a version of a local file without reading it: its modification time and size. Reloads use it to
//! notice that a file (tokens, certificate) changed; the local-folder upstream derives its ETags from it.

use std::path::Path;
use std::time::SystemTime;

/// A local file's modification time and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    /// The stamp of a file of `len` bytes modified at `modified`.
    pub fn new(modified: Option<SystemTime>, len: u64) -> Self {
        FileStamp { modified, len }
    }

    /// The stamp of a file's metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        FileStamp { modified: meta.modified().ok(), len: meta.len() }
    }

    /// The stamp of whatever is at `path` now, or `None` when nothing readable is there: to notice that a file
    /// (tokens, certificate) changed without reading it.
    pub fn read(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }

    /// When the file was last modified, if the file system says.
    pub fn modified(&self) -> Option<SystemTime> {
        self.modified
    }

    /// The file's strong ETag.
    pub fn etag(&self) -> String {
        file_etag(self.modified, self.len)
    }
}

/// The strong ETag of a file of `len` bytes modified at `modified`.
pub fn file_etag(modified: Option<SystemTime>, len: u64) -> String {
    let nanos = modified.and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    format!("\"{nanos:x}-{len:x}\"")
}
