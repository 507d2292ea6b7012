//! The load bench: condagate under load, and side by side with nginx doing the same job.
//!
//! ```text
//! cargo bench --bench load                      # generated channel; nginx + wrk comparison when installed
//! cargo bench --bench load -- --duration 10s --connections 128
//! cargo bench --bench load -- --url http://HOST/t/TOKEN/chan/noarch/repodata.json [--url …]   # your own server
//! ```
//!
//! Without `--url` it builds a channel in a temporary folder (a ~2 kB repodata.json, a 24 MB package, a ~11 MB
//! repodata.json of 20k records for a restricted view), starts the release `condagate` binary on it, and drives it with
//! a built-in keep-alive HTTP/1.1 load generator: requests/s, MB/s, latency p50/p99/p999, errors, and condagate's
//! peak RSS. When `nginx` and `wrk` are on the PATH it also serves the same files with nginx (a `map` of allowed
//! tokens, sendfile on, access log off) and drives both with wrk, alternating A B A B for `--rounds` rounds, and
//! prints the median ratio condagate / nginx per scenario. condagate runs with `RUST_LOG=warn` (no access log),
//! matching nginx's `access_log off`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
mod upstream_cache;

use common::{start_condagate, token};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

struct Opts {
    duration: Duration,
    connections: usize,
    rounds: usize,
    urls: Vec<String>,
    /// `--only cache`: only the upstream-cache section.
    only_cache: bool,
}

fn parse_opts() -> Opts {
    let mut o =
        Opts { duration: Duration::from_secs(5), connections: 64, rounds: 5, urls: Vec::new(), only_cache: false };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--duration" => {
                o.duration =
                    humantime::parse_duration(&args.next().expect("--duration VALUE")).expect("a duration like 5s")
            }
            "--connections" => o.connections = args.next().and_then(|v| v.parse().ok()).expect("--connections N"),
            "--rounds" => o.rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--url" => o.urls.push(args.next().expect("--url URL")),
            "--only" => o.only_cache = args.next().expect("--only cache") == "cache",
            // cargo bench passes --bench; anything else unknown is ignored the same way.
            _ => {}
        }
    }
    o
}

/// What one load run measured.
#[derive(Debug, Clone, Default)]
struct Run {
    requests: u64,
    bytes: u64,
    errors: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
    fn show(&self, label: &str) {
        println!(
            "  {label:<44} {:>9.0} req/s {:>9.1} MB/s  p50 {:>7.0} µs  p99 {:>7.0} µs  p999 {:>7.0} µs  errors {}",
            self.rps(),
            self.mbps(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.errors
        );
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i])
}

/// The built-in generator: `connections` keep-alive HTTP/1.1 connections, each sending requests back to back.
fn drive(url: &str, connections: usize, duration: Duration) -> Run {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let uri: http::Uri = url.parse().expect("a valid URL");
        let authority = uri.authority().expect("an absolute URL").to_string();
        let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (authority, path) = (authority.clone(), path.clone());
            let (stop, requests, bytes, errors, latencies) = (
                Arc::clone(&stop),
                Arc::clone(&requests),
                Arc::clone(&bytes),
                Arc::clone(&errors),
                Arc::clone(&latencies),
            );
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::with_capacity(100_000);
                'outer: while !stop.load(Relaxed) {
                    let Ok(stream) = tokio::net::TcpStream::connect(&authority).await else {
                        errors.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
                        errors.fetch_add(1, Relaxed);
                        continue;
                    };
                    tokio::spawn(conn);
                    while !stop.load(Relaxed) {
                        let req = http::Request::get(path.as_str())
                            .header("host", authority.as_str())
                            .body(Empty::<Bytes>::new())
                            .unwrap();
                        let t = Instant::now();
                        let Ok(resp) = send.send_request(req).await else {
                            errors.fetch_add(1, Relaxed);
                            continue 'outer;
                        };
                        let ok = resp.status().is_success();
                        let mut body = resp.into_body();
                        let mut n = 0u64;
                        while let Some(frame) = body.frame().await {
                            match frame {
                                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                                Err(_) => {
                                    errors.fetch_add(1, Relaxed);
                                    continue 'outer;
                                }
                            }
                        }
                        if !ok {
                            errors.fetch_add(1, Relaxed);
                        }
                        mine.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        requests.fetch_add(1, Relaxed);
                        bytes.fetch_add(n, Relaxed);
                    }
                }
                latencies.lock().unwrap().extend(mine);
            }));
        }
        tokio::time::sleep(duration).await;
        stop.store(true, Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        for t in tasks {
            let _ = t.await;
        }
        let mut l = std::mem::take(&mut *latencies.lock().unwrap());
        l.sort_unstable();
        Run {
            requests: requests.load(Relaxed),
            bytes: bytes.load(Relaxed),
            errors: errors.load(Relaxed),
            seconds,
            p50_us: percentile(&l, 0.50),
            p99_us: percentile(&l, 0.99),
            p999_us: percentile(&l, 0.999),
        }
    })
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

/// wrk: one thread (the other core serves), `connections` connections.
fn wrk(url: &str, connections: usize, duration: Duration) -> Run {
    let out = Command::new(which("wrk").unwrap())
        .args(["-t1", &format!("-c{connections}"), &format!("-d{}s", duration.as_secs().max(1)), "--latency", url])
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |prefix: &str| -> Option<&str> {
        text.lines().find(|l| l.trim_start().starts_with(prefix)).and_then(|l| l.split_whitespace().nth(1))
    };
    let lat = |p: &str| num(p).map(parse_wrk_time).unwrap_or(0.0);
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let seconds = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split("requests in ").nth(1))
        .and_then(|r| r.split(',').next())
        .map(parse_wrk_time)
        .map_or(duration.as_secs_f64(), |us| us / 1e6);
    // "12345 requests in 5.00s, 1.23GB read"
    let bytes = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.rsplit(", ").next())
        .and_then(|r| r.strip_suffix(" read"))
        .map(parse_wrk_size)
        .unwrap_or(0.0) as u64;
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).collect::<Vec<_>>())
        .sum();
    Run { requests, bytes, errors, seconds, p50_us: lat("50%"), p99_us: lat("99%"), p999_us: 0.0 }
}

/// wrk times like `1.23ms`, `250.00us`, `2.01s`, `10.00m`, in µs.
fn parse_wrk_time(s: &str) -> f64 {
    let s = s.trim();
    let (n, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else {
        (s, 1.0)
    };
    n.parse::<f64>().unwrap_or(0.0) * mult
}

/// wrk sizes like `1.23GB`, `456.00MB`, `12KB`, `100B`, in bytes.
fn parse_wrk_size(s: &str) -> f64 {
    let s = s.trim();
    for (suffix, mult) in [("GB", 1024.0f64.powi(3)), ("MB", 1024.0f64.powi(2)), ("KB", 1024.0), ("B", 1.0)] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().unwrap_or(0.0) * mult;
        }
    }
    0.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// nginx, stopped the way it expects: killing only the master would leave its workers running.
struct Nginx {
    master: Child,
    conf: PathBuf,
    prefix: PathBuf,
}

impl Nginx {
    fn start(conf: &Path, prefix: &Path) -> Self {
        let mut nginx = Nginx::command(conf, prefix);
        let master = nginx.stderr(Stdio::inherit()).spawn().expect("nginx starts");
        Nginx { master, conf: conf.to_owned(), prefix: prefix.to_owned() }
    }

    /// `nginx` with this configuration file and prefix folder.
    fn command(conf: &Path, prefix: &Path) -> Command {
        let mut c = Command::new(which("nginx").unwrap());
        c.arg("-c").arg(conf).arg("-p").arg(prefix);
        c
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `nginx -s stop` signals the master, which stops its workers before it exits.
        let stopped = Nginx::command(&self.conf, &self.prefix)
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.master.kill();
        }
        let _ = self.master.wait();
    }
}

/// The numeric fields of `/proc/<pid>/stat` after the command name (which is in parentheses and may hold spaces):
/// the process state is the first, the parent's pid the second, utime and stime the 12th and 13th.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds (user + system, all threads) that the processes `pids` have used so far.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|&pid| {
            let f = stat_fields(pid)?;
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The processes whose parent is `parent` (nginx's workers).
fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(parent))
        .collect()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Builds the bench channel: `pub` (public) and `priv` (private; alice owns it, bob's group sees 1% of names).
fn build_channel(root: &Path) {
    let small = common::repodata(3, 3);
    write(&root.join("channels/pub/noarch/repodata.json"), &small);
    let mut big = vec![0u8; 24 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    write(&root.join("channels/pub/noarch/big-1.0-0.tar.bz2"), &big);
    write(&root.join("channels/priv/linux-64/repodata.json"), &common::repodata(20_000, 2_000));
    println!(
        "channel: repodata.json {} B, package {} MB, restricted-view source {:.1} MB",
        small.len(),
        big.len() >> 20,
        std::fs::metadata(root.join("channels/priv/linux-64/repodata.json")).unwrap().len() as f64 / 1e6
    );
}

fn config_text(upstream: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
[tokens]
file = "tokens.toml"
{upstream}
[[channels]]
name = "pub"
access = "authenticated"
[[channels]]
name = "priv"
access = "private"
owners = ["alice"]
[[groups]]
name = "most"
channel = "priv"
members = ["bob"]
packages = ["pkg-00*", "pkg-01[0-8]*"]

[[groups]]
name = "few"
channel = "priv"
members = ["carol"]
packages = ["pkg-000*"]
"#
    )
}

fn nginx_conf(dir: &Path, root: &Path, tokens: &[&str], port: u16, proxy_port: u16, origin_port: u16) -> PathBuf {
    let map: String = tokens.iter().map(|t| format!("        \"{t}\" 1;\n")).collect();
    let conf = format!(
        r#"worker_processes 2;
daemon off;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    default_type application/octet-stream;
    map $tok $tok_ok {{
        default 0;
{map}    }}
    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location ~ ^/t/(?<tok>[^/]+)/(?<rest>.*)$ {{
            if ($tok_ok = 0) {{ return 401; }}
            alias {root}/$rest;
        }}
    }}
    server {{
        listen 127.0.0.1:{proxy_port} reuseport;
        location ~ ^/t/(?<tok>[^/]+)/(?<rest>.*)$ {{
            if ($tok_ok = 0) {{ return 401; }}
            proxy_pass http://origin/$rest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{origin_port} reuseport;
        root {root};
    }}
}}
"#,
        dir = dir.display(),
        root = root.display(),
    );
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {port}");
}

/// Opens `n` keep-alive connections that each make one request and then sit idle; returns condagate's RSS growth.
fn idle_connections(url: &str, n: usize, pid: u32) -> (usize, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let uri: http::Uri = url.parse().unwrap();
        let authority = uri.authority().unwrap().to_string();
        let path = uri.path().to_owned();
        let before = rss_now_mib(pid);
        let mut held = Vec::with_capacity(n);
        let mut ok = 0;
        for _ in 0..n {
            let Ok(stream) = tokio::net::TcpStream::connect(&authority).await else { continue };
            let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
                continue;
            };
            tokio::spawn(conn);
            let req = http::Request::get(path.as_str())
                .header("host", authority.as_str())
                .body(Empty::<Bytes>::new())
                .unwrap();
            if let Ok(resp) = send.send_request(req).await {
                if resp.status().is_success() && resp.into_body().collect().await.is_ok() {
                    ok += 1;
                }
            }
            held.push(send);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let grown = rss_now_mib(pid) - before;
        drop(held);
        (ok, grown)
    })
}

fn rss_now_mib(pid: u32) -> f64 {
    common::status_mib(&pid.to_string(), "VmRSS")
}

fn peak_rss_mib(pid: u32) -> f64 {
    common::status_mib(&pid.to_string(), "VmHWM")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One side of a comparison: its name, the URL to load, and the processes serving it (for their CPU time).
struct Side<'a> {
    name: &'a str,
    url: &'a str,
    servers: Vec<u32>,
}

impl<'a> Side<'a> {
    fn new(name: &'a str, url: &'a str, servers: &[u32]) -> Self {
        Side { name, url, servers: servers.to_vec() }
    }
}

/// Runs A and B in turn for `o.rounds` rounds; prints each run, the server CPU time per request, and the median
/// ratio A / B of `metric`, which it returns. The CPU time does not depend on how fast the load generator is, so it
/// still compares the servers when the generator's one thread is what limits both.
fn side_by_side(
    label: &str,
    a: Side<'_>,
    b: Side<'_>,
    o: &Opts,
    metric: fn(&Run) -> f64,
    gen: fn(&str, usize, Duration) -> Run,
) -> f64 {
    println!("{label}");
    let mut ratios = Vec::new();
    let (mut cpu_a, mut cpu_b) = (Vec::new(), Vec::new());
    let run = |side: &Side<'_>, round: usize, cpu: &mut Vec<f64>| {
        let before = cpu_seconds(&side.servers);
        let r = gen(side.url, o.connections, o.duration);
        let per_request = (cpu_seconds(&side.servers) - before) / (r.requests.max(1) as f64) * 1e6;
        cpu.push(per_request);
        r.show(&format!("round {round} {}", side.name));
        println!("  {:<44} {per_request:>9.1} µs of server CPU per request", "");
        r
    };
    for round in 1..=o.rounds {
        let ra = run(&a, round, &mut cpu_a);
        let rb = run(&b, round, &mut cpu_b);
        ratios.push(metric(&ra) / metric(&rb).max(f64::MIN_POSITIVE));
    }
    let m = median(ratios.clone());
    println!("  => median ratio {} / {} = {m:.2}x (rounds: {ratios:.2?})", a.name, b.name);
    println!(
        "  => server CPU per request (median): {} {:.1} µs, {} {:.1} µs\n",
        a.name,
        median(cpu_a),
        b.name,
        median(cpu_b)
    );
    m
}

fn main() {
    // 10,000 idle connections need file descriptors on both ends; the server inherits this limit.
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard.min(65_536), hard);
    }
    let o = parse_opts();
    println!(
        "condagate load bench: {} cores, {} connections, {:?} per run",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.connections,
        o.duration
    );
    if !o.urls.is_empty() {
        for url in &o.urls {
            drive(url, o.connections, o.duration).show(url);
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build_channel(root);
    upstream_cache::prepare(root);
    let cfg = root.join("condagate.toml");
    std::fs::write(&cfg, config_text("[upstream]\ndir = \"channels\"")).unwrap();
    let alice = token(&cfg, "alice", "alice");
    let bob = token(&cfg, "bob", "bob");
    let carol = token(&cfg, "carol", "carol");
    let (cg, addr) = start_condagate(&cfg);
    let pid = cg.0.id();
    let u = |tok: &str, path: &str| format!("http://{addr}/t/{tok}/{path}");
    let small = u(&alice, "pub/noarch/repodata.json");
    let big = u(&alice, "pub/noarch/big-1.0-0.tar.bz2");
    let full_view = u(&alice, "priv/linux-64/repodata.json");
    let restricted = u(&bob, "priv/linux-64/repodata.json");
    let small_view = u(&carol, "priv/linux-64/repodata.json");

    if o.only_cache {
        let (Some(_), Some(_)) = (which("nginx"), which("wrk")) else {
            panic!("the cache section needs nginx and wrk (apt-get install nginx-light wrk)");
        };
        for (what, v) in upstream_cache::run(&o, root, &alice, &big, pid) {
            println!("  {what:<70} {v:.2}");
        }
        return;
    }

    // One download of a 1 GiB (sparse) file: how much does streaming it add to the peak RSS?
    let huge = root.join("channels/pub/noarch/huge-1.0-0.tar.bz2");
    std::fs::File::create(&huge).unwrap().set_len(1 << 30).unwrap();
    let peak_before = peak_rss_mib(pid);
    let t = Instant::now();
    // One connection, stopped at once: the request already in flight still completes.
    let r = drive(&u(&alice, "pub/noarch/huge-1.0-0.tar.bz2"), 1, Duration::from_millis(1));
    println!(
        "1 GiB download: {:.0} MB in {:.2} s; condagate peak RSS {peak_before:.1} -> {:.1} MiB (+{:.1} MiB)",
        r.bytes as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        peak_rss_mib(pid),
        peak_rss_mib(pid) - peak_before
    );
    std::fs::remove_file(&huge).ok();

    let want = 10_000;
    let (ok, grown) = idle_connections(&small, want, pid);
    println!(
        "{want} idle keep-alive connections: {ok} served, condagate RSS +{grown:.1} MiB, now {:.1} MiB\n",
        rss_now_mib(pid)
    );

    println!("\ncondagate alone (built-in generator):");
    drive(&small, o.connections, o.duration).show("small repodata.json, unrestricted");
    drive(&big, 8, o.duration).show("24 MB package, 8 connections");
    drive(&full_view, o.connections, o.duration).show("11 MB repodata.json, full view (file)");
    drive(&restricted, o.connections, o.duration).show("11 MB repodata.json, 95% view (cached)");
    drive(&small_view, o.connections, o.duration).show("11 MB repodata.json, 5% view (cached)");
    println!("  condagate peak RSS so far: {:.1} MiB\n", peak_rss_mib(pid));

    let rps = |r: &Run| r.rps();
    let mbps = |r: &Run| r.mbps();
    side_by_side(
        "restricted cached view (95% of names) vs the unrestricted file (condagate vs itself), requests/s:",
        Side::new("restricted view", &restricted, &[pid]),
        Side::new("full file", &full_view, &[pid]),
        &o,
        rps,
        drive,
    );

    let (Some(_), Some(_)) = (which("nginx"), which("wrk")) else {
        println!("nginx and/or wrk are not installed: side-by-side comparisons skipped (apt-get install nginx wrk).");
        println!("condagate peak RSS: {:.1} MiB", peak_rss_mib(pid));
        return;
    };
    let (port, proxy_port, origin_port) = (free_port(), free_port(), free_port());
    let conf = nginx_conf(&root.join("nginx"), &root.join("channels"), &[&alice, &bob], port, proxy_port, origin_port);
    let nginx = Nginx::start(&conf, &root.join("nginx"));
    wait_port(port);
    let ng = |tok: &str, path: &str, p: u16| format!("http://127.0.0.1:{p}/t/{tok}/{path}");

    let cfg_http = root.join("condagate-http.toml");
    std::fs::write(&cfg_http, config_text(&format!("[upstream]\nurl = \"http://127.0.0.1:{origin_port}\""))).unwrap();
    let (cg_http, addr_http) = start_condagate(&cfg_http);

    let workers = children(nginx.master.id());
    let r1 = side_by_side(
        "small repodata.json (unrestricted token), wrk requests/s:",
        Side::new("condagate", &small, &[pid]),
        Side::new("nginx+map", &ng(&alice, "pub/noarch/repodata.json", port), &workers),
        &o,
        rps,
        wrk,
    );
    let r2 = side_by_side(
        "24 MB package, wrk MB/s (8 connections):",
        Side::new("condagate", &big, &[pid]),
        Side::new("nginx sendfile", &ng(&alice, "pub/noarch/big-1.0-0.tar.bz2", port), &workers),
        &Opts { connections: 8, urls: Vec::new(), ..o },
        mbps,
        wrk,
    );
    let r3 = side_by_side(
        "restricted cached view (95% of names) vs unrestricted file (condagate vs itself), wrk requests/s:",
        Side::new("restricted view", &restricted, &[pid]),
        Side::new("full file", &full_view, &[pid]),
        &o,
        rps,
        wrk,
    );
    let r4 = side_by_side(
        "HTTP upstream: condagate -> nginx vs nginx proxy_pass+map -> nginx, small repodata.json, wrk requests/s \
         (server CPU: the proxy plus the nginx behind it):",
        Side::new(
            "condagate",
            &format!("http://{addr_http}/t/{alice}/pub/noarch/repodata.json"),
            &[&[cg_http.0.id()], &workers[..]].concat(),
        ),
        Side::new("nginx proxy_pass", &ng(&alice, "pub/noarch/repodata.json", proxy_port), &workers),
        &o,
        rps,
        wrk,
    );
    println!("summary (median of {} alternating rounds, 2-core machine):", o.rounds);
    println!("  small files      condagate/nginx+map        {r1:.2}x  (goal >= 1.0)");
    println!("  24 MB package    condagate/nginx sendfile   {r2:.2}x  (goal >= 0.9)");
    println!("  restricted view  view/unrestricted file     {r3:.2}x  (goal >= 0.9)");
    println!("  HTTP upstream    condagate/nginx proxy_pass {r4:.2}x  (goal >= 1.0)");
    println!(
        "  condagate peak RSS {:.1} MiB (dir upstream), {:.1} MiB (HTTP upstream)",
        peak_rss_mib(pid),
        peak_rss_mib(cg_http.0.id())
    );
    drop(nginx);
    println!();
    for (what, v) in upstream_cache::run(&o, root, &alice, &big, pid) {
        println!("  {what:<70} {v:.2}");
    }
}
