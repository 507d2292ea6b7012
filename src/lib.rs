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

pub mod api;
pub mod app;
pub mod auth;
pub mod body;
mod clock;
pub mod conditional;
pub mod config;
mod conn;
pub mod error;
pub mod filter;
pub mod groups;
pub mod health;
mod lanes;
pub mod lifecycle;
pub mod metrics;
pub mod policy;
pub mod route;
pub mod server;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod view;

pub use server::{run, Server};
