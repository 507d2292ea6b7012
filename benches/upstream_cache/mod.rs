//! The upstream-cache part of the load bench (`cargo bench --bench load -- --only cache`): condagate with
//! `[upstream.cache]` in front of an HTTP origin, side by side with nginx `proxy_cache` in front of the same origin.
//!
//! The origin is a small HTTP server in this process over the bench channel: it counts GETs per path, sends
//! `Cache-Control` (packages a year, repodata one second, so that both caches revalidate repodata every second) and
//! can be told to stall (accept, never answer). Both caches run with the same job: verify tokens, keep packages, serve
//! repodata stale while one background update runs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::AtomicBool;

use http_body_util::Full;
use hyper::service::service_fn;
use sha2::{Digest, Sha256};

use super::*;

/// Lists every `.tar.bz2` of `pub/noarch` in its `repodata.json` with its sha256 (the cache keeps only verified
/// packages), after writing the two cold packages of the single-flight runs.
pub fn prepare(root: &Path) {
    let noarch = root.join("channels/pub/noarch");
    for (name, seed) in [("cold-a-1.0-0.tar.bz2", 1u8), ("cold-b-1.0-0.tar.bz2", 2)] {
        let bytes: Vec<u8> = (0..8u32 << 20).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        write(&noarch.join(name), &bytes);
    }
    let path = noarch.join("repodata.json");
    let mut rd: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for e in std::fs::read_dir(&noarch).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        if let Some(stem) = name.strip_suffix(".tar.bz2") {
            let bytes = std::fs::read(&p).unwrap();
            let pkg = stem.rsplitn(3, '-').nth(2).unwrap().to_owned();
            rd["packages"][&name] = serde_json::json!({
                "name": pkg, "version": "1.0", "build": "0", "build_number": 0, "depends": [],
                "sha256": hex::encode(Sha256::digest(&bytes)), "size": bytes.len(), "subdir": "noarch",
            });
        }
    }
    std::fs::write(&path, serde_json::to_vec(&rd).unwrap()).unwrap();
}

/// The origin both caches fetch from.
struct Origin {
    port: u16,
    gets: Arc<Mutex<HashMap<String, u64>>>,
    stall: Arc<AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

impl Origin {
    fn start(root: PathBuf) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let gets = Arc::new(Mutex::new(HashMap::new()));
        let stall = Arc::new(AtomicBool::new(false));
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (g, s) = (Arc::clone(&gets), Arc::clone(&stall));
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (root, gets, stall) = (root.clone(), Arc::clone(&g), Arc::clone(&s));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (root, gets, stall) = (root.clone(), Arc::clone(&gets), Arc::clone(&stall));
                        async move { Ok::<_, Infallible>(answer(&root, &gets, &stall, &req).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Origin { port, gets, stall, _rt: rt }
    }

    fn gets(&self, path: &str) -> u64 {
        self.gets.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

async fn answer(
    root: &Path,
    gets: &Mutex<HashMap<String, u64>>,
    stall: &AtomicBool,
    req: &http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    *gets.lock().unwrap().entry(path.clone()).or_default() += 1;
    if stall.load(Relaxed) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let file = root.join(path.trim_start_matches('/'));
    let (Ok(meta), Ok(bytes)) = (std::fs::metadata(&file), std::fs::read(&file)) else {
        let mut r = http::Response::new(Full::new(Bytes::new()));
        *r.status_mut() = http::StatusCode::NOT_FOUND;
        return r;
    };
    let etag =
        format!("\"{:x}-{:x}\"", meta.len(), meta.modified().unwrap().elapsed().map_or(0, |d| d.as_secs() / 3600));
    let max_age = if path.ends_with(".tar.bz2") || path.ends_with(".conda") { 31_536_000 } else { 1 };
    let mut r = if req.headers().get("if-none-match").is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        let mut r = http::Response::new(Full::new(Bytes::new()));
        *r.status_mut() = http::StatusCode::NOT_MODIFIED;
        r
    } else {
        http::Response::new(Full::new(Bytes::from(bytes)))
    };
    let h = r.headers_mut();
    h.insert("etag", etag.parse().unwrap());
    h.insert("cache-control", format!("max-age={max_age}").parse().unwrap());
    h.insert("last-modified", httpdate::fmt_http_date(meta.modified().unwrap()).parse().unwrap());
    r
}

fn nginx_cache_conf(dir: &Path, token: &str, port: u16, origin: u16) -> PathBuf {
    let conf = format!(
        r#"worker_processes 2;
daemon off;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    proxy_temp_path {dir}/tmp;
    client_body_temp_path {dir}/tmp;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=conda:10m max_size=10g inactive=1d use_temp_path=off;
    map $tok $tok_ok {{ default 0; "{token}" 1; }}
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location ~ ^/t/(?<tok>[^/]+)/(?<rest>.*)$ {{
            if ($tok_ok = 0) {{ return 401; }}
            proxy_pass http://origin/$rest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache conda;
            proxy_cache_key $rest;
            proxy_cache_revalidate on;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;
            proxy_cache_background_update on;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// `n` clients GET `url` at once; returns how many got the whole `len` bytes, and the seconds until the last did.
fn burst(url: &str, n: usize, len: u64) -> (usize, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let t = Instant::now();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (client, url) = (client.clone(), url.to_owned());
            tasks.push(tokio::spawn(async move {
                let Ok(resp) = client.get(url.parse().unwrap()).await else { return false };
                let ok = resp.status().is_success();
                let got = resp.into_body().collect().await.map(|c| c.to_bytes().len() as u64);
                ok && got.is_ok_and(|g| g == len)
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap_or(false));
        }
        (ok, t.elapsed().as_secs_f64())
    })
}

/// Runs the cache section. `dir_big` is the 24 MB package on the local-folder condagate (`dir_pid`).
pub fn run(o: &Opts, root: &Path, alice: &str, dir_big: &str, dir_pid: u32) -> Vec<(String, f64)> {
    let origin = Origin::start(root.join("channels"));
    let cfg = root.join("condagate-cache.toml");
    let upstream = format!(
        "[upstream]\nurl = \"http://127.0.0.1:{}\"\ncache = {{ dir = \"{}\", max_size = \"10GiB\" }}",
        origin.port,
        root.join("cg-cache").display()
    );
    std::fs::write(&cfg, config_text(&upstream)).unwrap();
    let (cg, addr) = start_condagate(&cfg);
    let cg_pid = cg.0.id();
    let pc_port = free_port();
    let conf = nginx_cache_conf(&root.join("nginx-cache"), alice, pc_port, origin.port);
    let nginx = Nginx::start(&conf, &root.join("nginx-cache"));
    wait_port(pc_port);
    let workers = children(nginx.master.id());
    let cgu = |path: &str| format!("http://{addr}/t/{alice}/pub/noarch/{path}");
    let ngu = |path: &str| format!("http://127.0.0.1:{pc_port}/t/{alice}/pub/noarch/{path}");
    let mut summary = Vec::new();

    println!("upstream cache: cold single flight, 64 clients at once on an 8 MiB package:");
    let len = 8u64 << 20;
    // Both load the repodata first, so that only the package is cold.
    let _ = burst(&cgu("repodata.json"), 1, 0);
    for (name, url, path) in [
        ("condagate cache", cgu("cold-a-1.0-0.tar.bz2"), "/pub/noarch/cold-a-1.0-0.tar.bz2"),
        ("nginx proxy_cache", ngu("cold-b-1.0-0.tar.bz2"), "/pub/noarch/cold-b-1.0-0.tar.bz2"),
    ] {
        let (ok, secs) = burst(&url, 64, len);
        let gets = origin.gets(path);
        println!("  {name:<20} {ok}/64 whole bodies in {secs:.2} s; origin GETs: {gets}");
        summary.push((format!("cold 64 clients, origin GETs ({name})"), gets as f64));
    }

    // Warm both with the 24 MB package.
    assert_eq!(burst(&cgu("big-1.0-0.tar.bz2"), 1, 24 << 20).0, 1);
    assert_eq!(burst(&ngu("big-1.0-0.tar.bz2"), 1, 24 << 20).0, 1);
    let eight = Opts { connections: 8, urls: Vec::new(), ..*o };
    let mbps = |r: &Run| r.mbps();
    let r = side_by_side(
        "24 MB package, warm cache vs the local-folder upstream, wrk MB/s (8 connections):",
        Side::new("condagate cache", &cgu("big-1.0-0.tar.bz2"), &[cg_pid]),
        Side::new("condagate dir", dir_big, &[dir_pid]),
        &eight,
        mbps,
        wrk,
    );
    summary.push(("warm cache / local folder, 24 MB package MB/s (goal >= 0.9)".into(), r));
    let r = side_by_side(
        "24 MB package, warm: condagate cache vs nginx proxy_cache, wrk MB/s (8 connections):",
        Side::new("condagate cache", &cgu("big-1.0-0.tar.bz2"), &[cg_pid]),
        Side::new("nginx proxy_cache", &ngu("big-1.0-0.tar.bz2"), &workers),
        &eight,
        mbps,
        wrk,
    );
    summary.push(("warm cache 24 MB package MB/s, condagate / nginx proxy_cache".into(), r));

    println!("repodata.json p99 with the origin answering, then stalled (both caches revalidate every second):");
    for (name, url, pids) in [
        ("condagate cache", cgu("repodata.json"), vec![cg_pid]),
        ("nginx proxy_cache", ngu("repodata.json"), workers.clone()),
    ] {
        let _ = pids;
        origin.stall.store(false, Relaxed);
        std::thread::sleep(Duration::from_millis(1500));
        let warm = wrk(&url, o.connections, o.duration);
        warm.show(&format!("{name}, origin answering"));
        origin.stall.store(true, Relaxed);
        std::thread::sleep(Duration::from_millis(1500));
        let stalled = wrk(&url, o.connections, o.duration);
        stalled.show(&format!("{name}, origin stalled"));
        let ratio = stalled.p99_us / warm.p99_us.max(1.0);
        println!(
            "  => {name}: p99 stalled / answering = {ratio:.2}x (goal <= 2), errors while stalled: {}",
            stalled.errors
        );
        summary.push((format!("repodata p99 stalled / answering ({name})"), ratio));
    }
    origin.stall.store(false, Relaxed);
    drop(nginx);
    summary
}
