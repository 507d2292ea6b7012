//! Production serving under hostile and faulty traffic, on loopback with real servers: TLS and HTTP/2 with certificate
//! reload, slowloris, brute-force throttling behind a trusted proxy, upstream faults, graceful drain of the real
//! binary on SIGTERM, thousands of concurrent keep-alive connections, idle keep-alive connections parked without
//! hyper's buffers, and secrets kept out of logs, metrics and bodies.
//!
//! TLS verification is never disabled: the rustls clients trust exactly the test's self-signed certificate, and
//! py-rattler (the venv of `tests/e2e.rs`; `CONDAGATE_SKIP_E2E=1` skips that one test) gets it via `SSL_CERT_FILE`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

const LOCAL_UPSTREAM: &str = "[upstream]\ndir = \"channels\"";

/// Panics if any of `secrets` occurs in `text`; `what` says where the text came from.
fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    let found = count_occurrences(text, secrets);
    assert!(found.is_empty(), "{what} contains token(s) {found:?}:\n{}", &text[..text.len().min(4000)]);
}

/// Waits for `cond` to hold, checking every 20 ms, for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`: (certificate PEM, key PEM, certificate DER).
fn self_signed() -> (String, String, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    (ck.cert.pem(), ck.key_pair.serialize_pem(), ck.cert.der().clone())
}

/// Writes `contents` to `path` atomically (a rename), as a deployment tool replacing a certificate would.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn tls_client_config(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, name: &str) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap_or_else(|e| panic!("TLS handshake: {e}"))
}

fn leaf(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("the server sent a certificate")[0].clone().into_owned()
}

fn alpn(tls: &Tls) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// An HTTP/1.1 connection over `io`, driven in the background.
async fn h1<T>(io: T) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// GET `path` on an HTTP/1.1 connection: status, version and the whole body.
async fn h1_get(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, Version, Bytes) {
    send.ready().await.expect("the keep-alive connection is still usable");
    let req = Request::get(path).header("host", "localhost").body(Empty::new()).unwrap();
    let resp = send.send_request(req).await.expect("request on the keep-alive connection");
    let (parts, body) = resp.into_parts();
    (parts.status, parts.version, body.collect().await.unwrap().to_bytes())
}

async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    url: &str,
) -> (StatusCode, Version, Bytes) {
    send.ready().await.expect("the h2 connection is still usable");
    let resp = send.send_request(Request::get(url).body(Empty::new()).unwrap()).await.expect("h2 request");
    let (parts, body) = resp.into_parts();
    (parts.status, parts.version, body.collect().await.unwrap().to_bytes())
}

/// The real `condagate serve` binary, its listen address, and everything it writes to stderr.
struct Binary {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_done: Option<std::thread::JoinHandle<()>>,
}

impl Binary {
    fn start(config: &Path, envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_condagate"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the condagate binary");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        let stderr_done = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                match err_pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("condagate listening on http://") {
                    let _ = tx.send(a.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the binary printed no listen address; stderr:\n{}",
                    String::from_utf8_lossy(&stderr.lock().unwrap())
                );
            }
        };
        Binary { child, addr, stderr, stderr_done: Some(stderr_done) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit; returns its status and its whole stderr.
    async fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the binary did not exit within {limit:?}; stderr:\n{}",
                    String::from_utf8_lossy(&self.stderr.lock().unwrap())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(t) = self.stderr_done.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let err = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        (status, err)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The JSON lines of a log capture, and among them the access lines.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect()
}

fn access_lines(log: &str) -> Vec<serde_json::Value> {
    json_lines(log).into_iter().filter(|v| v["target"] == "condagate::access").collect()
}

/// The redacted request path of an access line (a field of the `request` span).
fn line_path(v: &serde_json::Value) -> String {
    v["span"]["path"]
        .as_str()
        .or_else(|| v["spans"].as_array().and_then(|s| s.iter().find_map(|x| x["path"].as_str())))
        .or_else(|| v["path"].as_str())
        .unwrap_or_default()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// TLS and HTTP/2
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_h2_and_reloads_the_certificate_without_dropping_connections() {
    let demo = Demo::with(LOCAL_UPSTREAM, "tls = { cert = \"tls/cert.pem\", key = \"tls/key.pem\" }");
    let (cert1, key1, der1) = self_signed();
    std::fs::create_dir_all(demo.path().join("tls")).unwrap();
    let cert_path = demo.path().join("tls/cert.pem");
    let key_path = demo.path().join("tls/key.pem");
    std::fs::write(&cert_path, &cert1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let alice = demo.token("tls-alice", "alice", "conda:download");
    let proxy = Proxy::start(demo.config()).await;

    let hello = std::fs::read(demo.path().join("channels/pubchan/noarch/hello-1.0-0.tar.bz2")).unwrap();
    let alpha = std::fs::read(demo.path().join("channels/mychan/noarch/alpha-1.0-0.tar.bz2")).unwrap();

    // HTTP/1.1 (ALPN http/1.1), name "localhost".
    let tls = tls_connect(proxy.addr, tls_client_config(&[&der1], &[b"http/1.1"]), "localhost").await;
    assert_eq!(alpn(&tls).as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(leaf(&tls), der1);
    let mut old_h1 = h1(tls).await;
    let (status, version, body) = h1_get(&mut old_h1, "/pubchan/noarch/hello-1.0-0.tar.bz2").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));
    assert_eq!(body.as_ref(), hello.as_slice(), "HTTP/1.1 over TLS: the package bytes differ");
    let (status, _, body) = h1_get(&mut old_h1, &format!("/t/{alice}/mychan/noarch/alpha-1.0-0.tar.bz2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_ref(), alpha.as_slice());

    // h2 (ALPN h2), name 127.0.0.1 (an IP SAN).
    let tls = tls_connect(proxy.addr, tls_client_config(&[&der1], &[b"h2", b"http/1.1"]), "127.0.0.1").await;
    assert_eq!(alpn(&tls).as_deref(), Some(&b"h2"[..]), "the server must pick h2 when offered");
    let (mut old_h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let base = format!("https://127.0.0.1:{}", proxy.addr.port());
    let (status, version, body) = h2_get(&mut old_h2, &format!("{base}/pubchan/noarch/hello-1.0-0.tar.bz2")).await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(body.as_ref(), hello.as_slice(), "h2: the package bytes differ");
    // Several streams at once on the one h2 connection.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut s = old_h2.clone();
        let url = format!("{base}/t/{alice}/mychan/noarch/alpha-1.0-0.tar.bz2");
        streams.push(tokio::spawn(async move { h2_get(&mut s, &url).await }));
    }
    for s in streams {
        let (status, version, body) = s.await.unwrap();
        assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
        assert_eq!(body.as_ref(), alpha.as_slice());
    }

    // Replace the certificate on disk; the server polls the files.
    let (cert2, key2, der2) = self_signed();
    assert_ne!(der1, der2);
    replace_file(&key_path, &key2);
    replace_file(&cert_path, &cert2);
    let both = tls_client_config(&[&der1, &der2], &[b"http/1.1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tls = tls_connect(proxy.addr, Arc::clone(&both), "localhost").await;
        if leaf(&tls) == der2 {
            break;
        }
        assert!(Instant::now() < deadline, "new connections still get the old certificate after 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client that trusts only the new certificate connects and downloads.
    let only_new = tls_connect(proxy.addr, tls_client_config(&[&der2], &[b"http/1.1"]), "localhost").await;
    let mut fresh = h1(only_new).await;
    let (status, _, body) = h1_get(&mut fresh, "/pubchan/noarch/hello-1.0-0.tar.bz2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_ref(), hello.as_slice());

    // The connections opened before the reload still work.
    let (status, version, body) = h1_get(&mut old_h1, "/pubchan/noarch/hello-1.0-0.tar.bz2").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11), "the old keep-alive h1 connection broke");
    assert_eq!(body.as_ref(), hello.as_slice());
    let (status, version, body) = h2_get(&mut old_h2, &format!("{base}/pubchan/noarch/hello-1.0-0.tar.bz2")).await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2), "the old h2 connection broke");
    assert_eq!(body.as_ref(), hello.as_slice());

    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_missing_or_broken_key_is_refused_naming_the_file() {
    let demo = Demo::with(LOCAL_UPSTREAM, "tls = { cert = \"cert.pem\", key = \"no-such-key.pem\" }");
    let (cert, _, _) = self_signed();
    std::fs::write(demo.path().join("cert.pem"), &cert).unwrap();
    let err = match condagate::Server::new(demo.config()).await {
        Ok(_) => panic!("a TLS config with a missing key was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("no-such-key.pem"), "the error does not name the key file: {err}");

    let demo = Demo::with(LOCAL_UPSTREAM, "tls = { cert = \"cert.pem\", key = \"garbage-key.pem\" }");
    std::fs::write(demo.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(demo.path().join("garbage-key.pem"), "this is not a key\n").unwrap();
    let err = match condagate::internals::app::App::new(demo.config()).await {
        Ok(_) => panic!("a TLS config with an unreadable key was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("garbage-key.pem"), "the error does not name the key file: {err}");
}

// ---------------------------------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------------------------------

/// Connects and sends `prefix` then endless header bytes, one byte every 100 ms, until the server closes the
/// connection. Returns how long the connection lived, or None if it was still open after `limit`.
async fn dribble(addr: SocketAddr, prefix: &'static [u8], limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let endless = prefix.iter().copied().chain(b"X-Slow: a\r\n".iter().copied().cycle());
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for byte in endless {
        if started.elapsed() > limit {
            return None;
        }
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {} // a 408 or similar before closing: keep reading until the close
            },
            _ = tick.tick() => {
                if s.write_all(&[byte]).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_at_the_header_timeout_not_twice_it() {
    let demo = Demo::with(LOCAL_UPSTREAM, "header_read_timeout = \"1s\"");
    let proxy = Proxy::start(demo.config()).await;
    // The client trickles a head for up to 1.8 s: the server must have closed it before (1 s and a short goodbye);
    // it used to wait a second full period (2 s).
    let lived =
        dribble(proxy.addr, b"GET /pubchan/noarch/repodata.json HTTP/1.1\r\nHost: x\r\n", Duration::from_millis(1800))
            .await;
    assert!(lived.is_some(), "a slow head outlived 1.8 s with header_read_timeout = 1s");
    eprintln!("slow head cut after {lived:?}");
    proxy.stop().await;
}

/// Sends a GET on a raw socket, reads `first` bytes, then reads nothing for `pause`; then reads to the end and says
/// how many bytes came in all.
async fn stall_reading(addr: SocketAddr, path: &str, first: usize, pause: Duration) -> usize {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // A small receive buffer, so the server's writes block soon.
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut got = vec![0u8; first];
    s.read_exact(&mut got).await.unwrap();
    tokio::time::sleep(pause).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest)).await;
    first + rest.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout_and_slow_readers_finish() {
    const SIZE: usize = 48 << 20;
    let demo = Demo::with(LOCAL_UPSTREAM, "send_timeout = \"1s\"");
    std::fs::write(demo.path().join("channels/pubchan/noarch/big-1.0-0.tar.bz2"), big_payload(SIZE)).unwrap();
    let proxy = Proxy::start(demo.config()).await;
    // Stops reading for 3 s after the first 64 KiB: the response stops moving, and the connection is closed, so
    // the rest never comes.
    let got = stall_reading(proxy.addr, "/pubchan/noarch/big-1.0-0.tar.bz2", 65536, Duration::from_secs(3)).await;
    assert!(got < SIZE, "a client that stopped reading for 3 s (send_timeout 1 s) still got all {got} bytes");
    // A slow reader that keeps moving (about 2 MiB/s, far above the minimum rate of a 256 KiB chunk per second)
    // gets everything.
    let small = 4 << 20;
    std::fs::write(demo.path().join("channels/pubchan/noarch/mid-1.0-0.tar.bz2"), big_payload(small)).unwrap();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /pubchan/noarch/mid-1.0-0.tar.bz2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut total = 0;
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(total > small, "a slow but moving reader got {total} of {small} body bytes");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_at_the_header_timeout_while_normal_clients_are_served() {
    let demo = Demo::with(LOCAL_UPSTREAM, "header_read_timeout = \"500ms\"");
    let proxy = Proxy::start(demo.config()).await;
    let url = proxy.url("/pubchan/noarch/repodata.json");
    assert_eq!(get(&url, &[]).await.status, StatusCode::OK);

    let limit = Duration::from_secs(15);
    let attackers: Vec<_> = (0..50)
        .map(|_| tokio::spawn(dribble(proxy.addr, b"GET /pubchan/noarch/repodata.json HTTP/1.1\r\nHost: x\r\n", limit)))
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let normal = {
        let done = Arc::clone(&done);
        let url = url.clone();
        tokio::spawn(async move {
            let mut ok = 0usize;
            while !done.load(Ordering::SeqCst) {
                // A fresh connection each time, so new connections are shown to be accepted during the attack.
                let got = get(&url, &[("connection", "close")]).await;
                assert_eq!(got.status, StatusCode::OK, "a normal request failed during the attack: {}", got.text());
                assert!(!got.body.is_empty());
                ok += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok
        })
    };
    let mut lived = Vec::new();
    for a in attackers {
        lived.push(a.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    let served = normal.await.unwrap();
    let open = lived.iter().filter(|l| l.is_none()).count();
    assert_eq!(open, 0, "{open} of 50 slowloris connections were still open after {limit:?}");
    assert!(served > 0, "no normal request completed during the attack");
    eprintln!(
        "slowloris: 50 connections cut after {:?} .. {:?}; {served} normal requests served meanwhile",
        lived.iter().flatten().min(),
        lived.iter().flatten().max()
    );
    proxy.stop().await;
}

/// Opens a connection, has `start` write whatever it writes, then stays silent; returns how long until the server
/// closed it, or None if it was still open after `limit`.
async fn then_silent<S, F>(start: F, limit: Duration) -> Option<Duration>
where
    S: tokio::io::AsyncRead + Unpin,
    F: std::future::Future<Output = S>,
{
    let started = Instant::now();
    let mut s = start.await;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {} // the server's h2 SETTINGS, a 408, ...: keep reading until the close
        }
    }
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: a well-behaved h2 client that never sends a request.
const H2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_send_a_request_are_closed_after_the_header_timeout() {
    let limit = Duration::from_secs(10);
    let plain = Demo::with(LOCAL_UPSTREAM, "header_read_timeout = \"500ms\"");
    let plain = Proxy::start(plain.config()).await;
    let tls_demo =
        Demo::with(LOCAL_UPSTREAM, "header_read_timeout = \"500ms\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }");
    let (cert, key, der) = self_signed();
    std::fs::write(tls_demo.path().join("cert.pem"), cert).unwrap();
    std::fs::write(tls_demo.path().join("key.pem"), key).unwrap();
    let tls = Proxy::start(tls_demo.config()).await;
    let h1_cfg = tls_client_config(&[&der], &[b"http/1.1"]);

    let (pa, ta) = (plain.addr, tls.addr);
    let mut silent_plain = Vec::new();
    let mut h2_idle = Vec::new();
    let mut silent_tls = Vec::new();
    for _ in 0..10 {
        silent_plain.push(tokio::spawn(then_silent(async move { TcpStream::connect(pa).await.unwrap() }, limit)));
        h2_idle.push(tokio::spawn(then_silent(
            async move {
                let mut s = TcpStream::connect(pa).await.unwrap();
                s.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
                s
            },
            limit,
        )));
        let cfg = Arc::clone(&h1_cfg);
        silent_tls.push(tokio::spawn(then_silent(async move { tls_connect(ta, cfg, "localhost").await }, limit)));
    }
    let mut open = Vec::new();
    for (what, group) in [
        ("plain TCP, nothing sent", silent_plain),
        ("h2 preface + SETTINGS, no request", h2_idle),
        ("TLS handshake done, nothing sent", silent_tls),
    ] {
        let mut n = 0;
        for t in group {
            if t.await.unwrap().is_none() {
                n += 1;
            }
        }
        open.push(format!("{what}: {n}/10 still open"));
    }
    // Meanwhile normal clients are served on both.
    assert_eq!(get(&plain.url("/healthz"), &[]).await.status, StatusCode::OK);
    let mut fresh = h1(tls_connect(ta, h1_cfg, "localhost").await).await;
    assert_eq!(h1_get(&mut fresh, "/healthz").await.0, StatusCode::OK);
    assert!(
        open.iter().all(|o| o.contains(": 0/10")),
        "with header_read_timeout = 500ms, after {limit:?}: {}",
        open.join("; ")
    );
    plain.stop().await;
    tls.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Throttling
// ---------------------------------------------------------------------------------------------------------------

const THROTTLE: &str = "throttle = { failures = 5, window = \"60s\", cooldown = \"30s\" }";

/// Sends bad tokens (request `i` with `X-Forwarded-For: xff(i)`, if any) until a 429; returns how many 401s came
/// first and the 429's Retry-After.
async fn burst_until_429(
    proxy: &Proxy,
    bad: &str,
    xff: impl Fn(usize) -> Option<String>,
    secrets: &[String],
) -> (usize, u64) {
    let url = proxy.url(&format!("/t/{bad}/mychan/noarch/repodata.json"));
    for i in 0..50 {
        let x = xff(i);
        let headers: Vec<(&str, &str)> = x.as_deref().map(|x| ("x-forwarded-for", x)).into_iter().collect();
        let got = get(&url, &headers).await;
        assert_no_secret("an error body", &got.text(), secrets);
        match got.status {
            StatusCode::UNAUTHORIZED => continue,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(got.header("content-type"), Some("application/problem+json"));
                let retry: u64 = got
                    .header("retry-after")
                    .unwrap_or_else(|| panic!("429 without Retry-After"))
                    .parse()
                    .expect("Retry-After in seconds");
                return (i, retry);
            }
            other => panic!("bad token #{i}: unexpected {other}: {}", got.text()),
        }
    }
    panic!("50 bad tokens and no 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guessing_from_one_client_is_throttled_while_another_client_behind_the_proxy_is_served() {
    let demo = Demo::with(LOCAL_UPSTREAM, &format!("trusted_proxies = [\"127.0.0.1\"]\n{THROTTLE}"));
    let good = demo.token("thr-bob", "bob", "conda:download");
    let bad = "cg-ThisIsNotARealToken0123456789abcdef".to_owned();
    let secrets = vec![good.clone(), bad.clone()];
    let proxy = Proxy::start(demo.config()).await;

    let (refused_first, retry) = burst_until_429(&proxy, &bad, |_| Some("198.51.100.7".into()), &secrets).await;
    assert!((5..=10).contains(&refused_first), "429 after {refused_first} failures; the bound is 5");
    assert!((1..=30).contains(&retry), "Retry-After {retry} is outside the 30 s cool-down");

    // The guessing client stays blocked for every token it cannot show to be valid, revoked and unknown alike; a
    // valid (160-bit, unguessable) token still passes, so one user's typos do not lock out a whole NAT.
    let another_guess = proxy.url("/t/cg-YetAnotherGuess0123456789abcdefgh/mychan/noarch/alpha-1.0-0.tar.bz2");
    let got = get(&another_guess, &[("x-forwarded-for", "198.51.100.7")]).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_no_secret("a 429 body", &got.text(), &secrets);
    let alpha = proxy.url(&format!("/t/{good}/mychan/noarch/alpha-1.0-0.tar.bz2"));
    let got = get(&alpha, &[("x-forwarded-for", "198.51.100.7")]).await;
    assert_eq!(got.status, StatusCode::OK, "a valid token was refused during its address's cool-down");

    // Another client behind the same (trusted) proxy is unaffected, however it sends its token.
    let got = get(&alpha, &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "a good token from another client address (X-Forwarded-For via a trusted proxy) was refused: {}",
        got.text()
    );
    let got = get(&alpha, &[("x-forwarded-for", "203.0.113.9, 198.51.100.200")]).await;
    assert_eq!(got.status, StatusCode::OK, "the last untrusted hop (198.51.100.200) is the client: {}", got.text());
    let header_url = proxy.url("/mychan/noarch/alpha-1.0-0.tar.bz2");
    let bearer = format!("Bearer {good}");
    let got = get(&header_url, &[("authorization", &bearer), ("x-forwarded-for", "203.0.113.10")]).await;
    assert_eq!(got.status, StatusCode::OK, "a header token from another client was refused: {}", got.text());

    let metrics = get(&proxy.url("/metrics"), &[]).await.text();
    assert!(metric(&metrics, "condagate_throttled_total").unwrap_or(0.0) >= 1.0, "{metrics}");
    assert!(metric(&metrics, "condagate_throttled_addresses").unwrap_or(0.0) >= 1.0, "{metrics}");
    assert_no_secret("/metrics", &metrics, &secrets);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_a_spoofed_forwarded_for_cannot_escape_throttling() {
    let demo = Demo::with(LOCAL_UPSTREAM, THROTTLE);
    let good = demo.token("thr-carol", "carol", "conda:download");
    let bad = "cg-AnotherGuessedToken9876543210zyxwv".to_owned();
    let secrets = vec![good.clone(), bad.clone()];
    let proxy = Proxy::start(demo.config()).await;

    // Each bad attempt claims a different client address: it must not matter.
    let (refused_first, retry) = burst_until_429(&proxy, &bad, |i| Some(format!("192.0.2.{}", i + 1)), &secrets).await;
    assert!(refused_first >= 5);
    assert!((1..=30).contains(&retry));
    let got =
        get(&proxy.url(&format!("/t/{bad}/mychan/noarch/alpha-1.0-0.tar.bz2")), &[("x-forwarded-for", "203.0.113.77")])
            .await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS, "a spoofed X-Forwarded-For escaped the cool-down");
    let got = get(
        &proxy.url(&format!("/t/{good}/mychan/noarch/alpha-1.0-0.tar.bz2")),
        &[("x-forwarded-for", "203.0.113.77")],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "a valid token is served during the cool-down");
    // Requests without a token are not throttled (nothing to guess).
    assert_eq!(get(&proxy.url("/pubchan/noarch/repodata.json"), &[]).await.status, StatusCode::OK);
    let metrics = get(&proxy.url("/metrics"), &[]).await.text();
    assert!(metric(&metrics, "condagate_throttled_total").unwrap_or(0.0) >= 1.0, "{metrics}");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Upstream faults
// ---------------------------------------------------------------------------------------------------------------

fn http_upstream(url: &str) -> String {
    format!("[upstream]\nurl = \"{url}\"\ntimeout = \"300ms\"\nconnect_timeout = \"2s\"")
}

fn assert_problem(got: &Got, status: u16) {
    assert_eq!(got.status.as_u16(), status, "{}", got.text());
    assert_eq!(got.header("content-type"), Some("application/problem+json"), "{}", got.text());
    assert_eq!(got.json()["status"], status, "{}", got.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cut_mid_body_aborts_the_client_transfer() {
    // The recorder serves a copy of the demo channels as the HTTP mirror.
    let root = tempfile::tempdir().unwrap();
    copy_tree(&shipped_channels(), root.path());
    let rec = Recorder::start(root.path().to_owned()).await;
    let demo = Demo::with(&http_upstream(&rec.url()), "");
    // Large enough that the mirror has flushed the head and part of the body when it cuts the connection (a tiny
    // file is cut before anything is flushed, which the proxy rightly answers with 502).
    let whole = big_payload(8 << 20);
    std::fs::write(root.path().join("pubchan/noarch/big-1.0-0.tar.bz2"), &whole).unwrap();
    let proxy = Proxy::start(demo.config()).await;
    let pkg = proxy.url("/pubchan/noarch/big-1.0-0.tar.bz2");

    let (status, _, body) = try_get(&pkg, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_deref().unwrap(), whole.as_slice(), "the normal case must work first");

    rec.set(Behaviour::CutMidBody);
    for i in 0..3 {
        let (status, headers, body) = try_get(&pkg, &[]).await;
        match (status, body) {
            (StatusCode::OK, Err(_)) => {
                assert_eq!(
                    headers.get("content-length").and_then(|v| v.to_str().ok()),
                    Some(&*whole.len().to_string())
                );
            }
            (StatusCode::OK, Ok(b)) => {
                panic!("a cut transfer looked complete: 200 with {} of {} bytes", b.len(), whole.len())
            }
            (s, b) => {
                panic!("cut transfer #{i}: unexpected {s} {:?}", b.map(|b| String::from_utf8_lossy(&b).into_owned()))
            }
        }
    }
    // On the wire: fewer bytes than promised, then the connection ends.
    let (status, raw) = raw_get(proxy.addr, b"/pubchan/noarch/big-1.0-0.tar.bz2", "").await;
    assert_eq!(status, Some(200));
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(raw.len() - head_end < whole.len(), "all bytes arrived although the upstream cut the body");

    // A document that must be whole to be filtered is refused instead.
    let got = get(&proxy.url("/pubchan/noarch/repodata.json"), &[]).await;
    assert_problem(&got, 502);
    proxy.stop().await;
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusing_connections_gives_502() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let demo = Demo::with(&http_upstream(&format!("http://{closed}")), "");
    let proxy = Proxy::start(demo.config()).await;
    for path in ["/pubchan/noarch/hello-1.0-0.tar.bz2", "/pubchan/noarch/repodata.json"] {
        let got = get(&proxy.url(path), &[]).await;
        assert_problem(&got, 502);
        assert!(!got.text().contains(&closed.to_string()), "the upstream address leaked: {}", got.text());
    }
    let metrics = get(&proxy.url("/metrics"), &[]).await.text();
    assert!(metric(&metrics, "condagate_upstream_errors_total").unwrap_or(0.0) >= 2.0, "{metrics}");
    // Still ready: one channel's dead upstream must not take the replica out of the load balancer for every
    // channel. It shows in /healthz (a count for anonymous callers: pubchan and mychan share the dead mirror) and in
    // /metrics, learned from the traffic and the background probe.
    let ready = get(&proxy.url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let h = get(&proxy.url("/healthz"), &[]).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "degraded", "{}", h.text());
    assert!(h.json()["upstreams_down"].as_u64().is_some_and(|n| n >= 1), "{}", h.text());
    assert!(!h.text().contains("pubchan") && !h.text().contains(&closed.to_string()), "{}", h.text());
    let metrics = get(&proxy.url("/metrics"), &[]).await.text();
    assert_eq!(metric(&metrics, "condagate_upstream_up{channel=\"pubchan\"}"), Some(0.0), "{metrics}");
    proxy.stop().await;
    let local_demo = Demo::new();
    let local = Proxy::start(local_demo.config()).await;
    assert_eq!(get(&local.url("/readyz"), &[]).await.status, 200);
    local.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_gives_504_within_the_timeout() {
    let root = tempfile::tempdir().unwrap();
    let rec = Recorder::start(root.path().to_owned()).await;
    rec.set(Behaviour::Hang);
    let demo = Demo::with(&http_upstream(&rec.url()), "");
    let proxy = Proxy::start(demo.config()).await;
    for path in ["/pubchan/noarch/hello-1.0-0.tar.bz2", "/pubchan/noarch/repodata.json"] {
        // Bounded by far more than the 300 ms upstream timeout; only the status is asserted.
        let got = tokio::time::timeout(Duration::from_secs(20), get(&proxy.url(path), &[]))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer at all from the proxy within 20 s"));
        assert_problem(&got, 504);
    }
    assert!(!rec.seen().is_empty(), "the hanging upstream was never asked");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Graceful drain of the real binary
// ---------------------------------------------------------------------------------------------------------------

/// Deterministic bytes that do not repeat on short periods, so misplaced chunks are noticed.
fn big_payload(len: usize) -> Vec<u8> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_downloads_refuses_new_connections_and_exits_0() {
    const SIZE: usize = 64 << 20;
    const DOWNLOADS: usize = 4;
    // The idle limit is short: a drain must still wait for downloads in flight, however long they take.
    let demo = Demo::with(LOCAL_UPSTREAM, "shutdown_grace = \"120s\"\nheader_read_timeout = \"1s\"");
    let payload = Arc::new(big_payload(SIZE));
    std::fs::write(demo.path().join("channels/pubchan/noarch/big-1.0-0.tar.bz2"), payload.as_slice()).unwrap();
    let bin = Binary::start(&demo.config_path(), &[]);
    let addr = bin.addr;

    let received: Arc<Vec<AtomicU64>> = Arc::new((0..DOWNLOADS).map(|_| AtomicU64::new(0)).collect());
    let slow = Arc::new(AtomicBool::new(true));
    let mut downloads = Vec::new();
    for i in 0..DOWNLOADS {
        let (received, slow, payload) = (Arc::clone(&received), Arc::clone(&slow), Arc::clone(&payload));
        downloads.push(tokio::spawn(async move {
            let mut send = h1(TcpStream::connect(addr).await.unwrap()).await;
            let req = Request::get("/pubchan/noarch/big-1.0-0.tar.bz2").header("host", "x").body(Empty::new()).unwrap();
            let resp = send.send_request(req).await.map_err(|e| format!("download {i}: {e}"))?;
            if resp.status() != StatusCode::OK {
                return Err(format!("download {i}: status {}", resp.status()));
            }
            let len: usize = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
            let mut body = resp.into_body();
            let mut at = 0usize;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("download {i}: aborted after {at} bytes: {e}"))?;
                if let Some(d) = frame.data_ref() {
                    if payload.get(at..at + d.len()) != Some(d.as_ref()) {
                        return Err(format!("download {i}: wrong bytes at offset {at}"));
                    }
                    at += d.len();
                    received[i].store(at as u64, Ordering::SeqCst);
                }
                if slow.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Ok::<_, String>((len, at))
        }));
    }
    eventually(Duration::from_secs(60), "every download to have started", || {
        received.iter().all(|r| r.load(Ordering::SeqCst) >= 1 << 20)
    })
    .await;
    assert!(received.iter().all(|r| (r.load(Ordering::SeqCst) as usize) < SIZE), "a download finished too early");

    bin.signal("TERM");
    // New connections are refused once shutdown has begun (the listener is closed), while downloads are in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            Err(e) if e.kind() != std::io::ErrorKind::ConnectionReset => panic!("unexpected connect error: {e}"),
            // Accepted by the kernel before the listener closed (or reset as it closed): poll on.
            Err(_) | Ok(_) => {
                assert!(Instant::now() < deadline, "new connections still accepted 20 s after SIGTERM");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let at_refusal: Vec<u64> = received.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    assert!(
        at_refusal.iter().all(|r| (*r as usize) < SIZE),
        "downloads finished before new connections were refused: {at_refusal:?}"
    );
    // Keep reading slowly for longer than the idle limit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    slow.store(false, Ordering::SeqCst);
    for d in downloads {
        let (len, got) =
            tokio::time::timeout(Duration::from_secs(120), d).await.expect("download stalled").unwrap().unwrap();
        assert_eq!((len, got), (SIZE, SIZE), "an in-flight download did not complete intact");
    }
    let (status, log) = bin.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "exit status {status:?} after SIGTERM; stderr:\n{log}");
    assert!(TcpStream::connect(addr).await.is_err());
}

// ---------------------------------------------------------------------------------------------------------------
// Load: thousands of concurrent keep-alive connections
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_concurrent_keep_alive_connections_are_served_without_error() {
    const CONNS: usize = 5000;
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let want = 16384u64.min(hard);
    if soft < want {
        rlimit::setrlimit(rlimit::Resource::NOFILE, want, hard).unwrap();
    }
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    // Both ends of every connection live in this process, plus slack for the rest of the suite.
    assert!(
        soft >= (2 * CONNS + 1000) as u64,
        "RLIMIT_NOFILE is {soft} (hard {hard}): too low for {CONNS} connections"
    );

    let demo = Demo::with(LOCAL_UPSTREAM, "header_read_timeout = \"120s\"\nmax_connections = 20000");
    let proxy = Proxy::start(demo.config()).await;
    let addr = proxy.addr;
    let expected = get(&proxy.url("/pubchan/noarch/repodata.json"), &[]).await;
    assert_eq!(expected.status, StatusCode::OK);
    let expected = expected.body;

    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(256)); // connects in flight at once (a bounded SYN burst)
    let first_done = Arc::new(AtomicUsize::new(0));
    let second = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let (gate, first_done, second, release, expected) =
            (Arc::clone(&gate), Arc::clone(&first_done), Arc::clone(&second), Arc::clone(&release), expected.clone());
        conns.push(tokio::spawn(async move {
            let mut send: hyper::client::conn::http1::SendRequest<Empty<Bytes>> = {
                let _p = gate.acquire().await.unwrap();
                let s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                send
            };
            for round in 0..2 {
                if round == 1 {
                    let notified = second.notified();
                    if !release.load(Ordering::SeqCst) {
                        notified.await;
                    }
                }
                send.ready().await.map_err(|e| format!("round {round}: connection closed: {e}"))?;
                let req = Request::get("/pubchan/noarch/repodata.json").header("host", "x").body(Empty::new()).unwrap();
                let resp = send.send_request(req).await.map_err(|e| format!("round {round}: {e}"))?;
                if resp.status() != StatusCode::OK {
                    return Err(format!("round {round}: status {}", resp.status()));
                }
                let body =
                    resp.into_body().collect().await.map_err(|e| format!("round {round}: body: {e}"))?.to_bytes();
                if body != expected {
                    return Err(format!("round {round}: wrong body"));
                }
                if round == 0 {
                    first_done.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok::<_, String>(send)
        }));
    }
    // Every connection has had its first answer and is held open before any sends its second request.
    let fd = Arc::clone(&first_done);
    let deadline = Instant::now() + Duration::from_secs(50);
    while fd.load(Ordering::SeqCst) < CONNS {
        if conns.iter().any(|c| c.is_finished()) {
            break; // one failed: collect the errors below
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {CONNS} first requests done after 50 s",
            fd.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_phase = started.elapsed();
    release.store(true, Ordering::SeqCst);
    second.notify_waiters();
    let mut errors = Vec::new();
    let mut held = Vec::new();
    for c in conns {
        match tokio::time::timeout(Duration::from_secs(60), c).await {
            Ok(Ok(Ok(send))) => held.push(send),
            Ok(Ok(Err(e))) => errors.push(e),
            Ok(Err(e)) => errors.push(format!("task: {e}")),
            Err(_) => errors.push("timed out".into()),
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {CONNS} connections failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(held.len(), CONNS);
    eprintln!("load: {CONNS} keep-alive connections: first round {first_phase:?}, both rounds {:?}", started.elapsed());
    drop(held);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Secrets and the access log
// ---------------------------------------------------------------------------------------------------------------

/// A demo config for the real binary, with JSON logs.
fn json_log_demo(server_extra: &str) -> Demo {
    let demo = Demo::with(LOCAL_UPSTREAM, server_extra);
    let mut text = std::fs::read_to_string(demo.config_path()).unwrap();
    text.push_str("\n[log]\nformat = \"json\"\n");
    std::fs::write(demo.config_path(), text).unwrap();
    demo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_appears_in_logs_metrics_or_error_bodies() {
    let demo = json_log_demo("");
    let now = OffsetDateTime::now_utc();
    let good = demo.token("sec-good", "alice", "conda:download");
    let api = demo.token("sec-api", "alice", "api:read");
    let noscope = demo.token("sec-noscope", "alice", "api:read api:write");
    let bob = demo.token("sec-bob", "bob", "conda:download");
    let revoked = demo.token("sec-revoked", "bob", "conda:download");
    condagate::internals::tokens::file::revoke(&demo.config().tokens_file, "sec-revoked", Some("bob"), now).unwrap();
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let expired = demo.token_with("sec-expired", "carol", "conda", Some(expires_at), None);
    let unknown = "cg-UnknownButWellFormed0123456789ABCDEFGH".to_owned();
    let unknown_header = "cg-UnknownHeaderToken0123456789ABCDEFGH".to_owned();
    let malformed = "cg-malformed_secret_part_0123456789".to_owned();
    let malformed_header = "cg-malformed_header_secret_0123456".to_owned();
    let secrets = vec![
        good.clone(),
        api.clone(),
        noscope.clone(),
        bob.clone(),
        revoked.clone(),
        expired.clone(),
        unknown.clone(),
        unknown_header.clone(),
        malformed.clone(),
        malformed_header.clone(),
    ];
    // The secret parts alone, without the prefix, must not show either.
    let mut needles = secrets.clone();
    needles.extend(secrets.iter().map(|s| s.trim_start_matches("cg-").to_owned()));
    let wait = (expires_at - OffsetDateTime::now_utc()).whole_milliseconds().max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait + 300)).await;

    let bin = Binary::start(&demo.config_path(), &[("RUST_LOG", "debug")]);
    let basic = |t: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("conda:{t}")));
    // (path, headers, expected status or 0 for any)
    type Case = (String, Vec<(&'static str, String)>, u16);
    let cases: Vec<Case> = vec![
        (format!("/t/{good}/mychan/noarch/repodata.json"), vec![], 200),
        (format!("/t/{good}/mychan/noarch/alpha-1.0-0.tar.bz2"), vec![], 200),
        ("/mychan/noarch/repodata.json".into(), vec![("authorization", format!("Bearer {good}"))], 200),
        ("/mychan/noarch/alpha-1.0-0.tar.bz2".into(), vec![("authorization", basic(&good))], 200),
        ("/mychan/noarch/repodata.json.zst".into(), vec![("authorization", format!("token {good}"))], 200),
        (format!("/pubchan/noarch/repodata.json?token={good}"), vec![], 200),
        (format!("/t/{unknown}/mychan/noarch/repodata.json"), vec![], 401),
        ("/mychan/noarch/repodata.json".into(), vec![("authorization", format!("Bearer {unknown_header}"))], 401),
        (format!("/t/{revoked}/mychan/noarch/repodata.json"), vec![], 401),
        ("/mychan/noarch/repodata.json".into(), vec![("authorization", format!("Bearer {revoked}"))], 401),
        (format!("/t/{expired}/mychan/noarch/repodata.json"), vec![], 401),
        (format!("/t/{malformed}/mychan/noarch/repodata.json"), vec![], 401),
        ("/mychan/noarch/repodata.json".into(), vec![("authorization", format!("Bearer {malformed_header}"))], 401),
        ("/mychan/noarch/repodata.json".into(), vec![("authorization", basic(&malformed_header))], 401),
        (format!("/t/{noscope}/mychan/noarch/repodata.json"), vec![], 403),
        (format!("/t/{bob}/mychan/noarch/secretpkg-1.0-0.conda"), vec![], 404),
        (format!("/t/{bob}/nosuchchannel/noarch/repodata.json"), vec![], 403),
        (format!("/t/{bob}/mychan/noarch/alpha-1.0-0.tar.bz2"), vec![("range", "bytes=999999-".into())], 416),
        (format!("/t/{bob}/mychan/noarch/%2e%2e/%2e%2e/condagate.toml"), vec![], 0),
        (format!("/t/{good}/t/{bob}/mychan/noarch/repodata.json"), vec![], 0),
        ("/api/user".into(), vec![("authorization", format!("token {api}"))], 200),
        ("/api/user".into(), vec![("authorization", format!("token {unknown_header}"))], 401),
        ("/api/user".into(), vec![("authorization", format!("token {revoked}"))], 401),
        ("/api/user".into(), vec![("authorization", format!("token {expired}"))], 401),
        ("/api/authentications".into(), vec![("authorization", format!("token {good}"))], 0),
    ];
    for (path, headers, want) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = get(&bin.url(path), &h).await;
        if *want != 0 {
            assert_eq!(got.status.as_u16(), *want, "{}: {}", route_redacted(path), got.text());
        }
        if !got.status.is_success() {
            assert_no_secret(&format!("the error body of {}", route_redacted(path)), &got.text(), &needles);
            let headers_text = format!("{:?}", got.headers);
            assert_no_secret("error response headers", &headers_text, &needles);
        }
    }
    let metrics = get(&bin.url("/metrics"), &[]).await.text();
    assert_no_secret("/metrics", &metrics, &needles);
    assert!(
        metric(&metrics, "condagate_auth_refusals_total{reason=\"revoked-token\"}").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );

    bin.signal("TERM");
    let (status, log) = bin.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert!(log.lines().count() > cases.len(), "the debug log is suspiciously short:\n{log}");
    assert_no_secret("the server log", &log, &needles);

    let access = access_lines(&log);
    assert!(access.len() >= cases.len(), "{} access lines for {} requests:\n{log}", access.len(), cases.len());
    for line in &access {
        for field in ["status", "bytes"] {
            assert!(line.get(field).is_some(), "access line without {field}: {line}");
        }
        let path = line_path(line);
        assert!(!path.is_empty(), "access line without a path: {line}");
        if path.contains("/t/") {
            assert!(path.starts_with("/t/<redacted>/"), "unredacted path {path:?}: {line}");
        }
    }
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        access.iter().find(|l| pred(l)).unwrap_or_else(|| panic!("no access line for {what}:\n{log}")).clone()
    };
    let ok = find(
        &|l| l["token_name"] == "sec-good" && l["status"] == 200 && l["file"] == "alpha-1.0-0.tar.bz2",
        "a good download",
    );
    assert_eq!(ok["user"], "alice");
    assert_eq!(
        ok["bytes"].as_u64(),
        Some(std::fs::metadata(demo.path().join("channels/mychan/noarch/alpha-1.0-0.tar.bz2")).unwrap().len())
    );
    assert_eq!(line_path(&ok), "/t/<redacted>/mychan/noarch/alpha-1.0-0.tar.bz2");
    assert_eq!(ok["channel"], "mychan");
    assert_eq!(ok["package"], "alpha");
    let rev = find(&|l| l["reason"] == "revoked-token", "a revoked token");
    assert_eq!(
        (rev["status"].as_u64(), rev["token_name"].as_str(), rev["user"].as_str()),
        (Some(401), Some("sec-revoked"), Some("bob"))
    );
    let exp = find(&|l| l["reason"] == "expired-token", "an expired token");
    assert_eq!((exp["token_name"].as_str(), exp["user"].as_str()), (Some("sec-expired"), Some("carol")));
    let unk = find(&|l| l["reason"] == "unknown-token", "an unknown token");
    assert_eq!(unk["status"], 401);
    assert!(unk.get("token_name").is_none_or(|v| v.is_null()), "an unknown token has no name: {unk}");
    find(&|l| l["reason"] == "malformed-token", "a malformed token");
    find(&|l| l["reason"] == "missing-scope" && l["token_name"] == "sec-noscope", "a token without the download scope");
    let hdr =
        find(&|l| l["token_name"] == "sec-good" && line_path(l) == "/mychan/noarch/repodata.json", "a header token");
    assert_eq!(hdr["status"], 200);
    let api_line = find(&|l| line_path(l) == "/api/user" && l["status"] == 200, "the API call");
    assert_eq!((api_line["token_name"].as_str(), api_line["user"].as_str()), (Some("sec-api"), Some("alice")));
}

/// The path with tokens redacted, for assertion messages (which must not print secrets either).
fn route_redacted(path: &str) -> String {
    condagate::internals::conda::route::redact_path(path.split('?').next().unwrap_or(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_client_address_behind_a_trusted_proxy() {
    let demo = json_log_demo("trusted_proxies = [\"127.0.0.1\"]");
    let bin = Binary::start(&demo.config_path(), &[]);
    assert_eq!(get(&bin.url("/pubchan/noarch/hello-1.0-0.tar.bz2"), &[]).await.status, StatusCode::OK);
    assert_eq!(
        get(&bin.url("/pubchan/noarch/world-1.0-0.conda"), &[("x-forwarded-for", "203.0.113.50")]).await.status,
        StatusCode::OK
    );
    bin.signal("TERM");
    let (status, log) = bin.wait(Duration::from_secs(30)).await;
    assert!(status.success());
    let access = access_lines(&log);
    let direct =
        access.iter().find(|l| l["file"] == "hello-1.0-0.tar.bz2").expect("an access line for the direct request");
    let proxied =
        access.iter().find(|l| l["file"] == "world-1.0-0.conda").expect("an access line for the proxied request");
    assert_eq!(direct["client"], "127.0.0.1", "access line without the client address: {direct}");
    assert_eq!(proxied["client"], "203.0.113.50", "access line without the forwarded client address: {proxied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_tells_complete_downloads_from_abandoned_ones() {
    const SIZE: usize = 8 << 20;
    let demo = json_log_demo("");
    std::fs::write(demo.path().join("channels/pubchan/noarch/big-1.0-0.tar.bz2"), big_payload(SIZE)).unwrap();
    let bin = Binary::start(&demo.config_path(), &[]);
    let small = get(&bin.url("/pubchan/noarch/hello-1.0-0.tar.bz2"), &[]).await;
    assert_eq!(small.status, StatusCode::OK);
    // A revalidation: a 304 has nothing left to send, and is complete.
    let etag = small.header("etag").unwrap().to_owned();
    let again = get(&bin.url("/pubchan/noarch/hello-1.0-0.tar.bz2"), &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    let big = get(&bin.url("/pubchan/noarch/big-1.0-0.tar.bz2"), &[]).await;
    assert_eq!((big.status, big.body.len()), (StatusCode::OK, SIZE));
    // A client that gives up after the first chunk.
    {
        let mut send = h1(TcpStream::connect(bin.addr).await.unwrap()).await;
        let req =
            Request::get("/pubchan/noarch/big-1.0-0.tar.bz2?abandoned").header("host", "x").body(Empty::new()).unwrap();
        let mut body = send.send_request(req).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| d.len() < SIZE));
    }
    // Let the server notice the closed connection, then stop it (draining flushes every line).
    tokio::time::sleep(Duration::from_millis(300)).await;
    bin.signal("TERM");
    let (status, log) = bin.wait(Duration::from_secs(30)).await;
    assert!(status.success());
    let access = access_lines(&log);
    let lines: Vec<_> = access.iter().filter(|l| l["channel"] == "pubchan").collect();
    assert_eq!(lines.len(), 4, "{log}");
    let mut summary: Vec<(u64, bool)> =
        lines.iter().map(|l| (l["bytes"].as_u64().unwrap(), l["complete"].as_bool().unwrap_or(false))).collect();
    let hello_len = small.body.len() as u64;
    assert_eq!(summary[0], (hello_len, true), "a complete small download is logged as {:?}: {}", summary[0], lines[0]);
    assert_eq!((lines[1]["status"].as_u64(), summary[1]), (Some(304), (0, true)), "a 304 is logged as {}", lines[1]);
    summary.remove(1);
    assert_eq!(
        summary[1],
        (SIZE as u64, true),
        "a complete large download is logged as {:?}: {}",
        summary[1],
        lines[2]
    );
    assert!(summary[2].0 < SIZE as u64 && !summary[2].1, "an abandoned download is logged as {:?}", summary[2]);
}

// ---------------------------------------------------------------------------------------------------------------
// py-rattler over https (the venv of tests/e2e.rs, prepared the same way and under the same lock)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_rattler_installs_over_https_trusting_the_test_certificate() {
    let Some(python) = venv::python(venv::RATTLER).await else { return };
    let demo = Demo::with(LOCAL_UPSTREAM, "tls = { cert = \"cert.pem\", key = \"key.pem\" }");
    let (cert, key, _) = self_signed();
    std::fs::write(demo.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(demo.path().join("key.pem"), &key).unwrap();
    let bob = demo.token("https-bob", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let scratch = tempfile::tempdir().unwrap();
    // TLS verification stays on: the client trusts exactly the test's self-signed certificate (SSL_CERT_FILE is read
    // by the native-roots loader of rustls-platform-verifier that py-rattler uses).
    let channel = format!("https://localhost:{}/t/{bob}/mychan", proxy.addr.port());
    let run = |name: &str, ca: Option<std::path::PathBuf>| {
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/rattler_client.py"))
            .args(["--channel", &channel, "--spec", "alpha", "--mode", "sharded", "--expect", "success"])
            .arg("--prefix")
            .arg(scratch.path().join(format!("{name}-prefix")))
            .arg("--cache-dir")
            .arg(scratch.path().join(format!("{name}-cache")))
            .args(["--timeout", "240", "--max-retries", "0"])
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        async move {
            let out =
                tokio::time::timeout(Duration::from_secs(300), cmd.output()).await.expect("py-rattler hung").unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let context = format!(
                "exit {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
            let json: serde_json::Value =
                stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(serde_json::Value::Null);
            (out.status.success(), json, context)
        }
    };
    let redact = |s: &str| s.replace(&bob, "<TOKEN>");

    let (ok, json, context) = run("trusted", Some(demo.path().join("cert.pem"))).await;
    assert!(ok && json["ok"] == true, "{}", redact(&context));
    assert_eq!(json["outcome"], "success", "{}", redact(&context));
    assert_eq!(json["installed"], serde_json::json!(["alpha", "beta"]), "{}", redact(&context));

    // Control: without the test certificate the same client refuses the server (verification is really on).
    let (ok, json, context) = run("untrusted", None).await;
    assert!(!ok && json["outcome"] == "solve-failure", "a client without the CA went through:\n{}", redact(&context));
    assert!(
        context.contains("UnknownIssuer"),
        "refused for another reason than the certificate:\n{}",
        redact(&context)
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_lines_and_headers_are_refused_with_their_statuses() {
    let demo = Demo::new();
    let p = Proxy::start(demo.config()).await;
    // A request target past 8 KiB: 414, as problem+json.
    let long = format!("/pubchan/noarch/{}-1.0-0.tar.bz2", "a".repeat(9000));
    let (status, body) = raw_get(p.addr, long.as_bytes(), "").await;
    assert_eq!(status, Some(414), "{}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    assert!(String::from_utf8_lossy(&body).contains("\"status\":414"));
    // A request head past the 64 KiB buffer: hyper answers 431 before any handler runs.
    let big_header = format!("X-Filler: {}\r\n", "b".repeat(70_000));
    let (status, _) = raw_get(p.addr, b"/pubchan/noarch/repodata.json", &big_header).await;
    assert_eq!(status, Some(431));
    // More header fields than hyper parses (100): 431 as well.
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _) = raw_get(p.addr, b"/pubchan/noarch/repodata.json", &many).await;
    assert_eq!(status, Some(431));
    // And a normal request still works.
    let (status, _) = raw_get(p.addr, b"/pubchan/noarch/repodata.json", "").await;
    assert_eq!(status, Some(200));
    p.stop().await;
}

/// Sends `head` on `io` and reads until the server closes it or 30 s pass; gives the status line's code.
async fn raw_status<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut T, head: &[u8]) -> Option<u16> {
    io.write_all(head).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), io.read_to_end(&mut buf)).await;
    buf.strip_prefix(b"HTTP/1.1 ").and_then(|r| std::str::from_utf8(r.get(..3)?).ok()).and_then(|c| c.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_request_head_past_64_kib_is_refused_with_431_too() {
    let demo = Demo::with(LOCAL_UPSTREAM, "tls = { cert = \"cert.pem\", key = \"key.pem\" }");
    let (cert, key, der) = self_signed();
    std::fs::write(demo.path().join("cert.pem"), cert).unwrap();
    std::fs::write(demo.path().join("key.pem"), key).unwrap();
    let p = Proxy::start(demo.config()).await;
    let big = format!(
        "GET /pubchan/noarch/repodata.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Filler: {}\r\n\r\n",
        "b".repeat(70_000)
    );
    let small = b"GET /pubchan/noarch/repodata.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // With ALPN saying http/1.1, and with no ALPN at all.
    for alpn in [&[b"http/1.1".as_slice()][..], &[]] {
        let cfg = tls_client_config(&[&der], alpn);
        let mut tls = tls_connect(p.addr, Arc::clone(&cfg), "localhost").await;
        assert_eq!(raw_status(&mut tls, big.as_bytes()).await, Some(431), "ALPN {alpn:?}");
        let mut tls = tls_connect(p.addr, cfg, "localhost").await;
        assert_eq!(raw_status(&mut tls, small).await, Some(200), "ALPN {alpn:?}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_completes_the_connection_gives_504() {
    // A listener with a backlog of one that never accepts: once its queue is full the kernel drops further SYNs,
    // so the proxy's connect hangs until upstream.connect_timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let demo =
        Demo::with(&format!("[upstream]\nurl = \"http://{addr}\"\nconnect_timeout = \"300ms\"\ntimeout = \"30s\""), "");
    let p = Proxy::start(demo.config()).await;
    let got = get(&p.url("/pubchan/noarch/hello-1.0-0.tar.bz2"), &[]).await;
    assert_problem(&got, 504);
    drop(listener);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_style_reload_refuses_a_broken_certificate_and_takes_a_good_one() {
    let demo = Demo::with(LOCAL_UPSTREAM, "tls = { cert = \"cert.pem\", key = \"key.pem\" }");
    let (cert1, key1, der1) = self_signed();
    let (cert_path, key_path) = (demo.path().join("cert.pem"), demo.path().join("key.pem"));
    std::fs::write(&cert_path, &cert1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let proxy = Proxy::start(demo.config()).await;
    // `App::reload_all` is what SIGHUP runs. A broken key is refused, named, and shown by /healthz.
    replace_file(&key_path, "not a key");
    let err = proxy.app.reload_all().await.unwrap_err();
    assert!(err.contains("key.pem"), "{err}");
    let tls = tls_connect(proxy.addr, tls_client_config(&[&der1], &[b"http/1.1"]), "localhost").await;
    assert_eq!(leaf(&tls), der1, "the old certificate must keep serving");
    // A good pair is taken, and clears the failure.
    let (cert2, key2, der2) = self_signed();
    replace_file(&cert_path, &cert2);
    replace_file(&key_path, &key2);
    proxy.app.reload_all().await.unwrap();
    assert_eq!(proxy.app.reload_error(), None);
    let tls = tls_connect(proxy.addr, tls_client_config(&[&der2], &[b"http/1.1"]), "localhost").await;
    assert_eq!(leaf(&tls), der2);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Parked keep-alive connections
// ---------------------------------------------------------------------------------------------------------------

/// Reads one HTTP/1.1 response with a `Content-Length` body from `s`; bytes after it stay in `rest`. Returns the
/// head (lower-cased) and the body.
async fn read_response(s: &mut TcpStream, rest: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await.expect("a response").unwrap();
        assert!(n > 0, "connection closed before a response head; got {:?}", String::from_utf8_lossy(rest));
        rest.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&rest[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    rest.drain(..head_end);
    while rest.len() < len {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await.expect("the body").unwrap();
        assert!(n > 0, "connection closed {} bytes into a {len}-byte body", rest.len());
        rest.extend_from_slice(&chunk[..n]);
    }
    let body = rest.drain(..len).collect();
    (head, body)
}

/// `/metrics`, read over a connection of its own that closes (so it is never parked).
async fn metrics_text(addr: SocketAddr) -> String {
    let (status, raw) = raw_get(addr, b"/metrics", "").await;
    assert_eq!(status, Some(200));
    String::from_utf8_lossy(&raw).into_owned()
}

/// The connection gauges from `/metrics`, read over a connection of its own that closes (so it is never parked).
async fn parks(addr: SocketAddr) -> (f64, f64) {
    let text = metrics_text(addr).await;
    let parked = metric(&text, "condagate_connections_parked").expect("the parked gauge");
    let total = metric(&text, "condagate_connection_parks_total").expect("the parks counter");
    (parked, total)
}

/// Waits until `/metrics` counts more than `before` parks in all; returns the new count.
async fn until_parked(addr: SocketAddr, before: f64) -> f64 {
    let started = Instant::now();
    loop {
        let (_, total) = parks(addr).await;
        if total > before {
            return total;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no connection was parked (parks stay at {total})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const REPODATA_GET: &[u8] = b"GET /pubchan/noarch/repodata.json HTTP/1.1\r\nHost: x\r\n\r\n";

/// Opens a keep-alive connection and gets pubchan's repodata.json on it (200): the socket, the bytes read past the
/// response, and the body.
async fn connect_and_get_repodata(addr: SocketAddr) -> (TcpStream, Vec<u8>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    s.write_all(REPODATA_GET).await.unwrap();
    let (head, body) = read_response(&mut s, &mut rest).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    (s, rest, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_parked_and_serves_its_next_requests_on_the_same_socket() {
    let demo = Demo::new();
    let want = std::fs::read(demo.path().join("channels/pubchan/noarch/repodata.json")).unwrap();
    let p = Proxy::start(demo.config()).await;
    let (mut s, mut rest, body) = connect_and_get_repodata(p.addr).await;
    assert_eq!(body, want);
    let (parked_before, _) = parks(p.addr).await;
    let total = until_parked(p.addr, 0.0).await;
    let (parked, _) = parks(p.addr).await;
    assert_eq!((parked_before, parked), (0.0, 1.0), "parked gauge before and after the quiet period");

    // The parked socket takes the next request as if nothing happened: no close, same bytes.
    s.write_all(REPODATA_GET).await.unwrap();
    let (head, body) = read_response(&mut s, &mut rest).await;
    assert!(head.starts_with("http/1.1 200") && !head.contains("connection: close"), "{head}");
    assert_eq!(body, want);
    assert_eq!(parks(p.addr).await.0, 0.0, "a connection serving a request is not counted as parked");

    // Pipelined requests after a park: both answered, in order.
    let total = until_parked(p.addr, total).await;
    let mut two = REPODATA_GET.to_vec();
    two.extend_from_slice(b"GET /pubchan/noarch/no-such-file-1.0-0.tar.bz2 HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(&two).await.unwrap();
    let (first, body) = read_response(&mut s, &mut rest).await;
    let (second, _) = read_response(&mut s, &mut rest).await;
    assert!(first.starts_with("http/1.1 200"), "{first}");
    assert_eq!(body, want);
    assert!(second.starts_with("http/1.1 404"), "{second}");

    // Half a request head right after an answer, then a park: hyper has read the half and not parsed it yet; the
    // half is kept and completed by the rest. (A fresh connection with half a head is not parked; the header
    // timeout deals with it.)
    let (half, tail) = REPODATA_GET.split_at(20);
    s.write_all(half).await.unwrap();
    until_parked(p.addr, total).await;
    s.write_all(tail).await.unwrap();
    let (head, body) = read_response(&mut s, &mut rest).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, want);
    assert!(rest.is_empty());
    p.stop().await;
}

/// A valid repodata.json of about `len` bytes, many records of a public channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_worker_threads_and_each_serves_its_own() {
    let demo = Demo::with("[upstream]\ndir = \"channels\"", "workers = 3");
    let want = std::fs::read(demo.path().join("channels/pubchan/noarch/repodata.json")).unwrap();
    let p = Proxy::start(demo.config()).await;
    let mut open = Vec::new();
    for _ in 0..6 {
        open.push(connect_and_get_repodata(p.addr).await);
    }
    let text = metrics_text(p.addr).await;
    let per: Vec<f64> = (0..3)
        .map(|i| {
            let name = format!("condagate_worker_connections{{worker=\"{i}\"}}");
            metric(&text, &name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
        })
        .collect();
    // The six kept open and the one asking: each new connection goes to the least busy worker, so 3/2/2.
    assert_eq!(per.iter().sum::<f64>(), 7.0, "{per:?}");
    assert!(per.iter().all(|&n| n == 2.0 || n == 3.0), "connections not spread evenly: {per:?}");
    // Every worker goes on serving the connections it holds.
    for (s, rest, _) in &mut open {
        s.write_all(REPODATA_GET).await.unwrap();
        let (head, body) = read_response(s, rest).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, want);
    }
    drop(open);
    p.stop().await;
}

fn big_repodata(len: usize) -> Vec<u8> {
    let mut out = String::from(r#"{"info":{"subdir":"noarch"},"packages":{"#);
    let mut i = 0;
    while out.len() < len {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#""pkg{i}-1.0-0.tar.bz2":{{"name":"pkg{i}","version":"1.0","build":"0","build_number":0,"depends":[],"subdir":"noarch","size":1,"sha256":"{:064x}"}}"#,
            i
        ));
        i += 1;
    }
    out.push_str(r#"},"packages.conda":{},"repodata_version":1}"#);
    out.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_read_slowly_are_never_cut_by_parking_and_the_connection_stays_usable() {
    const SIZE: usize = 24 << 20;
    let demo = Demo::new();
    let package = big_payload(SIZE);
    let noarch = demo.path().join("channels/pubchan/noarch");
    std::fs::write(noarch.join("big-1.0-0.tar.bz2"), &package).unwrap();
    // Repodata is served from memory as one piece: hyper has the whole body at once and then owes the socket
    // megabytes that a stalled reader does not take, with no request left in flight.
    let repodata = big_repodata(SIZE);
    std::fs::write(noarch.join("repodata.json"), &repodata).unwrap();
    let p = Proxy::start(demo.config()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut rest = Vec::new();
    let mut parked = 0.0;
    for (path, want) in [("big-1.0-0.tar.bz2", &package), ("repodata.json", &repodata)] {
        let get = format!("GET /pubchan/noarch/{path} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(get.as_bytes()).await.unwrap();
        // Read nothing for four times the quiet period after which an idle connection is parked.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (head, body) = read_response(&mut s, &mut rest).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(body == *want, "{path}: the body differs ({} of {} bytes)", body.len(), want.len());
        // After the download the connection is parked, and then serves again.
        parked = until_parked(p.addr, parked).await;
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_at_the_idle_limit() {
    let demo = Demo::with(LOCAL_UPSTREAM, "header_read_timeout = \"1s\"");
    let p = Proxy::start(demo.config()).await;
    let (mut s, _, _) = connect_and_get_repodata(p.addr).await;
    until_parked(p.addr, 0.0).await;
    // Then the server closes it: the read sees the end of the stream.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "a parked connection past the idle limit stays open: {n:?}");
    p.stop().await;
}
