//! The in-memory token table that every request reads: no store is asked per request.

use std::hash::Hasher;
use std::sync::Arc;

use super::token::{Digest, Token, TokenRecord};

/// Hashes a [`Digest`] by its first eight bytes: they are already uniformly random, so running SipHash over them again
/// would only cost time on every request.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(buf);
        }
    }
}

/// The in-memory token table the request path consults: the records, and an index from digest to record whose
/// slots are one pointer each (a million tokens index in about 18 MB), so a lookup touches the slot and the record.
#[derive(Default)]
pub struct TokenTable {
    index: hashbrown::HashTable<Arc<TokenRecord>>,
    records: Vec<Arc<TokenRecord>>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTable").field("tokens", &self.records.len()).finish()
    }
}

/// A digest's hash: its first eight bytes, which are already uniformly random.
fn digest_hash(d: &Digest) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.0[..8]);
    u64::from_le_bytes(b)
}

impl TokenTable {
    /// Builds the table from records.
    pub fn new(records: Vec<TokenRecord>) -> Self {
        let records: Vec<Arc<TokenRecord>> = records.into_iter().map(Arc::new).collect();
        let mut index = hashbrown::HashTable::with_capacity(records.len());
        for r in &records {
            index.insert_unique(digest_hash(&r.digest), Arc::clone(r), |r| digest_hash(&r.digest));
        }
        TokenTable { index, records }
    }

    /// The record for a presented token, if any.
    pub fn lookup(&self, token: &Token) -> Option<&Arc<TokenRecord>> {
        self.by_digest(&token.digest())
    }

    /// The record stored under a digest, if any.
    pub fn by_digest(&self, digest: &Digest) -> Option<&Arc<TokenRecord>> {
        self.index.find(digest_hash(digest), |r| r.digest == *digest)
    }

    /// Every record, in file order.
    pub fn records(&self) -> &[Arc<TokenRecord>] {
        &self.records
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}
