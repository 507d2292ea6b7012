//! TLS and HTTP/2 on loopback with the real binary and in-process servers: certificate reload without dropped
//! connections, a broken key refused by name, and py-rattler over https trusting exactly the test certificate
//! (`SSL_CERT_FILE`; TLS verification is never disabled).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::tls::*;
use support::*;

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
    assert_problem(&got, 504, &[], "an upstream fault");
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
