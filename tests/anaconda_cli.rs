//! The real `anaconda` CLI (PyPI `anaconda-client`, pinned in `support::venv::ANACONDA_CLIENT`) administering tokens through
//! condagate's `/api`: `config --set sites.cg.url`, `auth --list`, `auth --info`, `auth --list-scopes`, `whoami`,
//! `auth --create` (legacy interactive login, kerberos authentication type: it posts with its `-t` token) and
//! `auth --remove`. A token it creates must download through the proxy; a token it removes must stop working.
//!
//! The CLI is installed on first use into `target/anaconda-venv` by `support::venv`. Without `python3` these tests
//! fail with a clear message, unless `CONDAGATE_SKIP_E2E=1` is set: then each prints `SKIPPED: CONDAGATE_SKIP_E2E=1`
//! and passes.
//!
//! Each CLI run gets a private HOME and XDG folders, so no real user configuration is read or written.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use condagate::internals::tokens::file;
use condagate::internals::tokens::Token;
use support::*;

/// Time one CLI run may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// The `anaconda` executable; `None` when these tests are to be skipped.
async fn anaconda_exe() -> Option<PathBuf> {
    let python = venv::python(venv::ANACONDA_CLIENT).await?;
    let exe = python.with_file_name("anaconda");
    assert!(exe.is_file(), "{} has no `anaconda` executable", python.display());
    Some(exe)
}

/// The CLI with a private home, pointed at one proxy as site `cg`.
struct Cli {
    exe: PathBuf,
    home: tempfile::TempDir,
}

/// One finished CLI run.
struct Ran {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Both streams: the CLI logs to stderr and prints errors on stdout.
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    fn context(&self) -> String {
        format!(
            "{}: exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }

    fn ok(self) -> Ran {
        assert_eq!(self.code, Some(0), "the anaconda CLI failed\n{}", self.context());
        self
    }

    fn failed(self) -> Ran {
        assert!(self.code.is_some_and(|c| c != 0), "the anaconda CLI should have failed\n{}", self.context());
        self
    }

    fn has(&self, want: &str) -> &Ran {
        assert!(self.all().contains(want), "the output lacks {want:?}\n{}", self.context());
        self
    }

    fn lacks(&self, unwanted: &str) -> &Ran {
        assert!(!self.all().contains(unwanted), "the output has {unwanted:?}\n{}", self.context());
        self
    }
}

impl Cli {
    /// Sets up a private home and `sites.cg.url` for the proxy at `api_url`.
    async fn new(exe: PathBuf, api_url: &str) -> Cli {
        let cli = Cli { exe, home: tempfile::tempdir().unwrap() };
        cli.run(&["config", "--set", "sites.cg.url", api_url], &[]).await.ok();
        let cfg = cli.home.path().join(".continuum/anaconda-client/config.yaml");
        let text = std::fs::read_to_string(&cfg).unwrap_or_else(|e| panic!("{}: {e}", cfg.display()));
        assert!(text.contains(api_url), "the site was not stored in the private home:\n{text}");
        cli
    }

    async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let home = self.home.path();
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(args)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("NO_COLOR", "1")
            .env("TERM", "dumb")
            .env("COLUMNS", "200")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        for var in [
            "ANACONDA_API_TOKEN",
            "BINSTAR_API_TOKEN",
            "BINSTAR_CONFIG_DIR",
            "CONDA_PREFIX",
            "CONDA_ROOT",
            "ANACONDA_CLIENT_LEGACY_INTERACTIVE_LOGIN",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let what = format!("anaconda {}", args.join(" "));
        let out = tokio::time::timeout(CLI_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish in {CLI_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        Ran {
            what,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `anaconda -s cg -t TOKEN <args>`.
    async fn with_token(&self, token: &str, args: &[&str]) -> Ran {
        let mut all = vec!["-s", "cg", "-t", token];
        all.extend_from_slice(args);
        self.run(&all, &[]).await
    }
}

/// The public id the API shows for a token: the start of its digest.
fn short_id(token: &str) -> String {
    hex::encode(&Token::parse(token).unwrap().digest().0[..6])
}

fn is_token(s: &str) -> bool {
    s.strip_prefix("cg-").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anaconda_cli_lists_creates_and_removes_tokens_through_condagate() {
    let Some(exe) = anaconda_exe().await else { return };
    let demo = Demo::new();
    let admin = demo.token("laptop", "alice", "api conda:download");
    let other = demo.token("bobs", "bob", "api");
    let p = Proxy::start(demo.config()).await;
    let cli = Cli::new(exe, &p.url("/api")).await;

    // auth --list: alice's tokens only, with their ids and scopes, no secret.
    let r = cli.with_token(&admin, &["auth", "--list"]).await.ok();
    r.has("laptop").has(&short_id(&admin)).has("conda:download").has("api").lacks("bobs").lacks(&short_id(&other));
    r.lacks(&admin[3..]).lacks(&other[3..]);

    // auth --info: the token itself.
    cli.with_token(&admin, &["auth", "--info"])
        .await
        .ok()
        .has("Name: laptop")
        .has(&format!("Id: {}", short_id(&admin)));

    // auth --list-scopes: every scope with its description.
    let r = cli.with_token(&admin, &["auth", "--list-scopes"]).await.ok();
    for s in ["all", "api", "api:read", "api:write", "api:modify-group", "conda:download", "Create and revoke tokens"] {
        r.has(s);
    }

    // whoami.
    cli.with_token(&admin, &["whoami"]).await.ok().has("Username: alice").has("Member since:");

    // auth --create posts with the -t token (kerberos authentication type, legacy login) and prints the new token.
    let r = cli
        .run(
            &[
                "-s",
                "cg",
                "-t",
                &admin,
                "auth",
                "--create",
                "--name",
                "ci-made",
                "--scopes",
                "conda:download",
                "--max-age",
                "3600",
            ],
            &[("ANACONDA_CLIENT_LEGACY_INTERACTIVE_LOGIN", "1")],
        )
        .await
        .ok();
    let made = r.stdout.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_default().to_owned();
    assert!(is_token(&made), "auth --create printed no token\n{}", r.context());
    assert_ne!(made, admin);
    let records = file::load(&demo.config().tokens_file).unwrap();
    let rec = records.iter().find(|r| &*r.name == "ci-made").expect("the created token is not in the tokens file");
    assert_eq!(&*rec.user, "alice");
    assert_eq!(rec.scopes.iter().map(|s| s.name()).collect::<Vec<_>>(), ["conda:download"]);
    let left = rec.expires.expect("--max-age gives an expiry") - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::minutes(50) && left <= time::Duration::hours(1), "expires in {left}");
    assert!(!std::fs::read_to_string(&demo.config().tokens_file).unwrap().contains(&made));

    // The new token downloads a package through the proxy.
    let pkg = p.url(&format!("/t/{made}/mychan/noarch/alpha-1.0-0.tar.bz2"));
    let g = get(&pkg, &[]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    let want = std::fs::read(demo.path().join("channels/mychan/noarch/alpha-1.0-0.tar.bz2")).unwrap();
    assert_eq!(g.body.as_ref(), want.as_slice(), "the package bytes differ");
    cli.with_token(&admin, &["auth", "--list"]).await.ok().has("ci-made").has(&short_id(&made));

    // auth --remove: the CLI is satisfied (201), the token is refused by the proxy, and gone from the list.
    cli.with_token(&admin, &["auth", "--remove", "ci-made"]).await.ok().has("Removed token ci-made");
    let start = Instant::now();
    loop {
        let g = get(&pkg, &[]).await;
        if g.status == 401 {
            assert!(g.text().contains("revoked"), "{}", g.text());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the removed token still works: {} {}", g.status, g.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cli.with_token(&admin, &["auth", "--list"]).await.ok().has("laptop").lacks("ci-made");
    // The admin token itself is untouched.
    assert_eq!(get(&p.url(&format!("/t/{admin}/mychan/noarch/repodata.json")), &[]).await.status, 200);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anaconda_cli_shows_condagate_refusals() {
    let Some(exe) = anaconda_exe().await else { return };
    let demo = Demo::new();
    let download_only = demo.token("dl", "bob", "conda:download");
    let writer = demo.token("writer", "alice", "api:write");
    let p = Proxy::start(demo.config()).await;
    let cli = Cli::new(exe, &p.url("/api")).await;

    // A token without api:read cannot list.
    cli.with_token(&download_only, &["auth", "--list"]).await.failed().has("this token lacks the api:read scope");
    // A token cannot create a wider one.
    cli.run(
        &["-s", "cg", "-t", &writer, "auth", "--create", "--name", "wide", "--scopes", "all"],
        &[("ANACONDA_CLIENT_LEGACY_INTERACTIVE_LOGIN", "1")],
    )
    .await
    .failed()
    .has("this token cannot grant the all scope");
    assert!(!file::load(&demo.config().tokens_file).unwrap().iter().any(|r| &*r.name == "wide"));
    // Removing a token the user does not have.
    cli.with_token(&writer, &["auth", "--remove", "dl"]).await.failed().has("no active token named \"dl\"");
    assert!(file::load(&demo.config().tokens_file).unwrap().iter().all(|r| r.revoked.is_none()));
    // An unknown token is an anonymous user to whoami.
    cli.with_token("cg-notatoken", &["whoami"]).await.has("Anonymous User").lacks("Username:");
    p.stop().await;
}
