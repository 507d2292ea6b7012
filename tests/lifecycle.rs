//! Token lifecycle and the admin API: the real `condagate` binary's `token`, `check-config`, `explain` and `serve`
//! commands, a running server picking up token and config changes without a restart (file watch, SIGHUP), and the
//! admin HTTP API's scope gates, table-driven.
//!
//! Demo permissions (see `support::demo_config_text`): `mychan` is private, owned by alice; group `eng` (bob, carol)
//! gets `alpha`, `beta*`; group `dev-testers` (dave) gets `alpha`, `beta` on label `dev`. `pubchan` is public. The
//! demo config polls the tokens file every 50 ms.
//!
//! Nothing here sleeps a fixed time to wait for a change: every wait polls every few milliseconds and gives up after
//! [`PATIENCE`], failing with what it last saw.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use condagate::config::Config;
use condagate::internals::tokens::file;
use condagate::internals::tokens::Token;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::*;

/// How long a change may take to be seen before a test gives up.
const PATIENCE: Duration = Duration::from_secs(5);
/// Pause between two looks.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_condagate"))
}

/// Runs `condagate <args…> --config <demo config>`.
fn cli(config: &Path, args: &[&str]) -> Output {
    cli_stdin(config, args, None)
}

fn cli_stdin(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = bin();
    cmd.args(args).arg("--config").arg(config);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!("exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", o.status.code(), stdout(o), stderr(o))
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "expected success\n{}", show(o));
}

fn assert_refused(o: &Output, wanted: &str) {
    assert!(!o.status.success(), "expected a refusal mentioning {wanted:?}\n{}", show(o));
    assert!(stderr(o).contains(wanted), "expected {wanted:?} on stderr\n{}", show(o));
}

fn is_token(s: &str) -> bool {
    s.strip_prefix("cg-").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `token create` through the binary; returns the secret (the last stdout line), checked for shape.
fn create(config: &Path, name: &str, user: &str, scopes: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--name", name, "--user", user, "--scopes", scopes];
    args.extend_from_slice(extra);
    let o = cli(config, &args);
    assert_ok(&o);
    let out = stdout(&o);
    let last = out.lines().last().unwrap_or_default().to_owned();
    assert!(is_token(&last), "the last stdout line is not a token (cg-[A-Za-z0-9]+): {last:?}\n{}", show(&o));
    last
}

fn tokens_file(demo: &Demo) -> PathBuf {
    demo.config().tokens_file
}

/// Evaluates `$look` (a block that may `.await`, giving `Result<T, String>`) every [`POLL`] until it is `Ok`, and
/// gives `(T, elapsed)`; panics after [`PATIENCE`] with the last `Err` it saw.
macro_rules! poll {
    ($what:expr, $look:block) => {{
        let start = Instant::now();
        loop {
            let seen: Result<_, String> = $look;
            match seen {
                Ok(v) => break (v, start.elapsed()),
                Err(last) => {
                    if start.elapsed() > PATIENCE {
                        panic!("gave up after {PATIENCE:?} waiting for {}; last seen: {last}", $what);
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }};
}

fn repodata_url(p: &str, token: &str, channel: &str) -> String {
    format!("{p}/t/{token}/{channel}/noarch/repodata.json")
}

fn problem_detail(g: &Got) -> String {
    serde_json::from_slice::<Value>(&g.body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_else(|| g.text())
}

/// An admin API call with an optional token (`Authorization: token …`) and an optional JSON body.
async fn api(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> Got {
    let mut b = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("token {t}"));
    }
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(b.body(body).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got { status: parts.status, headers: parts.headers, body }
}

/// The `error` string of an admin API refusal; panics when the body is not `{"error": "…"}`.
fn api_error(g: &Got) -> String {
    let v = g.json();
    v.get("error")
        .and_then(|e| e.as_str())
        .unwrap_or_else(|| panic!("expected {{\"error\": …}}, got {} {}", g.status, g.text()))
        .to_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn cli_create_list_info_revoke_round_trip_never_shows_a_secret() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    let bob = create(&cfg, "ci", "bob", "conda:download", &[]);
    let alice = create(&cfg, "admin", "alice", "api,conda:download", &["--no-expiry"]);
    let dated = create(&cfg, "dated", "carol", "conda", &["--expires", "2099-01-02T03:04:05Z", "--channels", "mychan"]);
    let secrets = [bob.clone(), alice.clone(), dated.clone()];
    assert_eq!(secrets.iter().collect::<HashSet<_>>().len(), 3, "tokens must differ");

    // The tokens file holds digests only.
    let file = std::fs::read_to_string(tokens_file(&demo)).unwrap();
    assert!(count_occurrences(&file, &secrets).is_empty(), "the tokens file holds a secret:\n{file}");
    let digest = Token::parse(&bob).unwrap().digest().to_stored();
    assert!(file.contains(&digest), "the tokens file lacks bob's digest:\n{file}");

    // list: name, user, scopes, created, expires, status; never a secret.
    let o = cli(&cfg, &["token", "list"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(count_occurrences(&(out.clone() + &stderr(&o)), &secrets).is_empty(), "list shows a secret:\n{out}");
    let header = out.lines().next().unwrap();
    for col in ["NAME", "USER", "SCOPES", "CREATED", "EXPIRES", "STATUS"] {
        assert!(header.contains(col), "list header lacks {col}: {header:?}");
    }
    let row = |out: &str, name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let ci = row(&out, "ci");
    assert_eq!(
        (ci[1].as_str(), ci[2].as_str(), ci.last().unwrap().as_str()),
        ("bob", "conda:download", "active"),
        "{out}"
    );
    let admin = row(&out, "admin");
    assert_eq!(&admin[1..4], ["alice", "conda:download", "api"], "{out}");
    assert_eq!(admin[admin.len() - 2..], ["never", "active"], "{out}");
    let d = row(&out, "dated");
    assert!(d.contains(&"2099-01-02T03:04:05Z".to_owned()), "{out}");

    // list --user filters.
    let o = cli(&cfg, &["token", "list", "--user", "alice"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("admin") && !stdout(&o).contains("ci "), "{}", show(&o));

    // info - reads the token from stdin and tells the record, its status and its reach (the eng group).
    let o = cli_stdin(&cfg, &["token", "info", "-"], Some(&format!("{bob}\n")));
    assert_ok(&o);
    let out = stdout(&o);
    for want in [
        "name:    ci",
        "user:    bob",
        "scopes:  conda:download",
        "status:  active",
        "mychan (private)",
        "group eng",
        "pubchan (public)",
    ] {
        assert!(out.contains(want), "token info lacks {want:?}\n{}", show(&o));
    }
    assert!(!out.contains(&bob), "token info echoes the secret\n{out}");
    // A token limited to mychan reaches only mychan beyond the public channels.
    let o = cli(&cfg, &["token", "info", &dated]);
    assert_ok(&o);
    assert!(stdout(&o).contains("group eng") && !stdout(&o).contains("authchan"), "{}", show(&o));
    // An unknown token is refused.
    assert_refused(&cli_stdin(&cfg, &["token", "info", "-"], Some("cg-nosuchtoken\n")), "no such token");

    // revoke by name: the status changes in list and info, and info no longer claims any reach.
    let o = cli(&cfg, &["token", "revoke", "ci"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("revoked token \"ci\" of user \"bob\""), "{}", show(&o));
    let out = stdout(&cli(&cfg, &["token", "list"]));
    assert_eq!(row(&out, "ci").last().unwrap(), "revoked", "{out}");
    assert_eq!(row(&out, "admin").last().unwrap(), "active", "{out}");
    let o = cli_stdin(&cfg, &["token", "info", "-"], Some(&bob));
    assert_ok(&o);
    assert!(stdout(&o).contains("status:  revoked") && !stdout(&o).contains("mychan"), "{}", show(&o));
    // A second revoke finds nothing active.
    assert_refused(&cli(&cfg, &["token", "revoke", "ci"]), "no active token is named \"ci\"");

    let file = std::fs::read_to_string(tokens_file(&demo)).unwrap();
    assert!(count_occurrences(&file, &secrets).is_empty(), "the tokens file holds a secret:\n{file}");
    assert!(file.contains("revoked = "), "{file}");
}

#[test]
fn cli_refuses_duplicates_unknown_scopes_past_expiry_and_ambiguous_revokes() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    create(&cfg, "laptop", "bob", "conda:download", &[]);
    let before = std::fs::read(tokens_file(&demo)).unwrap();

    let o = cli(&cfg, &["token", "create", "--name", "laptop", "--user", "bob", "--scopes", "conda:download"]);
    assert_refused(&o, "user \"bob\" already has a token named \"laptop\"");
    assert!(!stdout(&o).contains("cg-"), "a refused create printed a token\n{}", show(&o));

    let o = cli(&cfg, &["token", "create", "--name", "x", "--user", "bob", "--scopes", "conda:upload"]);
    assert_refused(
        &o,
        "unknown scope \"conda:upload\" (valid scopes: all, repos, conda, conda:download, api, api:read, api:write, \
         api:modify-group, pypi, pypi:download)",
    );
    let o = cli(
        &cfg,
        &["token", "create", "--name", "x", "--user", "bob", "--scopes", "conda", "--expires", "2001-01-01T00:00:00Z"],
    );
    assert_refused(&o, "the token's expiry time 2001-01-01T00:00:00Z is not after now (");
    // Times and durations that do not parse say what was expected, with an example.
    let o =
        cli(&cfg, &["token", "create", "--name", "x", "--user", "bob", "--scopes", "conda", "--expires", "2027-01-01"]);
    assert_refused(&o, "--expires: \"2027-01-01\" is not an RFC 3339 time with a zone, like 2027-01-01T00:00:00Z");
    let o = cli(&cfg, &["token", "create", "--name", "x", "--user", "bob", "--scopes", "conda", "--expires-in=-5s"]);
    assert_refused(&o, "--expires-in: \"-5s\" is not a duration: a number and a unit, like 90d");
    let o =
        cli(&cfg, &["token", "create", "--name", "x", "--user", "bob", "--scopes", "conda", "--channels", "nochan"]);
    assert_refused(&o, "channel \"nochan\" is not configured");
    assert_eq!(std::fs::read(tokens_file(&demo)).unwrap(), before, "a refused create changed the tokens file");

    // The same name for another user is fine; then a revoke by that name alone is ambiguous.
    create(&cfg, "laptop", "carol", "conda:download", &[]);
    let o = cli(&cfg, &["token", "revoke", "laptop"]);
    assert_refused(&o, "2 users have a token named \"laptop\"; say which with --user");
    let records = file::load(&tokens_file(&demo)).unwrap();
    assert!(records.iter().all(|r| r.revoked.is_none()), "an ambiguous revoke revoked something: {records:?}");

    assert_ok(&cli(&cfg, &["token", "revoke", "laptop", "--user", "carol"]));
    let records = file::load(&tokens_file(&demo)).unwrap();
    let state: Vec<(&str, bool)> = records.iter().map(|r| (&*r.user, r.revoked.is_some())).collect();
    assert_eq!(state, [("bob", false), ("carol", true)]);
    // Once carol's is revoked, the name is free again for carol.
    create(&cfg, "laptop", "carol", "conda:download", &[]);
    assert_refused(
        &cli(&cfg, &["token", "revoke", "laptop", "--user", "zed"]),
        "user \"zed\" has no active token named \"laptop\"",
    );
}

#[test]
fn cli_twenty_concurrent_creates_all_persist() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    let children: Vec<(String, Child)> = (0..20)
        .map(|i| {
            let name = format!("par{i}");
            let child = bin()
                .args(["token", "create", "--name", &name, "--user", "bob", "--scopes", "conda:download", "--config"])
                .arg(&cfg)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (name, child)
        })
        .collect();
    let mut secrets = Vec::new();
    for (name, child) in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{name}: {}", show(&o));
        let last = stdout(&o).lines().last().unwrap_or_default().to_owned();
        assert!(is_token(&last), "{name}: {}", show(&o));
        secrets.push(last);
    }
    let records = file::load(&tokens_file(&demo)).unwrap();
    let names: HashSet<&str> = records.iter().map(|r| &*r.name).collect();
    assert_eq!(records.len(), 20, "expected 20 records, found {}: {names:?}", records.len());
    assert_eq!(names, (0..20).map(|i| format!("par{i}")).collect::<HashSet<_>>().iter().map(String::as_str).collect());
    let table = condagate::internals::tokens::TokenTable::new(records);
    for s in &secrets {
        assert!(table.lookup(&Token::parse(s).unwrap()).is_some(), "a created token is not in the file");
    }
    assert_eq!(secrets.iter().collect::<HashSet<_>>().len(), 20);
}

#[test]
fn check_config_names_every_problem_by_key() {
    let demo = Demo::new();
    let o = cli(&demo.config_path(), &["check-config"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("ok (3 channels, 2 groups)"), "{}", show(&o));

    let bad = demo.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[server]
listen = "nowhere"
[tokens]
file = "tokens.toml"
watch_interval = "often"
[upstream]
dir = "channels"
[[channels]]
name = "a"
access = "publik"
[[channels]]
name = "a"
access = "public"
[[groups]]
name = "g"
channel = "zzz"
packages = ["[oops"]
"#,
    )
    .unwrap();
    let o = cli(&bad, &["check-config"]);
    assert!(!o.status.success(), "a bad config passed\n{}", show(&o));
    let err = stderr(&o);
    for want in [
        "server.listen: \"nowhere\"",
        "tokens.watch_interval: \"often\"",
        "channels[0].access: \"publik\" is not one of public, authenticated, private",
        "channels[1].name: \"a\" is configured twice",
        "groups[0].channel: \"zzz\"",
        "groups[0].packages: \"[oops\"",
    ] {
        assert!(err.contains(want), "check-config does not report {want:?}\n{}", show(&o));
    }
    assert!(err.contains("bad.toml"), "the report does not name the file\n{}", show(&o));

    // A syntax error and an unknown key are reported too, with where they are.
    std::fs::write(&bad, "[server]\nlisten_addr = \"x\"\n").unwrap();
    let o = cli(&bad, &["check-config"]);
    assert!(!o.status.success() && stderr(&o).contains("listen_addr"), "{}", show(&o));
    let o = cli(&demo.path().join("missing.toml"), &["check-config"]);
    assert!(!o.status.success() && stderr(&o).contains("cannot read the file"), "{}", show(&o));

    // What cannot serve, though every key is valid: a missing upstream folder, missing or non-PEM TLS files.
    let text = std::fs::read_to_string(demo.config_path()).unwrap();
    let broken = text.replace("dir = \"channels\"", "dir = \"no-such-folder\"").replace(
        "[server]\nlisten = \"127.0.0.1:0\"",
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }",
    );
    assert!(broken.contains("no-such-folder") && broken.contains("cert.pem"), "the edit did not apply");
    std::fs::write(&bad, broken).unwrap();
    std::fs::write(demo.path().join("cert.pem"), "not a certificate").unwrap();
    let o = cli(&bad, &["check-config"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = stderr(&o);
    assert!(err.starts_with("error: "), "{}", show(&o));
    for want in ["channels[0] (mychan): the upstream folder", "no-such-folder", "server.tls"] {
        assert!(err.contains(want), "check-config does not report {want:?}\n{}", show(&o));
    }
}

#[test]
fn explain_names_the_group_that_grants_access() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    let o = cli(&cfg, &["explain", "--user", "bob"]);
    assert_ok(&o);
    let out = stdout(&o);
    for want in [
        "mychan (private)",
        "group eng: packages alpha, beta* on all labels",
        "pubchan (public)",
        "authchan (authenticated)",
    ] {
        assert!(out.contains(want), "explain bob lacks {want:?}\n{out}");
    }
    assert!(!out.contains("dev-testers"), "{out}");
    let out = stdout(&cli(&cfg, &["explain", "--user", "dave", "--channel", "mychan"]));
    assert!(out.contains("group dev-testers: packages alpha, beta on dev"), "{out}");
    let out = stdout(&cli(&cfg, &["explain", "--user", "alice", "--channel", "mychan"]));
    assert!(out.contains("owner: every package and label"), "{out}");
    let out = stdout(&cli(&cfg, &["explain", "--user", "zed", "--channel", "mychan"]));
    assert!(out.contains("zed can reach no channel named mychan"), "{out}");
}

// ---------------------------------------------------------------------------------------------------------------
// Live: a running server sees token changes without a restart
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_a_token_revoked_through_the_cli_is_refused() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    let t = create(&cfg, "doomed", "bob", "conda:download", &[]);
    let keep = create(&cfg, "keeper", "bob", "conda:download", &[]);
    let p = Proxy::start(demo.config()).await;
    let url = repodata_url(&p.url(""), &t, "mychan");
    assert_eq!(get(&url, &[]).await.status, 200);

    assert_ok(&cli(&cfg, &["token", "revoke", "doomed", "--user", "bob"]));
    let (detail, took) = poll!("the revoked token to be refused", {
        let g = get(&url, &[]).await;
        if g.status == 401 {
            Ok(problem_detail(&g))
        } else {
            Err(format!("{} {}", g.status, g.text()))
        }
    });
    eprintln!("revocation seen after {took:?}");
    assert!(detail.contains("revoked"), "{detail}");
    // The other token of the same user is untouched, and so is the header form of the revoked one refused.
    assert_eq!(get(&repodata_url(&p.url(""), &keep, "mychan"), &[]).await.status, 200);
    let g = get(&p.url("/mychan/noarch/repodata.json"), &[("authorization", &format!("Bearer {t}"))]).await;
    assert_eq!(g.status, 401, "{}", g.text());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_a_newly_created_token_is_accepted() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    create(&cfg, "first", "bob", "conda:download", &[]);
    let p = Proxy::start(demo.config()).await;
    let t = create(&cfg, "second", "bob", "conda:download", &[]);
    let url = repodata_url(&p.url(""), &t, "mychan");
    let (body, took) = poll!("the new token to be accepted", {
        let g = get(&url, &[]).await;
        if g.status == 200 {
            Ok(g.text())
        } else {
            Err(format!("{} {}", g.status, g.text()))
        }
    });
    eprintln!("new token accepted after {took:?}");
    assert!(body.contains("alpha-1.0-0.tar.bz2") && !body.contains("secretpkg"), "{body}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_an_expired_token_is_refused() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    let p = Proxy::start(demo.config()).await;
    let t = create(&cfg, "brief", "bob", "conda:download", &["--expires-in", "1500ms"]);
    let url = repodata_url(&p.url(""), &t, "mychan");
    let mut accepted = false;
    let (detail, took) = poll!("the token to expire", {
        let g = get(&url, &[]).await;
        accepted |= g.status == 200;
        let d = problem_detail(&g);
        if g.status == 401 && d.contains("expired") {
            Ok(d)
        } else {
            Err(format!("{} {d}", g.status))
        }
    });
    eprintln!("expiry seen {took:?} after creation (accepted before: {accepted})");
    assert!(detail.contains("The token given expired at"), "{detail}");
    // The admin API agrees.
    let g = api("GET", &p.url("/api/user"), Some(&t), None).await;
    assert_eq!(g.status, 401);
    assert!(api_error(&g).contains("expired"), "{}", g.text());
    let o = cli_stdin(&cfg, &["token", "info", "-"], Some(&t));
    assert!(stdout(&o).contains("status:  expired"), "{}", show(&o));
    p.stop().await;
}

async fn health(p: &Proxy) -> Value {
    get(&p.url("/healthz"), &[]).await.json()
}

/// Polls `/healthz` at `url` until it reports a failed reload; gives its detailed answer, as a token with `api:read`
/// (`admin`) sees it. Anonymous callers see the status and the generations only.
async fn until_degraded(url: &str, admin: &str, what: &str) -> Value {
    let auth = format!("Bearer {admin}");
    let (h, _) = poll!(what, {
        let h = get(url, &[("authorization", &auth)]).await.json();
        if h["status"] == "degraded" {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    });
    let anonymous = get(url, &[]).await.json();
    assert_eq!(anonymous["status"], "degraded");
    let keys: Vec<&String> = anonymous.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["config_generation", "status", "tokens_generation"],
        "anonymous /healthz shows more: {anonymous}"
    );
    h
}

/// `/healthz` as a token with `api:read` sees it.
async fn details(p: &Proxy, admin: &str) -> Value {
    get(&p.url("/healthz"), &[("authorization", &format!("Bearer {admin}"))]).await.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_a_corrupt_tokens_file_keeps_the_old_tokens_and_shows_in_healthz() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    let t = create(&cfg, "steady", "bob", "conda:download", &[]);
    let admin = create(&cfg, "ops", "alice", "api:read", &[]);
    let file = tokens_file(&demo);
    let good = std::fs::read_to_string(&file).unwrap();
    let p = Proxy::start(demo.config()).await;
    let url = repodata_url(&p.url(""), &t, "mychan");
    assert_eq!(get(&url, &[]).await.status, 200);
    assert_eq!(health(&p).await["status"], "ok");

    // Not TOML at all.
    std::fs::write(&file, "[[token]\nname = \n").unwrap();
    let h = until_degraded(&p.url("/healthz"), &admin, "/healthz to report the failed reload").await;
    let e = h["tokens_error"].as_str().unwrap_or_default();
    assert!(e.contains("tokens.toml"), "the error does not name the file: {h}");
    assert_eq!(h["config_error"], Value::Null, "{h}");
    assert_eq!(get(&url, &[]).await.status, 200, "the old tokens must keep working");
    // Still ready: the process serves, with the tokens it had.
    let g = get(&p.url("/readyz"), &[]).await;
    assert_eq!(g.status, 200, "{}", g.text());

    // Valid TOML, invalid value: the key at fault is named.
    let bad_scope = good.replace("\"conda:download\"", "\"conda:upload\"");
    assert_ne!(bad_scope, good);
    std::fs::write(&file, &bad_scope).unwrap();
    poll!("/healthz to name the key at fault", {
        let h = details(&p, &admin).await;
        let e = h["tokens_error"].as_str().unwrap_or_default().to_owned();
        if e.contains("token[0].scopes") {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });
    assert_eq!(get(&url, &[]).await.status, 200, "the old tokens must keep working");

    // A good file clears it, and takes effect: restore it with a second token added.
    std::fs::write(&file, &good).unwrap();
    poll!("/healthz to recover", {
        let h = health(&p).await;
        if h["status"] == "ok" {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });
    assert_eq!(get(&p.url("/readyz"), &[]).await.status, 200);
    let t2 = create(&cfg, "after", "bob", "conda:download", &[]);
    let url2 = repodata_url(&p.url(""), &t2, "mychan");
    poll!("the token created after recovery to work", {
        let g = get(&url2, &[]).await;
        if g.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", g.status, g.text()))
        }
    });
    assert_eq!(get(&url, &[]).await.status, 200);
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// The real binary: SIGHUP and SIGTERM
// ---------------------------------------------------------------------------------------------------------------

/// `condagate serve` as a child process; killed when dropped.
struct Served {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Served {
    fn start(demo: &Demo) -> Served {
        let log = demo.path().join("serve.log");
        let mut child = bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(demo.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            while let Some(Ok(l)) = lines.next() {
                if let Some(a) = l.strip_prefix("condagate listening on http://") {
                    let _ = tx.send(a.to_owned());
                }
            }
        });
        let mut served = Served { child, addr: String::new(), log };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => served.addr = a,
            Err(_) => panic!("`condagate serve` did not say where it listens\n{}", served.log_text()),
        }
        served
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_refuses_a_broken_one() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    let zed = create(&cfg, "zed-ci", "zed", "conda:download", &[]);
    let admin = create(&cfg, "ops", "alice", "api:read", &[]);
    let s = Served::start(&demo);
    let anon = s.url("/pubchan/noarch/repodata.json");
    let zed_url = repodata_url(&s.url(""), &zed, "mychan");
    assert_eq!(get(&anon, &[]).await.status, 200, "{}", s.log_text());
    assert_eq!(get(&zed_url, &[]).await.status, 403);

    // pubchan becomes private and zed joins eng.
    let original = std::fs::read_to_string(&cfg).unwrap();
    let changed = original
        .replace("name = \"pubchan\"\naccess = \"public\"", "name = \"pubchan\"\naccess = \"private\"")
        .replace("members = [\"bob\", \"carol\"]", "members = [\"bob\", \"carol\", \"zed\"]");
    assert_eq!(changed.matches("zed").count() + changed.matches("\"private\"").count(), 3, "the edit did not apply");
    std::fs::write(&cfg, &changed).unwrap();
    // Nothing changes before the signal (the config file is not watched): check once, then signal.
    assert_eq!(get(&anon, &[]).await.status, 200);
    s.signal("HUP");
    let (_, took) = poll!("SIGHUP to make pubchan private", {
        let g = get(&anon, &[]).await;
        if g.status == 401 {
            Ok(())
        } else {
            Err(format!("{} {}", g.status, g.text()))
        }
    });
    eprintln!("SIGHUP reload seen after {took:?}");
    let g = get(&zed_url, &[]).await;
    assert_eq!(g.status, 200, "zed joined eng but is refused: {}", g.text());
    assert!(g.text().contains("alpha-1.0-0.tar.bz2") && !g.text().contains("secretpkg"), "{}", g.text());
    assert_eq!(get(&s.url("/healthz"), &[]).await.json()["status"], "ok");

    // A broken config is refused: the previous state keeps serving and /healthz says why, with the key.
    std::fs::write(
        &cfg,
        changed.replace(
            "access = \"private\"\n\n[[channels]]\nname = \"authchan\"",
            "access = \"publik\"\n\n[[channels]]\nname = \"authchan\"",
        ),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&cfg).unwrap().contains("publik"), "the edit did not apply");
    s.signal("HUP");
    let h = until_degraded(&s.url("/healthz"), &admin, "/healthz to report the refused reload").await;
    let e = h["config_error"].as_str().unwrap_or_default();
    assert!(e.contains("channels[1].access: \"publik\" is not one of public, authenticated, private"), "{h}");
    assert_eq!(get(&anon, &[]).await.status, 401, "the old (private pubchan) state must keep serving");
    assert_eq!(get(&zed_url, &[]).await.status, 200, "the old state must keep serving");
    assert!(s.log_text().contains("publik"), "the failure was not logged:\n{}", s.log_text());

    // The original file back: public again, zed out, healthy.
    std::fs::write(&cfg, &original).unwrap();
    s.signal("HUP");
    poll!("SIGHUP to restore the original state", {
        let h = get(&s.url("/healthz"), &[]).await.json();
        let g = get(&anon, &[]).await;
        if h["status"] == "ok" && g.status == 200 {
            Ok(())
        } else {
            Err(format!("{h} / {}", g.status))
        }
    });
    assert_eq!(get(&zed_url, &[]).await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_with_exit_code_zero() {
    let demo = Demo::new();
    let mut s = Served::start(&demo);
    assert_eq!(get(&s.url("/healthz"), &[]).await.status, 200);
    s.signal("TERM");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the server did not exit after SIGTERM\n{}", s.log_text());
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(status.code(), Some(0), "{}", s.log_text());
    assert!(s.log_text().contains("shutting down"), "{}", s.log_text());
}

// ---------------------------------------------------------------------------------------------------------------
// Admin API
// ---------------------------------------------------------------------------------------------------------------

/// One admin operation of the table, with the status it answers when allowed.
struct Op {
    label: &'static str,
    method: &'static str,
    /// Path below `/api`; `{row}` is replaced by the row's index.
    path: &'static str,
    body: Option<fn(usize) -> Value>,
    ok: u16,
}

const OPS: &[Op] = &[
    Op { label: "whoami", method: "GET", path: "/user", body: None, ok: 200 },
    Op { label: "token info", method: "GET", path: "/authentication", body: None, ok: 200 },
    Op { label: "list tokens", method: "GET", path: "/authentications", body: None, ok: 200 },
    Op {
        label: "create token",
        method: "POST",
        path: "/authentications",
        body: Some(|row| json!({"note": format!("made-{row}"), "scopes": ["api:write"], "max-age": 600})),
        ok: 200,
    },
    Op { label: "revoke token", method: "DELETE", path: "/authentications/name/victim-{row}", body: None, ok: 201 },
    Op { label: "list channels", method: "GET", path: "/channels", body: None, ok: 200 },
    Op { label: "explain", method: "GET", path: "/explain", body: None, ok: 200 },
    Op { label: "add member", method: "PUT", path: "/channels/mychan/groups/eng/members/zed", body: None, ok: 200 },
    Op {
        label: "remove member",
        method: "DELETE",
        path: "/channels/mychan/groups/eng/members/zed",
        body: None,
        ok: 200,
    },
];

/// For each scope, exactly the operations it allows (written out, not derived from the code under test).
const TABLE: &[(&str, &[&str])] = &[
    ("api:read", &["whoami", "token info", "list tokens", "list channels", "explain"]),
    ("api:write", &["whoami", "token info", "create token", "revoke token"]),
    ("api:modify-group", &["whoami", "token info", "add member", "remove member"]),
    (
        "api",
        &[
            "whoami",
            "token info",
            "list tokens",
            "create token",
            "revoke token",
            "list channels",
            "explain",
            "add member",
            "remove member",
        ],
    ),
    (
        "all",
        &[
            "whoami",
            "token info",
            "list tokens",
            "create token",
            "revoke token",
            "list channels",
            "explain",
            "add member",
            "remove member",
        ],
    ),
    ("conda:download", &["whoami", "token info"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_each_scope_allows_exactly_its_operations() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    let mut tokens = Vec::new();
    for (row, (scope, _)) in TABLE.iter().enumerate() {
        tokens.push(create(&cfg, &format!("scope-{row}"), "alice", scope, &[]));
        create(&cfg, &format!("victim-{row}"), "alice", "conda:download", &[]);
    }
    let p = Proxy::start(demo.config()).await;
    let mut failures = Vec::new();
    for (row, (scope, allowed)) in TABLE.iter().enumerate() {
        for op in OPS {
            let url = p.url(&format!("/api{}", op.path.replace("{row}", &row.to_string())));
            let g = api(op.method, &url, Some(&tokens[row]), op.body.map(|b| b(row))).await;
            let want_ok = allowed.contains(&op.label);
            let good = if want_ok {
                g.status.as_u16() == op.ok
            } else {
                g.status == 403
                    && serde_json::from_slice::<Value>(&g.body)
                        .is_ok_and(|v| v["error"].as_str().is_some_and(|e| e.contains("scope")))
            };
            if !good {
                failures.push(format!(
                    "{scope:>16} {:<14} {} {}: expected {}, got {} {}",
                    op.label,
                    op.method,
                    op.path,
                    if want_ok { op.ok.to_string() } else { "403 {\"error\": …scope…}".into() },
                    g.status,
                    g.text()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "scope gates differ from the table:\n{}", failures.join("\n"));

    // The side effects match: exactly the allowed rows revoked their victim and created a token.
    let records = file::load(&tokens_file(&demo)).unwrap();
    for (row, (scope, allowed)) in TABLE.iter().enumerate() {
        let victim = records.iter().find(|r| *r.name == *format!("victim-{row}")).unwrap();
        assert_eq!(victim.revoked.is_some(), allowed.contains(&"revoke token"), "{scope}: victim-{row}");
        let made = records.iter().any(|r| *r.name == *format!("made-{row}"));
        assert_eq!(made, allowed.contains(&"create token"), "{scope}: made-{row}");
    }
    // The last allowed row removed zed again: the group is as it started.
    let eng = demo.config().groups.into_iter().find(|g| g.name == "eng").unwrap();
    assert_eq!(eng.members, ["bob", "carol"]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_users_see_and_revoke_only_their_own_tokens() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    let alice = create(&cfg, "alice-admin", "alice", "api", &[]);
    let alice_dl = create(&cfg, "shared-name", "alice", "conda:download", &[]);
    let bob = create(&cfg, "bob-admin", "bob", "api", &[]);
    create(&cfg, "shared-name", "bob", "conda:download", &[]);
    let gone = create(&cfg, "bob-gone", "bob", "conda:download", &[]);
    assert_ok(&cli(&cfg, &["token", "revoke", "bob-gone"]));
    let p = Proxy::start(demo.config()).await;

    let names = |g: &Got| -> Vec<String> {
        assert_eq!(g.status, 200, "{}", g.text());
        g.json().as_array().unwrap().iter().map(|r| r["application"].as_str().unwrap().to_owned()).collect()
    };
    let g = api("GET", &p.url("/api/authentications"), Some(&bob), None).await;
    assert_eq!(names(&g), ["bob-admin", "shared-name"], "bob's list (revoked ones left out)");
    let all = [alice.clone(), alice_dl.clone(), bob.clone(), gone];
    assert!(count_occurrences(&g.text(), &all).is_empty(), "the list holds a secret: {}", g.text());
    for r in g.json().as_array().unwrap() {
        assert_eq!(r["user"], "bob");
        assert!(r.get("token").is_none(), "{r}");
        for k in ["id", "application", "remote_addr", "hostname", "expires", "scopes"] {
            assert!(r.get(k).is_some(), "anaconda-client reads {k}: {r}");
        }
    }
    let g = api("GET", &p.url("/api/authentications"), Some(&alice), None).await;
    assert_eq!(names(&g), ["alice-admin", "shared-name"]);

    // bob cannot revoke alice's token by name: 404, and it keeps working.
    let g = api("DELETE", &p.url("/api/authentications/name/alice-admin"), Some(&bob), None).await;
    assert_eq!(g.status, 404, "{}", g.text());
    assert!(api_error(&g).contains("no active token named \"alice-admin\""), "{}", g.text());
    assert_eq!(api("GET", &p.url("/api/user"), Some(&alice), None).await.status, 200);
    // A name both have: bob's revoke takes his own only.
    let g = api("DELETE", &p.url("/api/authentications/name/shared-name"), Some(&bob), None).await;
    assert_eq!(g.status, 201, "{}", g.text());
    let records = file::load(&tokens_file(&demo)).unwrap();
    let shared: Vec<(&str, bool)> =
        records.iter().filter(|r| &*r.name == "shared-name").map(|r| (&*r.user, r.revoked.is_some())).collect();
    assert_eq!(shared, [("alice", false), ("bob", true)]);
    assert_eq!(get(&repodata_url(&p.url(""), &alice_dl, "mychan"), &[]).await.status, 200);

    // bob is no owner of mychan: his api token cannot change its groups.
    let g = api("PUT", &p.url("/api/channels/mychan/groups/eng/members/zed"), Some(&bob), None).await;
    assert_eq!(g.status, 403, "{}", g.text());
    assert!(api_error(&g).contains("only the owners of \"mychan\""), "{}", g.text());
    // ... and sees no channel of his own.
    let g = api("GET", &p.url("/api/channels"), Some(&bob), None).await;
    assert_eq!(g.json(), json!([]));
    // A token creates tokens for its own user only.
    let g = api(
        "POST",
        &p.url("/api/authentications"),
        Some(&bob),
        Some(json!({"note": "x", "scopes": ["api:read"], "user": "alice"})),
    )
    .await;
    assert_eq!(g.status, 403, "{}", g.text());
    api_error(&g);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_creates_no_token_broader_than_its_caller() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    let writer = create(&cfg, "writer", "alice", "api:write", &[]);
    let admin = create(&cfg, "admin", "alice", "api conda:download", &[]);
    let p = Proxy::start(demo.config()).await;
    let post = |token: String, body: Value| {
        let url = p.url("/api/authentications");
        async move { api("POST", &url, Some(&token), Some(body)).await }
    };
    for (scopes, refused) in [
        (json!(["all"]), "all"),
        (json!(["api"]), "api"),
        (json!(["api:read"]), "api:read"),
        (json!(["conda:download"]), "conda:download"),
        (json!(["api:write", "repos"]), "repos"),
    ] {
        let g = post(writer.clone(), json!({"note": "wider", "scopes": scopes})).await;
        assert_eq!(g.status, 403, "{scopes}: {}", g.text());
        assert!(api_error(&g).contains(&format!("cannot grant the {refused} scope")), "{}", g.text());
    }
    let g = post(admin.clone(), json!({"note": "wider", "scopes": ["all"]})).await;
    assert_eq!(g.status, 403, "{}", g.text());
    assert!(
        !file::load(&tokens_file(&demo)).unwrap().iter().any(|r| &*r.name == "wider"),
        "a refused create was stored"
    );

    // Unknown scopes, no scope, no name, a duplicate name: 400 with a reason.
    let g = post(admin.clone(), json!({"note": "n", "scopes": ["conda:upload"]})).await;
    assert_eq!(g.status, 400, "{}", g.text());
    assert!(api_error(&g).contains("valid scopes: all, repos"), "{}", g.text());
    let g = post(admin.clone(), json!({"note": "n", "scopes": []})).await;
    assert_eq!(g.status, 400, "{}", g.text());
    let g = post(admin.clone(), json!({"scopes": ["api:read"]})).await;
    assert_eq!(g.status, 400, "{}", g.text());
    let g = post(admin.clone(), json!({"note": "admin", "scopes": ["api:read"]})).await;
    assert_eq!(g.status, 400, "{}", g.text());
    assert!(api_error(&g).contains("already has a token named \"admin\""), "{}", g.text());

    // A narrower token is created, works at once, and expires as asked.
    let g =
        post(admin.clone(), json!({"note": "narrow", "scopes": ["conda:download", "api:read"], "max-age": 3600})).await;
    assert_eq!(g.status, 200, "{}", g.text());
    let v = g.json();
    let t = v["token"].as_str().unwrap().to_owned();
    assert!(is_token(&t), "{v}");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["scopes"], json!(["conda:download", "api:read"]));
    let expires =
        time::OffsetDateTime::parse(v["expires"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::minutes(50) && left <= time::Duration::hours(1), "expires in {left}");
    assert_eq!(get(&repodata_url(&p.url(""), &t, "mychan"), &[]).await.status, 200);
    assert_eq!(api("GET", &p.url("/api/authentications"), Some(&t), None).await.status, 200);
    assert_eq!(api("DELETE", &p.url("/api/authentications/name/admin"), Some(&t), None).await.status, 403);
    let file = std::fs::read_to_string(tokens_file(&demo)).unwrap();
    assert!(!file.contains(&t), "the tokens file holds the new secret");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_anonymous_endpoints_errors_and_base_path() {
    let demo = Demo::with("[upstream]\ndir = \"channels\"", "base_path = \"/conda\"");
    let t = create(&demo.config_path(), "t", "alice", "api:read", &[]);
    let p = Proxy::start(demo.config()).await;

    let g = api("GET", &p.url("/conda/api/authentication-type"), None, None).await;
    assert_eq!((g.status.as_u16(), g.json()), (200, json!({"authentication_type": "kerberos"})));
    let g = api("GET", &p.url("/conda/api/scopes"), None, None).await;
    assert_eq!(g.status, 200);
    let scopes = g.json();
    for s in ["all", "api", "api:read", "api:write", "api:modify-group", "conda:download"] {
        assert!(scopes[s].is_string(), "/scopes lacks {s}: {scopes}");
    }

    for (method, path) in
        [("GET", "/conda/api/authentications"), ("GET", "/conda/api/user"), ("POST", "/conda/api/authentications")]
    {
        let g = api(method, &p.url(path), None, None).await;
        assert_eq!(g.status, 401, "{method} {path}: {}", g.text());
        assert!(api_error(&g).contains("authentication required"), "{}", g.text());
    }
    let g = api("GET", &p.url("/conda/api/user"), Some("cg-notatoken"), None).await;
    assert_eq!(g.status, 401);
    assert!(api_error(&g).contains("invalid"), "{}", g.text());

    // Bearer works as well as `token`; the user endpoint says who.
    let g = get(&p.url("/conda/api/user"), &[("authorization", &format!("Bearer {t}"))]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    assert_eq!(g.json()["login"], "alice");
    assert!(g.json()["created_at"].is_string(), "{}", g.text());
    let g = api("GET", &p.url("/conda/api/authentication"), Some(&t), None).await;
    assert_eq!(g.json()["application"], "t");

    let g = api("GET", &p.url("/conda/api/nothing-here"), Some(&t), None).await;
    assert_eq!(g.status, 404);
    api_error(&g);
    let g = api("PATCH", &p.url("/conda/api/authentications"), Some(&t), None).await;
    assert_eq!(g.status, 405);
    api_error(&g);
    // Outside the base path there is no API.
    assert_eq!(api("GET", &p.url("/api/authentication-type"), None, None).await.status, 404);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_group_changes_persist_and_take_effect_at_once() {
    let demo = Demo::new();
    let cfg = demo.config_path();
    // A comment in the file, to check that a change keeps it.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[[groups]]\nname = \"eng\"", "# engineering\n[[groups]]\nname = \"eng\"");
    std::fs::write(&cfg, text).unwrap();
    let alice = create(&cfg, "owner", "alice", "api:modify-group", &[]);
    let zed = create(&cfg, "zed", "zed", "conda:download", &[]);
    let bob = create(&cfg, "bob", "bob", "conda:download", &[]);
    let p = Proxy::start(demo.config()).await;
    let zed_url = repodata_url(&p.url(""), &zed, "mychan");
    assert_eq!(get(&zed_url, &[]).await.status, 403);

    let g = api("PUT", &p.url("/api/channels/mychan/groups/eng/members/zed"), Some(&alice), None).await;
    assert_eq!(g.status, 200, "{}", g.text());
    // At once: no polling.
    let g = get(&zed_url, &[]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    assert!(g.text().contains("alpha-1.0-0.tar.bz2") && !g.text().contains("secretpkg"), "{}", g.text());
    let file = std::fs::read_to_string(&cfg).unwrap();
    assert!(file.contains("# engineering"), "the change lost the comment:\n{file}");
    let eng = Config::load(&cfg).unwrap().groups.into_iter().find(|g| g.name == "eng").unwrap();
    assert_eq!(eng.members, ["bob", "carol", "zed"]);
    // Adding twice is a no-op.
    assert_eq!(api("PUT", &p.url("/api/channels/mychan/groups/eng/members/zed"), Some(&alice), None).await.status, 200);
    assert_eq!(Config::load(&cfg).unwrap().groups[0].members, ["bob", "carol", "zed"]);

    // Packages too: secretpkg for eng.
    let bob_url = repodata_url(&p.url(""), &bob, "mychan");
    assert!(!get(&bob_url, &[]).await.text().contains("secretpkg"));
    let g = api("PUT", &p.url("/api/channels/mychan/groups/eng/packages/secretpkg"), Some(&alice), None).await;
    assert_eq!(g.status, 200, "{}", g.text());
    assert!(get(&bob_url, &[]).await.text().contains("secretpkg-1.0-0.conda"));
    assert_eq!(Config::load(&cfg).unwrap().groups[0].packages.patterns, ["alpha", "beta*", "secretpkg"]);

    // A change that would break the file is refused and nothing is written; an unknown group is 404.
    let before = std::fs::read(&cfg).unwrap();
    let g = api("PUT", &p.url("/api/channels/mychan/groups/eng/packages/%5Boops"), Some(&alice), None).await;
    assert_eq!(g.status, 400, "{}", g.text());
    assert!(api_error(&g).contains("invalid"), "{}", g.text());
    let g = api("PUT", &p.url("/api/channels/mychan/groups/nogroup/members/zed"), Some(&alice), None).await;
    assert_eq!(g.status, 404, "{}", g.text());
    api_error(&g);
    assert_eq!(std::fs::read(&cfg).unwrap(), before);

    // Removal also persists and takes effect at once.
    let g = api("DELETE", &p.url("/api/channels/mychan/groups/eng/members/zed"), Some(&alice), None).await;
    assert_eq!(g.status, 200, "{}", g.text());
    assert_eq!(get(&zed_url, &[]).await.status, 403);
    assert_eq!(Config::load(&cfg).unwrap().groups[0].members, ["bob", "carol"]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_counts_completed_downloads_per_package_for_owners_only() {
    let demo = Demo::new();
    let bob = demo.token("bob-dl", "bob", "conda:download api:read");
    let alice = demo.token("alice-admin", "alice", "api:read");
    let p = Proxy::start(demo.config()).await;
    let url = p.url(&format!("/t/{bob}/mychan/noarch/alpha-1.0-0.tar.bz2"));
    for _ in 0..2 {
        assert_eq!(get(&url, &[]).await.status, 200);
    }
    // Neither a HEAD nor a refused download is a download.
    assert_eq!(request("HEAD", &url, &[]).await.status, 200);
    assert_eq!(get(&p.url(&format!("/t/{bob}/mychan/noarch/secretpkg-1.0-0.conda")), &[]).await.status, 404);
    let downloads = p.url("/api/downloads");
    let want = serde_json::json!([{"channel": "mychan", "package": "alpha", "downloads": 2}]);
    // The count is taken when the response body ends, just after the client has it: poll briefly.
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = api("GET", &downloads, Some(&alice), None).await.json();
        if seen == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, want);
    // bob owns no channel: he sees no counts, not even of his own downloads.
    assert_eq!(api("GET", &downloads, Some(&bob), None).await.json(), serde_json::json!([]));
    p.stop().await;
}
