//! Tokens: the secret and its digest, the records, the in-memory table every request reads, and the store that
//! holds them (the tokens file by default).

pub mod file;
pub mod issue;
pub mod postgres;
pub mod store;
pub mod table;
pub mod token;

pub use file::StoreError;
pub use store::{FileStore, TokenStore};
pub use table::TokenTable;
pub use token::{Digest, MalformedToken, Scope, Scopes, Seen, Token, TokenRecord, TokenStatus, TOKEN_PREFIX};
