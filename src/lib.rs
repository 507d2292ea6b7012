//! condagate: an authorizing reverse proxy in front of a conda channel.
//!
//! A program that embeds it builds a [`config::Config`] and calls [`run`] (or [`Server::new`] and
//! [`Server::run`]). Everything else is internal; `docs/architecture.md` maps it. In the order a request meets it:
//!
//! | folder | what it does |
//! |---|---|
//! | `server.rs`, `http/` | accept, workers, connection limits and draining, TLS, bodies, conditional requests |
//! | `router.rs` | sends the request to the conda path, health, readiness, metrics or the admin API |
//! | `conda/route.rs` | decodes the path: token, channel, label, subdir, file kind; refuses anything else |
//! | `auth/` | the token from the path or the header, its check against the table, client address, throttle |
//! | `tokens/` | the secret and its digest, records, the in-memory table, `TokenStore` and the tokens file |
//! | `policy.rs` | scope, expiry, revocation, channel access, group → package grants per label |
//! | `conda/view.rs`, `conda/filter.rs` | the repodata a token may see: filtered JSON, zst, shard index, cached |
//! | `upstream/` | `Upstream`: a local folder or an HTTP mirror, streamed; their health |
//! | `error.rs`, `metrics.rs` | one error type mapped to statuses and problem+json; counters for `/metrics` |
//! | `admin/` | the admin API: tokens and groups over HTTP |
//! | `app.rs`, `config/` | the state reloads swap; the TOML file checked into a [`config::Config`] |
//!
//! No module, and no folder, imports one that imports it back (`tests/layout.rs` checks this).

#![deny(missing_docs)]

mod admin;
mod app;
mod auth;
mod clock;
mod conda;
pub mod config;
mod error;
mod http;
mod metrics;
mod names;
mod policy;
mod router;
mod server;
mod stamp;
mod tokens;
mod upstream;
mod web;

pub use app::StartError;
pub use server::{run, Server};

/// The parts the `condagate` binary, the tests, the benches and the fuzz targets reach into. Not a stable API: a
/// program that embeds condagate uses [`Server`], [`run`] and [`config`].
#[doc(hidden)]
pub mod internals {
    #![allow(missing_docs)]
    pub mod admin {
        pub use crate::admin::*;
    }
    pub mod app {
        pub use crate::app::*;
    }
    pub mod auth {
        pub use crate::auth::*;
    }
    pub mod clock {
        pub use crate::clock::*;
    }
    pub mod conda {
        pub use crate::conda::*;
    }
    pub mod http {
        pub use crate::http::*;
    }
    pub mod policy {
        pub use crate::policy::*;
    }
    pub mod tokens {
        pub use crate::tokens::*;
    }
    pub mod upstream {
        pub use crate::upstream::*;
    }
}
