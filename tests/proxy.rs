//! Integration tests of the core proxy (issue 2, "Tests that must exist"): the status table for every credential form,
//! streaming, cut and failing upstreams, ranges and validators for both upstream kinds, what reaches an HTTP upstream,
//! hostile paths, and logs without secrets. Every test starts its own servers on 127.0.0.1:0.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;
use support::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use condagate::config::Config;
use condagate::internals::tokens::file;
use http_body_util::BodyExt;
use time::OffsetDateTime;

// ---------------------------------------------------------------------------------------------------------------
// helpers

/// The ways a client can present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    /// `/t/<TOKEN>/…`
    Path,
    /// `Authorization: Bearer <TOKEN>`
    Bearer,
    /// `Authorization: token <TOKEN>` (anaconda-client)
    TokenScheme,
    /// `Authorization: Basic base64(any-user:<TOKEN>)`
    Basic,
}

/// URL and headers for `rest` (e.g. `/mychan/noarch/repodata.json`) with `token` presented as `cred`.
fn addressed(p: &Proxy, cred: Cred, token: Option<&str>, rest: &str) -> (String, Vec<(String, String)>) {
    let Some(t) = token else {
        return (p.url(rest), Vec::new());
    };
    match cred {
        Cred::Path => (p.url(&format!("/t/{t}{rest}")), Vec::new()),
        Cred::Bearer => (p.url(rest), vec![("authorization".into(), format!("Bearer {t}"))]),
        Cred::TokenScheme => (p.url(rest), vec![("authorization".into(), format!("token {t}"))]),
        Cred::Basic => {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("someone:{t}"));
            (p.url(rest), vec![("authorization".into(), format!("Basic {b}"))])
        }
    }
}

async fn call(p: &Proxy, method: &str, cred: Cred, token: Option<&str>, rest: &str, extra: &[(&str, &str)]) -> Got {
    let (url, hs) = addressed(p, cred, token, rest);
    let mut all: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    request(method, &url, &all).await
}

async fn fetch(p: &Proxy, cred: Cred, token: Option<&str>, rest: &str) -> Got {
    call(p, "GET", cred, token, rest, &[]).await
}

fn detail(v: &serde_json::Value) -> &str {
    v["detail"].as_str().unwrap_or("")
}

fn file(demo: &Demo, rel: &str) -> Vec<u8> {
    std::fs::read(demo.path().join("channels").join(rel)).unwrap()
}

/// A configuration for the demo channels with another `[upstream]` table, sharing the demo's folder and tokens.
fn demo_config_with(demo: &Demo, upstream: &str) -> Config {
    Config::from_toml_str(&demo_config_text(upstream, ""), demo.path()).unwrap_or_else(|e| panic!("{e}"))
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

const EXPIRED_AT: &str = "2024-05-06T07:08:09Z";

/// The tokens of the status table, created (and revoked / expired) before the proxy starts.
struct Tokens {
    bob: String,
    alice: String,
    zed: String,
    api: String,
    revoked: String,
    expired: String,
}

fn tokens(demo: &Demo) -> Tokens {
    let bob = demo.token("bob-dl", "bob", "conda:download");
    let alice = demo.token("alice-dl", "alice", "conda");
    let zed = demo.token("zed-dl", "zed", "repos");
    let api = demo.token("bob-api", "bob", "api");
    let revoked = demo.token("bob-old", "bob", "all");
    let expired = demo.token("bob-exp", "bob", "conda:download");
    let cfg = demo.config();
    file::revoke(&cfg.tokens_file, "bob-old", Some("bob"), OffsetDateTime::now_utc()).unwrap();
    let at = OffsetDateTime::parse(EXPIRED_AT, &time::format_description::well_known::Rfc3339).unwrap();
    file::update(&cfg.tokens_file, |records| {
        records.iter_mut().find(|r| &*r.name == "bob-exp").unwrap().expires = Some(at);
        Ok(())
    })
    .unwrap();
    Tokens { bob, alice, zed, api, revoked, expired }
}

// ---------------------------------------------------------------------------------------------------------------
// the status table, once per credential form

async fn status_table(cred: Cred) {
    let demo = Demo::new();
    let t = tokens(&demo);
    let malformed = "not_a.token";
    let unknown = "cg-0123456789abcdefghijklmnopqrstuvwxyzAB";
    let all = [t.bob.as_str(), &t.alice, &t.zed, &t.api, &t.revoked, &t.expired, malformed, unknown];
    let p = Proxy::start(demo.config()).await;
    let what = |s: &str| format!("{cred:?}: {s}");

    // Sanity: the good paths work, so the refusals below are refusals of these requests and nothing else.
    let ok = fetch(&p, cred, Some(&t.bob), "/mychan/noarch/alpha-1.0-0.tar.bz2").await;
    assert_eq!(ok.status, 200, "{}", what("bob alpha"));
    assert_eq!(ok.body, file(&demo, "mychan/noarch/alpha-1.0-0.tar.bz2"));
    let ok = fetch(&p, cred, Some(&t.zed), "/authchan/noarch/hello-1.0-0.tar.bz2").await;
    assert_eq!(ok.status, 200, "{}", what("zed on the authenticated channel"));
    assert_eq!(ok.body, file(&demo, "pubchan/noarch/hello-1.0-0.tar.bz2"));
    let ok = fetch(&p, cred, None, "/pubchan/noarch/hello-1.0-0.tar.bz2").await;
    assert_eq!(ok.status, 200, "{}", what("anonymous on the public channel"));
    // A valid token without a download scope still reads a public channel: public means anyone.
    let ok = fetch(&p, cred, Some(&t.api), "/pubchan/noarch/repodata.json").await;
    assert_eq!(ok.status, 200, "{}", what("api token on the public channel"));
    // Repodata caching: public for the public channel; for the others, shared caches must ask again on every use
    // (s-maxage=0), so the token is checked each time; header credentials vary.
    let anon = fetch(&p, cred, None, "/pubchan/noarch/repodata.json").await;
    assert_eq!(anon.header("cache-control"), Some("public, max-age=60"), "{}", what("public repodata"));
    for (tok, rest) in [(&t.bob, "/mychan/noarch/repodata.json"), (&t.zed, "/authchan/noarch/repodata.json")] {
        let g = fetch(&p, cred, Some(tok), rest).await;
        assert_eq!(g.status, 200, "{}", what(rest));
        let cc = g.header("cache-control").unwrap_or("");
        assert_eq!(cc, "max-age=60, s-maxage=0", "{}", what(rest));
        if cred != Cred::Path {
            let vary = g.header("vary").unwrap_or("");
            assert!(vary.to_ascii_lowercase().contains("authorization"), "{}: Vary {vary:?}", what(rest));
        }
    }

    // No credentials on private / authenticated channels: 401 + WWW-Authenticate.
    for rest in ["/mychan/noarch/repodata.json", "/mychan/noarch/alpha-1.0-0.tar.bz2", "/authchan/noarch/repodata.json"]
    {
        let g = fetch(&p, cred, None, rest).await;
        assert_problem(&g, 401, &all, &what(rest));
        let challenges: Vec<String> =
            g.headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert!(challenges.iter().any(|c| c.starts_with("Bearer")), "{}: {challenges:?}", what(rest));
        assert!(challenges.iter().any(|c| c.starts_with("Basic")), "{}: {challenges:?}", what(rest));
    }

    // Malformed, unknown, revoked tokens: 401, on the public channel too (no silent downgrade).
    for (tok, word) in [(malformed, "malformed"), (unknown, "invalid"), (t.revoked.as_str(), "revoked")] {
        for rest in
            ["/mychan/noarch/repodata.json", "/pubchan/noarch/hello-1.0-0.tar.bz2", "/authchan/noarch/repodata.json"]
        {
            let g = fetch(&p, cred, Some(tok), rest).await;
            let v = assert_problem(&g, 401, &all, &what(&format!("{word} token on {rest}")));
            assert!(detail(&v).contains(word), "{}: {v}", what(word));
            assert!(g.header("www-authenticate").is_some(), "{}", what(word));
        }
    }

    // Expired: 401, and the detail says so and when.
    for rest in ["/mychan/noarch/repodata.json", "/pubchan/noarch/repodata.json"] {
        let g = fetch(&p, cred, Some(&t.expired), rest).await;
        let v = assert_problem(&g, 401, &all, &what("expired"));
        assert!(detail(&v).contains("expired"), "{}: {v}", what("expired"));
        assert!(detail(&v).contains(EXPIRED_AT), "{}: {v}", what("expired: when"));
    }

    // A valid token without a download scope: 403.
    for rest in ["/mychan/noarch/repodata.json", "/authchan/noarch/hello-1.0-0.tar.bz2"] {
        let g = fetch(&p, cred, Some(&t.api), rest).await;
        let v = assert_problem(&g, 403, &all, &what("api scope"));
        assert!(detail(&v).contains("scope"), "{}: {v}", what("api scope"));
    }

    // A user who may not read the channel (or label): 403.
    for rest in
        ["/mychan/noarch/repodata.json", "/mychan/noarch/alpha-1.0-0.tar.bz2", "/mychan/label/dev/noarch/repodata.json"]
    {
        let g = fetch(&p, cred, Some(&t.zed), rest).await;
        assert_problem(&g, 403, &all, &what(&format!("zed on {rest}")));
    }

    // Hidden, missing, unknown channel, kind not served: 404, hidden and missing indistinguishable.
    let hidden = fetch(&p, cred, Some(&t.bob), "/mychan/noarch/secretpkg-1.0-0.conda").await;
    assert_problem(&hidden, 404, &all, &what("hidden"));
    let missing = fetch(&p, cred, Some(&t.bob), "/mychan/noarch/alpha-9.9-0.tar.bz2").await;
    assert_problem(&missing, 404, &all, &what("missing"));
    assert_eq!(hidden.body, missing.body, "{}", what("hidden vs missing bodies"));
    let mut hh: Vec<_> = hidden.headers.iter().filter(|(k, _)| *k != "date").collect();
    let mut mh: Vec<_> = missing.headers.iter().filter(|(k, _)| *k != "date").collect();
    hh.sort_by_key(|(k, _)| k.as_str());
    mh.sort_by_key(|(k, _)| k.as_str());
    assert_eq!(hh, mh, "{}", what("hidden vs missing headers"));
    // The owner sees the hidden package: the 404 above was a decision about bob, not a missing file.
    let owner = fetch(&p, cred, Some(&t.alice), "/mychan/noarch/secretpkg-1.0-0.conda").await;
    assert_eq!(owner.status, 200, "{}", what("owner"));
    assert_eq!(owner.body, file(&demo, "mychan/noarch/secretpkg-1.0-0.conda"));
    let missing_owner = fetch(&p, cred, Some(&t.alice), "/mychan/noarch/secretpkg-9.9-0.conda").await;
    assert_problem(&missing_owner, 404, &all, &what("owner, missing"));
    assert_eq!(missing_owner.body, hidden.body);
    // An unknown channel answers as a channel the token's user cannot reach, so no caller learns which private
    // channels exist.
    for rest in ["/nochan/noarch/repodata.json", "/nochan/noarch/alpha-1.0-0.tar.bz2"] {
        let g = fetch(&p, cred, Some(&t.alice), rest).await;
        assert_problem(&g, 403, &all, &what(rest));
    }
    for rest in [
        "/mychan/noarch/index.html",
        "/mychan/noarch/repodata.json.gz",
        "/mychan/noarch/channeldata.json",
        "/mychan/noarch/alpha-1.0-0.zip",
    ] {
        let g = fetch(&p, cred, Some(&t.alice), rest).await;
        assert_problem(&g, 404, &all, &what(rest));
        assert_eq!(g.body, hidden.body, "{}: 404 bodies differ", what(rest));
    }

    // Methods other than GET and HEAD: 405 with Allow.
    for method in ["POST", "PUT", "DELETE"] {
        let g = call(&p, method, cred, Some(&t.bob), "/mychan/noarch/repodata.json", &[]).await;
        assert_problem(&g, 405, &all, &what(method));
        let allow = g.header("allow").unwrap_or_else(|| panic!("{}: no Allow", what(method)));
        assert!(allow.contains("GET") && allow.contains("HEAD"), "{}: {allow}", what(method));
    }
    p.stop().await;
}

#[tokio::test]
async fn status_table_with_a_path_token() {
    status_table(Cred::Path).await;
}

#[tokio::test]
async fn status_table_with_a_bearer_header() {
    status_table(Cred::Bearer).await;
}

#[tokio::test]
async fn status_table_with_a_token_header() {
    status_table(Cred::TokenScheme).await;
}

#[tokio::test]
async fn status_table_with_basic_auth() {
    status_table(Cred::Basic).await;
}

#[tokio::test]
async fn a_path_token_wins_over_a_header_token() {
    let demo = Demo::new();
    let t = tokens(&demo);
    let p = Proxy::start(demo.config()).await;
    let secret = "/mychan/noarch/secretpkg-1.0-0.conda";
    let bearer = |tok: &str| format!("Bearer {tok}");
    // Path: alice (owner) — header: zed (no access). Alice's decision applies.
    let g = get(&p.url(&format!("/t/{}{secret}", t.alice)), &[("authorization", &bearer(&t.zed))]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    // Path: zed — header: alice. Zed's decision applies.
    let g = get(&p.url(&format!("/t/{}{secret}", t.zed)), &[("authorization", &bearer(&t.alice))]).await;
    assert_problem(&g, 403, &[&t.alice, &t.zed], "zed in the path");
    // Path: bob (hidden package) — header: alice.
    let g = get(&p.url(&format!("/t/{}{secret}", t.bob)), &[("authorization", &bearer(&t.alice))]).await;
    assert_problem(&g, 404, &[&t.alice, &t.bob], "bob in the path");
    // Path: a revoked token — header: a good one. The path's refusal stands.
    let g = get(&p.url(&format!("/t/{}{secret}", t.revoked)), &[("authorization", &bearer(&t.alice))]).await;
    assert_problem(&g, 401, &[&t.alice, &t.revoked], "revoked in the path");
    // Path: good — header: garbage. The header is not even looked at.
    let g = get(&p.url(&format!("/t/{}{secret}", t.alice)), &[("authorization", "Bearer not_a.token")]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// upstream failures

#[tokio::test]
async fn upstream_failures_are_502_and_504_for_every_credential_form() {
    let demo = Demo::new();
    let t = tokens(&demo);
    let secrets = [t.bob.as_str(), &t.alice];
    let rec = Recorder::start(demo.path().join("channels")).await;
    let up = format!("[upstream]\nurl = \"{}\"\ntimeout = \"300ms\"", rec.url());
    let p = Proxy::start(demo_config_with(&demo, &up)).await;
    let gone = closed_port().await;
    let dead = Proxy::start(demo_config_with(&demo, &format!("[upstream]\nurl = \"http://{gone}\""))).await;

    // A repodata document fetched from an HTTP upstream may be reused while fresh, so each credential form asks for
    // a document not fetched before, and sees the failures before any successful fetch of it.
    let views = [
        (Cred::Path, "/mychan/noarch/repodata.json"),
        (Cred::Bearer, "/mychan/linux-64/repodata.json"),
        (Cred::TokenScheme, "/mychan/label/dev/noarch/repodata.json"),
        (Cred::Basic, "/mychan/label/dev/linux-64/repodata.json"),
    ];
    for (cred, view) in views {
        for rest in ["/mychan/noarch/alpha-1.0-0.tar.bz2", view] {
            rec.set(Behaviour::Hang);
            let g = fetch(&p, cred, Some(&t.bob), rest).await;
            assert_problem(&g, 504, &secrets, &format!("{cred:?} {rest}: hanging upstream"));

            rec.set(Behaviour::Fail);
            let g = fetch(&p, cred, Some(&t.bob), rest).await;
            assert_problem(&g, 502, &secrets, &format!("{cred:?} {rest}: upstream 500"));

            let g = fetch(&dead, cred, Some(&t.bob), rest).await;
            assert_problem(&g, 502, &secrets, &format!("{cred:?} {rest}: unreachable upstream"));

            // The same request through a working upstream succeeds: the failures above were the upstream's.
            rec.set(Behaviour::Normal);
            let g = fetch(&p, cred, Some(&t.bob), rest).await;
            assert_eq!(g.status, 200, "{cred:?} {rest} through a working recorder: {}", g.text());
        }
        // The owner's unfiltered path relays the upstream too, and fails the same way.
        rec.set(Behaviour::Hang);
        let g = fetch(&p, cred, Some(&t.alice), "/mychan/noarch/repodata.json.zst").await;
        assert_problem(&g, 504, &secrets, &format!("{cred:?}: owner, hanging upstream"));
    }
    // Refusals are decided before the upstream is asked: a hanging upstream does not turn them into 504.
    let g = fetch(&p, Cred::Path, Some(&t.zed), "/mychan/noarch/repodata.json").await;
    assert_problem(&g, 403, &[&t.zed], "zed with a hanging upstream");
    p.stop().await;
    dead.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// streaming and cut transfers

#[tokio::test]
async fn a_large_package_streams_before_the_upstream_finishes() {
    let demo = Demo::new();
    let big: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(demo.path().join("channels/pubchan/noarch/big-1.0-0.tar.bz2"), &big).unwrap();
    let total_chunks = big.len().div_ceil(65536);
    let rec = Recorder::start(demo.path().join("channels")).await;
    rec.set(Behaviour::Slow(Duration::from_millis(1)));
    let p = Proxy::start(demo_config_with(&demo, &format!("[upstream]\nurl = \"{}\"", rec.url()))).await;

    // Hold the recorder after its first chunk: whatever the client gets now, the upstream has not sent the rest.
    let hold = Arc::clone(&rec.hold).write_owned().await;
    let resp =
        tokio::time::timeout(Duration::from_secs(60), open("GET", &p.url("/pubchan/noarch/big-1.0-0.tar.bz2"), &[]))
            .await
            .expect("no response head while the upstream held the rest of the body: the proxy buffers");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], big.len().to_string().as_str());
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let f = body.frame().await.expect("body ended").expect("body failed");
            if let Ok(d) = f.into_data() {
                if !d.is_empty() {
                    return d;
                }
            }
        }
    })
    .await
    .expect("no body bytes while the upstream held the rest of the body: the proxy buffers");
    let sent = rec.chunks_sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < total_chunks,
        "the upstream had sent {sent} of {total_chunks} chunks when the client got its first bytes"
    );
    assert_eq!(sent, 1, "the recorder was held after its first chunk");
    assert_eq!(&first[..], &big[..first.len()]);

    // Let the rest go: the whole file arrives intact.
    drop(hold);
    let rest = body.collect().await.expect("the rest of the body").to_bytes();
    let mut got = first.to_vec();
    got.extend_from_slice(&rest);
    assert_eq!(got.len(), big.len());
    assert!(got == big, "the streamed body differs from the file");
    assert_eq!(rec.chunks_sent.load(std::sync::atomic::Ordering::SeqCst), total_chunks);
    p.stop().await;
}

#[tokio::test]
async fn an_upstream_cut_mid_body_fails_the_client_transfer() {
    let demo = Demo::new();
    let bob = demo.token("bob-dl", "bob", "conda:download");
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(demo.path().join("channels/pubchan/noarch/big-1.0-0.tar.bz2"), &big).unwrap();
    let rec = Recorder::start(demo.path().join("channels")).await;
    let p = Proxy::start(demo_config_with(&demo, &format!("[upstream]\nurl = \"{}\"", rec.url()))).await;
    rec.set(Behaviour::CutMidBody);
    // A large file: the head (promising the whole length) reaches the client before the cut; the body must then
    // fail, never end short and look complete.
    let (status, headers, body) = try_get(&p.url("/pubchan/noarch/big-1.0-0.tar.bz2"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], big.len().to_string().as_str());
    if let Ok(b) = body {
        panic!("a cut transfer ended normally with {} of {} bytes", b.len(), big.len());
    }
    // A small file may be cut before the upstream's head was even flushed: then 502. Either way, no short 200.
    let small = file(&demo, "pubchan/noarch/hello-1.0-0.tar.bz2");
    for _ in 0..5 {
        let (status, headers, body) = try_get(&p.url("/pubchan/noarch/hello-1.0-0.tar.bz2"), &[]).await;
        match (status.as_u16(), body) {
            (200, Ok(b)) => panic!("a cut transfer ended normally with {} of {} bytes", b.len(), small.len()),
            (200, Err(_)) => assert_eq!(headers["content-length"], small.len().to_string().as_str()),
            (502, Ok(b)) => assert!(String::from_utf8_lossy(&b).contains("\"status\":502")),
            (other, b) => panic!("cut small transfer: {other} {b:?}"),
        }
    }
    // A view built from a cut document is an upstream failure, not a short or empty repodata.
    let g = get(&p.url(&format!("/t/{bob}/mychan/noarch/repodata.json")), &[]).await;
    assert_problem(&g, 502, &[&bob], "view from a cut document");
    rec.set(Behaviour::Normal);
    let g = get(&p.url(&format!("/t/{bob}/mychan/noarch/repodata.json")), &[]).await;
    assert_eq!(g.status, 200);
    assert!(g.json()["packages"]["alpha-1.0-0.tar.bz2"].is_object());
    p.stop().await;
}

#[tokio::test]
async fn an_upstream_stalling_mid_body_fails_the_client_transfer() {
    let demo = Demo::new();
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(demo.path().join("channels/pubchan/noarch/big-1.0-0.tar.bz2"), &big).unwrap();
    let rec = Recorder::start(demo.path().join("channels")).await;
    let upstream = format!("[upstream]\nurl = \"{}\"\ntimeout = \"300ms\"", rec.url());
    let p = Proxy::start(demo_config_with(&demo, &upstream)).await;
    // The head comes at once; every chunk after it waits far longer than the upstream timeout.
    rec.set(Behaviour::Slow(std::time::Duration::from_secs(30)));
    let (status, headers, body) = try_get(&p.url("/pubchan/noarch/big-1.0-0.tar.bz2"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], big.len().to_string().as_str());
    if let Ok(b) = body {
        panic!("a stalled transfer ended normally with {} of {} bytes", b.len(), big.len());
    }
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// ranges, HEAD and validators, for a local folder and for an HTTP upstream

async fn conditional_suite(p: &Proxy, demo: &Demo, bob: &str, alice: &str, label: &str) {
    let cases: [(&str, Option<&str>, &str); 4] = [
        ("/mychan/noarch/alpha-1.0-0.tar.bz2", Some(bob), "mychan/noarch/alpha-1.0-0.tar.bz2"),
        ("/pubchan/noarch/world-1.0-0.conda", None, "pubchan/noarch/world-1.0-0.conda"),
        ("/mychan/noarch/repodata.json", Some(alice), "mychan/noarch/repodata.json"),
        ("/mychan/noarch/repodata.json.zst", Some(alice), "mychan/noarch/repodata.json.zst"),
    ];
    for (rest, token, rel) in cases {
        let what = format!("{label} {rest}");
        let data = file(demo, rel);
        let n = data.len();
        assert!(n > 120, "{what}: test file too small");
        let whole = call(p, "GET", Cred::Path, token, rest, &[]).await;
        assert_eq!(whole.status, 200, "{what}: {}", whole.text());
        assert_eq!(whole.body, data, "{what}: body");
        assert_eq!(whole.header("content-length"), Some(n.to_string().as_str()), "{what}");
        let etag = whole.header("etag").unwrap_or_else(|| panic!("{what}: no ETag")).to_owned();
        let modified = whole.header("last-modified").unwrap_or_else(|| panic!("{what}: no Last-Modified")).to_owned();

        // bytes=a-b
        let (url, hs) = addressed(p, Cred::Path, token, rest);
        let with = |extra: Vec<(&str, String)>| {
            let url = url.clone();
            let mut h: Vec<(String, String)> = hs.clone();
            h.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
            async move {
                let r: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                get(&url, &r).await
            }
        };
        let g = with(vec![("range", "bytes=10-19".into())]).await;
        assert_eq!(g.status, 206, "{what}: bytes=10-19: {}", g.text());
        assert_eq!(g.header("content-range"), Some(format!("bytes 10-19/{n}").as_str()), "{what}");
        assert_eq!(g.header("content-length"), Some("10"), "{what}");
        assert_eq!(&g.body[..], &data[10..20], "{what}: bytes=10-19");
        // bytes=a- (how conda resumes)
        let g = with(vec![("range", "bytes=100-".into())]).await;
        assert_eq!(g.status, 206, "{what}: bytes=100-");
        assert_eq!(g.header("content-range"), Some(format!("bytes 100-{}/{n}", n - 1).as_str()), "{what}");
        assert_eq!(&g.body[..], &data[100..], "{what}: bytes=100-");
        // unsatisfiable
        let g = with(vec![("range", format!("bytes={n}-"))]).await;
        assert_problem(&g, 416, &[bob, alice], &format!("{what}: bytes={n}-"));
        assert_eq!(g.header("content-range"), Some(format!("bytes */{n}").as_str()), "{what}: 416 Content-Range");

        // HEAD: same headers, no body.
        let h = call(p, "HEAD", Cred::Path, token, rest, &[]).await;
        assert_eq!(h.status, 200, "{what}: HEAD");
        assert!(h.body.is_empty(), "{what}: HEAD has a body");
        assert_eq!(h.header("content-length"), Some(n.to_string().as_str()), "{what}: HEAD Content-Length");
        assert_eq!(h.header("etag"), Some(etag.as_str()), "{what}: HEAD ETag");
        assert_eq!(h.header("content-type"), whole.header("content-type"), "{what}: HEAD Content-Type");

        // If-None-Match
        let g = with(vec![("if-none-match", etag.clone())]).await;
        assert_eq!(g.status, 304, "{what}: If-None-Match");
        assert!(g.body.is_empty(), "{what}: 304 with a body");
        assert_eq!(g.header("etag"), Some(etag.as_str()), "{what}: 304 ETag");
        let g = with(vec![("if-none-match", "\"something-else\"".into())]).await;
        assert_eq!(g.status, 200, "{what}: If-None-Match of another version");
        assert_eq!(g.body, data);
        // If-Modified-Since
        let g = with(vec![("if-modified-since", modified.clone())]).await;
        assert_eq!(g.status, 304, "{what}: If-Modified-Since");
        assert!(g.body.is_empty(), "{what}: 304 with a body");
        let g = with(vec![("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT".into())]).await;
        assert_eq!(g.status, 200, "{what}: If-Modified-Since long ago");
        assert_eq!(g.body, data);
    }

    // A filtered view (bob): ranges, HEAD and If-None-Match on the view's own bytes.
    let rest = "/mychan/noarch/repodata.json";
    let view = call(p, "GET", Cred::Path, Some(bob), rest, &[]).await;
    assert_eq!(view.status, 200);
    assert!(view.json()["packages.conda"].get("secretpkg-1.0-0.conda").is_none(), "{label}: bob's view");
    let n = view.body.len();
    let etag = view.header("etag").unwrap().to_owned();
    let g = call(p, "GET", Cred::Path, Some(bob), rest, &[("range", "bytes=0-9")]).await;
    assert_eq!(g.status, 206, "{label}: view range");
    assert_eq!(g.header("content-range"), Some(format!("bytes 0-9/{n}").as_str()));
    assert_eq!(&g.body[..], &view.body[..10]);
    let g = call(p, "GET", Cred::Path, Some(bob), rest, &[("range", "bytes=5-")]).await;
    assert_eq!(&g.body[..], &view.body[5..], "{label}: view range a-");
    let g = call(p, "GET", Cred::Path, Some(bob), rest, &[("range", "bytes=999999-")]).await;
    assert_problem(&g, 416, &[bob], "view 416");
    assert_eq!(g.header("content-range"), Some(format!("bytes */{n}").as_str()));
    let h = call(p, "HEAD", Cred::Path, Some(bob), rest, &[]).await;
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(h.header("content-length"), Some(n.to_string().as_str()), "{label}: view HEAD length");
    let g = call(p, "GET", Cred::Path, Some(bob), rest, &[("if-none-match", &etag)]).await;
    assert_eq!(g.status, 304, "{label}: view If-None-Match");
    assert_eq!(g.header("etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn ranges_head_and_validators_from_a_local_folder() {
    let demo = Demo::new();
    let bob = demo.token("bob-dl", "bob", "conda:download");
    let alice = demo.token("alice-dl", "alice", "conda:download");
    let p = Proxy::start(demo.config()).await;
    conditional_suite(&p, &demo, &bob, &alice, "dir").await;
    p.stop().await;
}

/// A second condagate serving the demo's channels folder as public channels: a real HTTP mirror.
async fn mirror_of(channels: &Path) -> (tempfile::TempDir, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[tokens]\nfile = \"tokens.toml\"\n[upstream]\ndir = '{}'\n\
         [[channels]]\nname = \"mychan\"\naccess = \"public\"\n[[channels]]\nname = \"pubchan\"\naccess = \"public\"\n",
        channels.display()
    );
    let cfg = Config::from_toml_str(&text, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (dir, Proxy::start(cfg).await)
}

#[tokio::test]
async fn ranges_head_and_validators_through_an_http_upstream() {
    let demo = Demo::new();
    let bob = demo.token("bob-dl", "bob", "conda:download");
    let alice = demo.token("alice-dl", "alice", "conda:download");
    let (_mirror_dir, mirror) = mirror_of(&demo.path().join("channels")).await;
    let p = Proxy::start(demo_config_with(&demo, &format!("[upstream]\nurl = \"http://{}\"", mirror.addr))).await;
    conditional_suite(&p, &demo, &bob, &alice, "http").await;
    // The mirror really was asked (and without the token).
    let m = get(&mirror.url("/metrics"), &[]).await.text();
    let served = metric(&m, "condagate_requests_total{class=\"2xx\"}").unwrap_or(0.0);
    assert!(served >= 10.0, "the mirror served {served} requests:\n{m}");
    p.stop().await;
    mirror.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// what an HTTP upstream receives

#[tokio::test]
async fn the_http_upstream_gets_no_token_no_client_authorization_and_the_configured_header() {
    let demo = Demo::new();
    let t = tokens(&demo);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("someone:{}", t.alice));
    let secrets = [t.bob.clone(), t.alice.clone(), basic.clone()];
    let rec = Recorder::start(demo.path().join("channels")).await;
    let up = format!("[upstream]\nurl = \"{}\"\nheaders = {{ X-Upstream-Key = \"k1\" }}", rec.url());
    let p = Proxy::start(demo_config_with(&demo, &up)).await;
    let hostile = [
        ("cookie", "session=abc"),
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("x-forwarded-for", "10.9.8.7"),
    ];
    let requests: [(Cred, &str, &str); 9] = [
        (Cred::Path, &t.bob, "/mychan/noarch/alpha-1.0-0.tar.bz2"),
        (Cred::Path, &t.bob, "/mychan/noarch/repodata.json"),
        (Cred::Path, &t.bob, "/mychan/noarch/repodata_shards.msgpack.zst"),
        (Cred::Bearer, &t.bob, "/mychan/noarch/beta-1.0-0.tar.bz2"),
        (Cred::Bearer, &t.bob, "/mychan/label/dev/noarch/repodata.json.zst"),
        (Cred::Basic, &t.alice, "/mychan/noarch/secretpkg-1.0-0.conda"),
        (Cred::TokenScheme, &t.alice, "/mychan/noarch/repodata.json.zst"),
        (Cred::Path, &t.alice, "/pubchan/noarch/hello-1.0-0.tar.bz2"),
        (Cred::Bearer, &t.alice, "/mychan/linux-64/gamma-1.0-0.tar.bz2"),
    ];
    for (cred, tok, rest) in requests {
        let g = call(&p, "GET", cred, Some(tok), rest, &hostile).await;
        assert_eq!(g.status, 200, "{cred:?} {rest}: {}", g.text());
    }
    let seen = rec.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    for want in [
        "/mychan/noarch/alpha-1.0-0.tar.bz2",
        "/mychan/noarch/repodata.json",
        "/mychan/noarch/repodata_shards.msgpack.zst",
        "/mychan/noarch/secretpkg-1.0-0.conda",
        "/mychan/label/dev/noarch/repodata.json",
        "/pubchan/noarch/hello-1.0-0.tar.bz2",
    ] {
        assert!(paths.contains(&want), "the upstream never saw {want}: {paths:?}");
    }
    for s in &seen {
        assert!(!s.path.starts_with("/t/") && !s.path.contains("/t/"), "token path upstream: {}", s.path);
        assert!(s.path.starts_with("/mychan/") || s.path.starts_with("/pubchan/"), "{}", s.path);
        for secret in &secrets {
            assert!(!s.path.contains(secret.as_str()), "a token in the upstream path {}", s.path);
        }
        assert!(s.headers.get("authorization").is_none(), "{}: Authorization went upstream", s.path);
        for h in ["cookie", "proxy-authorization", "x-hop", "x-forwarded-for"] {
            assert!(s.headers.get(h).is_none(), "{}: client header {h} went upstream", s.path);
        }
        assert_eq!(s.headers.get("x-upstream-key").map(|v| v.as_bytes()), Some(&b"k1"[..]), "{}", s.path);
        for (k, v) in &s.headers {
            let v = String::from_utf8_lossy(v.as_bytes());
            for secret in &secrets {
                assert!(!v.contains(secret.as_str()), "{}: header {k} carries a client credential", s.path);
            }
        }
    }

    // An upstream credential configured as Authorization is sent as configured, never replaced by the client's.
    let rec2 = Recorder::start(demo.path().join("channels")).await;
    let up2 = format!("[upstream]\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer upstream-cred\" }}", rec2.url());
    let p2 = Proxy::start(demo_config_with(&demo, &up2)).await;
    for cred in [Cred::Bearer, Cred::TokenScheme, Cred::Basic, Cred::Path] {
        let g = call(&p2, "GET", cred, Some(&t.bob), "/mychan/noarch/alpha-1.0-0.tar.bz2", &[]).await;
        assert_eq!(g.status, 200, "{cred:?}");
    }
    // The background health probe (a HEAD of each channel root) comes with the configured header too.
    let seen2 = rec2.seen();
    assert_eq!(seen2.iter().filter(|s| s.path.ends_with(".tar.bz2")).count(), 4);
    for s in &seen2 {
        let auth: Vec<&str> = s.headers.get_all("authorization").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(auth, ["Bearer upstream-cred"], "{}", s.path);
    }
    p.stop().await;
    p2.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// hostile paths

#[tokio::test]
async fn hostile_paths_never_leave_the_channel_and_never_fail_the_server() {
    let demo = Demo::new();
    let bob = demo.token("bob-dl", "bob", "conda:download");
    let alice = demo.token("alice-dl", "alice", "all");
    let root = demo.path();
    let canary = format!("CANARY-{}-{}", std::process::id(), OffsetDateTime::now_utc().unix_timestamp_nanos());
    let plant = |rel: &str, tag: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{canary}-{tag}")).unwrap();
    };
    plant("secret.txt", "root");
    plant("etc/passwd", "etc");
    plant("channels/secret.txt", "channels-root");
    plant("channels/secret-1.0-0.conda", "channels-root-pkg");
    plant("channels/pubchan/secret.txt", "channel-root");
    plant("channels/pubchan/noarch/.secret-1.0-0.conda", "dotfile");
    plant("channels/pubchan/noarch/.cache/repodata.json", "dotcache");
    plant("channels/pubchan/.cache/noarch/repodata.json", "cache");
    plant("channels/mychan/.cache/noarch/repodata.json", "mycache");
    plant("channels/pubchan/noarch/index.html", "index");
    plant("channels/pubchan/noarch/secret.txt", "subdir-txt");
    let long = "a".repeat(300);
    let very_long = "x".repeat(20_000);
    let mut paths: Vec<Vec<u8>> = [
        "/../secret.txt".to_owned(),
        "/pubchan/../secret.txt".into(),
        "/pubchan/noarch/../../secret.txt".into(),
        "/pubchan/noarch/../../../secret.txt".into(),
        "/pubchan/noarch/%2e%2e/%2e%2e/secret.txt".into(),
        "/pubchan/noarch/%2E%2E/%2E%2E/%2E%2E/secret.txt".into(),
        "/pubchan/noarch/.%2e/.%2e/secret.txt".into(),
        "/pubchan/noarch/%2e./%2e./secret.txt".into(),
        "/pubchan/noarch/..%2f..%2fsecret.txt".into(),
        "/pubchan/noarch/..%2F..%2F..%2Fsecret.txt".into(),
        "/pubchan/noarch/%2e%2e%2f%2e%2e%2fsecret.txt".into(),
        "/pubchan%2f..%2f..%2fsecret.txt".into(),
        "/pubchan/noarch/..%5c..%5csecret.txt".into(),
        "/pubchan/noarch/..%5C..%5C..%5Csecret.txt".into(),
        "/pubchan/noarch/..\\..\\secret.txt".into(),
        "/pubchan\\noarch\\..\\..\\secret.txt".into(),
        "/pubchan/noarch/secret.txt%00.conda".into(),
        "/pubchan/noarch/hello-1.0-0.tar.bz2%00".into(),
        "/pubchan/noarch/%00".into(),
        "/pubchan/noarch/%ff%fe-1.0-0.conda".into(),
        "/pubchan/%ff/repodata.json".into(),
        "/pubchan/noarch/%c0%ae%c0%ae/%c0%ae%c0%ae/secret.txt".into(),
        "/pubchan/noarch/%c0%ae%c0%ae%c0%afsecret.txt".into(),
        "/pubchan/noarch/%e0%80%ae%e0%80%ae/secret.txt".into(),
        "/pubchan/noarch/%252e%252e/%252e%252e/secret.txt".into(),
        "/pubchan/noarch/%252e%252e%252f%252e%252e%252fsecret.txt".into(),
        "/pubchan/noarch/%25%32%65%25%32%65/secret.txt".into(),
        format!("/pubchan/noarch/{long}-1.0-0.conda"),
        format!("/pubchan/label/{long}/noarch/repodata.json"),
        format!("/{long}/noarch/repodata.json"),
        format!("/pubchan/noarch/{very_long}"),
        "/pubchan/noarch/.secret-1.0-0.conda".into(),
        "/pubchan/noarch/%2esecret-1.0-0.conda".into(),
        "/pubchan/noarch/.cache/repodata.json".into(),
        "/pubchan/.cache/noarch/repodata.json".into(),
        "/mychan/.cache/noarch/repodata.json".into(),
        "/.cache/secret.txt".into(),
        "/.git/config".into(),
        "/mychan/noarch/".into(),
        "/pubchan/".into(),
        "/pubchan/noarch/".into(),
        "/pubchan/noarch".into(),
        "/pubchan".into(),
        "/".into(),
        "/pubchan/noarch/shards/".into(),
        "/pubchan/noarch/shards".into(),
        "/pubchan/label/".into(),
        "/pubchan/label/dev/".into(),
        "/pubchan/noarch/secret.txt".into(),
        "/pubchan/secret.txt".into(),
        "/pubchan/noarch/index.html".into(),
        "//secret.txt".into(),
        "//etc/passwd".into(),
        "/etc/passwd".into(),
        "/%2fetc%2fpasswd".into(),
        "/pubchan/noarch/%2fetc%2fpasswd".into(),
        "/pubchan/noarch/%2F..%2F..%2Fsecret.txt".into(),
        "http://x/../secret.txt".into(),
        "http://x/etc/passwd".into(),
        "/pubchan/notices.json/../../secret.txt".into(),
        "/pubchan/noarch/hello-1.0-0.tar.bz2/..".into(),
        "/pubchan/noarch/hello-1.0-0.tar.bz2/../../../secret.txt".into(),
        "/pubchan/..%2fmychan/noarch/secretpkg-1.0-0.conda".into(),
        "/pubchan/label/..%2f..%2fmychan/noarch/secretpkg-1.0-0.conda".into(),
        "/pubchan/label/%2e%2e/%2e%2e/mychan/noarch/secretpkg-1.0-0.conda".into(),
        "/t/%2e%2e/%2e%2e/secret.txt".into(),
        "/t/../pubchan/noarch/secret.txt".into(),
        format!("/t/{bob}/../secret.txt"),
        format!("/t/{bob}/mychan/noarch/../../../secret.txt"),
        format!("/t/{bob}/mychan/noarch/secretpkg-1.0-0.conda"),
        format!("/t/{bob}/mychan/label/%2e%2e/noarch/secretpkg-1.0-0.conda"),
        format!("/t/{bob}/pubchan/..%2fmychan/noarch/secretpkg-1.0-0.conda"),
        format!("/t/{alice}/mychan/noarch/%2e%2e/%2e%2e/%2e%2e/secret.txt"),
        format!("/t/{alice}/mychan/noarch/..%2f..%2f..%2fsecret.txt"),
        format!("/t/{alice}/mychan/noarch/..%5c..%5c..%5csecret.txt"),
        format!("/t/{alice}/mychan/label/dev/%2e%2e/%2e%2e/noarch/secretpkg-1.0-0.conda"),
        format!("/t/{alice}/mychan/.cache/noarch/repodata.json"),
        format!("/t/{alice}/mychan/noarch/"),
        format!("/t/{alice}/mychan/"),
        format!("/t/{alice}/%2e%2e/secret.txt"),
        format!("/t/{alice}/pubchan/noarch/secret.txt"),
        format!("/t/{alice}/mychan/noarch/shards/..%2f..%2f..%2fsecret.txt"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    // Raw bytes that are not even ASCII.
    paths.push(b"/pubchan/noarch/\xff\xfe-1.0-0.conda".to_vec());
    paths.push(b"/pubchan/noarch/\xc0\xae\xc0\xae/secret.txt".to_vec());
    assert!(paths.len() >= 30);

    let p = Proxy::start(demo.config()).await;
    // The raw client works: a plain path answers 200 with the file.
    let (status, resp) = raw_get(p.addr, b"/pubchan/noarch/hello-1.0-0.tar.bz2", "").await;
    assert_eq!(status, Some(200), "{}", String::from_utf8_lossy(&resp));
    let tokens_file = std::fs::read_to_string(root.join("tokens.toml")).unwrap();
    let digest_line = tokens_file.lines().find(|l| l.contains("digest")).unwrap().to_owned();
    let mut statuses = Vec::new();
    for path in &paths {
        let shown = String::from_utf8_lossy(&path[..path.len().min(120)]).into_owned();
        let (status, resp) = raw_get(p.addr, path, "").await;
        let status = status.unwrap_or_else(|| panic!("{shown}: no HTTP answer: {:?}", String::from_utf8_lossy(&resp)));
        assert!(!(200..300).contains(&status), "{shown}: {status}");
        assert!(status < 500, "{shown}: {status}");
        let text = String::from_utf8_lossy(&resp);
        assert!(!text.contains(&canary), "{shown}: a file outside the channel leaked: {text}");
        assert!(!text.contains(&digest_line) && !text.contains("[[channels]]"), "{shown}: server files leaked");
        statuses.push(status);
    }
    // Also with a header token (alice sees everything), where a traversal would hurt most.
    for path in paths.iter().filter(|p| !p.starts_with(b"/t/")) {
        let shown = String::from_utf8_lossy(&path[..path.len().min(120)]).into_owned();
        let (status, resp) = raw_get(p.addr, path, &format!("Authorization: Bearer {alice}\r\n")).await;
        let status = status.unwrap_or_else(|| panic!("{shown}: no HTTP answer"));
        assert!(!(200..300).contains(&status) && status < 500, "{shown} (Bearer): {status}");
        assert!(!String::from_utf8_lossy(&resp).contains(&canary), "{shown} (Bearer): leak");
    }
    // The server is still fine afterwards.
    let (status, _) = raw_get(p.addr, format!("/t/{alice}/mychan/noarch/secretpkg-1.0-0.conda").as_bytes(), "").await;
    assert_eq!(status, Some(200));
    let m = get(&p.url("/metrics"), &[]).await.text();
    assert_eq!(metric(&m, "condagate_requests_total{class=\"5xx\"}"), Some(0.0), "{m}");
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// logs

/// The log of this test binary: one global subscriber, installed by the test that reads it.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    Arc::clone(LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buf = Arc::clone(&buf);
            move || Sink(Arc::clone(&buf))
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(
                tracing_subscriber::fmt::format::FmtSpan::NEW | tracing_subscriber::fmt::format::FmtSpan::CLOSE,
            )
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in this binary");
        buf
    }))
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until the proxy has finished (and so logged) `n` requests besides the `/metrics` polls themselves.
async fn wait_logged(p: &Proxy, n: u64) -> String {
    let mut polls = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < deadline, "{n} requests were not all logged within 10 s");
        let m = get(&p.url("/metrics"), &[]).await.text();
        let done: f64 = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .filter_map(|c| metric(&m, &format!("condagate_requests_total{{class=\"{c}\"}}")))
            .sum();
        // Each earlier poll may or may not be counted yet: subtracting them all is the safe bound.
        if done as u64 >= n + polls {
            return m;
        }
        polls += 1;
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_log_and_metrics_hold_no_token() {
    let log = captured_log();
    let demo = Demo::new();
    let t = tokens(&demo);
    let unknown = "cg-UnknownTokenForTheLogTest0123456789".to_owned();
    let malformed = "cg-bad_token.for-the-log".to_owned();
    let misplaced = demo.token("bob-misplaced", "bob", "conda:download");
    let basic = |tok: &str| base64::engine::general_purpose::STANDARD.encode(format!("someone:{tok}"));
    let mut secrets = vec![
        t.bob.clone(),
        t.alice.clone(),
        t.zed.clone(),
        t.api.clone(),
        t.revoked.clone(),
        t.expired.clone(),
        unknown.clone(),
        malformed.clone(),
        misplaced.clone(),
    ];
    secrets.extend(secrets.clone().iter().map(|s| basic(s)));
    let p = Proxy::start(demo.config()).await;
    let mut made = 0u64;

    for cred in [Cred::Path, Cred::Bearer, Cred::TokenScheme, Cred::Basic] {
        for (tok, rest, want) in [
            (&t.bob, "/mychan/noarch/repodata.json", 200),
            (&t.bob, "/mychan/noarch/alpha-1.0-0.tar.bz2", 200),
            (&t.bob, "/mychan/noarch/secretpkg-1.0-0.conda", 404),
            (&t.alice, "/mychan/noarch/secretpkg-1.0-0.conda", 200),
            (&t.zed, "/mychan/noarch/repodata.json", 403),
            (&t.api, "/mychan/noarch/repodata.json", 403),
            (&t.revoked, "/mychan/noarch/repodata.json", 401),
            (&t.expired, "/pubchan/noarch/repodata.json", 401),
            (&unknown, "/pubchan/noarch/repodata.json", 401),
            (&malformed, "/mychan/noarch/repodata.json", 401),
        ] {
            let g = fetch(&p, cred, Some(tok), rest).await;
            made += 1;
            assert_eq!(g.status, want, "{cred:?} {rest}: {}", g.text());
        }
        let g = call(&p, "POST", cred, Some(&t.bob), "/mychan/noarch/repodata.json", &[]).await;
        made += 1;
        assert_eq!(g.status, 405);
    }
    // Tokens where no route expects them, and hostile paths carrying tokens.
    for path in [
        format!("/conda/t/{misplaced}/mychan/noarch/repodata.json"),
        format!("/mychan/t/{misplaced}/noarch/repodata.json"),
        format!("/t/{misplaced}"),
        format!("/t/{misplaced}/"),
        format!("/t/{misplaced}/t/{misplaced}/mychan/noarch/repodata.json"),
        format!("/t/{}/mychan/noarch/..%2f..%2fsecret.txt", t.bob),
        format!("/t/{}/mychan/noarch/%2e%2e/x", t.alice),
        format!("/t/{}/mychan/noarch/%ff", t.alice),
        format!("/t/{}/mychan/noarch/repodata.json?token={}", t.bob, t.bob),
        format!("/t/{malformed}/pubchan/noarch/repodata.json"),
        format!("/api/t/{misplaced}/x"),
        format!("/%74/{misplaced}/mychan/noarch/repodata.json"),
        // Malformed shapes that a positional redaction missed: the token is found by its format.
        format!("/t//{misplaced}/mychan/noarch/repodata.json"),
        format!("/t/./{misplaced}/mychan/noarch/repodata.json"),
        format!("/T/{misplaced}/mychan/noarch/repodata.json"),
        format!("/t%2F{misplaced}/mychan/noarch/repodata.json"),
        format!("/t%252F{misplaced}/mychan/noarch/repodata.json"),
        format!("/t\\{misplaced}/mychan/noarch/repodata.json"),
        format!("/x{misplaced}/mychan/noarch/repodata.json"),
        format!("/mychan/noarch/{misplaced}.conda"),
        format!("/mychan/noarch/a-1-0.conda%20{misplaced}"),
        format!("/%63%67-{}/mychan", &misplaced[3..]),
        format!("/t/%2e/{misplaced}/mychan"),
        format!("/conda/T/{misplaced}"),
    ] {
        let (status, _) = raw_get(p.addr, path.as_bytes(), "").await;
        made += 1;
        let status = status.unwrap_or_else(|| panic!("{path}: no answer"));
        assert!((200..500).contains(&status), "{status}");
    }
    // An upstream failure with a token in the path is logged as a warning.
    let dead_addr = closed_port().await;
    let dead = Proxy::start(demo_config_with(&demo, &format!("[upstream]\nurl = \"http://{dead_addr}\""))).await;
    let g = get(&dead.url(&format!("/t/{}/mychan/noarch/alpha-1.0-0.tar.bz2", t.bob)), &[]).await;
    assert_eq!(g.status, 502);
    let m_dead = wait_logged(&dead, 1).await;
    dead.stop().await;

    let m = wait_logged(&p, made).await;
    p.stop().await;

    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    // The log holds this test's requests (so the check below looks at something) ...
    assert!(text.contains("/t/<redacted>/mychan/noarch/repodata.json"), "no redacted access lines in the log");
    assert!(text.contains("bob-dl") && text.contains("alice-dl"), "no token names in the log");
    assert!(text.contains("upstream failure"), "the upstream failure was not logged");
    // ... and none of its secrets.
    let found = count_occurrences(&text, &secrets);
    if !found.is_empty() {
        let lines: Vec<&str> =
            text.lines().filter(|l| secrets.iter().any(|s| l.contains(s.as_str()))).take(8).collect();
        panic!("{} tokens appear in the log, e.g. in:\n{}", found.len(), lines.join("\n"));
    }
    for body in [&m, &m_dead] {
        assert!(count_occurrences(body, &secrets).is_empty(), "a token in /metrics");
        assert!(body.contains("condagate_auth_refusals_total"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_stops_working_when_the_servers_clock_passes_its_expiry() {
    let demo = Demo::new();
    let expires = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let t = demo.token_with("soon", "bob", "conda:download api:read", Some(expires), None);
    let p = Proxy::start(demo.config()).await;
    let file = p.url(&format!("/t/{t}/mychan/noarch/repodata.json"));
    let (auth, user) = (format!("Bearer {t}"), p.url("/api/user"));
    let api = || async { get(&user, &[("authorization", &auth)]).await.status };
    assert_eq!(get(&file, &[]).await.status, 200);
    assert_eq!(api().await, 200);

    // Two hours later by the server's clock (the seam tests move instead of sleeping).
    p.app.clock.advance(std::time::Duration::from_secs(2 * 3600));
    let v = assert_problem(&get(&file, &[]).await, 401, &[&t], "a file after expiry");
    assert!(detail(&v).contains("expired"), "{v}");
    assert_eq!(api().await, 401, "the admin API after expiry");
    p.stop().await;
}
