//! End to end: a real conda client (py-rattler, pinned in `tests/e2e/requirements.txt`) solves and installs through
//! condagate on the demo config, over each of rattler's repodata paths (sharded, JSON+zst, plain JSON).
//!
//! The Python environment is prepared on first use in `target/e2e-venv` by `support::venv` (pinned in
//! `tests/e2e/requirements.txt`). Without `python3` these tests fail, unless `CONDAGATE_SKIP_E2E=1` is set: then each
//! reports itself skipped (`support::report_skip`), and `scripts/test` lists it as skipped after cargo's summary.
//!
//! Demo permissions (see `support::demo_config_text`): `mychan` is private, owned by alice; group `eng` (bob, carol)
//! gets `alpha`, `beta*`; group `dev-testers` (dave) gets `alpha`, `beta` on label `dev` only. `pubchan` is public.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Time one client run (solve + install) may take before the test gives up on it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
/// The client's own budget for solve + install, a little less than ours so it reports its own timeout.
const CLIENT_INNER_TIMEOUT_SECS: &str = "240";

const SECRET: &str = "secretpkg";

// ---------------------------------------------------------------------------------------------------------------
// The Python environment
// ---------------------------------------------------------------------------------------------------------------

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn e2e_dir() -> PathBuf {
    manifest_dir().join("tests/e2e")
}

// ---------------------------------------------------------------------------------------------------------------
// Running the client
// ---------------------------------------------------------------------------------------------------------------

/// One client run's result.
struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The client's final JSON line, if it printed one.
    json: Option<serde_json::Value>,
    /// Its cache dir (repodata under `repodata/`, packages under `pkgs/`).
    cache: PathBuf,
}

impl Run {
    fn context(&self) -> String {
        format!(
            "{}: exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }

    fn list(&self, key: &str) -> Vec<String> {
        let v = self.json.as_ref().and_then(|j| j.get(key)).and_then(|v| v.as_array());
        v.map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    }

    fn field(&self, key: &str) -> String {
        match self.json.as_ref().and_then(|j| j.get(key)) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }
    }

    /// Exit code 0 and the JSON agreeing: the outcome was the expected one.
    fn assert_ok(&self) {
        assert!(
            self.code == Some(0)
                && self.json.as_ref().and_then(|j| j.get("ok")).and_then(|v| v.as_bool()) == Some(true),
            "client run did not give the expected outcome\n{}",
            self.context()
        );
    }

    /// A successful install of exactly `names` (sorted).
    fn assert_installed(&self, names: &[&str]) {
        self.assert_ok();
        assert_eq!(self.field("outcome"), "success", "{}", self.context());
        assert_eq!(self.list("installed"), names, "installed packages differ\n{}", self.context());
    }
}

/// Where one client run keeps its prefix and cache.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Scratch { dir: tempfile::Builder::new().prefix("condagate-e2e-").tempdir().unwrap() }
    }
    fn sub(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

struct Client<'a> {
    python: &'a Path,
    scratch: &'a Scratch,
    mode: &'a str,
}

impl Client<'_> {
    /// Runs `rattler_client.py` for `spec` from `channel`, expecting `expect`; `name` picks the prefix and cache dirs.
    async fn run(&self, name: &str, channel: &str, spec: &str, headers: &[String], expect: &str) -> Run {
        self.run_with(name, name, channel, spec, headers, &[], expect).await
    }

    /// [`Client::run`] with the cache of run `cache_name` (a later solve reuses an earlier one's cache) and extra
    /// environment variables (`RATTLER_AUTH_FILE`, say).
    #[allow(clippy::too_many_arguments)]
    async fn run_with(
        &self,
        name: &str,
        cache_name: &str,
        channel: &str,
        spec: &str,
        headers: &[String],
        env: &[(&str, &Path)],
        expect: &str,
    ) -> Run {
        let prefix = self.scratch.sub(&format!("{name}-prefix"));
        let cache = self.scratch.sub(&format!("{cache_name}-cache"));
        let mut cmd = tokio::process::Command::new(self.python);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg(e2e_dir().join("rattler_client.py"))
            .args(["--channel", channel, "--spec", spec, "--mode", self.mode, "--expect", expect])
            .arg("--prefix")
            .arg(&prefix)
            .arg("--cache-dir")
            .arg(&cache)
            .args(["--timeout", CLIENT_INNER_TIMEOUT_SECS]);
        for h in headers {
            cmd.args(["--header", h]);
        }
        // The proxy is on 127.0.0.1: never route the client through a proxy from the environment.
        cmd.env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let what = format!("[{}] {name}: {spec} from {} (expect {expect})", self.mode, redact(channel));
        let started = Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot start {}: {e}", self.python.display()));
        let out = match tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output()).await {
            Ok(r) => r.unwrap_or_else(|e| panic!("{what}: waiting for the client failed: {e}")),
            Err(_) => panic!("{what}: the client did not finish within {CLIENT_TIMEOUT:?}"),
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = stdout.lines().rev().find(|l| !l.trim().is_empty()).and_then(|l| serde_json::from_str(l).ok());
        eprintln!("e2e: {what}: exit {:?} in {:.1?}", out.status.code(), started.elapsed());
        Run { what, code: out.status.code(), stdout, stderr, json, cache }
    }
}

/// A channel URL for messages, without its token.
fn redact(url: &str) -> String {
    match url.find("/t/") {
        Some(i) => {
            let rest = &url[i + 3..];
            let after = rest.find('/').map(|j| &rest[j..]).unwrap_or("");
            format!("{}/t/<TOKEN>{after}", &url[..i])
        }
        None => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Looking for the hidden name
// ---------------------------------------------------------------------------------------------------------------

/// The bytes, decompressed when they are a zstd frame or (with the venv's python, as the crate has no bzip2) bzip2.
fn plain(bytes: &[u8], python: &Path) -> Vec<u8> {
    if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(bytes).unwrap_or_else(|_| bytes.to_vec())
    } else if bytes.starts_with(b"BZh") {
        use std::io::Write;
        let mut child = Command::new(python)
            .args(["-c", "import bz2, sys; sys.stdout.buffer.write(bz2.decompress(sys.stdin.buffer.read()))"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot run python to decompress bzip2");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "bzip2 body does not decompress");
        out.stdout
    } else {
        bytes.to_vec()
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    memchr::memmem::find(haystack, needle.as_bytes()).is_some()
}

/// Every file under `dir` whose (decompressed) content mentions `needle`.
fn files_mentioning(dir: &Path, needle: &str, python: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(mut f) = File::open(&p) {
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).is_ok()
                    && (contains(&plain(&buf, python), needle) || contains(p.to_string_lossy().as_bytes(), needle))
                {
                    found.push(p);
                }
            }
        }
    }
    found
}

/// Fetches every repodata form of `base` (a channel or label URL with its credentials) through the proxy and
/// returns, per form that answered 200, whether it mentions `needle`.
async fn repodata_mentions(base: &str, headers: &[(&str, &str)], needle: &str, python: &Path) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for subdir in ["noarch", "linux-64"] {
        for file in [
            "repodata.json",
            "repodata.json.zst",
            "repodata.json.bz2",
            "current_repodata.json",
            "repodata_shards.msgpack.zst",
        ] {
            let url = format!("{base}/{subdir}/{file}");
            let r = get(&url, headers).await;
            assert!(r.status == 200 || r.status == 404, "GET {} answered {}: {}", redact(&url), r.status, r.text());
            if r.status == 200 {
                let body = plain(&r.body, python);
                out.push((format!("{subdir}/{file}"), contains(&body, needle)));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------------------------

/// (a)–(e) for one client mode, then checks that nothing bob received mentions the hidden package.
/// Where the demo channels come from in a scenario run.
#[derive(Debug, Clone, Copy)]
enum Through {
    /// The shipped local-folder upstream.
    Dir,
    /// An HTTP mirror behind the upstream cache.
    CachedMirror,
    /// An S3 bucket (SeaweedFS), behind the upstream cache or not.
    S3 { cached: bool },
}

/// The demo, with its channels served the way `through` says, and the servers that serve them.
struct Setup {
    demo: Demo,
    _mirror: Option<Recorder>,
    _s3: Option<seaweed::S3Server>,
}

async fn setup(through: Through) -> Option<Setup> {
    let demo = Demo::new();
    let cache = r#"cache = { dir = "cache", max_size = "1GiB" }"#;
    let (upstream, mirror, s3) = match through {
        Through::Dir => return Some(Setup { demo, _mirror: None, _s3: None }),
        Through::CachedMirror => {
            let rec = Recorder::start(demo.path().join("channels")).await;
            (format!("[upstream]\nurl = \"{}\"\n{cache}", rec.url()), Some(rec), None)
        }
        Through::S3 { cached } => {
            let server = seaweed::S3Server::start().await?;
            server.create_bucket("conda").await;
            server.put_tree("conda", "channels", &demo.path().join("channels")).await;
            std::fs::write(demo.path().join("s3-key"), seaweed::KEY).unwrap();
            std::fs::write(demo.path().join("s3-secret"), seaweed::SECRET).unwrap();
            let s3 = format!(
                "s3 = {{ bucket = \"conda\", prefix = \"channels\", endpoint = \"{}\", \
                 access_key_id_file = \"s3-key\", secret_access_key_file = \"s3-secret\" }}",
                server.endpoint
            );
            (format!("[upstream]\n{s3}\n{}", if cached { cache } else { "" }), None, Some(server))
        }
    };
    std::fs::write(demo.config_path(), demo_config_text(&upstream, "")).unwrap();
    Some(Setup { demo, _mirror: mirror, _s3: s3 })
}

async fn scenarios(mode: &str) {
    scenarios_through(mode, Through::Dir).await;
}

async fn scenarios_through(mode: &str, through: Through) {
    let Some(python) = venv::python(venv::RATTLER).await else { return };
    let Some(setup) = setup(through).await else { return };
    let demo = &setup.demo;
    let bob = demo.token("bob-e2e", "bob", "conda:download");
    let alice = demo.token("alice-e2e", "alice", "conda:download");
    let dave = demo.token("dave-e2e", "dave", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let scratch = Scratch::new();
    let client = Client { python: &python, scratch: &scratch, mode };
    let started = Instant::now();

    // (a) a restricted token installs an allowed package and its dependency.
    let a = client.run("a-bob", &proxy.url(&format!("/t/{bob}/mychan")), "alpha", &[], "success").await;
    a.assert_installed(&["alpha", "beta"]);

    // (b) the hidden package does not exist for that token: the solver fails, not the transport.
    let b = client.run("b-bob-secret", &proxy.url(&format!("/t/{bob}/mychan")), SECRET, &[], "solve-failure").await;
    b.assert_ok();
    assert!(b.list("installed").is_empty(), "nothing may be installed\n{}", b.context());
    let err = b.field("error");
    assert!(
        !err.contains("HTTP") && !err.contains("status") && err.contains(SECRET),
        "solving {SECRET} for bob must fail in the solver (no candidates), not on a fetch\n{}",
        b.context()
    );

    // (c) the owner sees and installs it.
    let c = client.run("c-alice-secret", &proxy.url(&format!("/t/{alice}/mychan")), SECRET, &[], "success").await;
    c.assert_installed(&["beta", SECRET]);

    // (d) a label channel: dave's grant is on label dev only, where alpha 2.0 lives.
    let d = client
        .run("d-dave-label", &proxy.url(&format!("/t/{dave}/mychan/label/dev")), "alpha >=2", &[], "success")
        .await;
    d.assert_installed(&["alpha", "beta"]);
    assert!(d.stderr.contains("alpha-2.0"), "expected alpha 2.0 from label dev\n{}", d.context());

    // (e) Bearer header instead of a path token.
    let bearer = format!("Authorization: Bearer {bob}");
    let e = client.run("e-bob-bearer", &proxy.url("/mychan"), "alpha", std::slice::from_ref(&bearer), "success").await;
    e.assert_installed(&["alpha", "beta"]);

    // Nothing bob's clients received mentions the hidden package; alice's cache, read the same way, does (so the
    // search is not blind in this mode).
    for r in [&a, &b, &e] {
        let leaked = files_mentioning(&r.cache.join("repodata"), SECRET, &python);
        assert!(leaked.is_empty(), "bob's repodata cache mentions {SECRET}: {leaked:?}\n{}", r.context());
    }
    assert!(
        !files_mentioning(&c.cache.join("repodata"), SECRET, &python).is_empty(),
        "alice's repodata cache should mention {SECRET}: the leak check cannot see this mode's files\n{}",
        c.context()
    );
    // And every repodata form bob can fetch, by path token and by header.
    let bob_path = repodata_mentions(&proxy.url(&format!("/t/{bob}/mychan")), &[], SECRET, &python).await;
    let bob_header =
        repodata_mentions(&proxy.url("/mychan"), &[("authorization", &format!("Bearer {bob}"))], SECRET, &python).await;
    for (form, leaks) in bob_path.iter().chain(&bob_header) {
        assert!(!leaks, "bob's {form} mentions {SECRET}");
    }
    assert!(bob_path.iter().any(|(f, _)| f == "noarch/repodata.json"), "bob got no noarch/repodata.json: {bob_path:?}");
    let alice_forms = repodata_mentions(&proxy.url(&format!("/t/{alice}/mychan")), &[], SECRET, &python).await;
    assert!(
        alice_forms.iter().any(|(f, m)| f == "noarch/repodata.json" && *m),
        "alice's noarch/repodata.json should mention {SECRET}: {alice_forms:?}"
    );

    if matches!(through, Through::CachedMirror | Through::S3 { cached: true }) {
        let stats = proxy.app.upstreams.cache().expect("a cache is configured").stats();
        let filled = stats.filled_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let verified_failures = stats.verify_failures.load(std::sync::atomic::Ordering::Relaxed);
        assert!(filled > 0, "the installs went through the cache: packages were filled into it");
        assert_eq!(verified_failures, 0, "every package and shard matched its expected sha256");
    }
    eprintln!("e2e: [{mode}] through {through:?}: all scenarios passed in {:.1?}", started.elapsed());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_client_sees_its_view() {
    scenarios("sharded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zst_client_sees_its_view() {
    scenarios("zst").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_client_sees_its_view() {
    scenarios("json").await;
}

/// The same installs with the channels on an HTTP mirror behind the upstream cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_through_the_upstream_cache() {
    scenarios_through("sharded", Through::CachedMirror).await;
}

/// The same installs with the channels in an S3 bucket (SeaweedFS), read directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_from_an_s3_bucket() {
    scenarios_through("zst", Through::S3 { cached: false }).await;
}

/// The same installs from the S3 bucket behind the upstream cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_from_an_s3_bucket_through_the_cache() {
    scenarios_through("sharded", Through::S3 { cached: true }).await;
}

/// (f) A token made by the real `condagate token create` installs a package and its dependency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_token_installs() {
    let Some(python) = venv::python(venv::RATTLER).await else { return };
    let demo = Demo::new();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_condagate"))
        .args(["token", "create", "--config"])
        .arg(demo.config_path())
        .args(["--name", "cli", "--user", "bob", "--scopes", "conda:download"])
        .output()
        .await
        .expect("cannot run the condagate binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "condagate token create failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let token = stdout.lines().last().unwrap_or_default().trim().to_owned();
    assert!(
        token.len() >= 22 && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "the last stdout line of token create is not a token: {token:?}"
    );

    let proxy = Proxy::start(demo.config()).await;
    let scratch = Scratch::new();
    let client = Client { python: &python, scratch: &scratch, mode: "sharded" };
    let r = client.run("f-cli-token", &proxy.url(&format!("/t/{token}/mychan")), "alpha", &[], "success").await;
    r.assert_installed(&["alpha", "beta"]);
    proxy.stop().await;
}

/// (g) A public channel installs anonymously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_channel_installs_anonymously() {
    let Some(python) = venv::python(venv::RATTLER).await else { return };
    let demo = Demo::new();
    let proxy = Proxy::start(demo.config()).await;
    let scratch = Scratch::new();
    let client = Client { python: &python, scratch: &scratch, mode: "sharded" };
    let r = client.run("g-anonymous", &proxy.url("/pubchan"), "world", &[], "success").await;
    r.assert_installed(&["hello", "world"]);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Clients configured as pixi users configure them
// ---------------------------------------------------------------------------------------------------------------

/// A rattler authentication file (what `pixi auth login` writes) with one entry for 127.0.0.1.
fn auth_file(scratch: &Scratch, entry: serde_json::Value) -> PathBuf {
    auth_file_for(scratch, "127.0.0.1", entry)
}

/// A rattler authentication file with one entry, under the key `host`.
fn auth_file_for(scratch: &Scratch, host: &str, entry: serde_json::Value) -> PathBuf {
    let path = scratch.sub("credentials.json");
    std::fs::write(&path, serde_json::json!({ host: entry }).to_string()).unwrap();
    path
}

/// `pixi auth login HOST --conda-token T` under a base path: rattler puts `/t/<T>` right after the host, before the
/// base path, and the solve and install must work from the plain channel URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conda_token_credential_works_under_a_base_path() {
    let Some(python) = venv::python(venv::RATTLER).await else { return };
    let demo = Demo::with("[upstream]\ndir = \"channels\"", "base_path = \"/conda\"");
    let bob = demo.token("bob-pixi", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let scratch = Scratch::new();
    let auth = auth_file(&scratch, serde_json::json!({ "CondaToken": bob }));
    for mode in ["sharded", "zst"] {
        let client = Client { python: &python, scratch: &scratch, mode };
        let channel = proxy.url("/conda/mychan");
        let name = format!("conda-token-{mode}");
        let r = client.run_with(&name, &name, &channel, "alpha", &[], &[("RATTLER_AUTH_FILE", &auth)], "success").await;
        r.assert_installed(&["alpha", "beta"]);
        let leaked = files_mentioning(&r.cache, SECRET, &python);
        assert!(leaked.is_empty(), "bob's cache mentions {SECRET}: {leaked:?}");
    }
    proxy.stop().await;
}

/// A second sharded solve of a private channel, past `max-age`, revalidates each subdir's shard index (304), as on a
/// public channel, instead of downloading it again; a revoked token then fails the solve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_shard_indexes_are_revalidated_not_downloaded_again() {
    let Some(python) = venv::python(venv::RATTLER).await else { return };
    let demo = Demo::with("[upstream]\ndir = \"channels\"", "repodata_max_age = \"1s\"");
    let bob = demo.token("bob-shards", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let scratch = Scratch::new();
    let client = Client { python: &python, scratch: &scratch, mode: "sharded" };
    let channel = proxy.url(&format!("/t/{bob}/mychan"));
    let not_modified = || async {
        metric(&get(&proxy.url("/metrics"), &[]).await.text(), "condagate_requests_total{class=\"3xx\"}").unwrap_or(0.0)
    };
    let first = client.run_with("shards-1", "shards", &channel, "alpha", &[], &[], "success").await;
    first.assert_installed(&["alpha", "beta"]);
    let before = not_modified().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = client.run_with("shards-2", "shards", &channel, "alpha", &[], &[], "success").await;
    second.assert_installed(&["alpha", "beta"]);
    let revalidated = not_modified().await - before;
    assert!(revalidated >= 2.0, "the second solve got {revalidated} 304s; each subdir's shard index should be one");
    eprintln!("second private sharded solve: {revalidated} answers 304");

    let cfg = demo.config();
    condagate::internals::tokens::file::revoke(
        &cfg.tokens_file,
        "bob-shards",
        Some("bob"),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    proxy.app.reload_tokens().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let third = client.run_with("shards-3", "shards", &channel, "alpha", &[], &[], "solve-failure").await;
    third.assert_ok();
    proxy.stop().await;
}

/// Every kind of stored credential rattler reads from `RATTLER_AUTH_FILE`, with and without a base path, on the
/// plain channel URL: installs what the token may see, cannot solve what it may not, and a wrong token fails with 401
/// (never an anonymous downgrade).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_credential_kind_works_with_and_without_a_base_path() {
    let Some(python) = venv::python(venv::RATTLER).await else { return };
    for base in ["", "/conda"] {
        let extra = if base.is_empty() { String::new() } else { format!("base_path = \"{base}\"") };
        let demo = Demo::with("[upstream]\ndir = \"channels\"", &extra);
        let bob = demo.token("bob-auth", "bob", "conda:download");
        let wrong = "cg-ThisTokenWasNeverIssued0123456".to_owned();
        let proxy = Proxy::start(demo.config()).await;
        let scratch = Scratch::new();
        let client = Client { python: &python, scratch: &scratch, mode: "sharded" };
        let channel = proxy.url(&format!("{base}/mychan"));
        type Entry = fn(&str) -> serde_json::Value;
        let kinds: [(&str, Entry); 3] = [
            ("CondaToken", |t| serde_json::json!({ "CondaToken": t })),
            ("BearerToken", |t| serde_json::json!({ "BearerToken": t })),
            ("BasicHTTP", |t| serde_json::json!({ "BasicHTTP": { "username": "bob", "password": t } })),
        ];
        for (kind, entry) in kinds {
            let name = format!("{kind}{}", base.replace('/', "-"));
            let auth = auth_file(&scratch, entry(&bob));
            let env = [("RATTLER_AUTH_FILE", auth.as_path())];
            let r = client.run_with(&name, &name, &channel, "alpha", &[], &env, "success").await;
            r.assert_installed(&["alpha", "beta"]);
            let hidden = format!("{name}-hidden");
            let r = client.run_with(&hidden, &hidden, &channel, SECRET, &[], &env, "solve-failure").await;
            r.assert_ok();
            let auth = auth_file(&scratch, entry(&wrong));
            let env = [("RATTLER_AUTH_FILE", auth.as_path())];
            let bad = format!("{name}-wrong");
            let r = client.run_with(&bad, &bad, &channel, "alpha", &[], &env, "solve-failure").await;
            r.assert_ok();
            assert!(r.stderr.contains("401") || r.field("error").contains("401"), "{kind}: no 401 in\n{}", r.context());
        }
        proxy.stop().await;
    }
}

/// rattler matches stored credentials by host name only: a key with the port never matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_credentials_match_the_host_without_its_port() {
    let Some(python) = venv::python(venv::RATTLER).await else { return };
    let demo = Demo::new();
    let bob = demo.token("bob-host", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let scratch = Scratch::new();
    let client = Client { python: &python, scratch: &scratch, mode: "sharded" };
    let path =
        auth_file_for(&scratch, &format!("127.0.0.1:{}", proxy.addr.port()), serde_json::json!({ "CondaToken": bob }));
    let env = [("RATTLER_AUTH_FILE", path.as_path())];
    let r = client.run_with("host-port", "host-port", &proxy.url("/mychan"), "alpha", &[], &env, "solve-failure").await;
    r.assert_ok();
    proxy.stop().await;
}

/// conda's lazy metadata reader (conda-package-streaming) reads `info/index.json` of a `.conda` by HTTP Range
/// through a token URL; a hidden package answers 404 there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conda_package_streaming_reads_metadata_by_range_through_a_token_url() {
    let Some(python) = venv::python(venv::PACKAGE_STREAMING).await else { return };
    let demo = Demo::new();
    let bob = demo.token("bob-cps", "bob", "conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let script = r#"
import json, sys
from conda_package_streaming.url import stream_conda_info
try:
    for tar, member in stream_conda_info(sys.argv[1]):
        if member.name == "info/index.json":
            print(json.dumps({"ok": True, "index": json.load(tar.extractfile(member))}))
            break
    else:
        print(json.dumps({"ok": False, "error": "no info/index.json"}))
except Exception as e:
    response = getattr(e, "response", None)
    print(json.dumps({"ok": False, "status": getattr(response, "status_code", None), "error": repr(e)}))
"#;
    let base = proxy.url(&format!("/t/{bob}/mychan/noarch"));
    let read = move |file: &str| {
        let url = format!("{base}/{file}");
        let out = Command::new(&python).args(["-c", script, &url]).env("NO_PROXY", "127.0.0.1").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let last = stdout.lines().last().unwrap_or_default().to_owned();
        serde_json::from_str::<serde_json::Value>(&last)
            .unwrap_or_else(|_| panic!("no JSON from the reader: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
    };
    let ok = tokio::task::spawn_blocking(move || (read("beta-utils-1.0-0.conda"), read("secretpkg-1.0-0.conda")));
    let (visible, hidden) = ok.await.unwrap();
    // The reader starts with `Range: bytes=-10240` and gives up ("range request is not supported") on anything but
    // a 206: success means the metadata came by Range.
    assert_eq!(visible["ok"], true, "{visible}");
    assert_eq!(visible["index"]["name"], "beta-utils", "{visible}");
    assert_eq!((hidden["ok"].as_bool(), hidden["status"].as_u64()), (Some(false), Some(404)), "{hidden}");
    proxy.stop().await;
}

/// (web) A token made on the token pages, in a real browser, installs with py-rattler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_in_the_browser_installs() {
    let Some(python) = venv::python(venv::RATTLER).await else { return };
    let Some(browser) = browser::Browser::start().await else { return };
    let demo = Demo::new();
    let expires = Some(time::OffsetDateTime::now_utc() + time::Duration::days(400));
    let login = demo.token_with("web", "bob", "api:read api:write conda:download", expires, None);
    let proxy = Proxy::start(demo.config()).await;
    let admin = proxy.url("/admin");
    browser.sign_in(&admin, &login).await;
    let token = browser.create_token(&admin, "from-the-browser", &["conda:download"], "30", &["mychan"]).await;
    browser.close().await;
    let scratch = Scratch::new();
    let client = Client { python: &python, scratch: &scratch, mode: "sharded" };
    let r = client.run("web-token", &proxy.url(&format!("/t/{token}/mychan")), "alpha", &[], "success").await;
    r.assert_installed(&["alpha", "beta"]);
    proxy.stop().await;
}
