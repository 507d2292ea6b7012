//! Secrets kept out of logs, metrics and bodies: every kind of token, in every place, through the real binary.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::time::Duration;

use base64::Engine as _;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use time::OffsetDateTime;
use tokio::net::TcpStream;

use support::binary::*;
use support::tls::*;
use support::*;

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
    // Expired by an edit of the file, as time would: no waiting.
    let expired = demo.token("sec-expired", "carol", "conda");
    condagate::internals::tokens::file::update(&demo.config().tokens_file, |records| {
        records.iter_mut().find(|r| &*r.name == "sec-expired").unwrap().expires = Some(now - time::Duration::hours(1));
        Ok(())
    })
    .unwrap();
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
