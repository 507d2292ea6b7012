//! Serving through faults and load: brute-force throttling behind a trusted proxy, upstream faults, graceful drain of
//! the real binary on SIGTERM, and thousands of concurrent keep-alive connections.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use support::binary::*;
use support::tls::*;
use support::*;

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
    assert_problem(&got, 502, &[], "an upstream fault");
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
        assert_problem(&got, 502, &[], "an upstream fault");
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
        assert_problem(&got, 504, &[], "an upstream fault");
    }
    assert!(!rec.seen().is_empty(), "the hanging upstream was never asked");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Graceful drain of the real binary
// ---------------------------------------------------------------------------------------------------------------

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
