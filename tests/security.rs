//! Security findings, each tried as an attacker would, against real servers on loopback: encoded paths through real
//! static mirrors, what health endpoints show, what anonymous callers can learn, the throttle, bounded upstream
//! documents, redaction and admin credentials.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::Path;

use condagate::config::Config;
use support::mirrors::{self, Mirror};
use support::{assert_problem, demo_config_text, get, Demo, Proxy};

fn config_for(demo: &Demo, upstream: &str, server_extra: &str) -> Config {
    Config::from_toml_str(&demo_config_text(upstream, server_extra), demo.path()).unwrap_or_else(|e| panic!("{e}"))
}

/// Every way we could think of to smuggle a separator, a `..`, a query or a fragment past a once-decoding check.
fn encodings_of_slash() -> Vec<&'static str> {
    vec![
        "%252F",
        "%252f",
        "%25252F",
        "%2525252F",
        "%255C",
        "%255c",
        "%25255C",
        "%2F",
        "%2f",
        "%5C",
        "%5c",
        "%C0%AF",
        "%c0%af",
        "%E0%80%AF",
        "%25C0%25AF",
        "%C1%9C",
        "%u2215",
        "%EF%BC%8F",
        "%E2%88%95",
    ]
}

fn encodings_of_dots() -> Vec<&'static str> {
    vec!["..", "%2e%2e", "%2E%2E", "%252e%252e", "%25252e%25252e", ".%2e", "%2e.", "%C0%AE%C0%AE", "%252E."]
}

/// Paths that, decoded twice, would name the hidden package or the private channel's whole repodata.
fn attacks(bob: &str) -> Vec<String> {
    let mut out = Vec::new();
    for s in encodings_of_slash() {
        for d in encodings_of_dots() {
            // A group allows `beta*`: a name that starts with `beta` and climbs to the hidden package.
            out.push(format!("/t/{bob}/mychan/noarch/beta{s}{d}{s}secretpkg-1.0-0.conda"));
            // A public channel's label that climbs into the private channel.
            out.push(format!("/pubchan/label/x{s}{d}{s}{d}{s}{d}{s}mychan/noarch/repodata.json"));
            out.push(format!("/pubchan/label/x{s}{d}{s}{d}{s}{d}{s}mychan/noarch/secretpkg-1.0-0.conda"));
            out.push(format!("/pubchan/x{s}{d}{s}{d}{s}mychan/noarch/repodata.json"));
            out.push(format!("/t/{bob}/mychan/label/x{s}{d}{s}{d}/noarch/secretpkg-1.0-0.conda"));
        }
    }
    for mark in ["%3F", "%3f", "%253F", "%23", "%2523", ";", "%3B", "%253B", "%00", "%2500", "%0A", "%20"] {
        out.push(format!("/t/{bob}/mychan/noarch/beta{mark}-1.0-0.tar.bz2"));
        out.push(format!("/t/{bob}/mychan/noarch/beta-1.0-0.tar.bz2{mark}/../secretpkg-1.0-0.conda"));
        out.push(format!("/pubchan/label/dev{mark}/../../mychan/noarch/repodata.json"));
        out.push(format!("/pubchan/noarch/hello{mark}x-1.0-0.tar.bz2"));
    }
    out
}

async fn assert_mirror_is_not_fooled(mirror: &Mirror, demo: &Demo, bob: &str, secret: &[u8]) {
    // The mirror itself decodes again and resolves `..`: the very thing that makes forwarding decoded text a hole.
    let direct =
        get(&format!("{}/pubchan/label/x%2F..%2F..%2F..%2Fmychan/noarch/secretpkg-1.0-0.conda", mirror.url), &[]).await;
    assert_eq!(direct.status, 200, "{}: the mirror no longer decodes %2F; this test would prove nothing", mirror.kind);
    assert_eq!(&direct.body[..], secret);

    let p = Proxy::start(config_for(demo, &format!("[upstream]\nurl = \"{}\"", mirror.url), "")).await;
    // What is allowed still works through this mirror.
    let ok = get(&p.url("/pubchan/noarch/repodata.json"), &[]).await;
    assert_eq!(ok.status, 200, "{}: {}", mirror.kind, ok.text());
    let ok = get(&p.url(&format!("/t/{bob}/mychan/noarch/beta-1.0-0.tar.bz2")), &[]).await;
    assert_eq!(ok.status, 200, "{}: {}", mirror.kind, ok.text());
    let hidden = get(&p.url(&format!("/t/{bob}/mychan/noarch/secretpkg-1.0-0.conda")), &[]).await;
    assert!(hidden.status == 403 || hidden.status == 404, "{}: {}", mirror.kind, hidden.status);

    let bearer = format!("Bearer {bob}");
    let all = attacks(bob);
    for path in &all {
        for headers in [&[][..], &[("authorization", bearer.as_str())][..]] {
            let path = if headers.is_empty() { path.clone() } else { path.replacen(&format!("/t/{bob}"), "", 1) };
            let g = get(&p.url(&path), headers).await;
            let body = &g.body[..];
            assert!(
                !body.windows(b"secretpkg".len()).any(|w| w == b"secretpkg") && body != secret,
                "{}: {path} leaked hidden bytes (status {})",
                mirror.kind,
                g.status
            );
            assert_problem(&g, 400, &[], &format!("{}: {path}", mirror.kind));
        }
    }
    p.stop().await;
}

#[tokio::test]
async fn encoded_paths_never_escape_the_channel_through_real_static_mirrors() {
    let demo = Demo::new();
    let bob = demo.token("bob-dl", "bob", "conda:download");
    let root = demo.path().join("channels");
    let secret = std::fs::read(root.join("mychan/noarch/secretpkg-1.0-0.conda")).unwrap();
    type Start = fn(&Path) -> Option<Mirror>;
    for start in [mirrors::nginx as Start, mirrors::python_http_server as Start] {
        let Some(mirror) = start(&root) else { continue };
        assert_mirror_is_not_fooled(&mirror, &demo, &bob, &secret).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// health bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_bodies_show_no_secret_and_no_caller_makes_condagate_call_upstreams() {
    let root = tempfile::tempdir().unwrap();
    let rec = support::Recorder::start(root.path().to_owned()).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let demo = Demo::new();
    let admin = demo.token("ops", "alice", "api:read");
    // pubchan's mirror holds credentials in its URL and a header; mychan's is the recorder.
    let path = demo.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            "name = \"pubchan\"\naccess = \"public\"",
            &format!(
                "name = \"pubchan\"\naccess = \"public\"\nupstream = {{ url = \"http://mirroruser:mirror-pass-9@{closed}\", \
                 headers = {{ Authorization = \"Bearer upstream-secret-7\" }} }}"
            ),
        )
        .replace(
            "name = \"mychan\"\naccess = \"private\"",
            &format!("name = \"mychan\"\naccess = \"private\"\nupstream = {{ url = \"{}\" }}", rec.url()),
        );
    std::fs::write(&path, &text).unwrap();
    let p = Proxy::start(demo.config()).await;
    // The one background probe per upstream per interval (30 s by default) runs at start; after it, no caller of
    // any health endpoint, anonymous or not, makes condagate send a request upstream.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rec.seen().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(rec.seen().len(), 1, "the start-up probe did not run once");
    for _ in 0..5 {
        assert_eq!(get(&p.url("/readyz"), &[]).await.status, 200);
        assert_eq!(get(&p.url("/healthz"), &[]).await.status, 200);
        assert_eq!(get(&p.url("/healthz"), &[("authorization", &format!("Bearer {admin}"))]).await.status, 200);
    }
    assert_eq!(rec.seen().len(), 1, "health checks made upstream requests");

    // A request that fails upstream: pubchan is down. Anonymous callers learn only that something is.
    assert_eq!(get(&p.url("/pubchan/noarch/repodata.json"), &[]).await.status, 502);
    let anon = get(&p.url("/healthz"), &[]).await;
    assert_eq!(anon.json()["upstreams_down"], 1, "{}", anon.text());
    let auth = format!("Bearer {admin}");
    let detailed = get(&p.url("/healthz"), &[("authorization", &auth)]).await;
    assert_eq!(detailed.json()["upstreams"]["pubchan"]["up"], false, "{}", detailed.text());
    assert!(detailed.text().contains("<redacted>@"), "{}", detailed.text());

    // A broken config line holding a credential: refused, reported by key and line, never with the value.
    std::fs::write(&path, text.replace("Bearer upstream-secret-7\" }", "Bearer upstream-secret-7\"")).unwrap();
    assert!(p.app.reload_all().await.is_err());
    let detailed = get(&p.url("/healthz"), &[("authorization", &auth)]).await;
    let e = detailed.json()["config_error"].as_str().unwrap_or_default().to_owned();
    assert!(e.contains("line "), "the error does not say where: {e}");
    let anon = get(&p.url("/healthz"), &[]).await;
    let metrics = get(&p.url("/metrics"), &[]).await;
    let ready = get(&p.url("/readyz"), &[]).await;
    let dir = demo.path().display().to_string();
    for (what, body) in [("details", &detailed), ("anonymous", &anon), ("metrics", &metrics), ("readyz", &ready)] {
        let t = body.text();
        for secret in ["mirror-pass-9", "upstream-secret-7", "mirroruser", dir.as_str()] {
            assert!(!t.contains(secret), "{what} shows {secret:?}: {t}");
        }
    }
    assert!(!anon.text().contains("pubchan") && !anon.text().contains("error"), "{}", anon.text());
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// the throttle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_throttle_fails_closed_when_its_table_is_full() {
    // 100,000 other addresses have failed once each (as many as the table holds); a new address guessing tokens
    // must still be cooled down.
    let demo = Demo::with(
        "[upstream]\ndir = \"channels\"",
        "trusted_proxies = [\"127.0.0.1\"]\nthrottle = { failures = 5, window = \"60s\", cooldown = \"30s\" }",
    );
    let p = Proxy::start(demo.config()).await;
    let now = std::time::Instant::now();
    for i in 0..condagate::internals::auth::throttle::MAX_TRACKED as u32 {
        p.app.throttle.failure(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes()), now);
    }
    let url = p.url("/t/cg-NotARealToken0123456789abcdefgh/mychan/noarch/repodata.json");
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get(&url, &[("x-forwarded-for", "198.51.100.99")]).await.status.as_u16());
    }
    assert!(statuses.contains(&429), "a new address was never throttled with a full table: {statuses:?}");
    // IPv6 neighbours of one /64 are one client.
    let mut v6 = Vec::new();
    for i in 0..10 {
        v6.push(get(&url, &[("x-forwarded-for", &format!("2001:db8:7:7::{i:x}"))]).await.status.as_u16());
    }
    assert!(v6.contains(&429), "addresses of one IPv6 /64 were counted apart: {v6:?}");
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// what callers can learn about channels, and admin credentials

#[tokio::test]
async fn a_private_channel_and_a_missing_one_look_the_same() {
    let demo = Demo::new();
    let zed = demo.token("zed-dl", "zed", "conda:download");
    let p = Proxy::start(demo.config()).await;
    for file in ["noarch/repodata.json", "noarch/alpha-1.0-0.tar.bz2", "noarch/repodata_shards.msgpack.zst"] {
        for (what, headers) in [("anonymous", vec![]), ("zed", vec![("authorization", format!("Bearer {zed}"))])] {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let private = get(&p.url(&format!("/mychan/{file}")), &h).await;
            let missing = get(&p.url(&format!("/nochan/{file}")), &h).await;
            assert_eq!(private.status, missing.status, "{what} {file}");
            assert_eq!(private.body, missing.body, "{what} {file}");
            assert_eq!(private.header("www-authenticate"), missing.header("www-authenticate"), "{what} {file}");
            let want = if what == "anonymous" { 401 } else { 403 };
            assert_eq!(private.status, want, "{what} {file}: {}", private.text());
        }
    }
    p.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_basic_credentials() {
    use base64::Engine as _;
    let demo = Demo::new();
    let admin = demo.token("ops", "alice", "all");
    let p = Proxy::start(demo.config()).await;
    let url = p.url("/api/authentications");
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("alice:{admin}")));
    let got = get(&url, &[("authorization", &basic)]).await;
    assert_eq!(got.status, 401, "{}", got.text());
    assert!(got.text().contains("not Basic"), "{}", got.text());
    assert!(!got.text().contains(&admin));
    for scheme in ["Bearer", "token"] {
        let got = get(&url, &[("authorization", &format!("{scheme} {admin}"))]).await;
        assert_eq!(got.status, 200, "{scheme}: {}", got.text());
    }
    // Channel files keep Basic: rattler's BasicHTTP credentials send the token as the password.
    let got = get(&p.url("/mychan/noarch/repodata.json"), &[("authorization", &basic)]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// bounded upstream documents

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_documents_are_bounded_in_size_and_in_time_and_waiters_share_the_failure() {
    use support::{Behaviour, Recorder};
    let demo = Demo::new();
    let rec = Recorder::start(demo.path().join("channels")).await;
    let up = format!(
        "[upstream]\nurl = \"{}\"\ntimeout = \"500ms\"\nmax_document = \"8MiB\"\nprobe_interval = \"1h\"",
        rec.url()
    );
    let p = Proxy::start(config_for(&demo, &up, "")).await;
    let url = p.url("/pubchan/noarch/repodata.json");

    // An endless body is cut at upstream.max_document: 502, and memory does not follow the upstream.
    rec.set(Behaviour::Endless);
    let before = rss_kib();
    let g = get(&url, &[]).await;
    assert_eq!(g.status, 502, "{}", g.text());
    let grew = rss_kib().saturating_sub(before);
    assert!(grew < 200 * 1024, "the process grew by {grew} KiB reading an endless document capped at 8 MiB");

    // A body that stalls mid-way fails after the upstream timeout (504), and the requests that waited for that
    // fetch get its answer instead of each asking again in turn.
    rec.set(Behaviour::StallMidBody);
    let asked_before = rec.seen().iter().filter(|s| s.path.ends_with("/noarch/repodata.json")).count();
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all((0..6).map(|_| get(&url, &[]))).await;
    let took = started.elapsed();
    for a in &answers {
        assert_eq!(a.status, 504, "{}", a.text());
    }
    let asked = rec.seen().iter().filter(|s| s.path.ends_with("/noarch/repodata.json")).count() - asked_before;
    assert!(asked < 6, "every waiting request asked the stalled upstream again ({asked} fetches, {took:?})");
    eprintln!("6 requests on a stalled document: {asked} upstream fetch(es), all answered 504 after {took:?}");

    // The mirror recovers; so does the channel.
    rec.set(Behaviour::Normal);
    assert_eq!(get(&url, &[]).await.status, 200);
    p.stop().await;
}
