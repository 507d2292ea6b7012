//! The upstream cache in front of an HTTP mirror: single flight, verification, stale-while-revalidate and
//! stale-if-error, eviction, restarts, ranges, and that it hides what the upstream path hides.
//!
//! The mirror is the test [`Recorder`]: a real HTTP server over a copy of the demo channels that counts every request
//! and can stall, fail, corrupt bytes or disappear on demand, which a real mirror cannot be made to do.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use support::{big_payload, get, metric, open, try_get, Behaviour, Demo, Proxy, Recorder};

/// Adds `name` (`<pkg>-<version>-<build>.conda` or `.tar.bz2`) with `bytes` to `subdir` of the channel at `dir`,
/// listed in its `repodata.json` with the right sha256 (or, with `listed = false`, not listed at all).
fn add_package(dir: &Path, subdir: &str, name: &str, bytes: &[u8], listed: bool) {
    std::fs::write(dir.join(subdir).join(name), bytes).unwrap();
    if !listed {
        return;
    }
    let path = dir.join(subdir).join("repodata.json");
    let mut rd: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let (stem, map) = match name.strip_suffix(".conda") {
        Some(s) => (s, "packages.conda"),
        None => (name.strip_suffix(".tar.bz2").unwrap(), "packages"),
    };
    let mut parts = stem.rsplitn(3, '-');
    let (build, version, pkg) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    rd[map][name] = serde_json::json!({
        "name": pkg, "version": version, "build": build, "build_number": 0, "depends": [],
        "sha256": hex::encode(Sha256::digest(bytes)), "size": bytes.len(), "subdir": subdir,
    });
    std::fs::write(&path, serde_json::to_vec(&rd).unwrap()).unwrap();
}

/// A demo whose channels are served by a recorder, behind a cache of `max_size`.
async fn cached_demo(max_size: &str, timeout: &str) -> (Demo, Recorder) {
    let demo = Demo::with("", "");
    let rec = Recorder::start(demo.path().join("channels")).await;
    let upstream = format!(
        r#"[upstream]
url = "{}"
recheck = "200ms"
timeout = "{timeout}"
cache = {{ dir = "cache", max_size = "{max_size}" }}"#,
        rec.url()
    );
    std::fs::write(demo.config_path(), support::demo_config_text(&upstream, "")).unwrap();
    (demo, rec)
}

fn mychan(demo: &Demo) -> PathBuf {
    demo.path().join("channels/mychan")
}

/// How many requests the recorder saw for `path`.
fn asked(rec: &Recorder, path: &str) -> usize {
    rec.seen().iter().filter(|s| s.path == path).count()
}

/// The cached copy of `rel` (below a channel's root), if there is one.
fn cached_file(demo: &Demo, rel: &str) -> Option<PathBuf> {
    std::fs::read_dir(demo.path().join("cache")).unwrap().map(|e| e.unwrap().path().join(rel)).find(|p| p.is_file())
}

async fn metrics(proxy: &Proxy) -> String {
    get(&proxy.url("/metrics"), &[]).await.text()
}

async fn cache_metric(proxy: &Proxy, name: &str) -> f64 {
    let text = metrics(proxy).await;
    metric(&text, &format!("condagate_upstream_cache_{name}")).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_cold_requests_share_one_upstream_get_and_get_correct_bodies() {
    let (demo, rec) = cached_demo("1GiB", "30s").await;
    let big = big_payload(3 << 20);
    add_package(&mychan(&demo), "noarch", "alpha-9.0-0.conda", &big, true);
    let bob = demo.token("bob", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    // Slow enough that the fill is still running while the requests arrive.
    rec.set(Behaviour::Slow(Duration::from_millis(5)));
    let url = proxy.url(&format!("/t/{bob}/mychan/noarch/alpha-9.0-0.conda"));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { try_get(&url, &[]).await }));
    }
    for t in tasks {
        let (status, headers, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers.get("content-length").unwrap(), &big.len().to_string());
        assert!(body.unwrap() == big, "a client got wrong bytes");
    }
    assert_eq!(asked(&rec, "/mychan/noarch/alpha-9.0-0.conda"), 1, "50 cold requests must make one upstream GET");
    let (hits, misses) = (cache_metric(&proxy, "hits_total").await, cache_metric(&proxy, "misses_total").await);
    assert_eq!(hits + misses, 50.0);
    assert!(misses >= 1.0);
    assert!(
        cached_file(&demo, "noarch/alpha-9.0-0.conda").is_some(),
        "the verified file is kept\n{}",
        metrics(&proxy).await
    );

    // Later requests come from disk, the upstream no longer asked.
    rec.set(Behaviour::Gone);
    let again = get(&url, &[]).await;
    assert_eq!(again.status, 200);
    assert!(again.body == big);
    assert_eq!(asked(&rec, "/mychan/noarch/alpha-9.0-0.conda"), 1);
    assert_eq!(cache_metric(&proxy, "hits_total").await, hits + 1.0);
    assert!(cache_metric(&proxy, "filled_bytes_total").await >= big.len() as f64);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_does_not_cancel_the_fill() {
    let (demo, rec) = cached_demo("1GiB", "30s").await;
    let big = big_payload(2 << 20);
    add_package(&mychan(&demo), "noarch", "alpha-9.0-0.conda", &big, true);
    let bob = demo.token("bob", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    rec.set(Behaviour::Slow(Duration::from_millis(20)));
    let url = proxy.url(&format!("/t/{bob}/mychan/noarch/alpha-9.0-0.conda"));
    let resp = open("GET", &url, &[]).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = http_body_util::BodyExt::frame(&mut body).await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    support::eventually(Duration::from_secs(20), "the fill to finish without its client", || {
        cached_file(&demo, "noarch/alpha-9.0-0.conda").is_some()
    })
    .await;
    let kept = std::fs::read(cached_file(&demo, "noarch/alpha-9.0-0.conda").unwrap()).unwrap();
    assert!(kept == big, "the kept file is the whole, right file");
    rec.set(Behaviour::Gone);
    let again = get(&url, &[]).await;
    assert_eq!(again.status, 200);
    assert!(again.body == big);
    assert_eq!(asked(&rec, "/mychan/noarch/alpha-9.0-0.conda"), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_bytes_are_not_cached_and_the_transfer_is_aborted() {
    let (demo, rec) = cached_demo("1GiB", "30s").await;
    let big = big_payload(1 << 20);
    add_package(&mychan(&demo), "noarch", "alpha-9.0-0.conda", &big, true);
    let bob = demo.token("bob", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let url = proxy.url(&format!("/t/{bob}/mychan/noarch/alpha-9.0-0.conda"));
    // Load the repodata first, so that only the package is corrupted.
    assert_eq!(get(&proxy.url(&format!("/t/{bob}/mychan/noarch/repodata.json")), &[]).await.status, 200);
    rec.set(Behaviour::Corrupt);
    // The upstream holds all but its first chunk until the client has its answer's head and first bytes, so that
    // the transfer has begun before the bytes can be checked.
    for (range, status) in [(None, 200), (Some("bytes=0-99"), 206)] {
        let held = rec.hold.write().await;
        let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", *r)).collect();
        let mut resp = open("GET", &url, &headers).await;
        assert_eq!(resp.status(), status, "{range:?}: the transfer starts before the bytes can be checked");
        let first = resp.body_mut().frame().await.expect("a first frame").expect("first bytes");
        assert!(!first.into_data().unwrap().is_empty());
        drop(held);
        let rest = resp.into_body().collect().await;
        assert!(rest.is_err(), "{range:?}: a transfer of wrong bytes must end aborted, never cleanly");
    }
    assert_eq!(cache_metric(&proxy, "verification_failures_total").await, 2.0);
    assert!(cached_file(&demo, "noarch/alpha-9.0-0.conda").is_none(), "wrong bytes are never kept");
    support::eventually(Duration::from_secs(5), "the partial files to be deleted", || {
        std::fs::read_dir(demo.path().join("cache/.partial")).unwrap().count() == 0
    })
    .await;

    rec.set(Behaviour::Normal);
    let good = get(&url, &[]).await;
    assert_eq!(good.status, 200);
    assert!(good.body == big);
    assert_eq!(asked(&rec, "/mychan/noarch/alpha-9.0-0.conda"), 3, "a failed fill is tried again");
    assert!(cached_file(&demo, "noarch/alpha-9.0-0.conda").is_some());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_keeps_cached_packages_and_repodata_served() {
    let (demo, rec) = cached_demo("1GiB", "5s").await;
    let big = big_payload(256 << 10);
    add_package(&mychan(&demo), "noarch", "alpha-9.0-0.conda", &big, true);
    let bob = demo.token("bob", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let base = proxy.url(&format!("/t/{bob}/mychan/noarch"));
    let warm = get(&format!("{base}/repodata.json"), &[]).await;
    assert_eq!(warm.status, 200);
    assert_eq!(get(&format!("{base}/alpha-9.0-0.conda"), &[]).await.status, 200);
    assert_eq!(get(&format!("{base}/repodata_shards.msgpack.zst"), &[]).await.status, 200);

    for outage in [Behaviour::Gone, Behaviour::Fail] {
        rec.set(outage);
        tokio::time::sleep(Duration::from_millis(400)).await;
        for form in ["repodata.json", "repodata.json.zst", "repodata_shards.msgpack.zst"] {
            let g = get(&format!("{base}/{form}"), &[]).await;
            assert_eq!(g.status, 200, "{outage:?}: {form} keeps being served from the cache: {}", g.text());
        }
        support::eventually_async(Duration::from_secs(10), "a failed revalidation to be counted", || async {
            let _ = get(&format!("{base}/repodata.json"), &[]).await;
            cache_metric(&proxy, "stale_documents").await >= 1.0
        })
        .await;
        let stale = get(&format!("{base}/repodata.json"), &[]).await;
        assert_eq!(stale.status, 200);
        assert!(stale.body == warm.body, "{outage:?}: the last good copy");
        assert!(stale.header("age").is_some(), "{outage:?}: a stale copy says its age");
        let pkg = get(&format!("{base}/alpha-9.0-0.conda"), &[]).await;
        assert_eq!(pkg.status, 200, "{outage:?}: a cached package is served");
        assert!(pkg.body == big);
        let cold = get(&format!("{base}/beta-1.0-0.tar.bz2"), &[]).await;
        support::assert_problem(&cold, 502, &[&bob], &format!("{outage:?}: an uncached package"));
        rec.set(Behaviour::Normal);
        support::eventually_async(Duration::from_secs(10), "revalidations to succeed again", || async {
            for form in ["repodata.json", "repodata_shards.msgpack.zst"] {
                let _ = get(&format!("{base}/{form}"), &[]).await;
            }
            cache_metric(&proxy, "stale_documents").await == 0.0
        })
        .await;
    }
    assert!(cache_metric(&proxy, "revalidation_failures_total").await >= 2.0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_never_makes_a_repodata_client_wait() {
    let (demo, rec) = cached_demo("1GiB", "30s").await;
    let bob = demo.token("bob", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let url = proxy.url(&format!("/t/{bob}/mychan/noarch/repodata.json"));
    let warm = get(&url, &[]).await;
    assert_eq!(warm.status, 200);
    rec.set(Behaviour::Hang);
    let before = asked(&rec, "/mychan/noarch/repodata.json");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The upstream would hold a waiting client for its whole 30 s timeout: 5 s means nobody waited on it.
        let g = tokio::time::timeout(Duration::from_secs(5), get(&url, &[]))
            .await
            .expect("a repodata client waited on the stalled upstream");
        assert_eq!(g.status, 200);
        assert!(g.body == warm.body);
    }
    assert_eq!(
        asked(&rec, "/mychan/noarch/repodata.json") - before,
        1,
        "at most one revalidation runs at a time, however many requests come"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_an_outage_serves_from_the_folder_and_clears_partial_files() {
    let (demo, rec) = cached_demo("1GiB", "5s").await;
    let big = big_payload(300 << 10);
    add_package(&mychan(&demo), "noarch", "alpha-9.0-0.conda", &big, true);
    let bob = demo.token("bob", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let base = proxy.url(&format!("/t/{bob}/mychan/noarch"));
    let warm = get(&format!("{base}/repodata.json"), &[]).await;
    assert_eq!(get(&format!("{base}/alpha-9.0-0.conda"), &[]).await.status, 200);
    proxy.stop().await;

    let partial = demo.path().join("cache/.partial/left-by-a-crash.part");
    std::fs::write(&partial, b"half a package").unwrap();
    rec.set(Behaviour::Gone);
    let proxy = Proxy::start(demo.config()).await;
    assert!(!partial.exists(), "partial files are deleted at start");
    let base = proxy.url(&format!("/t/{bob}/mychan/noarch"));
    let rd = get(&format!("{base}/repodata.json"), &[]).await;
    assert_eq!(rd.status, 200, "{}", rd.text());
    assert!(rd.body == warm.body);
    assert!(rd.header("age").is_some());
    let pkg = get(&format!("{base}/alpha-9.0-0.conda"), &[]).await;
    assert_eq!(pkg.status, 200);
    assert!(pkg.body == big);
    assert_eq!(get(&format!("{base}/beta-1.0-0.tar.bz2"), &[]).await.status, 502);
    let (bytes, files) = (cache_metric(&proxy, "bytes").await, cache_metric(&proxy, "files").await);
    assert!(
        files >= 2.0 && bytes >= big.len() as f64,
        "the index is rebuilt from the folder: {files} files, {bytes} B"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_files_are_evicted_first() {
    let (demo, _rec) = cached_demo("330KiB", "5s").await;
    let names: Vec<String> = (1..=4).map(|i| format!("alpha-9.{i}-0.conda")).collect();
    let bodies: Vec<Vec<u8>> = (0..4).map(|i| big_payload((100 << 10) + i)).collect();
    for (n, b) in names.iter().zip(&bodies) {
        add_package(&mychan(&demo), "noarch", n, b, true);
    }
    let bob = demo.token("bob", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let fetch = |i: usize| {
        let url = proxy.url(&format!("/t/{bob}/mychan/noarch/{}", names[i]));
        let want = bodies[i].clone();
        async move {
            let g = get(&url, &[]).await;
            assert_eq!(g.status, 200);
            assert!(g.body == want);
        }
    };
    let held = |i: usize| cached_file(&demo, &format!("noarch/{}", names[i])).is_some();
    for i in 0..3 {
        fetch(i).await;
    }
    assert!((0..3).all(held), "three files fit");
    fetch(0).await; // now the second is the least recently used
    fetch(3).await;
    assert!(held(0) && held(2) && held(3), "the recently used stay");
    assert!(!held(1), "the least recently used goes first");
    assert_eq!(cache_metric(&proxy, "evictions_total").await, 1.0);
    assert!(cache_metric(&proxy, "bytes").await <= (330 << 10) as f64);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_heads_on_cold_and_cached_files() {
    let (demo, rec) = cached_demo("1GiB", "30s").await;
    let big = big_payload(1 << 20);
    add_package(&mychan(&demo), "noarch", "alpha-9.0-0.conda", &big, true);
    let bob = demo.token("bob", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    rec.set(Behaviour::Slow(Duration::from_millis(5)));
    let url = proxy.url(&format!("/t/{bob}/mychan/noarch/alpha-9.0-0.conda"));

    // Cold: the range is answered from the fill once its bytes arrive.
    let (status, headers, body) = try_get(&url, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(status, 206);
    assert_eq!(headers.get("content-range").unwrap(), &format!("bytes 1000-1999/{}", big.len()));
    assert!(body.unwrap() == big[1000..2000]);
    support::eventually(Duration::from_secs(20), "the fill to finish", || {
        cached_file(&demo, "noarch/alpha-9.0-0.conda").is_some()
    })
    .await;
    // Cached: from disk, with the same validators.
    let (status, headers2, body) = try_get(&url, &[("range", "bytes=-10")]).await;
    assert_eq!(status, 206);
    assert!(body.unwrap() == big[big.len() - 10..]);
    assert_eq!(headers.get("etag"), headers2.get("etag"), "the ETag stays when the file is cached");
    let etag = headers2.get("etag").unwrap().to_str().unwrap().to_owned();
    assert_eq!(get(&url, &[("if-none-match", &etag)]).await.status, 304);
    let outside = get(&url, &[("range", "bytes=99999999-")]).await;
    assert_eq!(outside.status, 416);
    assert_eq!(asked(&rec, "/mychan/noarch/alpha-9.0-0.conda"), 1);

    // HEAD of a cold file: its length, no body.
    add_package(&mychan(&demo), "noarch", "alpha-9.5-0.conda", &big[..5000], true);
    // The repodata the proxy holds must list the new file before it can be verified.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = get(&proxy.url(&format!("/t/{bob}/mychan/noarch/repodata.json")), &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let head = support::request("HEAD", &proxy.url(&format!("/t/{bob}/mychan/noarch/alpha-9.5-0.conda")), &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("5000"));
    assert!(head.body.is_empty());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_packages_stay_hidden_and_unlisted_ones_are_not_kept() {
    let (demo, rec) = cached_demo("1GiB", "30s").await;
    let unlisted = big_payload(70_000);
    add_package(&mychan(&demo), "noarch", "alpha-7.0-0.conda", &unlisted, false);
    let bob = demo.token("bob", "bob", "conda:download");
    let alice = demo.token("alice", "alice", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let secret = "noarch/secretpkg-1.0-0.conda";
    assert_eq!(get(&proxy.url(&format!("/t/{alice}/mychan/{secret}")), &[]).await.status, 200);
    assert!(cached_file(&demo, secret).is_some(), "the owner's download is cached");
    let refused = get(&proxy.url(&format!("/t/{bob}/mychan/{secret}")), &[]).await;
    support::assert_problem(&refused, 404, &[&bob], "a hidden package from the cache");
    let anonymous = get(&proxy.url(&format!("/mychan/{secret}")), &[]).await;
    assert_ne!(anonymous.status, 200);

    // A package the repodata does not list cannot be verified: served as the upstream sends it, never kept.
    let url = proxy.url(&format!("/t/{bob}/mychan/noarch/alpha-7.0-0.conda"));
    for _ in 0..2 {
        let g = get(&url, &[]).await;
        assert_eq!(g.status, 200);
        assert!(g.body == unlisted);
    }
    assert!(cached_file(&demo, "noarch/alpha-7.0-0.conda").is_none());
    assert_eq!(asked(&rec, "/mychan/noarch/alpha-7.0-0.conda"), 2);
    assert_eq!(cache_metric(&proxy, "unverifiable_total").await, 2.0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_are_verified_by_their_name() {
    let (demo, rec) = cached_demo("1GiB", "30s").await;
    let alice = demo.token("alice", "alice", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let shard = std::fs::read_dir(mychan(&demo).join("noarch/shards")).unwrap().next().unwrap().unwrap();
    let name = shard.file_name().into_string().unwrap();
    let bytes = std::fs::read(shard.path()).unwrap();
    let url = proxy.url(&format!("/t/{alice}/mychan/noarch/shards/{name}"));
    let g = get(&url, &[]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    assert!(g.body == bytes);
    assert!(cached_file(&demo, &format!("noarch/shards/{name}")).is_some(), "a shard whose name is its sha256 is kept");
    rec.set(Behaviour::Gone);
    assert!(get(&url, &[]).await.body == bytes);
    proxy.stop().await;
}

fn condagate(args: &[&str], config: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_condagate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("cannot run the condagate binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_can_see_verify_and_prune_the_cache() {
    let (demo, rec) = cached_demo("1GiB", "5s").await;
    let big = big_payload(200 << 10);
    add_package(&mychan(&demo), "noarch", "alpha-9.0-0.conda", &big, true);
    let alice = demo.token("alice", "alice", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    for file in ["repodata.json", "alpha-9.0-0.conda", "alpha-1.0-0.tar.bz2", "secretpkg-1.0-0.conda"] {
        assert_eq!(get(&proxy.url(&format!("/t/{alice}/mychan/noarch/{file}")), &[]).await.status, 200, "{file}");
    }
    proxy.stop().await;
    drop(rec);
    let config = demo.config_path();

    let (ok, text) = condagate(&["cache", "stats"], &config);
    assert!(ok, "{text}");
    assert!(text.contains("http://127.0.0.1:") && text.contains("/mychan"), "stats name the source: {text}");
    assert!(text.contains("3 files, 1 documents"), "{text}");

    let (ok, text) = condagate(&["cache", "verify"], &config);
    assert!(ok && text.contains("3 files match their sha256"), "{text}");
    let victim = cached_file(&demo, "noarch/alpha-1.0-0.tar.bz2").unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let (ok, text) = condagate(&["cache", "verify"], &config);
    assert!(!ok, "a mismatch fails the command: {text}");
    assert!(text.contains("MISMATCH, deleted") && text.contains("alpha-1.0-0.tar.bz2"), "{text}");
    assert!(!victim.exists(), "the corrupted file is deleted");

    let (ok, text) = condagate(&["cache", "prune", "--max-size", "100KiB"], &config);
    assert!(ok, "{text}");
    assert!(cached_file(&demo, "noarch/alpha-9.0-0.conda").is_none(), "the 200 KiB package cannot stay: {text}");
    let (_, text) = condagate(&["cache", "stats"], &config);
    let held: u64 = text.split(": ").nth(1).and_then(|t| t.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(held <= 100 << 10, "{text}");
}
