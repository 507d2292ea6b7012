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

    /// Builds the table from records, keeping the last uses `old` knows of the same tokens (a reload must not forget
    /// them before they are saved).
    pub fn keeping_uses(records: Vec<TokenRecord>, old: &TokenTable) -> Self {
        let table = TokenTable::new(records);
        if !old.is_empty() {
            for r in &table.records {
                if let Some(o) = old.by_digest(&r.digest).and_then(|o| o.seen.last()) {
                    r.seen.note(u32::try_from(o.unix_timestamp()).unwrap_or(0));
                }
            }
        }
        table
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{Scope, Seen};

    fn record(name: &str) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            user: "bob".into(),
            digest: Token::generate().digest(),
            scopes: [Scope::CondaDownload].into_iter().collect(),
            created: time::OffsetDateTime::UNIX_EPOCH,
            expires: None,
            revoked: None,
            channels: None,
            seen: Seen::default(),
        }
    }

    #[test]
    fn a_reload_keeps_the_last_uses_it_has_not_saved_yet() {
        let (a, b) = (record("a"), record("b"));
        let old = TokenTable::new(vec![a.clone(), b.clone()]);
        old.by_digest(&a.digest).unwrap().seen.note(1_800_000_000);
        let new = TokenTable::keeping_uses(vec![a.clone(), b.clone(), record("c")], &old);
        let last = |d: &Digest| new.by_digest(d).unwrap().seen.last().map(|t| t.unix_timestamp());
        assert_eq!(last(&a.digest), Some(1_800_000_000));
        assert_eq!(last(&b.digest), None);
        // A later use moves it on; an earlier one does not move it back.
        let r = new.by_digest(&a.digest).unwrap();
        r.seen.note(1_800_000_005);
        r.seen.note(1_700_000_000);
        assert_eq!(last(&a.digest), Some(1_800_000_005));
    }
}
