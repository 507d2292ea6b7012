//! Several replicas on one real PostgreSQL: each test starts its own throwaway cluster (`support::postgres`, from
//! Debian's `postgresql` package; `scripts/test` installs it) and two or three condagate servers on it. Without the
//! binaries these tests fail saying what to install, unless `CONDAGATE_SKIP_POSTGRES=1` is set: then each reports
//! itself skipped.
//!
//! Set-up as an ops team would do it: `condagate store migrate`, then `condagate store import --groups-from` the
//! demo's file-mode configuration (groups `eng` = bob, carol → alpha, beta* of `mychan`; `dev-testers`), then tokens
//! made with `condagate token create` against the database.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use support::postgres::Postgres;
use support::*;

/// How long a change may take to reach another replica before the test fails (the goal is well under a second).
const PROPAGATION: Duration = Duration::from_secs(5);

/// A cluster, migrated and holding the demo's groups, and a folder with the channels and a postgres-mode config.
struct Site {
    pg: Postgres,
    demo: Demo,
    config: String,
}

fn postgres_config(url: &str, extra_tokens: &str) -> String {
    let file_mode = demo_config_text("[upstream]\ndir = \"channels\"", "");
    // The demo's channels, without its [[groups]] (they live in the database) and with the store.
    let channels = &file_mode[file_mode.find("[[channels]]").unwrap()..file_mode.find("[[groups]]").unwrap()];
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[tokens]\npostgres = \"{url}\"\nmax_stale = \"3s\"\nresync_interval = \
         \"1s\"\n{extra_tokens}\n\n[upstream]\ndir = \"channels\"\n\n{channels}"
    )
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_condagate")).args(args).output().expect("run the condagate binary");
    assert!(
        out.status.success(),
        "condagate {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh cluster; `None` (the test reported as skipped) only when the binaries are missing and
/// `CONDAGATE_SKIP_POSTGRES=1` asks for a skip. Missing binaries without it fail the test, saying what to install.
fn postgres_or_skip() -> Option<Postgres> {
    if !Postgres::available() && std::env::var("CONDAGATE_SKIP_POSTGRES").as_deref() == Ok("1") {
        report_skip("PostgreSQL binaries missing and CONDAGATE_SKIP_POSTGRES=1");
        return None;
    }
    Some(Postgres::start())
}

impl Site {
    fn start() -> Option<Site> {
        let pg = postgres_or_skip()?;
        let demo = Demo::new();
        std::fs::write(demo.path().join("old.toml"), demo_config_text("[upstream]\ndir = \"channels\"", "")).unwrap();
        std::fs::write(demo.config_path(), postgres_config(&pg.url(), "")).unwrap();
        let config = demo.config_path().to_str().unwrap().to_owned();
        let site = Site { pg, demo, config };
        let migrated = cli(&["store", "migrate", "--config", &site.config]);
        assert!(migrated.contains("from version 0 to 1"), "{migrated}");
        let again = cli(&["store", "migrate", "--config", &site.config]);
        assert!(again.contains("nothing to do"), "{again}");
        let old = site.demo.path().join("old.toml");
        let imported = cli(&["store", "import", "--config", &site.config, "--groups-from", old.to_str().unwrap()]);
        assert!(imported.contains("2 group(s)"), "{imported}");
        // Importing again changes nothing.
        cli(&["store", "import", "--config", &site.config, "--groups-from", old.to_str().unwrap()]);
        assert_eq!(site.pg.psql("SELECT count(*) FROM condagate_groups"), "2");
        Some(site)
    }

    /// A token made by the CLI against the database; its secret.
    fn token(&self, name: &str, user: &str, scopes: &str) -> String {
        let out =
            cli(&["token", "create", "--config", &self.config, "--name", name, "--user", user, "--scopes", scopes]);
        out.lines().last().unwrap().trim().to_owned()
    }

    async fn replica(&self) -> Proxy {
        Proxy::start(self.demo.config()).await
    }
}

/// Polls `url` with `headers` until it answers `status`; returns how long that took.
async fn until_status(url: &str, headers: &[(&str, &str)], status: u16, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let got = get(url, headers).await;
        if got.status.as_u16() == status {
            return started.elapsed();
        }
        assert!(started.elapsed() < PROPAGATION, "{what}: still {} after {PROPAGATION:?}: {}", got.status, got.text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn package_names(repodata: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = ["packages", "packages.conda"]
        .iter()
        .flat_map(|k| repodata[*k].as_object().into_iter().flatten())
        .filter_map(|(_, r)| r["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_is_in_force_on_the_others() {
    let Some(site) = Site::start() else { return };
    let bob_api = site.token("bob-api", "bob", "api conda:download");
    let alice_api = site.token("alice-api", "alice", "api");
    let (a, b) = (site.replica().await, site.replica().await);

    // Created through A, accepted by B.
    let made = api_call(
        "POST",
        &a.url("/api/authentications"),
        &bob_api,
        Some(json!({"name": "ci", "scopes": ["conda:download"]})),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.text());
    let ci = made.json()["token"].as_str().unwrap().to_owned();
    let on_b = b.url(&format!("/t/{ci}/mychan/linux-64/repodata.json"));
    let took = until_status(&on_b, &[], 200, "a token created on A, used on B").await;
    eprintln!("create on A → accepted by B: {took:?}");

    // bob sees only what group eng grants (alpha, beta*): not gamma.
    let before = package_names(&get(&on_b, &[]).await.json());
    assert!(!before.contains(&"gamma".to_owned()), "{before:?}");

    // Revoked through B, refused by A.
    let on_a = a.url(&format!("/t/{ci}/mychan/linux-64/repodata.json"));
    assert_eq!(get(&on_a, &[]).await.status, 200);
    let revoked = api_call("DELETE", &b.url("/api/authentications/name/ci"), &bob_api, None).await;
    assert_eq!(revoked.status, 201, "{}", revoked.text());
    let took = until_status(&on_a, &[], 401, "a token revoked on B, used on A").await;
    eprintln!("revoke on B → refused by A: {took:?}");

    // A group edit on A (alice owns mychan) changes bob's view on B.
    let bob_view = site.token("bob-view", "bob", "conda:download");
    let view_on_b = b.url(&format!("/t/{bob_view}/mychan/linux-64/repodata.json"));
    until_status(&view_on_b, &[], 200, "a CLI-made token on B").await;
    let edit = api_call("PUT", &a.url("/api/channels/mychan/groups/eng/packages/gamma"), &alice_api, None).await;
    assert_eq!(edit.status, 200, "{}", edit.text());
    let started = Instant::now();
    loop {
        let names = package_names(&get(&view_on_b, &[]).await.json());
        if names.contains(&"gamma".to_owned()) {
            break;
        }
        assert!(started.elapsed() < PROPAGATION, "B's view never showed gamma after the group edit on A: {names:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("group edit on A → B's view: {:?}", started.elapsed());
    let gamma = b.url(&format!("/t/{bob_view}/mychan/linux-64/gamma-1.0-0.tar.bz2"));
    assert_eq!(get(&gamma, &[]).await.status, 200);

    // Explain, list, info and revoke, against the database.
    let explained = cli(&["explain", "--config", &site.config, "--user", "bob", "--channel", "mychan"]);
    assert!(explained.contains("gamma"), "{explained}");
    let listed = cli(&["token", "list", "--config", &site.config, "--user", "bob"]);
    assert!(listed.contains("bob-view") && listed.contains("revoked"), "{listed}");
    let info = cli(&["token", "info", "--config", &site.config, &bob_view]);
    assert!(info.contains("bob-view") && info.contains("active"), "{info}");
    cli(&["token", "revoke", "--config", &site.config, "bob-view", "--user", "bob"]);
    until_status(&view_on_b, &[], 401, "a token revoked by the CLI, used on B").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_another_version_is_refused_naming_both_versions() {
    let Some(pg) = postgres_or_skip() else { return };
    let demo = Demo::new();
    std::fs::write(demo.config_path(), postgres_config(&pg.url(), "")).unwrap();
    let err = match condagate::Server::new(demo.config()).await {
        Ok(_) => panic!("an unmigrated database was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("version 0") && err.contains("this condagate's 1") && err.contains("store migrate"), "{err}");
    cli(&["store", "migrate", "--config", demo.config_path().to_str().unwrap()]);
    pg.psql("UPDATE condagate_schema SET version = 99");
    let err = match condagate::Server::new(demo.config()).await {
        Ok(_) => panic!("a newer schema was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("version 99") && err.contains("newer") && err.contains("1"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_condagate"))
        .args(["store", "migrate", "--config", demo.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("newer"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_keeps_serving_refuses_writes_then_fails_closed_and_recovers() {
    let Some(site) = Site::start() else { return };
    let bob_api = site.token("bob-api", "bob", "api conda:download");
    let a = site.replica().await;
    let file = a.url(&format!("/t/{bob_api}/mychan/noarch/repodata.json"));
    let auth = format!("Bearer {bob_api}");
    assert_eq!(get(&file, &[]).await.status, 200);

    site.pg.stop();
    // Served from the table held, while it is younger than tokens.max_stale (3 s here).
    assert_eq!(get(&file, &[]).await.status, 200, "a held token was refused at once when the database stopped");
    let write = api_call(
        "POST",
        &a.url("/api/authentications"),
        &bob_api,
        Some(json!({"name": "x", "scopes": ["conda:download"]})),
    )
    .await;
    assert_eq!(write.status, 503, "an admin write with the database down: {}", write.text());
    assert_no_secret_in(&write, &[&bob_api], "an admin write with the database down");
    let health = get(&a.url("/healthz"), &[("authorization", &auth)]).await.json();
    assert!(health["tokens_age_seconds"].as_f64().is_some(), "{health}");

    // Past max_stale: token checks fail closed, anonymous public files still serve, /healthz says why.
    let took = until_status(&file, &[], 503, "a token check once the table is older than max_stale").await;
    eprintln!("stale table refused {took:?} after the first check past the stop");
    assert_problem(&get(&file, &[]).await, 503, &[&bob_api], "a token check on a stale table");
    assert_eq!(get(&a.url("/pubchan/noarch/repodata.json"), &[]).await.status, 200);
    let health = get(&a.url("/healthz"), &[]).await.json();
    assert_eq!(
        (health["status"].as_str(), health["tokens_stale"].as_bool()),
        (Some("degraded"), Some(true)),
        "{health}"
    );

    // The database back: reconnect, resync, serve again, no restart.
    site.pg.restart();
    until_status(&file, &[], 200, "a token check after the database came back").await;
    let write = api_call(
        "POST",
        &a.url("/api/authentications"),
        &bob_api,
        Some(json!({"name": "y", "scopes": ["conda:download"]})),
    )
    .await;
    assert_eq!(write.status, 200, "{}", write.text());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_and_a_missed_notification_are_caught_up() {
    let Some(site) = Site::start() else { return };
    let one = site.token("one", "bob", "conda:download");
    let two = site.token("two", "bob", "conda:download");
    let a = site.replica().await;
    let url = |t: &str| a.url(&format!("/t/{t}/mychan/noarch/repodata.json"));
    until_status(&url(&one), &[], 200, "token one").await;

    // The listening connection killed by the server: the replica reconnects and still hears the next change.
    let killed = site.pg.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'condagate-listen'",
    );
    assert_eq!(killed, "1", "there should be one listening connection");
    site.pg.psql("UPDATE condagate_tokens SET revoked = now() WHERE name = 'one'");
    until_status(&url(&one), &[], 401, "a revocation after the listener was killed").await;

    // A change that notifies no one (the trigger off): the periodic resync (1 s here) still brings it.
    site.pg.psql(
        "ALTER TABLE condagate_tokens DISABLE TRIGGER condagate_tokens_changed; \
         UPDATE condagate_tokens SET revoked = now() WHERE name = 'two'; \
         ALTER TABLE condagate_tokens ENABLE TRIGGER condagate_tokens_changed;",
    );
    until_status(&url(&two), &[], 401, "a revocation that sent no notification").await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_from_three_replicas_lose_nothing() {
    let Some(site) = Site::start() else { return };
    let bob_api = site.token("bob-api", "bob", "api conda:download");
    let replicas = [site.replica().await, site.replica().await, site.replica().await];
    let per = 15;
    let mut tasks = Vec::new();
    for (r, p) in replicas.iter().enumerate() {
        for i in 0..per {
            let (url, token) = (p.url("/api/authentications"), bob_api.clone());
            tasks.push(tokio::spawn(async move {
                let body = json!({"name": format!("r{r}-{i}"), "scopes": ["conda:download"]});
                api_call("POST", &url, &token, Some(body)).await.status.as_u16()
            }));
        }
        // The same name from every replica at once: exactly one may win.
        let (url, token) = (p.url("/api/authentications"), bob_api.clone());
        tasks.push(tokio::spawn(async move {
            api_call("POST", &url, &token, Some(json!({"name": "contested", "scopes": ["conda:download"]})))
                .await
                .status
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 3 * per + 1, "statuses: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 400).count(), 2, "the losing duplicates: {statuses:?}");
    assert_eq!(site.pg.psql("SELECT count(*) FROM condagate_tokens WHERE revoked IS NULL"), (3 * per + 2).to_string());
    // Every replica ends up with every token.
    for p in &replicas {
        let started = Instant::now();
        loop {
            let list = api_call("GET", &p.url("/api/authentications"), &bob_api, None).await.json();
            let n = list.as_array().map_or(0, Vec::len);
            if n == 3 * per + 2 {
                break;
            }
            assert!(started.elapsed() < PROPAGATION, "a replica lists {n} tokens");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for p in replicas {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_counts_and_last_uses_add_up_across_replicas_and_restarts() {
    let Some(site) = Site::start() else { return };
    let alice = site.token("alice-api", "alice", "api conda");
    let (a, b) = (site.replica().await, site.replica().await);
    for p in [&a, &b] {
        let got = get(&p.url(&format!("/t/{alice}/mychan/linux-64/gamma-1.0-0.tar.bz2")), &[]).await;
        assert_eq!(got.status, 200);
    }
    // A stopping replica saves its last batch.
    a.stop().await;
    // The last use of alice's token, saved by the replicas in batches, is listed by any replica (after its next
    // resync: 1 s here).
    let started = Instant::now();
    loop {
        let list = api_call("GET", &b.url("/api/authentications"), &alice, None).await.json();
        let mine =
            list.as_array().into_iter().flatten().find(|t| t["name"] == "alice-api").cloned().unwrap_or_default();
        if mine["last_used"].as_str().is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no last_used for a used token: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(site.pg.psql("SELECT count(*) FROM condagate_token_usage") != "0");
    let started = Instant::now();
    loop {
        let list = api_call("GET", &b.url("/api/downloads"), &alice, None).await.json();
        let n = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["package"] == "gamma")
            .and_then(|e| e["downloads"].as_u64());
        if n == Some(2) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "downloads of gamma: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.stop().await;
}

#[test]
fn groups_in_the_file_are_refused_in_postgres_mode_naming_where_they_live() {
    let dir = tempfile::tempdir().unwrap();
    let text = demo_config_text("[upstream]\ndir = \"channels\"", "")
        .replace("file = \"tokens.toml\"", "postgres = \"postgresql://condagate@127.0.0.1:1/condagate\"");
    let path: PathBuf = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_condagate"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("groups:") && err.contains("live in PostgreSQL") && err.contains("store import"), "{err}");
}
