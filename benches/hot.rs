//! Criterion benches of the hot spots: route parsing, token lookup, the authorization decision, and view filtering
//! (repodata.json and the shard index) on a generated conda-forge-sized repodata.
//!
//! `cargo bench --bench hot` (add `-- filter` etc. to pick one). The filter bench also prints the process's peak RSS.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::hint::black_box;
use std::path::Path;

use condagate::config::Config;
use condagate::internals::conda::filter::{filter_repodata, ShardIndex};
use condagate::internals::conda::route;
use condagate::internals::policy::Policy;
use condagate::internals::tokens::TokenTable;
use condagate::internals::tokens::{Scope, Token, TokenRecord};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use time::OffsetDateTime;

const CONFIG: &str = r#"
[upstream]
dir = "channels"
[[channels]]
name = "mychan"
access = "private"
owners = ["alice"]
[[groups]]
name = "eng"
channel = "mychan"
members = ["bob"]
packages = ["pkg-0001*", "pkg-00020", "beta*"]
"#;

fn record(i: usize, user: &str) -> (String, TokenRecord) {
    let secret = format!("cg-bench{i:020}");
    let t = Token::parse(&secret).unwrap();
    let r = TokenRecord {
        name: format!("t{i}").into(),
        user: user.into(),
        digest: t.digest(),
        scopes: [Scope::CondaDownload].into_iter().collect(),
        created: OffsetDateTime::UNIX_EPOCH,
        expires: if i.is_multiple_of(2) { None } else { Some(OffsetDateTime::UNIX_EPOCH) },
        revoked: None,
        channels: None,
        seen: Default::default(),
    };
    (secret, r)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn routes(c: &mut Criterion) {
    let p = "/t/cg-0123456789ABCDEFGHIJabcdefg/mychan/label/dev/linux-64/some-package-name-1.2.3-py312h1234567_0.conda";
    c.bench_function("route/parse package path", |b| b.iter(|| route::parse(black_box(p), "")));
    c.bench_function("route/redact", |b| b.iter(|| route::redact_path(black_box(p))));
}

fn tokens(c: &mut Criterion) {
    let n = 100_000;
    let recs: Vec<(String, TokenRecord)> = (0..n).map(|i| record(i, "bob")).collect();
    let hit = Token::parse(&recs[4242].0).unwrap();
    let expired = Token::parse(&recs[4243].0).unwrap();
    let miss = Token::parse("cg-bench99999999999999999999").unwrap();
    let table = TokenTable::new(recs.into_iter().map(|(_, r)| r).collect());
    let now = OffsetDateTime::now_utc();
    let mut g = c.benchmark_group("token lookup (100k tokens)");
    g.bench_function("hit", |b| b.iter(|| table.lookup(black_box(&hit)).map(|r| Policy::check_token(r, now))));
    g.bench_function("expired", |b| b.iter(|| table.lookup(black_box(&expired)).map(|r| Policy::check_token(r, now))));
    g.bench_function("miss", |b| b.iter(|| table.lookup(black_box(&miss)).map(|r| Policy::check_token(r, now))));
    g.finish();
}

fn authorize(c: &mut Criterion) {
    let cfg = Config::from_toml_str(CONFIG, Path::new(".")).unwrap();
    let policy = Policy::new(&cfg);
    let (_, mut bob) = record(1, "bob");
    bob.expires = None;
    let (_, mut alice) = record(2, "alice");
    alice.user = "alice".into();
    let mut g = c.benchmark_group("authorize");
    g.bench_function("group member (restricted view)", |b| {
        b.iter(|| policy.authorize(black_box("mychan"), black_box("main"), Some(black_box(&bob))).is_ok())
    });
    g.bench_function("owner (full view)", |b| {
        b.iter(|| policy.authorize(black_box("mychan"), black_box("main"), Some(black_box(&alice))).is_ok())
    });
    let v = policy.authorize("mychan", "main", Some(&bob)).unwrap();
    g.bench_function("package visible? (glob match)", |b| b.iter(|| v.allows(black_box("pkg-00017"))));
    g.finish();
}

fn filter(c: &mut Criterion) {
    let records = 200_000;
    let doc = common::repodata(records, 20_000);
    let cfg = Config::from_toml_str(CONFIG, Path::new(".")).unwrap();
    let policy = Policy::new(&cfg);
    let (_, mut bob) = record(1, "bob");
    bob.expires = None;
    let view = policy.authorize("mychan", "main", Some(&bob)).unwrap();
    let before = peak_rss_mib();
    let mut g =
        c.benchmark_group(format!("filter repodata.json ({:.0} MB, {records} records)", doc.len() as f64 / 1e6));
    g.throughput(Throughput::Bytes(doc.len() as u64));
    g.sample_size(10);
    g.bench_function("restricted view (~0.1% of names)", |b| {
        b.iter_batched(
            Vec::new,
            |mut out| {
                filter_repodata(&doc, &|n| view.allows(n), &mut out).unwrap();
                out
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("everything visible (base_url rewrite)", |b| {
        b.iter_batched(
            Vec::new,
            |mut out| {
                filter_repodata(&doc, &|_| true, &mut out).unwrap();
                out
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
    println!(
        "filter: input {:.1} MB; peak RSS before filtering {before:.0} MiB, after {:.0} MiB (input held once, outputs per iteration)",
        doc.len() as f64 / 1e6,
        peak_rss_mib()
    );

    let names: Vec<(rmpv::Value, rmpv::Value)> = common::names(50_000)
        .into_iter()
        .enumerate()
        .map(|(i, n)| (rmpv::Value::from(n), rmpv::Value::Binary(vec![(i % 251) as u8; 32])))
        .collect();
    let index = rmpv::Value::Map(vec![
        (
            "info".into(),
            rmpv::Value::Map(vec![
                ("subdir".into(), "linux-64".into()),
                ("base_url".into(), "".into()),
                ("shards_base_url".into(), "./shards/".into()),
            ]),
        ),
        ("shards".into(), rmpv::Value::Map(names)),
    ]);
    let mut raw = Vec::new();
    rmpv::encode::write_value(&mut raw, &index).unwrap();
    let compressed = zstd::encode_all(raw.as_slice(), 3).unwrap();
    let mut g = c.benchmark_group("shard index (50k names)");
    g.bench_function("decode", |b| b.iter(|| ShardIndex::decode(black_box(&compressed)).unwrap()));
    let idx = ShardIndex::decode(&compressed).unwrap();
    g.bench_function("filter + encode (restricted)", |b| b.iter(|| idx.encode_filtered(&|n| view.allows(n)).unwrap()));
    g.finish();
}

criterion_group!(benches, routes, tokens, authorize, filter);
criterion_main!(benches);
