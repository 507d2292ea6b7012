//! condagate: an authorizing reverse proxy in front of a conda channel.
//!
//! A request passes these stages, each a module:
//!
//! | stage | module | what it does |
//! |---|---|---|
//! | route | [`route`] | decodes the path: token, channel, label, subdir, file kind; refuses anything else |
//! | credentials | [`auth::header_token`], [`auth::check_token`], [`token`], [`store`] | finds the token (path or header) and its record by digest |
//! | authorize | [`policy`] | scope, expiry, revocation, channel access, group → package grants per label |
//! | view | [`view`], [`filter`] | the repodata a token may see: filtered JSON, zst and shard index, cached and shared |
//! | upstream | [`upstream`], [`conditional`] | streams the file from a local folder or an HTTP mirror |
//! | respond | [`error`], [`server`] | one error type mapped to statuses and problem+json; access log and metrics |
//!
//! The admin API ([`api`], [`lifecycle`], [`groups`]) manages tokens and groups over HTTP.
//!
//! [`config`] turns the TOML file into a checked [`config::Config`]; [`app`] holds the state that reloads swap;
//! [`run`] is the one entry point that `main` and the tests share.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod clock;
pub mod conda;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod router;
pub mod server;
pub mod stamp;
pub mod tokens;
pub mod upstream;

pub use server::{run, Server};
