//! HTTP plumbing below the conda and admin handlers: bodies, conditional requests, connections and their limits,
//! the worker threads connections are spread over, and TLS.

/// Longest request target (path and query) condagate reads; longer ones get 414.
pub const MAX_URI: usize = 8192;

pub mod body;
pub mod conditional;
pub mod conn;
pub mod tls;
pub(crate) mod workers;
