//! The admin API as an attacker would try it: no token grants more than it holds (channels, scopes, expiry), no
//! number crashes a worker, names cannot lie, browser-sendable bodies are refused, and a panic still gets an answer.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::{assert_problem, demo_config_text, get, metric, Demo, Got, Proxy};
use time::OffsetDateTime;

async fn call(method: &str, url: &str, token: &str, body: Option<Value>, content_type: &str) -> Got {
    let mut b = Request::builder().method(method).uri(url).header("authorization", format!("Bearer {token}"));
    let body = match body {
        Some(v) => {
            b = b.header("content-type", content_type);
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(b.body(body).unwrap()).await.expect("the connection was dropped without an answer");
    let (parts, body) = resp.into_parts();
    Got { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

async fn api(method: &str, url: &str, token: &str, body: Option<Value>) -> Got {
    call(method, url, token, body, "application/json").await
}

/// The demo, with alice owning a second channel (authchan) that has a group of its own.
fn two_channel_demo() -> Demo {
    let demo = Demo::new();
    let text = std::fs::read_to_string(demo.config_path()).unwrap();
    let text = text.replace(
        "name = \"authchan\"\naccess = \"authenticated\"",
        "name = \"authchan\"\naccess = \"private\"\nowners = [\"alice\"]",
    ) + "\n[[groups]]\nname = \"ops\"\nchannel = \"authchan\"\nmembers = [\"erin\"]\npackages = [\"*\"]\n";
    std::fs::write(demo.config_path(), text).unwrap();
    demo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_acts_beyond_its_own_reach() {
    let demo = two_channel_demo();
    let now = OffsetDateTime::now_utc();
    let year = Some(now + time::Duration::days(400));
    let full = demo.token_with("full", "alice", "all api", year, None);
    let narrow = demo.token_with("narrow", "alice", "all api", year, Some(vec!["mychan".into()]));
    let short = demo.token_with("short", "alice", "all api", Some(now + time::Duration::hours(2)), None);
    let p = Proxy::start(demo.config()).await;
    let url = |path: &str| p.url(path);
    let create = |channels: Option<Vec<&str>>, max_age: Option<u64>, name: &str| {
        let mut b = json!({"name": name, "scopes": ["conda:download"]});
        if let Some(c) = channels {
            b["channels"] = json!(c);
        }
        if let Some(m) = max_age {
            b["max-age"] = json!(m);
        }
        b
    };
    let year_secs = 365 * 24 * 3600;
    // who × action × expected status
    let table: Vec<(&str, &str, &str, Option<Value>, u16)> = vec![
        ("full", "POST", "/api/authentications", Some(create(Some(vec!["authchan"]), None, "f1")), 200),
        ("narrow", "POST", "/api/authentications", Some(create(Some(vec!["authchan"]), None, "n1")), 403),
        ("narrow", "POST", "/api/authentications", Some(create(Some(vec!["mychan", "authchan"]), None, "n2")), 403),
        ("narrow", "POST", "/api/authentications", Some(create(Some(vec!["mychan"]), None, "n3")), 200),
        ("narrow", "POST", "/api/authentications", Some(create(None, None, "n4")), 200),
        ("short", "POST", "/api/authentications", Some(create(None, Some(year_secs), "s1")), 403),
        ("short", "POST", "/api/authentications", Some(create(None, Some(600), "s2")), 200),
        ("short", "POST", "/api/authentications", Some(create(None, None, "s3")), 200),
        ("full", "POST", "/api/authentications", Some(create(None, Some(year_secs), "f2")), 200),
        ("full", "PUT", "/api/channels/authchan/groups/ops/members/zed", None, 200),
        ("narrow", "PUT", "/api/channels/authchan/groups/ops/members/yan", None, 403),
        ("narrow", "PUT", "/api/channels/mychan/groups/eng/members/yan", None, 200),
        ("narrow", "DELETE", "/api/authentications/name/full", None, 403),
        ("full", "DELETE", "/api/authentications/name/f1", None, 201),
    ];
    let token_of = |who: &str| match who {
        "full" => full.clone(),
        "narrow" => narrow.clone(),
        _ => short.clone(),
    };
    let mut made = std::collections::HashMap::new();
    for (who, method, path, body, want) in table {
        let g = api(method, &url(path), &token_of(who), body.clone()).await;
        assert_eq!(g.status, want, "{who} {method} {path} {body:?}: {}", g.text());
        if g.status == 403 {
            assert!(g.text().contains("error") || g.text().contains("detail"), "{who} {path}: {}", g.text());
        }
        if let Some(name) = body.as_ref().and_then(|b| b["name"].as_str()).filter(|_| g.status == 200) {
            made.insert(name.to_owned(), g.json());
        }
    }
    // What was made holds no more than its maker: n4 inherits narrow's channels; s3's expiry is cut to short's.
    assert_eq!(made["n4"]["channels"], json!(["mychan"]), "{}", made["n4"]);
    let expires = |v: &Value| {
        OffsetDateTime::parse(v["expires"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
    };
    assert!(expires(&made["s3"]) <= now + time::Duration::hours(2) + time::Duration::seconds(5), "{}", made["s3"]);
    // And it downloads only within that reach.
    let n4 = made["n4"]["token"].as_str().unwrap();
    assert_eq!(get(&url(&format!("/t/{n4}/mychan/noarch/repodata.json")), &[]).await.status, 200);
    assert_eq!(get(&url(&format!("/t/{n4}/authchan/noarch/repodata.json")), &[]).await.status, 403);

    // Reading is narrowed too: channels, tokens, downloads.
    let chans = api("GET", &url("/api/channels"), &narrow, None).await.json();
    let names: Vec<&str> = chans.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mychan"], "{chans}");
    let listed = api("GET", &url("/api/authentications"), &narrow, None).await.json();
    let listed: Vec<&str> = listed.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(!listed.contains(&"full") && !listed.contains(&"short") && listed.contains(&"narrow"), "{listed:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_must_be_a_whole_number_of_seconds_within_ten_years() {
    let demo = Demo::new();
    let admin = demo.token_with("admin", "alice", "all api", None, None);
    let p = Proxy::start(demo.config()).await;
    let url = p.url("/api/authentications");
    for (i, bad) in [
        json!("3600"),
        json!(1.5),
        json!(0),
        json!(-5),
        json!(1e30),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(10 * 366 * 24 * 3600 + 1),
        json!([60]),
        json!(true),
    ]
    .into_iter()
    .enumerate()
    {
        let g = api("POST", &url, &admin, Some(json!({"name": format!("m{i}"), "scopes": ["conda"], "max-age": bad})))
            .await;
        assert_eq!(g.status, 400, "max-age {bad}: {}", g.text());
        assert!(g.text().contains("max-age"), "the refusal does not name the field: {}", g.text());
    }
    let g = api("POST", &url, &admin, Some(json!({"name": "ok", "scopes": ["conda"], "max-age": 3600}))).await;
    assert_eq!(g.status, 200, "{}", g.text());
    // The server is still whole.
    assert_eq!(get(&p.url("/healthz"), &[]).await.status, 200);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strength_and_never_expires_are_checked() {
    let demo = Demo::new();
    let forever = demo.token_with("forever", "alice", "all api", None, None);
    let year = Some(OffsetDateTime::now_utc() + time::Duration::days(365));
    let mortal = demo.token_with("mortal", "alice", "all api", year, None);
    let p = Proxy::start(demo.config()).await;
    let url = p.url("/api/authentications");
    let make = |token: &str, extra: Value| {
        let mut body = json!({"name": format!("t{}", extra), "scopes": ["conda:download"]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (url, token) = (url.clone(), token.to_owned());
        async move { api("POST", &url, &token, Some(body)).await }
    };
    let strong = make(&forever, json!({"strength": "strong"})).await;
    let weak = make(&forever, json!({"strength": "weak"})).await;
    assert!(strong.status == 200 && weak.status == 200, "{} {}", strong.text(), weak.text());
    let secret = |g: &Got| serde_json::from_slice::<Value>(&g.body).unwrap()["token"].as_str().unwrap().to_owned();
    let (strong, weak) = (secret(&strong), secret(&weak));
    assert!(weak.len() < strong.len(), "a weak token is shorter: {weak:?} vs {strong:?}");
    let works = get(&p.url(&format!("/t/{weak}/mychan/noarch/repodata.json")), &[]).await;
    assert_eq!(works.status, 200, "a weak token is still a token");
    for bad in [json!({"strength": "medium"}), json!({"strength": 1}), json!({"never_expires": "yes"})] {
        let g = make(&forever, bad.clone()).await;
        assert_eq!(g.status, 400, "{bad}: {}", g.text());
    }
    let never = make(&forever, json!({"never_expires": true})).await;
    assert_eq!(never.status, 200, "{}", never.text());
    let made = p.app.snapshot().tokens.records().iter().find(|r| r.name.contains("never_expires")).cloned().unwrap();
    assert_eq!(made.expires, None, "never_expires makes a token without an expiry");
    let g = make(&mortal, json!({"never_expires": true})).await;
    assert_eq!(g.status, 403, "a token that expires cannot make one that never does: {}", g.text());
    let g = make(&forever, json!({"never_expires": true, "max-age": 60})).await;
    assert_eq!(g.status, 400, "{}", g.text());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_would_make_listings_lie_are_refused() {
    let demo = Demo::new();
    let admin = demo.token_with("admin", "alice", "all api", None, None);
    let p = Proxy::start(demo.config()).await;
    for c in ['\u{202E}', '\u{2066}', '\u{200B}', '\u{2028}', '\u{2029}', '\u{0085}', '\u{FEFF}', '\n'] {
        let name = format!("lap{c}top");
        let g =
            api("POST", &p.url("/api/authentications"), &admin, Some(json!({"name": name, "scopes": ["conda"]}))).await;
        assert_eq!(g.status, 400, "{:?}: {}", name, g.text());
        assert!(g.text().contains(&format!("U+{:04X}", u32::from(c))), "{}", g.text());
        let member =
            percent_encoding::utf8_percent_encode(&format!("ev{c}e"), percent_encoding::NON_ALPHANUMERIC).to_string();
        let g = api("PUT", &p.url(&format!("/api/channels/mychan/groups/eng/members/{member}")), &admin, None).await;
        assert_eq!(g.status, 400, "member {member}: {}", g.text());
    }
    // In the configuration file, the key is named.
    let text = demo_config_text("[upstream]\ndir = \"channels\"", "")
        .replace("members = [\"bob\", \"carol\"]", "members = [\"bob\", \"car\u{202E}ol\"]");
    let e = condagate::config::Config::from_toml_str(&text, demo.path()).unwrap_err();
    assert!(e.problems.iter().any(|p| p.starts_with("groups[0].members[1]") && p.contains("U+202E")), "{e}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sendable_bodies_are_refused_with_415() {
    let demo = Demo::new();
    let admin = demo.token_with("admin", "alice", "all api", None, None);
    let p = Proxy::start(demo.config()).await;
    let body = json!({"name": "cross-site", "scopes": ["conda"]});
    for ct in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        for (method, path) in [
            ("POST", "/api/authentications"),
            ("PUT", "/api/channels/mychan/groups/eng/members/zed"),
            ("DELETE", "/api/authentications/name/admin"),
        ] {
            let g = call(method, &p.url(path), &admin, Some(body.clone()), ct).await;
            assert_eq!(g.status, 415, "{method} {path} as {ct}: {}", g.text());
        }
    }
    // Nothing changed.
    let listed = api("GET", &p.url("/api/authentications"), &admin, None).await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(api("POST", &p.url("/api/authentications"), &admin, Some(body)).await.status, 200);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_handler_still_answers_500_and_is_counted() {
    let demo = Demo::new();
    let p = Proxy::start(demo.config()).await;
    p.app.set_panic_path("/pubchan/noarch/boom.txt");
    let g = get(&p.url("/pubchan/noarch/boom.txt"), &[]).await;
    assert_problem(&g, 500, &[], "a panicking handler");
    let m = get(&p.url("/metrics"), &[]).await.text();
    assert_eq!(metric(&m, "condagate_panics_total"), Some(1.0), "{m}");
    assert_eq!(get(&p.url("/pubchan/noarch/repodata.json"), &[]).await.status, 200, "the worker is gone");
    p.stop().await;
}
