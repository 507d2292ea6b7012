//! Reloads that never undo each other: a configuration reload landing in the middle of a tokens reload, and many of
//! them under token churn through the admin API and the CLI's code, are all served.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{get, Demo, Proxy};

const PUBLIC_REPODATA: &str = "/pubchan/noarch/repodata.json";

fn set_max_age(demo: &Demo, secs: u64) {
    let path = demo.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("repodata_max_age = ").expect("the config sets repodata_max_age");
    let end = start + text[start..].find('\n').unwrap();
    let changed = format!("{}repodata_max_age = \"{secs}s\"{}", &text[..start], &text[end..]);
    // Replaced whole, as an editor or a deploy tool would, so no reader sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, changed).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// Creates a download token through the code `condagate token create` runs, from a configuration already read (the
/// file on disk may be broken on purpose, or being rewritten).
fn create_as_the_cli_does(config: &condagate::config::Config, name: &str, user: &str) {
    let new = condagate::internals::tokens::issue::NewToken {
        name: name.to_owned(),
        user: user.to_owned(),
        scopes: vec!["conda:download".into()],
        expires: None,
        channels: None,
        weak: false,
    };
    condagate::internals::tokens::issue::create(config, new, time::OffsetDateTime::now_utc()).unwrap();
}

async fn served_max_age(p: &Proxy) -> String {
    let g = get(&p.url(PUBLIC_REPODATA), &[]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    g.header("cache-control").unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_landing_inside_a_tokens_reload_is_still_served() {
    let demo = Demo::with("[upstream]\ndir = \"channels\"", "repodata_max_age = \"61s\"");
    let p = Proxy::start(demo.config()).await;
    assert!(served_max_age(&p).await.contains("max-age=61"));
    let app = Arc::clone(&p.app);

    // The next tokens reload stops after reading the file until told to go on.
    let (read_tx, read_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let armed = AtomicBool::new(true);
    let go_rx = Mutex::new(go_rx);
    let read_tx = Mutex::new(read_tx);
    app.set_tokens_read_hook(move || {
        if armed.swap(false, Ordering::SeqCst) {
            let _ = read_tx.lock().unwrap().send(());
            let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(20));
        }
    });
    let tokens_reload = tokio::spawn({
        let app = Arc::clone(&app);
        async move { app.reload_tokens().await }
    });
    let read = tokio::task::spawn_blocking(move || read_rx.recv_timeout(Duration::from_secs(20))).await.unwrap();
    read.expect("the tokens reload never read the tokens");

    // Meanwhile, the configuration changes and a SIGHUP-style reload is asked for.
    set_max_age(&demo, 62);
    let config_reload = tokio::spawn({
        let app = Arc::clone(&app);
        async move { app.reload_all().await }
    });
    // Give the configuration reload every chance to finish first, as it did when the two raced: it waits for the
    // tokens reload instead (a wait bounded here, not a timing assertion: either order must end the same).
    let waited = Instant::now();
    while !config_reload.is_finished() && waited.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    go_tx.send(()).unwrap();
    tokens_reload.await.unwrap().unwrap();
    config_reload.await.unwrap().unwrap();

    let cc = served_max_age(&p).await;
    assert!(cc.contains("max-age=62"), "the configuration reload was undone: {cc}");
    let status = app.reload_status();
    assert_eq!((status.config_generation, status.tokens_generation), (2, 3), "{status:?}");
    let h = get(&p.url("/healthz"), &[]).await.json();
    assert_eq!((h["config_generation"].as_u64(), h["tokens_generation"].as_u64()), (Some(2), Some(3)), "{h}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_reload_is_reported_until_a_good_one_whatever_reloads_in_between() {
    let demo = Demo::with("[upstream]\ndir = \"channels\"", "repodata_max_age = \"61s\"");
    let admin = demo.token("ops", "alice", "api:read");
    let p = Proxy::start(demo.config()).await;
    let auth = format!("Bearer {admin}");
    let path = demo.config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    let config = demo.config();
    std::fs::write(&path, good.replace("access = \"public\"", "access = \"publik\"")).unwrap();
    assert!(p.app.reload_all().await.is_err());
    // Token changes reload the tokens, many times; the configuration error stands through all of them.
    for i in 0..5 {
        create_as_the_cli_does(&config, &format!("churn-{i}"), "bob");
        p.app.reload_tokens().await.unwrap();
        let h = get(&p.url("/healthz"), &[("authorization", &auth)]).await.json();
        assert_eq!(h["status"], "degraded", "{h}");
        assert!(h["config_error"].as_str().unwrap_or_default().contains("publik"), "{h}");
        assert_eq!(h["tokens_error"], serde_json::Value::Null, "{h}");
    }
    std::fs::write(&path, &good).unwrap();
    p.app.reload_all().await.unwrap();
    let h = get(&p.url("/healthz"), &[("authorization", &auth)]).await.json();
    assert_eq!((h["status"].as_str(), &h["config_error"]), (Some("ok"), &serde_json::Value::Null), "{h}");
    p.stop().await;
}

async fn api_post(url: &str, token: &str, body: serde_json::Value) -> u16 {
    let req = Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_reload_is_served_while_tokens_churn_through_the_api_and_the_cli() {
    let demo = Demo::with("[upstream]\ndir = \"channels\"", "repodata_max_age = \"100s\"");
    let writer = demo.token("writer", "bob", "conda:download api:write");
    let p = Proxy::start(demo.config()).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Token writes through the admin API (each reloads the tokens), and through the CLI's code (each noticed by
    // the tokens watcher, every 50 ms).
    let api_writes = tokio::spawn({
        let (url, stop) = (p.url("/api/authentications"), Arc::clone(&stop));
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = serde_json::json!({"name": format!("api-{n}"), "scopes": ["conda:download"]});
                assert_eq!(api_post(&url, &writer, body).await, 200);
                n += 1;
            }
            n
        }
    });
    let cli_writes = std::thread::spawn({
        let (config, stop) = (demo.config(), Arc::clone(&stop));
        move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                create_as_the_cli_does(&config, &format!("cli-{n}"), "carol");
                n += 1;
            }
            n
        }
    });
    let reloads = 40;
    for i in 0..reloads {
        let age = 101 + i;
        set_max_age(&demo, age);
        let app = Arc::clone(&p.app);
        app.reload_all().await.unwrap();
        // Served at once, and still served after the token writes that follow (none may write an old config back).
        for _ in 0..3 {
            let cc = served_max_age(&p).await;
            assert!(
                cc.contains(&format!("max-age={age},")) || cc.ends_with(&format!("max-age={age}")),
                "reload {i}: {cc}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (api_n, cli_n) = (api_writes.await.unwrap(), cli_writes.join().unwrap());
    eprintln!("{reloads} config reloads served during {api_n} API and {cli_n} CLI token writes");
    assert!(api_n > 0 && cli_n > 0, "no token churn happened: {api_n} API, {cli_n} CLI writes");
    let status = p.app.reload_status();
    assert_eq!(status.config_generation, 1 + reloads, "{status:?}");
    p.stop().await;
}
