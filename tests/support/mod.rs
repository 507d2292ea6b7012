//! Test support: real servers on 127.0.0.1:0 with a few lines each.
//!
//! - [`Demo`]: a private copy of the shipped demo channels and a config pointing at it.
//! - [`Proxy`]: condagate itself, started through the same `Server::run` that `main` uses.
//! - [`Recorder`]: a small HTTP file server that records what it receives and can misbehave on purpose (slow,
//!   cut mid-body, hang, fail). It stands in for a mirror only where a real one cannot fail the way a test needs.
//! - [`get`]: a plain HTTP/1.1 client call returning status, headers and the whole body.

#![allow(dead_code)]

pub mod binary;
pub mod browser;
pub mod mirrors;
pub mod postgres;
pub mod seaweed;
pub mod tls;
pub mod venv;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use condagate::config::Config;
use condagate::internals::app::App;
use condagate::internals::tokens::issue::{self, NewToken};
use condagate::Server;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Records that the running test is skipped, and why: printed on stderr, and appended to `target/skipped-tests.txt`,
/// which `scripts/test` empties before `cargo test` and prints after it, since cargo itself counts a test that
/// returns early as passed.
pub fn report_skip(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    eprintln!("SKIPPED: {test}: {why}");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().map(Path::to_path_buf);
    if let Some(file) = target.map(|t| t.join("skipped-tests.txt")) {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
            let _ = writeln!(f, "{} {test}: {why}", env!("CARGO_CRATE_NAME"));
        }
    }
}

/// The shipped demo channels.
pub fn shipped_channels() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/channels")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The demo configuration's channels and groups, with `upstream` and `extra` spliced in.
pub fn demo_config_text(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra}

[tokens]
file = "tokens.toml"
watch_interval = "50ms"

{upstream}

[[channels]]
name = "mychan"
access = "private"
owners = ["alice"]

[[channels]]
name = "pubchan"
access = "public"

[[channels]]
name = "authchan"
access = "authenticated"
upstream = {{ dir = "channels/pubchan" }}

[[groups]]
name = "eng"
channel = "mychan"
members = ["bob", "carol"]
packages = ["alpha", "beta*"]

[[groups]]
name = "dev-testers"
channel = "mychan"
members = ["dave"]
packages = ["alpha", "beta"]
labels = ["dev"]
"#
    )
}

/// A folder holding a copy of the demo channels and a config file.
pub struct Demo {
    pub dir: tempfile::TempDir,
}

impl Demo {
    /// A fresh copy of the demo channels with the demo config (local-folder upstream).
    pub fn new() -> Self {
        Self::with(
            r#"[upstream]
dir = "channels""#,
            "",
        )
    }

    /// A fresh copy with the given `[upstream]` table and extra `[server]` keys.
    pub fn with(upstream: &str, server_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&shipped_channels(), &dir.path().join("channels"));
        std::fs::write(dir.path().join("condagate.toml"), demo_config_text(upstream, server_extra)).unwrap();
        Demo { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("condagate.toml")
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates a token through the same code the CLI uses.
    pub fn token(&self, name: &str, user: &str, scopes: &str) -> String {
        self.token_with(name, user, scopes, Some(OffsetDateTime::now_utc() + time::Duration::days(1)), None)
    }

    pub fn token_with(
        &self,
        name: &str,
        user: &str,
        scopes: &str,
        expires: Option<OffsetDateTime>,
        channels: Option<Vec<String>>,
    ) -> String {
        let new = NewToken {
            name: name.into(),
            user: user.into(),
            scopes: scopes.split(' ').map(str::to_owned).collect(),
            expires,
            channels,
            weak: false,
        };
        let (t, _) = issue::create(&self.config(), new, OffsetDateTime::now_utc()).unwrap();
        t.reveal().to_owned()
    }
}

/// A running condagate.
pub struct Proxy {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), condagate::internals::app::StartError>>>,
}

impl Proxy {
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::new(config).await.unwrap();
        let app = server.app();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = rx.await;
        }));
        Proxy { addr, app, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// A finished response.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET (or another method) with headers; the whole body.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client().request(b.body(Empty::new()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got { status: parts.status, headers: parts.headers, body }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    request("GET", url, headers).await
}

/// An admin API call with `Authorization: Bearer <token>` and, when given, a JSON body.
pub async fn api_call(method: &str, url: &str, token: &str, body: Option<serde_json::Value>) -> Got {
    let mut b = Request::builder().method(method).uri(url).header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let body = http_body_util::Full::new(Bytes::from(body.map(|v| v.to_string()).unwrap_or_default()));
    let client: Client<_, http_body_util::Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(b.body(body).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got { status: parts.status, headers: parts.headers, body }
}

/// How a [`Recorder`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Serve files normally.
    Normal,
    /// Send the body in 64 KiB chunks with a pause between them.
    Slow(Duration),
    /// Promise the whole length, send half, then close the connection.
    CutMidBody,
    /// Never answer.
    Hang,
    /// Answer 500.
    Fail,
    /// Serve files with one byte changed (the middle one), length and headers as for the real file, in 64 KiB
    /// chunks that wait, after the first, while a test holds [`Recorder::hold`].
    Corrupt,
    /// Close every connection at once, answering nothing: the mirror is gone.
    Gone,
    /// Send the first half of the file, then nothing, forever, keeping the connection open.
    StallMidBody,
    /// Answer 200 with a body (no length) that never ends: 64 KiB chunks as fast as they are read.
    Endless,
}

/// A recorded request: path and headers.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
}

/// A small HTTP file server over a folder that records every request.
pub struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Body chunks a [`Behaviour::Slow`] answer has handed to hyper so far (all requests together).
    pub chunks_sent: Arc<AtomicUsize>,
    /// While a test holds this lock for writing, a [`Behaviour::Slow`] or [`Behaviour::Corrupt`] answer sends its
    /// first chunk and then waits
    /// before each further one: a test can observe what the client got while the upstream still holds the rest.
    pub hold: Arc<tokio::sync::RwLock<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Recorder {
    pub async fn start(root: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(Behaviour::Normal));
        let chunks_sent = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(tokio::sync::RwLock::new(()));
        let (stop, mut rx) = oneshot::channel::<()>();
        let (seen2, beh2) = (Arc::clone(&seen), Arc::clone(&behaviour));
        let pacing = Pacing { sent: Arc::clone(&chunks_sent), hold: Arc::clone(&hold) };
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut rx => break,
                    r = listener.accept() => r.unwrap(),
                };
                let (root, seen, beh) = (root.clone(), Arc::clone(&seen2), Arc::clone(&beh2));
                let beh_gone = Arc::clone(&beh2);
                let pacing = pacing.clone();
                if *beh_gone.lock().unwrap() == Behaviour::Gone {
                    continue;
                }
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (root, seen, beh) = (root.clone(), Arc::clone(&seen), Arc::clone(&beh));
                        let pacing = pacing.clone();
                        async move { Ok::<_, Infallible>(recorder_answer(&root, &seen, &beh, &pacing, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    // A connection ends as soon as the mirror is to be gone, kept-alive ones included.
                    let gone = async {
                        while *beh_gone.lock().unwrap() != Behaviour::Gone {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! {
                        _ = conn => {}
                        _ = gone => {}
                    }
                });
            }
        });
        Recorder { addr, seen, behaviour, chunks_sent, hold, stop: Some(stop) }
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

type RecBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Shared state of [`Behaviour::Slow`] answers: a chunk counter and the test's hold.
#[derive(Clone)]
struct Pacing {
    sent: Arc<AtomicUsize>,
    hold: Arc<tokio::sync::RwLock<()>>,
}

async fn recorder_answer(
    root: &Path,
    seen: &Mutex<Vec<Seen>>,
    beh: &Mutex<Behaviour>,
    pacing: &Pacing,
    req: Request<Incoming>,
) -> Response<RecBody> {
    let path = req.uri().path().to_owned();
    seen.lock().unwrap().push(Seen { path: path.clone(), headers: req.headers().clone() });
    let behaviour = *beh.lock().unwrap();
    let full = |status: u16, b: Bytes| {
        let mut r = Response::new(Full::new(b).map_err(|n: Infallible| match n {}).boxed());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    };
    match behaviour {
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return full(500, Bytes::new());
        }
        Behaviour::Fail => return full(500, Bytes::from_static(b"boom")),
        Behaviour::Gone => return full(503, Bytes::new()),
        Behaviour::Endless => {
            let chunk = Bytes::from(vec![b' '; 65536]);
            let stream = futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(Frame::data(chunk.clone())));
            return Response::new(StreamBody::new(stream).boxed());
        }
        _ => {}
    }
    let file = root.join(path.trim_start_matches('/'));
    let Ok(data) = std::fs::read(&file) else {
        return full(404, Bytes::from_static(b"missing"));
    };
    let data = Bytes::from(data);
    let len = data.len();
    match behaviour {
        Behaviour::Slow(pause) => {
            let chunks: Vec<Bytes> = (0..len).step_by(65536).map(|i| data.slice(i..(i + 65536).min(len))).collect();
            let pacing = pacing.clone();
            let stream = futures_util::stream::unfold((chunks.into_iter(), 0usize), move |(mut it, i)| {
                let pacing = pacing.clone();
                async move {
                    let c = it.next()?;
                    tokio::time::sleep(pause).await;
                    if i > 0 {
                        // Blocks while a test holds the write side.
                        let _g = pacing.hold.read().await;
                    }
                    pacing.sent.fetch_add(1, Ordering::SeqCst);
                    Some((Ok::<_, std::io::Error>(Frame::data(c)), (it, i + 1)))
                }
            });
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert("content-length", len.into());
            r
        }
        Behaviour::StallMidBody => {
            let half = data.slice(..len / 2);
            let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(Frame::data(half)) });
            let stream = futures_util::StreamExt::chain(
                first,
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(Frame::data(Bytes::new()))
                }),
            );
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert("content-length", len.into());
            r
        }
        Behaviour::CutMidBody => {
            let half = data.slice(..len / 2);
            let stream = futures_util::stream::iter(vec![
                Ok(Frame::data(half)),
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut on purpose")),
            ]);
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert("content-length", len.into());
            r
        }
        Behaviour::Corrupt if len > 0 => {
            let mut bytes = data.to_vec();
            bytes[len / 2] ^= 0x55;
            let bytes = Bytes::from(bytes);
            let chunks: Vec<Bytes> = (0..len).step_by(65536).map(|i| bytes.slice(i..(i + 65536).min(len))).collect();
            let hold = Arc::clone(&pacing.hold);
            let stream = futures_util::stream::unfold((chunks.into_iter(), 0usize), move |(mut it, i)| {
                let hold = Arc::clone(&hold);
                async move {
                    let c = it.next()?;
                    if i > 0 {
                        // Blocks while a test holds the write side.
                        let _g = hold.read().await;
                    }
                    Some((Ok::<_, std::io::Error>(Frame::data(c)), (it, i + 1)))
                }
            });
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert("content-length", len.into());
            r
        }
        _ => {
            let mut r = full(200, data);
            r.headers_mut().insert("content-length", len.into());
            r.headers_mut().insert("etag", format!("\"rec-{len}\"").parse().unwrap());
            r
        }
    }
}

/// Counts of tokens seen in some text: used to prove no secret was logged.
pub fn count_occurrences(haystack: &str, needles: &[String]) -> HashMap<String, usize> {
    needles.iter().map(|n| (n.clone(), haystack.matches(n.as_str()).count())).filter(|(_, c)| *c > 0).collect()
}

/// Sends a request and returns the response with its body still streaming.
pub async fn open(method: &str, url: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    client().request(b.body(Empty::new()).unwrap()).await.unwrap()
}

/// GET with headers; the whole body, or the error that ended it.
pub async fn try_get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Result<Bytes, String>) {
    let resp = open("GET", url, headers).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).map_err(|e| e.to_string());
    (parts.status, parts.headers, body)
}

/// Sends `GET <target> HTTP/1.1` exactly as given (no client-side normalisation) and reads until the server closes.
/// Returns the status (None if the server closed without one) and every byte received.
pub async fn raw_get(addr: SocketAddr, target: &[u8], extra_headers: &str) -> (Option<u16>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    req.extend_from_slice(extra_headers.as_bytes());
    req.extend_from_slice(b"\r\n");
    s.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no answer within 30 s for {:?}", String::from_utf8_lossy(target)),
        }
    }
    let status =
        buf.strip_prefix(b"HTTP/1.1 ").and_then(|r| std::str::from_utf8(r.get(..3)?).ok()).and_then(|c| c.parse().ok());
    (status, buf)
}

/// The value of a counter or gauge line `name value` in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Checks a refusal: status, problem+json shape, and that neither body nor headers hold a secret. Returns the body.
#[track_caller]
pub fn assert_problem(g: &Got, status: u16, secrets: &[&str], what: &str) -> serde_json::Value {
    assert_eq!(g.status.as_u16(), status, "{what}: {}", g.text());
    assert_eq!(g.header("content-type"), Some("application/problem+json"), "{what}");
    let v = g.json();
    let ty = v["type"].as_str().unwrap_or_else(|| panic!("{what}: no type in {v}"));
    assert!(ty.starts_with("https://"), "{what}: type {ty}");
    assert!(!v["title"].as_str().unwrap_or("").is_empty(), "{what}: no title in {v}");
    assert_eq!(v["status"].as_u64(), Some(u64::from(status)), "{what}: {v}");
    assert!(!v["detail"].as_str().unwrap_or("").is_empty(), "{what}: no detail in {v}");
    assert_no_secret_in(g, secrets, what);
    v
}

#[track_caller]
pub fn assert_no_secret_in(g: &Got, secrets: &[&str], what: &str) {
    let body = g.text();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(!body.contains(s), "{what}: the body holds a token: {body}");
        for (k, v) in &g.headers {
            assert!(!String::from_utf8_lossy(v.as_bytes()).contains(s), "{what}: header {k} holds a token");
        }
    }
}

/// Waits for `cond` to hold, checking every 20 ms, and fails the test naming `what` once `limit` has passed.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "gave up after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for a condition that must itself wait (a request): checked every 20 ms, for at most `limit`.
pub async fn eventually_async<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + limit;
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "gave up after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub const LOCAL_UPSTREAM: &str = "[upstream]\ndir = \"channels\"";

/// Panics if any of `secrets` occurs in `text`; `what` says where the text came from.
pub fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    let found = count_occurrences(text, secrets);
    assert!(found.is_empty(), "{what} contains token(s) {found:?}:\n{}", &text[..text.len().min(4000)]);
}

/// Deterministic bytes that do not repeat on short periods, so misplaced chunks are noticed.
pub fn big_payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
