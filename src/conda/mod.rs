//! The conda side of a request: the path grammar, the per-token repodata views and the filter that makes them.

pub mod filter;
pub mod route;
pub mod spans;
pub mod view;
