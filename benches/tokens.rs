//! One million tokens: how long the tokens file takes to load, what the table costs in memory, and lookup latency.
//!
//! `cargo bench --bench tokens [-- --count N]` generates a tokens file of N records (default 1,000,000) in a
//! temporary folder, loads it the way the server does (`file::load` + `TokenTable::new`), then times 1,000,000
//! lookups (half hits, half misses) one by one and reports p50/p99/p999 and the process's peak RSS.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::time::Instant;

use condagate::internals::tokens::Token;
use condagate::internals::tokens::{file, TokenTable};

fn rss_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn secret(i: usize) -> String {
    format!("cg-bench{i:024}")
}

fn main() {
    let mut count = 1_000_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--count" {
            count = args.next().and_then(|v| v.parse().ok()).expect("--count N");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    let t = Instant::now();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..count {
            let d = Token::parse(&secret(i)).unwrap().digest().to_stored();
            writeln!(
                f,
                "[[token]]\nname = \"t{i}\"\nuser = \"user{}\"\ndigest = \"{d}\"\nscopes = [\"conda:download\"]\ncreated = \"2026-01-01T00:00:00Z\"\nexpires = \"2027-01-01T00:00:00Z\"\n",
                i % 5000
            )
            .unwrap();
        }
    }
    let size = std::fs::metadata(&path).unwrap().len();
    println!("generated {count} tokens ({:.0} MB) in {:.2} s", size as f64 / 1e6, t.elapsed().as_secs_f64());
    let before = rss_mib("VmRSS:");
    let t = Instant::now();
    let records = file::load(&path).unwrap();
    let parsed = t.elapsed();
    let table = TokenTable::new(records);
    let loaded = t.elapsed();
    println!(
        "load: parse {:.2} s, table {:.2} s, total {:.2} s; RSS {:.0} MiB -> {:.0} MiB (peak {:.0} MiB)",
        parsed.as_secs_f64(),
        (loaded - parsed).as_secs_f64(),
        loaded.as_secs_f64(),
        before,
        rss_mib("VmRSS:"),
        rss_mib("VmHWM:")
    );
    let probes: Vec<Token> = (0..1_000_000)
        .map(|i| {
            if i % 2 == 0 {
                Token::parse(&secret((i * 7919) % count)).unwrap()
            } else {
                Token::parse(&format!("cg-miss{i:024}")).unwrap()
            }
        })
        .collect();
    let mut lat = Vec::with_capacity(probes.len());
    let mut hits = 0;
    for p in &probes {
        let t = Instant::now();
        hits += usize::from(std::hint::black_box(table.lookup(p)).is_some());
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!(
        "lookup ({} probes, {hits} hits; includes SHA-256 of the presented token): p50 {} ns, p99 {} ns, p999 {} ns",
        probes.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
}
