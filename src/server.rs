//! The listener, the connection loop and the per-request wrapper around the [router](crate::router): panics caught,
//! errors answered as problem+json, one access log line and the metrics of every response, and the background tasks
//! (token watcher, certificate watcher, upstream probes) of a running server.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::app::{App, StartError};
use crate::conda::route::{self, FileKind};
use crate::config::Config;
use crate::error::{chain, Blame, Error, Reason};
use crate::http::body::{Body, BoxError};
use crate::http::conn::{self, Activity, InFlight, Protocols};
use crate::http::workers::Workers;
use crate::router::{dispatch, Outcome};

/// How often download counts and last uses are saved to a store that keeps them (PostgreSQL): batched, never per
/// request.
const USAGE_SAVED_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Handles one request: everything that can go wrong becomes a status and a problem+json body, never a dropped
/// connection (hence `Infallible`); one access log line is written when the response body ends (or is abandoned).
pub async fn handle(
    conn: Arc<ConnShared>,
    req: Request<Incoming>,
    in_flight: InFlight,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (app, peer) = (&*conn.app, conn.peer);
    let snap = app.current();
    let is_get = req.method() == Method::GET;
    // The path is redacted only if the span is recorded at all: nothing is formatted when logging is off.
    let path = route::Redacted(req.uri().path());
    let span = tracing::info_span!("request", method = %req.method(), %path, peer = %peer.ip());
    let mut out = Outcome::default();
    // A panic in a handler, if one ever happens, still answers 500 and is counted, instead of dropping the
    // connection without a word.
    let guarded = |fut| futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut));
    let result = if span.is_disabled() {
        // Logging off: no span to enter on every poll, and one move of the request future less.
        guarded(dispatch(app, &snap, req, peer, started, &mut out)).await
    } else {
        guarded(dispatch(app, &snap, req, peer, started, &mut out)).instrument(span.clone()).await
    };
    let result = result.unwrap_or_else(|_| {
        app.metrics.panicked();
        Err(Error::Internal("a request handler panicked".into()))
    });
    if let Some(path) = &out.path {
        match &result {
            Err(e) if e.blame() == Blame::Upstream => app.health.record(path.channel(), Err(chain(e))),
            Ok(_) if out.upstream_status.is_some() => app.health.record(path.channel(), Ok(())),
            _ => {}
        }
    }
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            out.reason = Some(e.reason());
            app.metrics.refusal(e.reason());
            match e.blame() {
                Blame::Client => {}
                Blame::Upstream => {
                    app.metrics.upstream_error();
                    span.in_scope(|| tracing::warn!(error = %chain(&e), "upstream failure"));
                }
                Blame::Proxy => span.in_scope(|| tracing::error!(error = %chain(&e), "internal error")),
            }
            e.into_response()
        }
    };
    let (parts, body) = resp.into_parts();
    let log = AccessLog {
        conn: Arc::clone(&conn),
        span,
        status: parts.status,
        outcome: out,
        started,
        bytes: 0,
        // The body's own length when it knows it (bytes in memory, for which hyper writes the header), else the
        // `Content-Length` a stream was given.
        expected: HttpBody::size_hint(&body)
            .exact()
            .or_else(|| parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())),
        // A body with nothing to send (304, HEAD, an empty file) is complete from the start: hyper never polls it.
        finished: HttpBody::is_end_stream(&body),
        is_get,
        in_flight,
    };
    Ok(Response::from_parts(parts, Body::stream(Metered { inner: body, log })))
}

/// What the requests of one connection share. A request holds this rather than its own clone of the `App`: a
/// connection stays on one worker thread, so its requests never write to a reference count other workers write to.
pub struct ConnShared {
    app: Arc<App>,
    peer: SocketAddr,
}

/// Writes the access log line and the metrics of a request when its body is done or dropped.
struct AccessLog {
    conn: Arc<ConnShared>,
    span: tracing::Span,
    status: StatusCode,
    outcome: Outcome,
    started: Instant,
    bytes: u64,
    /// The body's length from `Content-Length`, when it has one.
    expected: Option<u64>,
    finished: bool,
    /// Only a GET that completes is a download (a HEAD is complete from the start).
    is_get: bool,
    /// Held until the body is done, so the connection counts as busy while it streams.
    in_flight: InFlight,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let ended = Instant::now();
        let elapsed = ended.saturating_duration_since(self.started);
        self.in_flight.ended_at(ended);
        self.conn.app.metrics.response(self.status.as_u16(), self.bytes, elapsed.as_secs_f64());
        let o = &self.outcome;
        if let (true, true, Some(path)) = (self.finished && self.is_get, self.status.is_success(), &o.path) {
            if let FileKind::Package(p) = &path.file {
                self.conn.app.metrics.download(path.channel(), p.name());
            }
        }
        let path = o.path.as_ref();
        self.span.in_scope(|| {
            tracing::info!(
                target: "condagate::access",
                status = self.status.as_u16(),
                bytes = self.bytes,
                complete = self.finished,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                client = o.client.map(tracing::field::display),
                channel = path.map(|p| p.channel()),
                label = path.map(|p| p.label_name()),
                subdir = path.and_then(|p| p.subdir()),
                file = path.map(|p| p.file_name()),
                package = path.and_then(|p| match &p.file {
                    FileKind::Package(f) => Some(f.name()),
                    _ => None,
                }),
                token_name = o.token.as_ref().map(|t| &*t.name),
                user = o.token.as_ref().map(|t| &*t.user),
                reason = o.reason.map(Reason::as_str),
                upstream_status = o.upstream_status,
                upstream_ms = o.upstream_ms,
                "access"
            )
        });
    }
}

/// A body that counts what it sends, for the access log.
struct Metered {
    inner: Body,
    log: AccessLog,
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                // hyper asks for the next frame once the last one is on its way: the client is reading.
                self.log.in_flight.progressed(Instant::now());
                if let Some(d) = frame.data_ref() {
                    self.log.bytes += d.len() as u64;
                }
                // hyper stops polling once the body says it has ended, or once it has written Content-Length
                // bytes, so "finished" is noted here too.
                if self.inner.is_end_stream() || self.log.expected.is_some_and(|n| self.log.bytes >= n) {
                    self.log.finished = true;
                }
            }
            Poll::Ready(None) => self.log.finished = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A running condagate: its shared state, ready to serve on a listener.
pub struct Server {
    app: Arc<App>,
}

impl Server {
    /// Builds the state from a checked configuration.
    pub async fn new(config: Config) -> Result<Self, StartError> {
        Ok(Server { app: Arc::new(App::new(config).await?) })
    }

    /// The shared state, for reloads and inspection.
    pub fn app(&self) -> Arc<App> {
        Arc::clone(&self.app)
    }

    /// Serves connections from `listener` until `shutdown` resolves, then stops accepting and gives in-flight
    /// requests up to `server.shutdown_grace` to finish.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let app = self.app;
        let cfg = app.snapshot().config.clone();
        let watcher = tokio::spawn(watch_tokens(Arc::clone(&app)));
        let certificates = tokio::spawn(watch_certificates(Arc::clone(&app), cfg.tokens_watch_interval));
        let (stop_saving, stopped) = tokio::sync::oneshot::channel();
        let usage =
            app.store.is_shared().then(|| tokio::spawn(save_usage_every(Arc::clone(&app), USAGE_SAVED_EVERY, stopped)));
        let prober = tokio::spawn(probe_loop(Arc::clone(&app), cfg.upstream_probe_interval));
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new()).max_concurrent_streams(256);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // No per-request header timer: the connection's own idle limit (see `conn`) bounds a slow head, from
            // the end of the previous request, without arming a timer for every request.
            .header_read_timeout(None)
            .max_buf_size(64 * 1024)
            .max_header_size(64 * 1024);
        let idle_limit = cfg.server.header_read_timeout;
        let limits = conn::Limits { idle: idle_limit, send: cfg.server.send_timeout };
        let protocols = Arc::new(Protocols { http1, http2, limits });
        let acceptor = app.tls.as_ref().map(|store| tokio_rustls::TlsAcceptor::from(Arc::new(store.server_config())));
        let max_connections = cfg.server.max_connections;
        let slots = Arc::new(Semaphore::new(max_connections));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let workers = Workers::start(cfg.server.workers, &app.metrics.connections)?;
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                biased;
                () = &mut shutdown => break,
                p = Arc::clone(&slots).acquire_owned() => p.map_err(|_| std::io::Error::other("the connection limit was closed"))?,
            };
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let mut counted = app.metrics.connections.open();
            let activity = Arc::new(Activity::new());
            let shared = Arc::new(ConnShared { app: Arc::clone(&app), peer });
            let seen = Arc::clone(&activity);
            let service = service_fn(move |req| handle(Arc::clone(&shared), req, InFlight::begin(&seen)));
            let protocols = Arc::clone(&protocols);
            let stop = stop_rx.clone();
            let acceptor = acceptor.clone();
            // The socket moves to the worker's own reactor (see `workers`).
            let Ok(stream) = stream.into_std() else { continue };
            workers.serve(async move {
                let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { return };
                match acceptor {
                    None => conn::serve_plain(&protocols, stream, service, &activity, &mut counted, stop).await,
                    Some(acceptor) => {
                        // The handshake gets the same deadline as a request head, so a silent client cannot hold
                        // a connection slot.
                        // Boxed, as TLS state is large: a plaintext connection's task stays small.
                        Box::pin(async {
                            if let Ok(Ok(tls)) = tokio::time::timeout(idle_limit, acceptor.accept(stream)).await {
                                conn::serve_tls(&protocols, tls, service, &activity, stop).await;
                            }
                        })
                        .await;
                    }
                }
                drop(counted);
                drop(permit);
            });
        }
        app.health.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(listener);
        watcher.abort();
        certificates.abort();
        let _ = stop_saving.send(());
        if let Some(task) = usage {
            let _ = task.await;
        }
        prober.abort();
        tracing::info!("draining connections");
        let _ = stop_tx.send(true);
        // Every live connection holds a slot: when all slots are free again, every connection has closed.
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(cfg.server.shutdown_grace, slots.acquire_many(all)).await {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!("grace period over; closing the rest"),
        }
        workers.stop().await;
        Ok(())
    }
}

/// Probes the upstreams of the current configuration every `every`, until the task is aborted.
async fn probe_loop(app: Arc<App>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let upstreams = Arc::clone(&app.current().upstreams);
        app.health.probe_all(&upstreams).await;
    }
}

/// Reloads the tokens whenever the store says they changed.
async fn watch_tokens(app: Arc<App>) {
    loop {
        app.store.changed().await;
        let _ = app.reload_tokens().await;
    }
}

/// What of this process's usage a shared store already has: the download counts last saved, and up to which
/// second the last uses of tokens were.
#[derive(Default)]
struct Saved {
    downloads: std::collections::HashMap<(String, String), u64>,
    uses_up_to: u32,
}

/// Saves the download counts and the last uses of tokens to a shared store every `every`, never per request, and
/// once more when `stop` fires, so that a restart loses nothing.
async fn save_usage_every(app: Arc<App>, every: std::time::Duration, stop: tokio::sync::oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut saved = Saved::default();
    loop {
        tokio::select! {
            _ = tick.tick() => save_usage(&app, &mut saved).await,
            _ = &mut stop => return save_usage(&app, &mut saved).await,
        }
    }
}

/// Saves what was counted since `saved`: the downloads as differences of this process's cumulative counts, and the
/// tokens used since the last save. What the store cannot take now is sent again with the next save.
async fn save_usage(app: &App, saved: &mut Saved) {
    let counts = app.metrics.downloads(|_| true);
    let new: Vec<(String, String, u64)> = counts
        .iter()
        .filter_map(|(c, p, n)| {
            let before = saved.downloads.get(&(c.clone(), p.clone())).copied().unwrap_or(0);
            (*n > before).then(|| (c.clone(), p.clone(), n - before))
        })
        .collect();
    match app.store.add_downloads(new).await {
        Ok(()) => saved.downloads = counts.into_iter().map(|(c, p, n)| ((c, p), n)).collect(),
        Err(e) => tracing::warn!(error = %e, "download counts not saved; sent again with the next batch"),
    }
    let now = app.clock.unix_seconds(std::time::Instant::now());
    let tokens = Arc::clone(&app.current().tokens);
    // Uses in the second of the last save are sent again: a second's overlap, never a gap.
    let uses: Vec<_> = tokens
        .records()
        .iter()
        .filter_map(|r| {
            r.seen.last().filter(|t| t.unix_timestamp() >= i64::from(saved.uses_up_to)).map(|t| (r.digest, t))
        })
        .collect();
    match app.store.add_last_used(uses).await {
        Ok(()) => saved.uses_up_to = now,
        Err(e) => tracing::warn!(error = %e, "last-used times not saved; sent again with the next batch"),
    }
}

/// Polls the TLS certificate files and reloads them when they change.
async fn watch_certificates(app: Arc<App>, every: std::time::Duration) {
    let Some(tls) = app.tls.clone() else { return };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let tls = Arc::clone(&tls);
        let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
    }
}

/// Serves `config` on `listener` until `shutdown` resolves. The one entry point `main` and the tests share.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    Server::new(config).await?.run(listener, shutdown).await
}
