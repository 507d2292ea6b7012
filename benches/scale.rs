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
//! and prints the process's peak RSS at the end. Results and their reading are in `docs/performance.md`.

#![allow(clippy::unwrap_used)] // bench code: a failed unwrap is a failed bench

mod common;

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

fn peak_rss_mib() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).map(|v| v.trim().trim_end_matches(" kB").to_owned());
    kb.and_then(|k| k.parse::<u64>().ok()).map_or_else(|| "unknown".into(), |k| format!("{} MiB", k / 1024))
}

/// The `.zst` of a view as condagate makes it: compressed as it is assembled from the index.
fn zst_as_served(spans: &Spans, doc: &[u8], allow: &dyn Fn(&str) -> bool) -> Vec<u8> {
    let (level, workers) = condagate::internals::conda::view::zst_settings(spans.view_len(allow));
    spans.render_zst(doc, allow, level, workers).unwrap()
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
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
    println!("\npeak RSS: {}", peak_rss_mib());
}
