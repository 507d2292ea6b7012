//! Integration tests of per-token repodata views (issue 3): every repodata form for tokens with full (alice, owner),
//! partial (bob and carol, group eng: alpha, beta*) and no access (zed); dave (group dev-testers: alpha, beta on label
//! dev only); ETags and 304 per view; shared cache entries; invalidation by an upstream update; base URLs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;
use support::*;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::Value;

// ---------------------------------------------------------------------------------------------------------------
// helpers

/// A token holder that keeps every response it receives, to grep them all afterwards.
struct Who {
    name: &'static str,
    token: String,
    got: Mutex<Vec<(String, Got)>>,
}

impl Who {
    fn new(demo: &Demo, name: &'static str) -> Self {
        Who { name, token: demo.token(&format!("{name}-dl"), name, "conda:download"), got: Mutex::new(Vec::new()) }
    }

    async fn req(&self, p: &Proxy, method: &str, rest: &str, headers: &[(&str, &str)]) -> Got {
        let g = request(method, &p.url(&format!("/t/{}{rest}", self.token)), headers).await;
        self.got.lock().unwrap().push((
            format!("{method} {rest}"),
            Got { status: g.status, headers: g.headers.clone(), body: g.body.clone() },
        ));
        g
    }

    async fn get(&self, p: &Proxy, rest: &str) -> Got {
        self.req(p, "GET", rest, &[]).await
    }

    async fn get_with(&self, p: &Proxy, rest: &str, headers: &[(&str, &str)]) -> Got {
        self.req(p, "GET", rest, headers).await
    }

    /// Asserts that no response this holder received contains `needle`: raw bodies, zstd-decoded bodies, headers.
    #[track_caller]
    fn never_saw(&self, needle: &[u8]) {
        let got = self.got.lock().unwrap();
        assert!(!got.is_empty());
        for (what, g) in got.iter() {
            let shown = String::from_utf8_lossy(needle);
            assert!(!contains(&g.body, needle), "{}: {what} holds {shown:?}", self.name);
            if let Ok(plain) = zstd::decode_all(&g.body[..]) {
                assert!(!contains(&plain, needle), "{}: {what} (decoded) holds {shown:?}", self.name);
            }
            for (k, v) in &g.headers {
                assert!(!contains(v.as_bytes(), needle), "{}: {what}: header {k} holds {shown:?}", self.name);
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn channels(demo: &Demo) -> std::path::PathBuf {
    demo.path().join("channels")
}

fn file(demo: &Demo, rel: &str) -> Vec<u8> {
    std::fs::read(channels(demo).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn json_file(demo: &Demo, rel: &str) -> Value {
    serde_json::from_slice(&file(demo, rel)).unwrap()
}

/// Writes a file and moves its mtime, as a channel indexer replacing it would.
fn rewrite(demo: &Demo, rel: &str, bytes: &[u8], bump: u64) {
    let path = channels(demo).join(rel);
    std::fs::write(&path, bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(bump)).unwrap();
}

fn keys(v: &Value, map: &str) -> BTreeSet<String> {
    v[map].as_object().unwrap_or_else(|| panic!("no {map} in {v}")).keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn unzst(b: &[u8]) -> Vec<u8> {
    zstd::decode_all(b).unwrap_or_else(|e| panic!("not zstd: {e}"))
}

/// A decoded shard index: its info map (string values) and its shards by name.
struct Index {
    info: BTreeMap<String, String>,
    shards: BTreeMap<String, Vec<u8>>,
}

fn index(compressed: &[u8]) -> Index {
    let raw = unzst(compressed);
    let v = rmpv::decode::read_value(&mut raw.as_slice()).unwrap();
    let mut out = Index { info: BTreeMap::new(), shards: BTreeMap::new() };
    for (k, v) in v.as_map().expect("a map") {
        match k.as_str() {
            Some("info") => {
                for (ik, iv) in v.as_map().unwrap() {
                    out.info.insert(ik.as_str().unwrap().to_owned(), iv.as_str().unwrap_or("").to_owned());
                }
            }
            Some("shards") => {
                for (name, hash) in v.as_map().unwrap() {
                    let h = match hash {
                        rmpv::Value::Binary(b) => b.clone(),
                        other => panic!("shard hash {other:?}"),
                    };
                    assert_eq!(h.len(), 32);
                    out.shards.insert(name.as_str().unwrap().to_owned(), h);
                }
            }
            _ => {}
        }
    }
    out
}

fn encode_index(info: &[(&str, &str)], shards: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let v = rmpv::Value::Map(vec![
        ("info".into(), rmpv::Value::Map(info.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect())),
        (
            "shards".into(),
            rmpv::Value::Map(shards.iter().map(|(n, h)| (n.as_str().into(), rmpv::Value::Binary(h.clone()))).collect()),
        ),
    ]);
    let mut raw = Vec::new();
    rmpv::encode::write_value(&mut raw, &v).unwrap();
    zstd::encode_all(raw.as_slice(), 3).unwrap()
}

#[track_caller]
fn status(g: &Got, want: u16, what: &str) {
    if want >= 400 {
        assert_problem(g, want, &[], what);
    } else {
        assert_eq!(g.status.as_u16(), want, "{what}: {}", g.text());
    }
}

/// Checks a restricted JSON view against the upstream document: exactly the `want` keys per map, every kept record
/// equal to the upstream's, and the other top-level members kept.
#[track_caller]
fn check_view(view: &Value, upstream: &Value, want_tar: &[&str], want_conda: &[&str], what: &str) {
    assert_eq!(keys(view, "packages"), set(want_tar), "{what}: packages");
    assert_eq!(keys(view, "packages.conda"), set(want_conda), "{what}: packages.conda");
    for map in ["packages", "packages.conda"] {
        for (k, rec) in view[map].as_object().unwrap() {
            assert_eq!(rec, &upstream[map][k], "{what}: record {k} changed");
        }
    }
    for (k, v) in upstream.as_object().unwrap() {
        if !matches!(k.as_str(), "packages" | "packages.conda") {
            assert_eq!(&view[k], v, "{what}: member {k}");
        }
    }
}

fn hexs(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

async fn cache_counts(p: &Proxy) -> (f64, f64) {
    let m = get(&p.url("/metrics"), &[]).await.text();
    (
        metric(&m, "condagate_view_cache_hits_total").expect("hits counter"),
        metric(&m, "condagate_view_cache_misses_total").expect("misses counter"),
    )
}

const BOB_TAR: [&str; 2] = ["alpha-1.0-0.tar.bz2", "beta-1.0-0.tar.bz2"];
const BOB_CONDA: [&str; 1] = ["beta-utils-1.0-0.conda"];
const FAKE_BZ2: &[u8] = b"BZh91AY&SY not really bzip2, but the upstream's own bytes: secretpkg-1.0-0.conda";

// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_form_for_full_partial_and_no_access() {
    let demo = Demo::new();
    let ch = channels(&demo);
    std::fs::copy(ch.join("mychan/noarch/repodata.json"), ch.join("mychan/noarch/current_repodata.json")).unwrap();
    std::fs::write(ch.join("mychan/noarch/repodata.json.bz2"), FAKE_BZ2).unwrap();
    let (alice, bob, zed) = (Who::new(&demo, "alice"), Who::new(&demo, "bob"), Who::new(&demo, "zed"));
    let p = Proxy::start(demo.config()).await;
    let upstream = json_file(&demo, "mychan/noarch/repodata.json");
    let up_index = index(&file(&demo, "mychan/noarch/repodata_shards.msgpack.zst"));
    assert_eq!(
        up_index.shards.keys().cloned().collect::<BTreeSet<_>>(),
        set(&["alpha", "beta", "beta-utils", "secretpkg"])
    );

    // --- alice (owner): every form is the upstream's bytes, untouched.
    for rel in [
        "noarch/repodata.json",
        "noarch/current_repodata.json",
        "noarch/repodata.json.zst",
        "noarch/repodata.json.bz2",
        "noarch/repodata_shards.msgpack.zst",
        "noarch/secretpkg-1.0-0.conda",
        "linux-64/repodata.json",
        "linux-64/gamma-1.0-0.tar.bz2",
    ] {
        let g = alice.get(&p, &format!("/mychan/{rel}")).await;
        status(&g, 200, &format!("alice {rel}"));
        assert!(g.body == file(&demo, &format!("mychan/{rel}")), "alice {rel}: not the upstream bytes");
    }
    for (name, hash) in &up_index.shards {
        let rel = format!("noarch/shards/{}.msgpack.zst", hexs(hash));
        let g = alice.get(&p, &format!("/mychan/{rel}")).await;
        status(&g, 200, &format!("alice shard {name}"));
        assert!(g.body == file(&demo, &format!("mychan/{rel}")), "alice shard {name}");
    }

    // --- bob (alpha, beta*): filtered forms.
    let g = bob.get(&p, "/mychan/noarch/repodata.json").await;
    status(&g, 200, "bob repodata.json");
    assert_eq!(g.header("content-type"), Some("application/json"));
    assert!(g.header("cache-control").unwrap().ends_with("s-maxage=0"), "bob: {:?}", g.header("cache-control"));
    let bob_view = g.json();
    check_view(&bob_view, &upstream, &BOB_TAR, &BOB_CONDA, "bob repodata.json");

    let g = bob.get(&p, "/mychan/noarch/current_repodata.json").await;
    status(&g, 200, "bob current_repodata.json");
    check_view(&g.json(), &upstream, &BOB_TAR, &BOB_CONDA, "bob current_repodata.json");

    let g = bob.get(&p, "/mychan/noarch/repodata.json.zst").await;
    status(&g, 200, "bob repodata.json.zst");
    assert_eq!(g.header("content-type"), Some("application/zstd"));
    let decoded: Value = serde_json::from_slice(&unzst(&g.body)).unwrap();
    assert_eq!(decoded, bob_view, "bob: .zst and .json views differ");
    let zst_len = g.body.len();
    let h = bob.req(&p, "HEAD", "/mychan/noarch/repodata.json.zst", &[]).await;
    status(&h, 200, "bob HEAD repodata.json.zst");
    assert!(h.body.is_empty());
    assert_eq!(h.header("content-length"), Some(zst_len.to_string().as_str()));

    for method in ["GET", "HEAD"] {
        let g = bob.req(&p, method, "/mychan/noarch/repodata.json.bz2", &[]).await;
        assert_eq!(g.status, 404, "bob {method} repodata.json.bz2 must not be the unfiltered file");
    }

    let g = bob.get(&p, "/mychan/noarch/repodata_shards.msgpack.zst").await;
    status(&g, 200, "bob shard index");
    let bob_index = index(&g.body);
    assert_eq!(bob_index.shards.keys().cloned().collect::<BTreeSet<_>>(), set(&["alpha", "beta", "beta-utils"]));
    for (n, h) in &bob_index.shards {
        assert_eq!(h, &up_index.shards[n], "bob index: hash of {n}");
    }
    assert_eq!(bob_index.info.get("subdir").map(String::as_str), Some("noarch"));

    let missing_shard = bob.get(&p, &format!("/mychan/noarch/shards/{}.msgpack.zst", "0".repeat(64))).await;
    status(&missing_shard, 404, "bob missing shard");
    for (name, hash) in &up_index.shards {
        let rel = format!("noarch/shards/{}.msgpack.zst", hexs(hash));
        let g = bob.get(&p, &format!("/mychan/{rel}")).await;
        if name == "secretpkg" {
            status(&g, 404, "bob: secretpkg's shard");
            assert_eq!(g.body, missing_shard.body, "hidden and missing shards differ");
        } else {
            status(&g, 200, &format!("bob: shard {name}"));
            assert!(g.body == file(&demo, &format!("mychan/{rel}")), "bob shard {name}");
        }
    }

    let missing_pkg = bob.get(&p, "/mychan/noarch/alpha-7.0-0.tar.bz2").await;
    status(&missing_pkg, 404, "bob missing package");
    for f in ["alpha-1.0-0.tar.bz2", "beta-1.0-0.tar.bz2", "beta-utils-1.0-0.conda"] {
        let g = bob.get(&p, &format!("/mychan/noarch/{f}")).await;
        status(&g, 200, &format!("bob {f}"));
        assert!(g.body == file(&demo, &format!("mychan/noarch/{f}")));
    }
    for method in ["GET", "HEAD"] {
        let g = bob.req(&p, method, "/mychan/noarch/secretpkg-1.0-0.conda", &[]).await;
        assert_eq!(g.status, 404, "bob {method} secretpkg");
        if method == "GET" {
            assert_eq!(g.body, missing_pkg.body, "hidden and missing packages differ");
        }
    }

    // linux-64 holds only gamma, which bob does not see: an empty but valid view.
    let g = bob.get(&p, "/mychan/linux-64/repodata.json").await;
    status(&g, 200, "bob linux-64");
    let linux = g.json();
    check_view(&linux, &json_file(&demo, "mychan/linux-64/repodata.json"), &[], &[], "bob linux-64");
    let g = bob.get(&p, "/mychan/linux-64/repodata_shards.msgpack.zst").await;
    status(&g, 200, "bob linux-64 index");
    assert!(index(&g.body).shards.is_empty());
    let gamma = index(&file(&demo, "mychan/linux-64/repodata_shards.msgpack.zst")).shards["gamma"].clone();
    status(
        &bob.get(&p, &format!("/mychan/linux-64/shards/{}.msgpack.zst", hexs(&gamma))).await,
        404,
        "bob gamma shard",
    );
    status(&bob.get(&p, "/mychan/linux-64/gamma-1.0-0.tar.bz2").await, 404, "bob gamma");

    // --- zed (no access): every form is refused.
    let alpha_shard = format!("noarch/shards/{}.msgpack.zst", hexs(&up_index.shards["alpha"]));
    for rel in [
        "noarch/repodata.json",
        "noarch/current_repodata.json",
        "noarch/repodata.json.zst",
        "noarch/repodata.json.bz2",
        "noarch/repodata_shards.msgpack.zst",
        alpha_shard.as_str(),
        "noarch/alpha-1.0-0.tar.bz2",
        "linux-64/repodata.json",
        "label/dev/noarch/repodata.json",
    ] {
        status(&zed.get(&p, &format!("/mychan/{rel}")).await, 403, &format!("zed {rel}"));
    }

    // --- what bob and zed never received.
    let secret = &upstream["packages.conda"]["secretpkg-1.0-0.conda"];
    for who in [&bob, &zed] {
        who.never_saw(b"secretpkg");
        who.never_saw(secret["sha256"].as_str().unwrap().as_bytes());
        who.never_saw(secret["md5"].as_str().unwrap().as_bytes());
        who.never_saw(&up_index.shards["secretpkg"]);
        who.never_saw(hexs(&up_index.shards["secretpkg"]).as_bytes());
    }
    zed.never_saw(b"alpha");
    p.stop().await;
}

#[tokio::test]
async fn etags_and_304_per_view() {
    let demo = Demo::new();
    let ch = channels(&demo);
    std::fs::copy(ch.join("mychan/noarch/repodata.json"), ch.join("mychan/noarch/current_repodata.json")).unwrap();
    // The dev label gets beta-utils too, which bob sees there and dave does not.
    let mut dev = json_file(&demo, "mychan/label/dev/noarch/repodata.json");
    dev["packages.conda"]["beta-utils-1.0-0.conda"] =
        json_file(&demo, "mychan/noarch/repodata.json")["packages.conda"]["beta-utils-1.0-0.conda"].clone();
    rewrite(&demo, "mychan/label/dev/noarch/repodata.json", &serde_json::to_vec(&dev).unwrap(), 1);
    let (alice, bob, carol) = (Who::new(&demo, "alice"), Who::new(&demo, "bob"), Who::new(&demo, "carol"));
    let dave = Who::new(&demo, "dave");
    let p = Proxy::start(demo.config()).await;
    let mut bob_etags = BTreeSet::new();
    for form in ["repodata.json", "current_repodata.json", "repodata.json.zst", "repodata_shards.msgpack.zst"] {
        let rest = format!("/mychan/noarch/{form}");
        let a = alice.get(&p, &rest).await;
        let b = bob.get(&p, &rest).await;
        let c = carol.get(&p, &rest).await;
        for (who, g) in [("alice", &a), ("bob", &b), ("carol", &c)] {
            status(g, 200, &format!("{who} {form}"));
        }
        let ea = a.header("etag").unwrap_or_else(|| panic!("alice {form}: no ETag")).to_owned();
        let eb = b.header("etag").unwrap_or_else(|| panic!("bob {form}: no ETag")).to_owned();
        let ec = c.header("etag").unwrap_or_else(|| panic!("carol {form}: no ETag")).to_owned();
        assert!(eb.starts_with('"') && !eb.starts_with("W/"), "{form}: a view's ETag is strong: {eb}");
        assert_ne!(ea, eb, "{form}: bob's view has alice's ETag");
        assert_eq!(eb, ec, "{form}: bob and carol see the same view");
        assert_eq!(b.body, c.body, "{form}: bob and carol bodies");
        assert_ne!(a.body, b.body, "{form}: bob's view is alice's");
        assert!(bob_etags.insert(eb.clone()), "{form}: the same ETag as another form");

        for (who, etag) in [(&bob, &eb), (&carol, &eb), (&alice, &ea)] {
            let g = who.get_with(&p, &rest, &[("if-none-match", etag)]).await;
            assert_eq!(g.status, 304, "{} {form}: If-None-Match its own ETag", who.name);
            assert!(g.body.is_empty(), "{} {form}: 304 with a body", who.name);
            assert_eq!(g.header("etag"), Some(etag.as_str()), "{} {form}: 304 without its ETag", who.name);
            // A list of validators holding it works too.
            let list = format!("\"zzz\", {etag}");
            assert_eq!(who.get_with(&p, &rest, &[("if-none-match", &list)]).await.status, 304);
        }
        // Another view's ETag does not validate this one.
        let g = alice.get_with(&p, &rest, &[("if-none-match", &eb)]).await;
        assert_eq!(g.status, 200, "alice {form} with bob's ETag");
        assert_eq!(g.body, a.body);
        let g = bob.get_with(&p, &rest, &[("if-none-match", &ea)]).await;
        assert_eq!(g.status, 200, "bob {form} with alice's ETag");
        assert_eq!(g.body, b.body);
        assert_eq!(g.header("etag"), Some(eb.as_str()));
    }

    // Two restricted views of one document (label dev: bob sees alpha, beta*; dave sees alpha, beta) have different
    // ETags, and one's ETag does not validate the other's.
    for form in ["repodata.json", "repodata.json.zst", "repodata_shards.msgpack.zst"] {
        let rest = format!("/mychan/label/dev/noarch/{form}");
        let b = bob.get(&p, &rest).await;
        let d = dave.get(&p, &rest).await;
        status(&b, 200, &format!("bob dev {form}"));
        status(&d, 200, &format!("dave dev {form}"));
        let (eb, ed) = (b.header("etag").unwrap().to_owned(), d.header("etag").unwrap().to_owned());
        if form != "repodata_shards.msgpack.zst" {
            assert_ne!(b.body, d.body, "dev {form}: bob and dave see different packages");
        }
        assert_ne!(eb, ed, "dev {form}: two different views share an ETag");
        let g = dave.get_with(&p, &rest, &[("if-none-match", &eb)]).await;
        assert_eq!(g.status, 200, "dave dev {form} with bob's ETag");
        assert_eq!(g.body, d.body);
        let g = bob.get_with(&p, &rest, &[("if-none-match", &ed)]).await;
        assert_eq!(g.status, 200, "bob dev {form} with dave's ETag");
        assert_eq!(dave.get_with(&p, &rest, &[("if-none-match", &ed)]).await.status, 304);
    }
    bob.never_saw(b"secretpkg");
    carol.never_saw(b"secretpkg");
    dave.never_saw(b"beta-utils");
    p.stop().await;
}

#[tokio::test]
async fn tokens_with_the_same_groups_share_a_cached_view() {
    let demo = Demo::new();
    let (alice, bob, carol, dave) =
        (Who::new(&demo, "alice"), Who::new(&demo, "bob"), Who::new(&demo, "carol"), Who::new(&demo, "dave"));
    // A second token of bob's, narrowed to the same channel: the same visible set.
    let narrow = Who {
        name: "bob-narrow",
        token: demo.token_with(
            "bob-narrow",
            "bob",
            "conda",
            Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
            Some(vec!["mychan".into()]),
        ),
        got: Mutex::new(Vec::new()),
    };
    let p = Proxy::start(demo.config()).await;
    let (h0, m0) = cache_counts(&p).await;
    let json = "/mychan/noarch/repodata.json";

    let b = bob.get(&p, json).await;
    status(&b, 200, "bob");
    let (h1, m1) = cache_counts(&p).await;
    assert_eq!((h1, m1), (h0, m0 + 1.0), "bob's first request computes the view");

    let c = carol.get(&p, json).await;
    status(&c, 200, "carol");
    let (h2, m2) = cache_counts(&p).await;
    assert_eq!((h2, m2), (h1 + 1.0, m1), "carol (same groups) is served bob's cached view");
    assert_eq!(b.body, c.body);
    assert_eq!(b.header("etag"), c.header("etag"));

    let n = narrow.get(&p, json).await;
    status(&n, 200, "bob-narrow");
    assert_eq!(cache_counts(&p).await, (h2 + 1.0, m2), "a narrowed token with the same visible set shares it");
    assert_eq!(n.body, b.body);

    // Other forms are other entries, shared the same way.
    for form in ["repodata.json.zst", "repodata_shards.msgpack.zst"] {
        let rest = format!("/mychan/noarch/{form}");
        let (h, m) = cache_counts(&p).await;
        let c = carol.get(&p, &rest).await;
        status(&c, 200, form);
        assert_eq!(cache_counts(&p).await, (h, m + 1.0), "{form}: carol computes");
        let b = bob.get(&p, &rest).await;
        assert_eq!(cache_counts(&p).await, (h + 1.0, m + 1.0), "{form}: bob shares carol's");
        assert_eq!(b.body, c.body);
    }

    // A different visible set (dave, label dev) is another entry; alice (full view) uses no cache at all.
    let (h, m) = cache_counts(&p).await;
    status(&dave.get(&p, "/mychan/label/dev/noarch/repodata.json").await, 200, "dave");
    assert_eq!(cache_counts(&p).await, (h, m + 1.0), "dave computes his own view");
    status(&bob.get(&p, "/mychan/label/dev/noarch/repodata.json").await, 200, "bob dev");
    assert_eq!(cache_counts(&p).await, (h, m + 2.0), "bob's dev view differs from dave's");
    let a = alice.get(&p, json).await;
    status(&a, 200, "alice");
    assert!(a.body == file(&demo, "mychan/noarch/repodata.json"));
    assert_eq!(cache_counts(&p).await, (h, m + 2.0), "the full view is the upstream file, not a cached view");
    p.stop().await;
}

#[tokio::test]
async fn with_the_default_recheck_an_update_is_seen_within_a_second_or_so() {
    let demo = Demo::new();
    let bob = Who::new(&demo, "bob");
    let p = Proxy::start(demo.config()).await;
    let json = "/mychan/noarch/repodata.json";
    let e1 = bob.get(&p, json).await.header("etag").unwrap().to_owned();
    let mut doc = json_file(&demo, "mychan/noarch/repodata.json");
    doc["packages"].as_object_mut().unwrap().remove("beta-1.0-0.tar.bz2");
    rewrite(&demo, "mychan/noarch/repodata.json", &serde_json::to_vec(&doc).unwrap(), 10);
    // upstream.recheck defaults to 1 s: poll, and give up well after that.
    let started = std::time::Instant::now();
    loop {
        let g = bob.get(&p, json).await;
        if g.header("etag") != Some(e1.as_str()) {
            assert!(g.json()["packages"].get("beta-1.0-0.tar.bz2").is_none(), "new ETag, old content");
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the update was never seen");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    p.stop().await;
}

#[tokio::test]
async fn an_upstream_update_invalidates_views() {
    // Checked on every request here (recheck = 0s), so each step sees the rewrite at once.
    let demo = Demo::with("[upstream]\ndir = \"channels\"\nrecheck = \"0s\"", "");
    let (alice, bob) = (Who::new(&demo, "alice"), Who::new(&demo, "bob"));
    let p = Proxy::start(demo.config()).await;
    let json = "/mychan/noarch/repodata.json";
    let zst = "/mychan/noarch/repodata.json.zst";

    let b1 = bob.get(&p, json).await;
    let e1 = b1.header("etag").unwrap().to_owned();
    check_view(&b1.json(), &json_file(&demo, "mychan/noarch/repodata.json"), &BOB_TAR, &BOB_CONDA, "before");
    let z1 = bob.get(&p, zst).await.header("etag").unwrap().to_owned();
    let a1 = alice.get(&p, json).await.header("etag").unwrap().to_owned();
    assert_eq!(bob.get_with(&p, json, &[("if-none-match", &e1)]).await.status, 304);

    // The channel is re-indexed: beta 2.0 and secretpkg 2.0 added, beta-utils removed.
    let mut doc = json_file(&demo, "mychan/noarch/repodata.json");
    let mut beta2 = doc["packages"]["beta-1.0-0.tar.bz2"].clone();
    beta2["version"] = "2.0".into();
    doc["packages"]["beta-2.0-0.tar.bz2"] = beta2;
    let mut secret2 = doc["packages.conda"]["secretpkg-1.0-0.conda"].clone();
    secret2["version"] = "2.0".into();
    doc["packages.conda"]["secretpkg-2.0-0.conda"] = secret2;
    doc["packages.conda"].as_object_mut().unwrap().remove("beta-utils-1.0-0.conda");
    let v2 = serde_json::to_vec(&doc).unwrap();
    rewrite(&demo, "mychan/noarch/repodata.json", &v2, 10);

    let b2 = bob.get_with(&p, json, &[("if-none-match", &e1)]).await;
    assert_eq!(b2.status, 200, "bob's old ETag must not validate the new view");
    let e2 = b2.header("etag").unwrap().to_owned();
    assert_ne!(e1, e2, "new upstream, same ETag");
    check_view(&b2.json(), &doc, &["alpha-1.0-0.tar.bz2", "beta-1.0-0.tar.bz2", "beta-2.0-0.tar.bz2"], &[], "after");
    assert_eq!(bob.get_with(&p, json, &[("if-none-match", &e2)]).await.status, 304);
    let z2 = bob.get(&p, zst).await;
    assert_ne!(z2.header("etag").unwrap(), z1, "the .zst view kept its old ETag");
    assert_eq!(serde_json::from_slice::<Value>(&unzst(&z2.body)).unwrap(), b2.json(), "the .zst view is stale");
    let a2 = alice.get(&p, json).await;
    assert!(a2.body == v2, "alice does not get the new upstream file");
    assert_ne!(a2.header("etag").unwrap(), a1);

    // And again: a record removed, same size class, only the content and mtime change.
    doc["packages"].as_object_mut().unwrap().remove("beta-2.0-0.tar.bz2");
    let v3 = serde_json::to_vec(&doc).unwrap();
    rewrite(&demo, "mychan/noarch/repodata.json", &v3, 20);
    let b3 = bob.get_with(&p, json, &[("if-none-match", &e2)]).await;
    assert_eq!(b3.status, 200);
    assert_ne!(b3.header("etag").unwrap(), e2);
    check_view(&b3.json(), &doc, &BOB_TAR, &[], "after removal");
    bob.never_saw(b"secretpkg");
    p.stop().await;
}

#[tokio::test]
async fn absolute_base_urls_are_removed_even_from_full_views() {
    let demo = Demo::new();
    let ch = channels(&demo);
    let (alice, bob) = (Who::new(&demo, "alice"), Who::new(&demo, "bob"));
    let cdn = "https://cdn.example.com/mychan/noarch/";
    // Absolute base URLs in mychan/noarch and pubchan/noarch; a relative one in mychan/linux-64.
    let mut mychan = json_file(&demo, "mychan/noarch/repodata.json");
    mychan["info"]["base_url"] = cdn.into();
    rewrite(&demo, "mychan/noarch/repodata.json", &serde_json::to_vec(&mychan).unwrap(), 1);
    std::fs::write(ch.join("mychan/noarch/repodata.json.bz2"), FAKE_BZ2).unwrap();
    let mut pubchan = json_file(&demo, "pubchan/noarch/repodata.json");
    pubchan["info"]["base_url"] = "//cdn.example.com/pubchan/noarch/".into();
    rewrite(&demo, "pubchan/noarch/repodata.json", &serde_json::to_vec(&pubchan).unwrap(), 1);
    let mut linux = json_file(&demo, "mychan/linux-64/repodata.json");
    linux["info"]["base_url"] = "../relative/linux-64/".into();
    let linux_bytes = serde_json::to_vec(&linux).unwrap();
    rewrite(&demo, "mychan/linux-64/repodata.json", &linux_bytes, 1);
    // An absolute shard index in mychan/noarch.
    let up_index = index(&file(&demo, "mychan/noarch/repodata_shards.msgpack.zst"));
    let abs_index = encode_index(
        &[
            ("subdir", "noarch"),
            ("base_url", cdn),
            ("shards_base_url", "https://cdn.example.com/mychan/noarch/shards/"),
        ],
        &up_index.shards,
    );
    rewrite(&demo, "mychan/noarch/repodata_shards.msgpack.zst", &abs_index, 1);
    let p = Proxy::start(demo.config()).await;

    let without_base = |v: &Value| {
        let mut v = v.clone();
        v["info"].as_object_mut().unwrap().remove("base_url");
        v
    };
    // Alice sees everything, but not the CDN.
    let g = alice.get(&p, "/mychan/noarch/repodata.json").await;
    status(&g, 200, "alice json");
    assert!(!g.text().contains("cdn.example.com"), "alice json: {}", g.text());
    assert_eq!(g.json(), without_base(&mychan), "alice: only info.base_url may change");
    let g = alice.get(&p, "/mychan/noarch/repodata.json.zst").await;
    status(&g, 200, "alice zst");
    assert_eq!(serde_json::from_slice::<Value>(&unzst(&g.body)).unwrap(), without_base(&mychan), "alice zst");
    // The upstream .bz2 still names the CDN: it must not be served as it is.
    assert_eq!(alice.get(&p, "/mychan/noarch/repodata.json.bz2").await.status, 404, "alice bz2");
    let g = alice.get(&p, "/mychan/noarch/repodata_shards.msgpack.zst").await;
    status(&g, 200, "alice index");
    let idx = index(&g.body);
    assert_eq!(idx.shards, up_index.shards, "alice index: every shard");
    for k in ["base_url", "shards_base_url"] {
        let v = idx.info.get(k).map(String::as_str).unwrap_or("");
        assert!(!v.contains("://") && !v.starts_with("//"), "alice index {k} = {v:?}");
    }
    assert!(!contains(&unzst(&g.body), b"cdn.example.com"));
    // Bob: filtered and without the CDN.
    let g = bob.get(&p, "/mychan/noarch/repodata.json").await;
    status(&g, 200, "bob json");
    check_view(&g.json(), &without_base(&mychan), &BOB_TAR, &BOB_CONDA, "bob with base_url");
    let g = bob.get(&p, "/mychan/noarch/repodata_shards.msgpack.zst").await;
    assert!(!contains(&unzst(&g.body), b"cdn.example.com"), "bob index");
    // A public channel, anonymously: the protocol-relative URL is absolute too.
    let g = get(&p.url("/pubchan/noarch/repodata.json"), &[]).await;
    status(&g, 200, "pubchan");
    assert_eq!(g.json(), without_base(&pubchan), "pubchan");
    // A relative base URL is kept, and the file is served as it is.
    let g = alice.get(&p, "/mychan/linux-64/repodata.json").await;
    status(&g, 200, "alice linux-64");
    assert!(g.body == linux_bytes, "relative base_url: not the upstream bytes");
    let g = bob.get(&p, "/mychan/linux-64/repodata.json").await;
    assert_eq!(g.json()["info"]["base_url"], "../relative/linux-64/", "bob keeps the relative base_url");
    for who in [&alice, &bob] {
        who.never_saw(b"cdn.example.com");
    }
    p.stop().await;
}

#[tokio::test]
async fn label_dev_for_dave_shows_only_alpha_and_beta() {
    let demo = Demo::new();
    let ch = channels(&demo);
    // Put two more names on the dev label (repodata, shard index, shards) that dave's group does not grant.
    let root = json_file(&demo, "mychan/noarch/repodata.json");
    let mut dev = json_file(&demo, "mychan/label/dev/noarch/repodata.json");
    for f in ["beta-utils-1.0-0.conda", "secretpkg-1.0-0.conda"] {
        dev["packages.conda"][f] = root["packages.conda"][f].clone();
        std::fs::copy(ch.join("mychan/noarch").join(f), ch.join("mychan/label/dev/noarch").join(f)).unwrap();
    }
    rewrite(&demo, "mychan/label/dev/noarch/repodata.json", &serde_json::to_vec(&dev).unwrap(), 1);
    let root_index = index(&file(&demo, "mychan/noarch/repodata_shards.msgpack.zst"));
    let mut dev_index = index(&file(&demo, "mychan/label/dev/noarch/repodata_shards.msgpack.zst"));
    for n in ["beta-utils", "secretpkg"] {
        let h = root_index.shards[n].clone();
        let name = format!("{}.msgpack.zst", hexs(&h));
        std::fs::copy(
            ch.join("mychan/noarch/shards").join(&name),
            ch.join("mychan/label/dev/noarch/shards").join(&name),
        )
        .unwrap();
        dev_index.shards.insert(n.to_owned(), h);
    }
    let dev_info: Vec<(&str, &str)> = dev_index.info.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dev_index_bytes = encode_index(&dev_info, &dev_index.shards);
    rewrite(&demo, "mychan/label/dev/noarch/repodata_shards.msgpack.zst", &dev_index_bytes, 1);

    let (alice, bob, dave) = (Who::new(&demo, "alice"), Who::new(&demo, "bob"), Who::new(&demo, "dave"));
    let p = Proxy::start(demo.config()).await;
    let dev_tar = ["alpha-2.0-0.tar.bz2", "beta-1.0-0.tar.bz2"];

    let g = dave.get(&p, "/mychan/label/dev/noarch/repodata.json").await;
    status(&g, 200, "dave dev json");
    let dave_etag = g.header("etag").unwrap().to_owned();
    check_view(&g.json(), &dev, &dev_tar, &[], "dave dev");
    let g = dave.get(&p, "/mychan/label/dev/noarch/repodata.json.zst").await;
    status(&g, 200, "dave dev zst");
    check_view(&serde_json::from_slice(&unzst(&g.body)).unwrap(), &dev, &dev_tar, &[], "dave dev zst");
    let g = dave.get(&p, "/mychan/label/dev/noarch/repodata_shards.msgpack.zst").await;
    status(&g, 200, "dave dev index");
    assert_eq!(index(&g.body).shards.keys().cloned().collect::<BTreeSet<_>>(), set(&["alpha", "beta"]));
    for (n, h) in &dev_index.shards {
        let g = dave.get(&p, &format!("/mychan/label/dev/noarch/shards/{}.msgpack.zst", hexs(h))).await;
        let want = if n == "alpha" || n == "beta" { 200 } else { 404 };
        status(&g, want, &format!("dave dev shard {n}"));
    }
    let g = dave.get(&p, "/mychan/label/dev/noarch/alpha-2.0-0.tar.bz2").await;
    status(&g, 200, "dave alpha 2.0");
    assert!(g.body == file(&demo, "mychan/label/dev/noarch/alpha-2.0-0.tar.bz2"));
    for f in ["beta-utils-1.0-0.conda", "secretpkg-1.0-0.conda"] {
        status(&dave.get(&p, &format!("/mychan/label/dev/noarch/{f}")).await, 404, &format!("dave dev {f}"));
    }
    status(&dave.get(&p, "/mychan/label/dev/linux-64/repodata.json").await, 200, "dave dev linux-64");

    // Dave has nothing on the root label, however it is named.
    for rest in [
        "/mychan/noarch/repodata.json",
        "/mychan/noarch/repodata.json.zst",
        "/mychan/noarch/repodata_shards.msgpack.zst",
        "/mychan/noarch/alpha-1.0-0.tar.bz2",
        "/mychan/label/main/noarch/repodata.json",
        "/mychan/label/main/noarch/alpha-1.0-0.tar.bz2",
        "/mychan/linux-64/repodata.json",
        "/mychan/label/other/noarch/repodata.json",
    ] {
        status(&dave.get(&p, rest).await, 403, &format!("dave {rest}"));
    }

    // Bob's groups have no label list: on dev he sees alpha, beta and beta-utils; a different view from dave's.
    let g = bob.get(&p, "/mychan/label/dev/noarch/repodata.json").await;
    status(&g, 200, "bob dev");
    check_view(&g.json(), &dev, &dev_tar, &BOB_CONDA, "bob dev");
    assert_ne!(g.header("etag").unwrap(), dave_etag);
    // Alice gets the dev label untouched.
    let g = alice.get(&p, "/mychan/label/dev/noarch/repodata.json").await;
    assert!(g.body == file(&demo, "mychan/label/dev/noarch/repodata.json"));

    dave.never_saw(b"secretpkg");
    dave.never_saw(b"beta-utils");
    bob.never_saw(b"secretpkg");
    p.stop().await;
}

/// A `touch`, or a re-sync writing the same bytes, changes the file's stamp but not its content: no view is rendered
/// again, and every ETag a client holds stays valid. A real change still makes new views.
#[tokio::test]
async fn the_same_bytes_under_a_new_stamp_render_nothing_again() {
    let demo = Demo::with("[upstream]\ndir = \"channels\"\nrecheck = \"0s\"", "");
    let (alice, bob) = (Who::new(&demo, "alice"), Who::new(&demo, "bob"));
    let p = Proxy::start(demo.config()).await;
    let json = "/mychan/noarch/repodata.json";
    let zst = "/mychan/noarch/repodata.json.zst";
    let e_bob = bob.get(&p, json).await.header("etag").unwrap().to_owned();
    let e_zst = bob.get(&p, zst).await.header("etag").unwrap().to_owned();
    let e_alice = alice.get(&p, json).await.header("etag").unwrap().to_owned();
    let (_, misses) = cache_counts(&p).await;

    let same = file(&demo, "mychan/noarch/repodata.json");
    for bump in [10, 20] {
        rewrite(&demo, "mychan/noarch/repodata.json", &same, bump);
        assert_eq!(bob.get_with(&p, json, &[("if-none-match", &e_bob)]).await.status, 304, "bob's ETag after a touch");
        assert_eq!(bob.get_with(&p, zst, &[("if-none-match", &e_zst)]).await.status, 304);
        assert_eq!(alice.get(&p, json).await.header("etag"), Some(e_alice.as_str()), "the full file's ETag");
        assert_eq!(cache_counts(&p).await.1, misses, "a touch rendered a view again");
    }

    let mut doc = json_file(&demo, "mychan/noarch/repodata.json");
    doc["packages"].as_object_mut().unwrap().remove("beta-1.0-0.tar.bz2");
    rewrite(&demo, "mychan/noarch/repodata.json", &serde_json::to_vec(&doc).unwrap(), 30);
    let changed = bob.get_with(&p, json, &[("if-none-match", &e_bob)]).await;
    assert_eq!(changed.status, 200, "a real change is a new view");
    check_view(&changed.json(), &doc, &["alpha-1.0-0.tar.bz2"], &BOB_CONDA, "after the change");
    assert_eq!(cache_counts(&p).await.1, misses + 1.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_view_is_served_from_its_previous_generation_while_the_new_one_renders() {
    let demo = Demo::with("[upstream]\ndir = \"channels\"\nrecheck = \"0s\"", "");
    let bob = Who::new(&demo, "bob");
    // A channel big enough that bob's view holds more than STALE_WHILE_RENDER (8 MiB) of JSON.
    let rel = "mychan/noarch/repodata.json";
    let mut doc = json_file(&demo, rel);
    let alpha = doc["packages"]["alpha-1.0-0.tar.bz2"].clone();
    for i in 0..9_000 {
        let mut r = alpha.clone();
        r["version"] = format!("1.{i}").into();
        r["padding"] = "x".repeat(1000).into();
        doc["packages"][format!("alpha-1.{i}-0.tar.bz2")] = r;
    }
    rewrite(&demo, rel, &serde_json::to_vec(&doc).unwrap(), 10);
    let p = Proxy::start(demo.config()).await;
    let json = "/mychan/noarch/repodata.json";
    let b1 = bob.get(&p, json).await;
    assert_eq!(b1.status, 200);
    assert!(b1.body.len() > 8 << 20, "the view is big: {} bytes", b1.body.len());
    let e1 = b1.header("etag").unwrap().to_owned();

    // The channel changes: the first request after it gets the view it had, at once, and starts the new render.
    doc["packages"].as_object_mut().unwrap().remove("alpha-1.5-0.tar.bz2");
    rewrite(&demo, rel, &serde_json::to_vec(&doc).unwrap(), 20);
    let b2 = bob.get(&p, json).await;
    assert_eq!(b2.header("etag"), Some(e1.as_str()), "served from the previous generation");
    assert!(b2.body == b1.body);
    support::eventually_async(Duration::from_secs(20), "the new view", || async {
        let g = bob.get(&p, json).await;
        g.header("etag") != Some(e1.as_str()) && g.json()["packages"].get("alpha-1.5-0.tar.bz2").is_none()
    })
    .await;

    // A permission change is never answered from an older view: bob loses beta*, and his very next view lacks it.
    let config = std::fs::read_to_string(demo.config_path()).unwrap();
    let narrowed = config.replace("packages = [\"alpha\", \"beta*\"]", "packages = [\"alpha\"]");
    assert_ne!(config, narrowed, "the demo's group changed shape");
    std::fs::write(demo.config_path(), narrowed).unwrap();
    p.app.reload_all().await.unwrap();
    let b3 = bob.get(&p, json).await;
    assert_eq!(b3.status, 200);
    let v = b3.json();
    assert!(keys(&v, "packages").iter().all(|k| k.starts_with("alpha-")), "beta after the change");
    assert!(keys(&v, "packages.conda").is_empty(), "{:?}", keys(&v, "packages.conda"));
    p.stop().await;
}
