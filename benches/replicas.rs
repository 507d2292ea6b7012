//! Replicas on one PostgreSQL, measured: what the PostgreSQL store costs on the request path, how fast a revocation
//! on one replica is refused by another, and loading a million tokens.
//!
//! ```text
//! cargo bench --bench replicas                        # needs Debian's postgresql package (scripts/test installs it)
//! cargo bench --bench replicas -- --tokens 1000000 --revocations 200 --rounds 5
//! ```
//!
//! 1. Small-file requests/s, the file store against the PostgreSQL store: two real `condagate` binaries serving the
//!    same channel, driven in turn (A B A B …) by one built-in keep-alive generator; the median ratio and the servers'
//!    CPU per request.
//! 2. Revocation → refusal: two replicas on the database; each round revokes a fresh token through replica A's admin
//!    API and polls replica B (every 1 ms) until it answers 401; p50, p99 and the worst.
//! 3. N tokens (default 1,000,000) written to the database, then loaded by a fresh replica: its start-up time and
//!    RSS, against a replica started on a tokens file with the same N tokens.

#![allow(clippy::unwrap_used)] // bench code: a failed unwrap is a failed run

#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

struct Opts {
    tokens: usize,
    revocations: usize,
    rounds: usize,
    duration: Duration,
    connections: usize,
    /// Which of the three parts to run (`--only 3`).
    only: Option<u32>,
}

fn opts() -> Opts {
    let mut o = Opts {
        tokens: 1_000_000,
        revocations: 200,
        rounds: 5,
        duration: Duration::from_secs(4),
        connections: 32,
        only: None,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--tokens" => o.tokens = v.parse().unwrap(),
            "--revocations" => o.revocations = v.parse().unwrap(),
            "--rounds" => o.rounds = v.parse().unwrap(),
            "--connections" => o.connections = v.parse().unwrap(),
            "--only" => o.only = Some(v.parse().unwrap()),
            "--duration" => o.duration = Duration::from_secs_f64(v.trim_end_matches('s').parse().unwrap()),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn condagate(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_condagate")).args(args).output().unwrap();
    assert!(out.status.success(), "condagate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Starts `condagate serve` and waits for its address; also returns how long that took.
fn serve(config: &Path) -> (Server, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_condagate"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_owned();
    (Server { child, addr }, started.elapsed())
}

fn config(dir: &Path, name: &str, tokens: &str) -> std::path::PathBuf {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthrottle = {{ failures = 1000000 }}\n[tokens]\n{tokens}\n[upstream]\ndir = \"channels\"\n\
         [[channels]]\nname = \"pub\"\naccess = \"authenticated\"\n[[channels]]\nname = \"priv\"\naccess = \"private\"\nowners = [\"alice\"]\n"
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Keep-alive GETs of `url` on `connections` connections for `duration`: completed requests.
async fn drive(url: &str, connections: usize, duration: Duration) -> u64 {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let resp = client.get(url.parse().unwrap()).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.into_body().collect().await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

async fn send(method: &str, url: &str, token: &str, body: Option<String>) -> (u16, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url).header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let resp = client.request(req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    (status, text)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The tokens file holding `n` tokens (all for `bob`), and the SQL file inserting the same records.
fn many_tokens(dir: &Path, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let tokens = dir.join("many-tokens.toml");
    let sql = dir.join("many-tokens.csv");
    let (mut t, mut s) = (std::fs::File::create(&tokens).unwrap(), std::fs::File::create(&sql).unwrap());
    let mut x = 0x2545F4914F6CDD1Du64;
    for i in 0..n {
        let mut digest = [0u8; 32];
        for chunk in digest.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let hex = hex::encode(digest);
        writeln!(
            t,
            "[[token]]\nname = \"t{i}\"\nuser = \"bob\"\ndigest = \"sha256:{hex}\"\nscopes = [\"conda:download\"]\ncreated = \"2026-12-01T00:00:00Z\"\n"
        )
        .unwrap();
        writeln!(s, "\\x{hex},t{i},bob,{{conda:download}},2026-12-01T00:00:00Z").unwrap();
    }
    (tokens, sql)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = opts();
    if !postgres::Postgres::available() {
        println!("PostgreSQL is not installed (apt-get install postgresql): the replicas bench needs it.");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("channels/pub/noarch")).unwrap();
    std::fs::write(
        root.join("channels/pub/noarch/repodata.json"),
        r#"{"info":{"subdir":"noarch"},"packages":{"a-1-0.tar.bz2":{"name":"a","version":"1","build":"0","build_number":0,"depends":[]}},"packages.conda":{}}"#,
    )
    .unwrap();
    let pg = postgres::Postgres::start();
    let pg_cfg = config(root, "pg.toml", &format!("postgres = \"{}\"", pg.url()));
    let file_cfg = config(root, "file.toml", "file = \"tokens.toml\"");
    condagate(&["store", "migrate", "--config", pg_cfg.to_str().unwrap()]);
    let mint = |cfg: &Path, name: &str, scopes: &str| {
        let out = condagate(&[
            "token",
            "create",
            "--config",
            cfg.to_str().unwrap(),
            "--name",
            name,
            "--user",
            "alice",
            "--scopes",
            scopes,
        ]);
        out.lines().last().unwrap().to_owned()
    };
    let pg_token = mint(&pg_cfg, "bench", "conda:download api");
    let file_token = mint(&file_cfg, "bench", "conda:download");

    let run = |part: u32| o.only.is_none_or(|p| p == part);
    // 1. The request path with each store.
    let (a, _) = serve(&pg_cfg);
    let (f, _) = serve(&file_cfg);
    let url_pg = format!("http://{}/t/{pg_token}/pub/noarch/repodata.json", a.addr);
    let url_file = format!("http://{}/t/{file_token}/pub/noarch/repodata.json", f.addr);
    if run(1) {
        drive(&url_pg, o.connections, Duration::from_secs(1)).await;
        drive(&url_file, o.connections, Duration::from_secs(1)).await;
        println!(
            "small repodata.json, {} connections, {:?} per run, PostgreSQL store vs file store:",
            o.connections, o.duration
        );
        let (mut ratios, mut cpu_pg, mut cpu_file) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=o.rounds {
            let one = |url: &str, pid: u32| {
                let url = url.to_owned();
                async move {
                    let before = cpu_seconds(pid);
                    let n = drive(&url, o.connections, o.duration).await;
                    (n as f64 / o.duration.as_secs_f64(), (cpu_seconds(pid) - before) / n.max(1) as f64 * 1e6)
                }
            };
            let (rps_pg, c_pg) = one(&url_pg, a.child.id()).await;
            let (rps_file, c_file) = one(&url_file, f.child.id()).await;
            println!("  round {round}: postgres {rps_pg:>8.0} req/s ({c_pg:.1} µs CPU/req), file {rps_file:>8.0} req/s ({c_file:.1} µs CPU/req)");
            ratios.push(rps_pg / rps_file);
            cpu_pg.push(c_pg);
            cpu_file.push(c_file);
        }
        println!(
        "  => median requests/s ratio postgres / file = {:.3}x (rounds {ratios:.3?}); server CPU per request {:.1} vs {:.1} µs\n",
        median(ratios.clone()),
        median(cpu_pg),
        median(cpu_file)
    );
    }
    drop(f);

    // 2. Revocation on A → refusal on B.
    let (b, _) = serve(&pg_cfg);
    let mut took = Vec::new();
    for i in (0..o.revocations).filter(|_| run(2)) {
        let (status, body) = send(
            "POST",
            &format!("http://{}/api/authentications", a.addr),
            &pg_token,
            Some(format!(r#"{{"name":"r{i}","scopes":["conda:download"]}}"#)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let t = v["token"].as_str().unwrap().to_owned();
        let on_b = format!("http://{}/t/{t}/pub/noarch/repodata.json", b.addr);
        while send("GET", &on_b, "", None).await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (status, _) =
            send("DELETE", &format!("http://{}/api/authentications/name/r{i}", a.addr), &pg_token, None).await;
        assert_eq!(status, 201);
        let revoked = Instant::now();
        loop {
            // Refused: 401 (the throttle is set high enough never to answer 429 here).
            if send("GET", &on_b, "", None).await.0 == 401 {
                break;
            }
            assert!(revoked.elapsed() < Duration::from_secs(10), "B never refused a revoked token");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        took.push(revoked.elapsed().as_secs_f64() * 1e3);
    }
    took.sort_by(f64::total_cmp);
    if run(2) {
        println!(
        "revocation on A → refusal on B, {} revocations: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (poll every 1 ms)\n",
        took.len(),
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took[took.len() - 1]
    );
    }
    drop(a);
    drop(b);

    if !run(3) {
        return;
    }
    // 3. A million tokens.
    let (tokens_file, csv) = many_tokens(root, o.tokens);
    std::fs::set_permissions(&csv, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let copy = format!(
        "\\copy condagate_tokens (digest, name, \"user\", scopes, created) FROM '{}' WITH (FORMAT csv)",
        csv.display()
    );
    let loaded = Instant::now();
    pg.psql(&copy);
    println!("{} tokens written to PostgreSQL with COPY in {:.1} s", o.tokens, loaded.elapsed().as_secs_f64());
    std::fs::rename(&tokens_file, root.join("tokens.toml")).unwrap();
    for (name, cfg) in [("postgres", &pg_cfg), ("file", &file_cfg)] {
        let (s, start) = serve(cfg);
        let rss = rss_mib(s.child.id());
        println!(
            "  {name:<8} store: {} tokens loaded, serving after {:.2} s, RSS {rss:.0} MiB",
            o.tokens + 2,
            start.as_secs_f64()
        );
    }
}
