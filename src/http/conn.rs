//! Connections: protocol choice, idle closing, draining, and parking idle HTTP/1.1 keep-alive connections.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header buffer for as long as an HTTP/1 connection lives, so 10,000
//! idle keep-alive clients would cost about 240 MiB. A plaintext HTTP/1.1 connection is therefore *parked* once it
//! has answered a request and then stayed quiet for `PARK_AFTER`: its hyper state is taken apart (keeping any
//! bytes already read), and only the socket waits for the next request, which gets a fresh hyper connection. The
//! client sees one ordinary keep-alive connection throughout. A busy connection is never parked, so it costs
//! nothing per request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::clock;
use crate::http::body::Body;

/// How long an HTTP/1.1 connection waits for its next request before it is parked.
const PARK_AFTER: Duration = Duration::from_millis(250);

/// HTTP/2's connection preface (RFC 9113 §3.4): what a prior-knowledge HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection is doing: requests in flight, since when it has had none, how many it has started, and
/// whether its last write found the socket full.
pub(crate) struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Nanoseconds after `born` when the last request finished (0: none yet).
    idle_since: AtomicU64,
    started: AtomicU64,
    write_blocked: AtomicBool,
    /// Nanoseconds after `born` when a response in flight last moved (a body frame taken by hyper) or a request
    /// began.
    progress: AtomicU64,
    /// Set while hyper is being asked to let go of the socket: its shutdown of the socket must then do nothing.
    parking: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            started: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            progress: AtomicU64::new(0),
            parking: AtomicBool::new(false),
        }
    }

    /// When the connection must close unless something happens first, and why: idle for `limits.idle` with no
    /// request in flight, or `limits.send` since its responses last moved while one is.
    fn deadline(&self, limits: Limits) -> (Instant, Closing) {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            let moved = clock::after(self.born, self.progress.load(Ordering::Acquire));
            return (moved + limits.send, Closing::Stalled);
        }
        (self.last_answered() + limits.idle, Closing::Idle)
    }

    /// Notes that a response in flight moved at `at`.
    pub(crate) fn progressed(&self, at: Instant) {
        self.progress.store(clock::nanos_after(self.born, at), Ordering::Release);
    }

    /// Since when the connection has been quiet, if it has answered a request since `started_before` and handed
    /// every byte of its answers to the socket: hyper then holds nothing that parking would lose. (hyper itself
    /// only counts a connection idle once its answer is flushed; the write check guards that assumption.)
    fn quiet_since(&self, started_before: u64) -> Option<Instant> {
        let quiet = self.started.load(Ordering::Acquire) > started_before
            && self.in_flight.load(Ordering::Acquire) == 0
            && !self.write_blocked.load(Ordering::Acquire);
        quiet.then(|| self.last_answered())
    }

    /// When the last request finished (when the connection opened, if none has).
    fn last_answered(&self) -> Instant {
        clock::after(self.born, self.idle_since.load(Ordering::Acquire))
    }
}

/// Marks a request in flight on its connection until the response body is done with.
pub struct InFlight {
    activity: Arc<Activity>,
    /// When the request ended, if the caller read the clock already.
    ended: Option<Instant>,
}

impl InFlight {
    pub(crate) fn begin(a: &Arc<Activity>) -> Self {
        a.progressed(Instant::now());
        a.started.fetch_add(1, Ordering::AcqRel);
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { activity: Arc::clone(a), ended: None }
    }

    /// Notes that the response moved: hyper took a frame of its body, so the client is reading.
    pub(crate) fn progressed(&self, at: Instant) {
        self.activity.progressed(at);
    }

    /// Notes when the request ended, so that dropping it need not read the clock again.
    pub(crate) fn ended_at(&mut self, at: Instant) {
        self.ended = Some(at);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.activity;
        let ended = self.ended.unwrap_or_else(Instant::now);
        a.idle_since.store(clock::nanos_after(a.born, ended), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How connections are served: the builders and the idle limit.
pub(crate) struct Protocols {
    /// HTTP/1.1, plaintext or TLS.
    pub http1: http1::Builder,
    /// HTTP/2: prior knowledge in plaintext, or chosen by ALPN over TLS.
    pub http2: http2::Builder<TokioExecutor>,
    /// How long a connection may go without a request in flight, and how long a request in flight may go without
    /// its response moving, before the connection is closed.
    pub limits: Limits,
}

/// A connection's time limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// No request in flight for this long (a silent client, a slow request head, an idle keep-alive): closed.
    pub idle: Duration,
    /// A request in flight whose response has not moved for this long (a client that stopped reading): closed.
    pub send: Duration,
}

/// How long a connection closed for idleness may take to say goodbye (an HTTP/2 GOAWAY; an HTTP/1.1 connection
/// caught mid-head closes at once).
const IDLE_GOODBYE: Duration = Duration::from_millis(250);

/// The request handler, as hyper sees it.
pub(crate) trait Handler:
    hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = std::convert::Infallible>
    + Clone
    + Send
    + 'static
{
}

impl<S> Handler for S where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static
{
}

/// Serves a plaintext connection until it ends: HTTP/1.1 with parking, or HTTP/2 when it opens with the preface.
pub(crate) async fn serve_plain<S>(
    protocols: &Protocols,
    stream: TcpStream,
    service: S,
    activity: &Arc<Activity>,
    counted: &mut Counted,
    stop: watch::Receiver<bool>,
) where
    S: Handler,
    S::Future: Send + 'static,
{
    match tokio::time::timeout(protocols.limits.idle, opens_with_preface(&stream)).await {
        Ok(Some(false)) => serve_http1(protocols, stream, service, activity, counted, stop).await,
        Ok(Some(true)) => {
            let conn = protocols.http2.serve_connection(TokioIo::new(stream), service);
            Box::pin(serve(conn, activity, protocols.limits, stop)).await;
        }
        // Gone, or silent for the whole idle limit.
        Ok(None) | Err(_) => {}
    }
}

/// Waits for the client's first bytes: `Some(true)` if they are HTTP/2's preface, `Some(false)` if they cannot be,
/// `None` if the client went away first.
async fn opens_with_preface(stream: &TcpStream) -> Option<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await.ok()?;
        if n == 0 {
            return None;
        }
        if first[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // Part of the preface so far: peeking does not consume, so readiness stays set; wait a moment instead.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves HTTP/1.1 on a plaintext socket, parking it between requests.
async fn serve_http1<S>(
    protocols: &Protocols,
    stream: TcpStream,
    service: S,
    activity: &Arc<Activity>,
    counted: &mut Counted,
    mut stop: watch::Receiver<bool>,
) where
    S: Handler,
    S::Future: Send + 'static,
{
    let limits = protocols.limits;
    let mut wire = Wire { stream, unread: Bytes::new(), activity: Arc::clone(activity) };
    loop {
        if wire.unread.is_empty() {
            // Parked: nothing but the socket; wait for the next request, the idle limit or the server's stop.
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                r = wire.stream.readable() => if r.is_err() { return },
                _ = closing_time(activity, limits) => return,
            }
            counted.set_parked(false);
        }
        let started_before = activity.started.load(Ordering::Acquire);
        // Boxed, so that a parked connection's task holds no room for hyper's state.
        let mut conn = Box::new(protocols.http1.serve_connection(TokioIo::new(wire), service.clone()));
        match Box::pin(run_until_quiet(&mut conn, activity, started_before, limits, &mut stop)).await {
            Ended::Closed => return,
            Ended::Parked => {
                let parts = conn.into_parts();
                wire = parts.io.into_inner();
                wire.keep_unread(parts.read_buf);
                counted.set_parked(true);
            }
        }
    }
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy)]
enum Closing {
    Stopping,
    Idle,
    /// A response stopped moving: the client stopped reading.
    Stalled,
}

enum Ended {
    /// The connection is over.
    Closed,
    /// hyper let go of a live connection between requests.
    Parked,
}

/// Drives one hyper connection until it ends, or until it has answered a request and then been quiet, with nothing
/// left unsent, for [`PARK_AFTER`]; then hyper is asked to let go of the socket. The connection is closed
/// gracefully when the server stops or it stays idle for the idle limit.
async fn run_until_quiet<S>(
    conn: &mut http1::Connection<TokioIo<Wire>, S>,
    activity: &Activity,
    started_before: u64,
    limits: Limits,
    stop: &mut watch::Receiver<bool>,
) -> Ended
where
    S: Handler,
    S::Future: Send + 'static,
{
    activity.parking.store(false, Ordering::Release);
    let outcome = {
        let live = &mut *conn;
        let park = tokio::time::sleep(PARK_AFTER);
        tokio::pin!(park);
        let served = std::future::poll_fn(move |cx| loop {
            if let Poll::Ready(r) = Pin::new(&mut *live).poll(cx) {
                return Poll::Ready(r.is_ok() && activity.parking.load(Ordering::Acquire));
            }
            if activity.parking.load(Ordering::Acquire) || park.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // hyper is waiting. If it waits for the next request with the last answer flushed, asking it to shut
            // down finds it idle: it lets go at once, without reading the socket or losing bytes it has read.
            let now = Instant::now();
            match activity.quiet_since(started_before) {
                Some(since) if since + PARK_AFTER <= now => {
                    activity.parking.store(true, Ordering::Release);
                    Pin::new(&mut *live).graceful_shutdown();
                }
                Some(since) => park.as_mut().reset((since + PARK_AFTER).into()),
                None => park.as_mut().reset((now + PARK_AFTER).into()),
            }
        });
        tokio::select! {
            parked = served => Ok(parked),
            _ = stop.wait_for(|s| *s) => Err(Closing::Stopping),
            why = closing_time(activity, limits) => Err(why),
        }
    };
    let why = match outcome {
        Ok(true) => return Ended::Parked,
        Ok(false) => return Ended::Closed,
        Err(why) => why,
    };
    activity.parking.store(false, Ordering::Release);
    close(Pin::new(conn), why).await;
    Ended::Closed
}

/// Resolves once the connection has had no request in flight for `limits.idle`, or a request in flight whose
/// response has not moved for `limits.send`; says which. It looks again at least every `limits.send`, since a request
/// may begin (and stall) while it waits out an idle deadline: a stalled response is closed within one to two send
/// timeouts, an idle connection at its idle deadline.
async fn closing_time(activity: &Activity, limits: Limits) -> Closing {
    loop {
        let (deadline, why) = activity.deadline(limits);
        let now = Instant::now();
        if deadline <= now {
            return why;
        }
        tokio::time::sleep_until(deadline.min(now + limits.send).into()).await;
    }
}

/// Serves a TLS connection until it ends: HTTP/2 when ALPN chose it, HTTP/1.1 otherwise, with the same limits
/// (64 KiB heads) as plaintext HTTP/1.1. TLS connections are not parked: rustls may hold decrypted bytes that
/// hyper has not read yet.
pub(crate) async fn serve_tls<S>(
    protocols: &Protocols,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    service: S,
    activity: &Activity,
    stop: watch::Receiver<bool>,
) where
    S: Handler,
    S::Future: Send + 'static,
{
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let limits = protocols.limits;
    if h2 {
        serve(protocols.http2.serve_connection(io, service), activity, limits, stop).await;
    } else {
        serve(protocols.http1.serve_connection(io, service), activity, limits, stop).await;
    }
}

/// Serves one connection that is not parked (TLS, or prior-knowledge HTTP/2) until it ends. It is closed
/// gracefully when the server stops, or when it has had no request in flight for `idle_limit`: that covers a client
/// that says nothing after the handshake, a slow request head, an idle keep-alive connection and an idle HTTP/2
/// connection alike.
async fn serve<C: GracefulConnection>(conn: C, activity: &Activity, limits: Limits, mut stop: watch::Receiver<bool>) {
    tokio::pin!(conn);
    let why = tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => Closing::Stopping,
        why = closing_time(activity, limits) => why,
    };
    close(conn, why).await;
}

/// Closes a connection. Draining, gracefully: requests in flight finish (the server's grace period bounds the
/// wait). Idle, gracefully but briefly ([`IDLE_GOODBYE`]), so the idle limit holds: an idle HTTP/2 peer may never
/// acknowledge the GOAWAY, and an HTTP/1.1 client still sending its head would be waited for. Stalled, at once: the
/// client is not reading, so nothing more can reach it.
async fn close<C: GracefulConnection>(mut conn: Pin<&mut C>, why: Closing) {
    match why {
        Closing::Stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        Closing::Idle => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(IDLE_GOODBYE, conn).await;
        }
        Closing::Stalled => {}
    }
}

/// A plaintext socket as hyper sees it: bytes read by an earlier hyper connection but not yet parsed come first,
/// and every write records whether it found the socket full.
struct Wire {
    stream: TcpStream,
    unread: Bytes,
    activity: Arc<Activity>,
}

impl Wire {
    /// Puts bytes that a parked hyper connection had read, but not parsed, in front of whatever is still unread.
    fn keep_unread(&mut self, more: Bytes) {
        if more.is_empty() {
            return;
        }
        if self.unread.is_empty() {
            self.unread = more;
        } else {
            let mut both = BytesMut::with_capacity(self.unread.len() + more.len());
            both.extend_from_slice(&self.unread);
            both.extend_from_slice(&more);
            self.unread = both.freeze();
        }
    }

    fn written<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity.write_blocked.store(r.is_pending(), Ordering::Release);
        r
    }
}

impl AsyncRead for Wire {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wire {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.written(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.parking.load(Ordering::Acquire) {
            // hyper is letting go of a live connection: the socket stays open for the next request.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How many client connections are open, how many of them are parked, and how often one has been parked.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicU64,
    parked: AtomicU64,
    parks: AtomicU64,
    /// Connections per worker thread, kept by the running server's workers.
    workers: std::sync::Mutex<Vec<Arc<AtomicUsize>>>,
}

impl Connections {
    /// Appends the connection gauges to a `/metrics` text.
    pub fn render(&self, s: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(s, "# TYPE condagate_connections_open gauge");
        let _ = writeln!(s, "condagate_connections_open {}", self.open.load(Relaxed));
        let _ = writeln!(s, "# TYPE condagate_connections_parked gauge");
        let _ = writeln!(s, "condagate_connections_parked {}", self.parked.load(Relaxed));
        let _ = writeln!(s, "# TYPE condagate_connection_parks_total counter");
        let _ = writeln!(s, "condagate_connection_parks_total {}", self.parks.load(Relaxed));
        let _ = writeln!(s, "# TYPE condagate_worker_connections gauge");
        if let Ok(w) = self.workers.lock() {
            for (i, n) in w.iter().enumerate() {
                let _ = writeln!(s, "condagate_worker_connections{{worker=\"{i}\"}} {}", n.load(Relaxed));
            }
        }
    }

    /// Counts a connection open until the guard drops.
    pub fn open(self: &Arc<Self>) -> Counted {
        self.open.fetch_add(1, Relaxed);
        Counted { gauges: Arc::clone(self), parked: false }
    }

    /// Reports these per-worker connection counts from now on.
    pub(crate) fn set_workers(&self, loads: Vec<Arc<AtomicUsize>>) {
        if let Ok(mut w) = self.workers.lock() {
            *w = loads;
        }
    }
}

/// One open connection, counted in [`Connections`] until dropped.
#[derive(Debug)]
pub struct Counted {
    gauges: Arc<Connections>,
    parked: bool,
}

impl Counted {
    /// Counts the connection as parked (`true`) or served by hyper again (`false`).
    pub fn set_parked(&mut self, parked: bool) {
        if parked == self.parked {
            return;
        }
        self.parked = parked;
        if parked {
            self.gauges.parks.fetch_add(1, Relaxed);
            self.gauges.parked.fetch_add(1, Relaxed);
        } else {
            self.gauges.parked.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.set_parked(false);
        self.gauges.open.fetch_sub(1, Relaxed);
    }
}
