//! Where a request goes once it is read: the route decides, then the conda file path (credentials → authorize →
//! view → upstream), the health, readiness and metrics endpoints, or the admin API.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, VARY};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::{App, Snapshot};
use crate::auth::{check_token, client_ip, header_token};
use crate::conda::route::{self, ChannelPath, FileKind, Route, RouteError};
use crate::config::Access;
use crate::error::{Error, Reason};
use crate::http::body::{full, Body};
use crate::policy::{Denied, Grant};
use crate::tokens::TokenRecord;

/// What the access log line of a request says beyond the basics, filled in as the request goes through the stages.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) client: Option<IpAddr>,
    /// What was asked for, when it was a channel file.
    pub(crate) path: Option<ChannelPath>,
    /// The token's record, when one was presented and known.
    pub(crate) token: Option<Arc<TokenRecord>>,
    pub(crate) reason: Option<Reason>,
    pub(crate) upstream_status: Option<u16>,
    pub(crate) upstream_ms: Option<f64>,
}

/// `Cache-Control` for a served file: shared caches may keep only what everyone may see.
fn cache_control(snap: &Snapshot, kind: &FileKind, access: Access, view: &Grant) -> Option<HeaderValue> {
    let shared = access == Access::Public && matches!(view, Grant::Full);
    match (kind, shared) {
        (FileKind::Shard(_), true) => Some(HeaderValue::from_static("public, max-age=31536000, immutable")),
        (FileKind::Shard(_), false) => Some(HeaderValue::from_static("private, max-age=31536000, immutable")),
        (FileKind::Package(_), true) => Some(HeaderValue::from_static("public, max-age=86400")),
        (FileKind::Package(_), false) => Some(HeaderValue::from_static("private, max-age=86400")),
        (k, shared) if k.is_repodata() => Some(snap.repodata_cache_control[usize::from(!shared)].clone()),
        _ => None,
    }
}

async fn channel_file(
    app: &App,
    snap: &Snapshot,
    req: &Request<Incoming>,
    peer: SocketAddr,
    path: &ChannelPath,
    now: Instant,
    out: &mut Outcome,
) -> Result<Response<Body>, Error> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(Error::MethodNotAllowed("GET, HEAD"));
    }
    let digest = match path.token {
        Some(t) => Some(t.map_err(|_| Denied::Malformed)?),
        None => header_token(req.headers())?.map(|t| t.digest()),
    };
    let record = match digest {
        None => None,
        Some(d) => Some(check_token(app.checks(), &snap.tokens, &d, peer.ip(), now, &mut out.token)?),
    };
    let view = snap.policy.authorize(path.channel(), path.label_name(), record.map(|r| &**r))?;
    let channel = snap.config.channel(path.channel()).ok_or(Error::NotFound)?;
    let upstream = &**snap.upstreams.get(&channel.name).ok_or(Error::NotFound)?;
    let from_header = path.token.is_none() && record.is_some();

    // A view (filtered, or held in memory) when the file is repodata; otherwise the upstream's bytes.
    let from_view = match &path.file {
        FileKind::Package(p) if !view.allows(p.name()) => return Err(Error::NotFound),
        FileKind::Shard(hash) => {
            if !Box::pin(app.views.shard_visible(upstream, channel, path, &view, hash)).await? {
                return Err(Error::NotFound);
            }
            None
        }
        k if k.is_repodata() => app.views.serve(upstream, channel, path, &view, req.method(), req.headers()).await?,
        _ => None,
    };
    let mut resp = match from_view {
        Some(r) => r,
        None => {
            let asked = Instant::now();
            let fetch = upstream.get(path.upstream_path(), req.method(), req.headers());
            let result = Box::pin(fetch).await;
            out.upstream_ms = Some(asked.elapsed().as_secs_f64() * 1e3);
            out.upstream_status = result.as_ref().ok().map(|r| r.status().as_u16());
            result?
        }
    };
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(path.file.content_type()));
    if let Some(cc) = cache_control(snap, &path.file, channel.access, &view) {
        h.insert(CACHE_CONTROL, cc);
    }
    if from_header {
        h.insert(VARY, HeaderValue::from_static("Authorization"));
    }
    Ok(resp)
}

/// Whether the request carries a valid token with the `api:read` scope (or one that covers it). A bad token counts
/// against the client in the throttle, as anywhere else.
fn may_see_details(
    app: &App,
    snap: &Snapshot,
    req: &Request<Incoming>,
    client: IpAddr,
    now: Instant,
    out: &mut Outcome,
) -> bool {
    let Ok(Some(token)) = header_token(req.headers()) else { return false };
    check_token(app.checks(), &snap.tokens, &token.digest(), client, now, &mut out.token)
        .is_ok_and(|r| r.can_api(crate::tokens::Scope::ApiRead))
}

/// The upstream cache's counters and gauges, `condagate_upstream_cache_*`.
fn cache_metrics(body: &mut String, cache: &crate::upstream::cache::Cache) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let s = cache.stats();
    let (held, files) = cache.held();
    let counters = [
        ("hits_total", "packages and shards served from the cache folder", &s.hits),
        ("misses_total", "packages and shards not in the folder (joined or started a fill)", &s.misses),
        ("hit_bytes_total", "bytes sent from cached files", &s.hit_bytes),
        ("filled_bytes_total", "bytes written to the folder by fills", &s.filled_bytes),
        ("evictions_total", "files evicted to stay within max_size", &s.evictions),
        ("upstream_fetches_total", "requests the cache sent upstream (fills, first reads, revalidations)", &s.fetches),
        (
            "verification_failures_total",
            "fills whose sha256 did not match the repodata (not cached)",
            &s.verify_failures,
        ),
        ("unverifiable_total", "packages passed through uncached: no sha256 in the repodata", &s.unverifiable),
        ("revalidation_failures_total", "failed revalidations (the held copy kept serving)", &s.revalidation_failures),
        ("document_hits_total", "repodata documents answered without waiting on the upstream", &s.document_hits),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(body, "# HELP condagate_upstream_cache_{name} {help}");
        let _ = writeln!(body, "# TYPE condagate_upstream_cache_{name} counter");
        let _ = writeln!(body, "condagate_upstream_cache_{name} {}", v.load(Relaxed));
    }
    let gauges = [
        ("bytes", "bytes held in the cache folder", held),
        ("files", "files held in the cache folder", files as u64),
        ("max_bytes", "upstream.cache.max_size", cache.max_size()),
        ("stale_documents", "documents served while their last revalidation failed", cache.stale_documents() as u64),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(body, "# HELP condagate_upstream_cache_{name} {help}");
        let _ = writeln!(body, "# TYPE condagate_upstream_cache_{name} gauge");
        let _ = writeln!(body, "condagate_upstream_cache_{name} {v}");
    }
}

/// `condagate_upstream_up{channel}`: 1 or 0 for each configured channel whose upstream state is known. Labels are
/// bounded by the configuration.
fn upstream_metrics(body: &mut String, app: &App, snap: &Snapshot) {
    use std::fmt::Write;
    let _ = writeln!(body, "# TYPE condagate_upstream_up gauge");
    for (name, s) in app.health.states(&snap.config) {
        let _ = writeln!(body, "condagate_upstream_up{{channel=\"{name}\"}} {}", u8::from(s.up));
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) async fn dispatch(
    app: &App,
    snap: &Snapshot,
    req: Request<Incoming>,
    peer: SocketAddr,
    now: Instant,
    out: &mut Outcome,
) -> Result<Response<Body>, Error> {
    if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > crate::http::MAX_URI {
        return Err(Error::UriTooLong);
    }
    let client = client_ip(peer.ip(), req.headers(), &snap.config.server.trusted_proxies);
    out.client = Some(client);
    // Throttling and the admin API see the client, not a proxy in front of it.
    let peer = SocketAddr::new(client, peer.port());
    let route = route::parse(req.uri().path(), &snap.config.server.base_path).map_err(|e| match e {
        RouteError::BadPath => Error::BadPath,
        // The test hook lives on this cold path, so served requests never look at it.
        RouteError::NotServed if app.panic_path.get().is_some_and(|p| p == req.uri().path()) => {
            panic!("test hook: a panic in a request handler")
        }
        RouteError::NotServed => Error::NotFound,
    })?;
    match route {
        Route::Channel(path) => {
            let result = channel_file(app, snap, &req, peer, &path, now, out).await;
            out.path = Some(path);
            result
        }
        Route::Health => {
            let status = app.reload_status();
            let down = app.health.down(&snap.config);
            let stale = app.freshness.is_stale(now);
            let healthy = status.error().is_none() && down == 0 && !stale;
            let mut body = serde_json::json!({
                "status": if healthy { "ok" } else { "degraded" },
                "config_generation": status.config_generation,
                "tokens_generation": status.tokens_generation,
            });
            // How long since the table was last known to match a store that can change behind it (PostgreSQL).
            if let Some(age) = app.freshness.age(now) {
                body["tokens_age_seconds"] = ((age.as_millis() as f64) / 1000.0).into();
                body["tokens_stale"] = stale.into();
            }
            // What failed, and where, only for a token that may read the admin API: errors name files and keys,
            // and the upstream states name channels an anonymous caller may not know of.
            if may_see_details(app, snap, &req, peer.ip(), now, out) {
                let upstreams: serde_json::Map<String, serde_json::Value> = app
                    .health
                    .states(&snap.config)
                    .into_iter()
                    .map(|(name, s)| {
                        let at =
                            time::OffsetDateTime::from(s.at).format(&time::format_description::well_known::Rfc3339);
                        (name, serde_json::json!({"up": s.up, "error": s.error, "since": at.ok()}))
                    })
                    .collect();
                body["config_error"] = status.config_error.into();
                body["tokens_error"] = status.tokens_error.into();
                body["tls_error"] = status.tls_error.into();
                body["upstreams"] = upstreams.into();
            } else if down > 0 {
                body["upstreams_down"] = down.into();
            }
            Ok(text(StatusCode::OK, "application/json", body.to_string()))
        }
        Route::Ready => {
            // Ready while this process serves a valid configuration, which it always does once started (a refused
            // reload keeps the previous one in force): a dead upstream of one channel must not take every replica
            // out of a load balancer for every channel. Not ready once shutdown has begun.
            let (status, word) = if app.health.is_draining() {
                (StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else {
                (StatusCode::OK, "ready")
            };
            Ok(text(status, "application/json", serde_json::json!({"status": word}).to_string()))
        }
        Route::Metrics => {
            let mut body = app.metrics.render(
                app.views.hits(),
                app.views.misses(),
                app.views.bytes(),
                app.throttle.blocked_count(now),
            );
            upstream_metrics(&mut body, app, snap);
            if let Some(cache) = app.upstreams.cache() {
                cache_metrics(&mut body, cache);
            }
            Ok(text(StatusCode::OK, "text/plain; version=0.0.4", body))
        }
        Route::Admin(segments) => {
            let (resp, who) = Box::pin(crate::web::handle(app, snap, req, peer, segments)).await;
            out.token = who;
            Ok(resp)
        }
        Route::Api(segments) => {
            // Boxed, like the other cold paths: the request future stays small, and cheap to move, for file requests.
            let (resp, who) = Box::pin(crate::admin::handle(app, snap, req, peer, segments)).await;
            out.token = who;
            Ok(resp)
        }
    }
}
