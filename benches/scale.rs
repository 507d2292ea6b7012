//! Views of conda-forge-sized channels (#19): what a cold view costs as the channel grows, before (the single-pass
//! filter over the whole document) and after (the span index), side by side in one run.
//!
//! `cargo bench --bench scale` (sizes in records: `-- 20000 100000 400000`, the default). Each size generates a
//! `linux-64/repodata.json` shaped like conda-forge's (N records, N/30 names, half `.tar.bz2`, half `.conda`; not
//! committed, made in memory), then times, as the median of 5 runs:
//! - indexing the document once (done when it is fetched, off the serving threads);
//! - a cold 10 % view and a cold 90 % view (every tenth name, nine names in ten), as JSON, by both ways;
//! - the `.zst` of those views: compressing the JSON view at levels 3 and 1, and as condagate serves it (level 3
//!   up to 8 MiB, level 1 on zstd's threads above, compressed while it is assembled: no JSON copy is made);
//!
//! and prints the process's peak RSS at the end. Then, through the real server (`--server N`, default 400000; `--no-server`
//! to skip): the `condagate` binary on a local folder holding the N-record document, ten users whose groups each see
//! a distinct tenth of the names; a probe sends `GET /healthz` every 2 ms on a kept-alive connection throughout, and
//! the bench reports the cold first view (document read, indexed, view rendered), ten distinct cold views at once,
//! the same ten again (from the cache), `/healthz` latency during each phase, and the server's peak RSS.
//! Results and their reading are in `docs/performance.md`.

#![allow(clippy::unwrap_used)] // bench code: a failed unwrap is a failed bench

mod common;

use common::{start_condagate, token};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use condagate::internals::conda::filter::filter_repodata;
use condagate::internals::conda::spans::Spans;

fn median(mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut out = 0;
    for _ in 0..5 {
        let t = Instant::now();
        out = std::hint::black_box(f());
        times.push(t.elapsed());
    }
    times.sort();
    (times[2], out)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The `.zst` of a view as condagate makes it: compressed as it is assembled from the index.
fn zst_as_served(spans: &Spans, doc: &[u8], allow: &dyn Fn(&str) -> bool) -> Vec<u8> {
    let (level, workers) = condagate::internals::conda::view::zst_settings(spans.view_len(allow));
    spans.render_zst(doc, allow, level, workers).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = match args.iter().position(|a| a == "--server") {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()),
        None => Some(400_000),
    };
    let server = if args.iter().any(|a| a == "--no-server") { None } else { server };
    let sizes: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || args[i - 1] != "--server")
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() { vec![20_000, 100_000, 400_000] } else { sizes };
    println!("| N | document | index once | names / runs | index memory | view | one pass (before) | spans (after) | ratio | .zst level 3 | .zst level 1 | .zst as served | .zst sizes: 3 / 1 / served (json) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let names = (n / 30).max(1);
        let doc = common::repodata(n, names);
        let (index_time, _) = median(|| Spans::index(&doc).unwrap().counts().0);
        let spans = Spans::index(&doc).unwrap();
        let (distinct, _, runs) = spans.counts();
        for (label, keep) in [("10 %", 1usize), ("90 %", 9)] {
            let allow = move |name: &str| {
                let i: usize = name.rsplit('-').next().and_then(|d| d.parse().ok()).unwrap_or(0);
                i % 10 < keep
            };
            let (before, before_len) = median(|| {
                let mut out = Vec::new();
                filter_repodata(&doc, &allow, &mut out).unwrap();
                out.len()
            });
            let (after, after_len) = median(|| {
                let mut out = Vec::new();
                spans.render(&doc, &allow, &mut out);
                out.len()
            });
            assert_eq!(before_len, after_len, "the two ways made views of different sizes");
            let mut view = Vec::new();
            spans.render(&doc, &allow, &mut view);
            let (zst3, zst3_len) = median(|| zstd::bulk::compress(&view, 3).unwrap().len());
            let (zst1, zst1_len) = median(|| zstd::bulk::compress(&view, 1).unwrap().len());
            let (zst_view, zst_view_len) = median(|| zst_as_served(&spans, &doc, &allow).len());
            println!(
                "| {n} | {:.0} MB | {} | {distinct} / {runs} | {} KiB | {label} | {} | {} | {:.1}x | {} | {} | {} | {:.1} / {:.1} / {:.1} / {:.1} MB |",
                doc.len() as f64 / 1e6,
                ms(index_time),
                spans.heap_bytes() / 1024,
                ms(before),
                ms(after),
                before.as_secs_f64() / after.as_secs_f64().max(1e-9),
                ms(zst3),
                ms(zst1),
                ms(zst_view),
                zst3_len as f64 / 1e6,
                zst1_len as f64 / 1e6,
                zst_view_len as f64 / 1e6,
                after_len as f64 / 1e6,
            );
        }
    }
    println!("\npeak RSS: {:.0} MiB", common::status_mib("self", "VmHWM"));
    if let Some(n) = server {
        through_the_server(n);
    }
}

/// One `GET` on a fresh connection; the status and the body's length.
fn get(addr: &str, path: &str) -> (u16, usize) {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").map_or(all.len(), |i| i + 4);
    let status = std::str::from_utf8(&all[9..12]).unwrap().parse().unwrap();
    (status, all.len() - head_end)
}

/// Sends `GET /healthz` every 2 ms on one kept-alive connection, recording each answer's latency, until stopped.
struct Probe {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Duration>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start(addr: &str) -> Self {
        let (stop, samples) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (s, v, addr) = (Arc::clone(&stop), Arc::clone(&samples), addr.to_owned());
        let thread = std::thread::spawn(move || {
            let c = TcpStream::connect(&addr).unwrap();
            c.set_nodelay(true).unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut w = c;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                w.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                v.lock().unwrap().push(t.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Probe { stop, samples, thread: Some(thread) }
    }

    /// p50, p99 and the worst of the samples since the last call.
    fn take(&self) -> String {
        let mut v = std::mem::take(&mut *self.samples.lock().unwrap());
        v.sort();
        if v.is_empty() {
            return "no sample".into();
        }
        let at = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
        format!("{} / {} / {} ({} probes)", ms(at(0.5)), ms(at(0.99)), ms(v[v.len() - 1]), v.len())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn through_the_server(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let doc = common::repodata(n, (n / 30).max(1));
    let doc_mb = doc.len() as f64 / 1e6;
    std::fs::create_dir_all(root.join("channels/big/linux-64")).unwrap();
    std::fs::write(root.join("channels/big/linux-64/repodata.json"), &doc).unwrap();
    drop(doc);
    let mut config = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n[tokens]\nfile = \"tokens.toml\"\n[upstream]\ndir = \"channels\"\n\
         [[channels]]\nname = \"big\"\naccess = \"private\"\nowners = [\"alice\"]\n",
    );
    for k in 0..10 {
        config.push_str(&format!(
            "[[groups]]\nname = \"g{k}\"\nchannel = \"big\"\nmembers = [\"u{k}\"]\npackages = [\"pkg-*{k}\"]\n"
        ));
    }
    let config_path = root.join("condagate.toml");
    std::fs::write(&config_path, config).unwrap();
    let tokens: Vec<String> = (0..10).map(|k| token(&config_path, "bench", &format!("u{k}"))).collect();
    let (server, addr) = start_condagate(&config_path);
    let pid = server.0.id();
    let path = |k: usize, form: &str| format!("/t/{}/big/linux-64/{form}", tokens[k]);
    let probe = Probe::start(&addr);
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "\nthrough the server: {n} records ({doc_mb:.0} MB), ten users seeing a distinct tenth of the names each\n"
    );
    println!("| phase | time | views | /healthz p50 / p99 / worst during it |");
    println!("|---|---|---|---|");
    println!("| idle | | | {} |", probe.take());
    let t = Instant::now();
    let (status, len) = get(&addr, &path(0, "repodata.json"));
    assert_eq!(status, 200);
    println!(
        "| cold: document read and indexed, one view rendered | {} | {:.1} MB | {} |",
        ms(t.elapsed()),
        len as f64 / 1e6,
        probe.take()
    );
    for (label, form) in
        [("ten distinct cold views at once", "repodata.json.zst"), ("the same ten again", "repodata.json.zst")]
    {
        let t = Instant::now();
        let done: Vec<_> = (0..10)
            .map(|k| {
                let (addr, p) = (addr.clone(), path(k, form));
                std::thread::spawn(move || get(&addr, &p))
            })
            .collect();
        let sizes: Vec<(u16, usize)> = done.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(sizes.iter().all(|(s, _)| *s == 200), "{sizes:?}");
        let total: usize = sizes.iter().map(|(_, l)| l).sum();
        println!(
            "| {label} (`.zst`) | {} (slowest) | {:.1} MB in all | {} |",
            ms(t.elapsed()),
            total as f64 / 1e6,
            probe.take()
        );
    }
    let t = Instant::now();
    let done: Vec<_> = (0..10)
        .map(|k| {
            let (addr, p) = (addr.clone(), path(k, "repodata.json"));
            std::thread::spawn(move || get(&addr, &p))
        })
        .collect();
    let total: usize = done.into_iter().map(|h| h.join().unwrap().1).sum();
    println!(
        "| ten distinct cold views at once (JSON) | {} (slowest) | {:.1} MB in all | {} |",
        ms(t.elapsed()),
        total as f64 / 1e6,
        probe.take()
    );
    drop(probe);
    let pid = pid.to_string();
    println!(
        "\nserver peak RSS {:.0} MiB, now {:.0} MiB",
        common::status_mib(&pid, "VmHWM"),
        common::status_mib(&pid, "VmRSS")
    );
}
