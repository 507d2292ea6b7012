//! Slow and idle clients: slowloris heads, readers that stop reading, and idle keep-alive connections parked without
//! hyper's buffers.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::tls::*;
use support::*;

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

    // Six times the timeout: a connection still open by then was not cut by it.
    let limit = Duration::from_secs(3);
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
