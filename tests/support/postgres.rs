//! A throwaway PostgreSQL cluster for one test, from Debian's `postgresql` package: `initdb` in a temporary folder
//! owned by the `postgres` user (initdb refuses to run as root), a server on a free loopback port with its socket in
//! that folder, trust authentication, and a `condagate` role owning a `condagate` database. Dropping it stops the
//! server at once; the folder goes with the `TempDir`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("the free port's address").port()
}

/// Runs `program` (one of the cluster's binaries) as the `postgres` user.
fn as_postgres(program: &Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} through runuser: {e}", program.display()))
}

impl Postgres {
    /// Whether the binaries exist on this machine.
    pub fn available() -> bool {
        bin_dir().is_some()
    }

    /// Starts a fresh cluster and waits until it accepts connections.
    pub fn start() -> Postgres {
        let bin = bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed: these tests need Debian's postgresql package \
                 (apt-get install postgresql; scripts/test installs it), or CONDAGATE_SKIP_POSTGRES=1 to skip them"
            )
        });
        let dir = tempfile::tempdir().expect("a temporary folder for the cluster");
        let chown = Command::new("chown").arg("postgres").arg(dir.path()).status().expect("run chown");
        assert!(chown.success(), "chown postgres {} failed", dir.path().display());
        let data = dir.path().join("data");
        let out = as_postgres(
            &bin.join("initdb"),
            &["-D", data.to_str().unwrap(), "--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
        );
        assert!(out.status.success(), "initdb failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let pg = Postgres { dir, bin, port: free_port() };
        pg.run_server();
        pg.admin_sql("CREATE ROLE condagate LOGIN SUPERUSER");
        pg.admin_sql("CREATE DATABASE condagate OWNER condagate");
        pg
    }

    fn run_server(&self) {
        let opts =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &opts, "-w", "-t", "30", "start"],
        );
        assert!(out.status.success(), "pg_ctl start failed:\n{}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let port = self.port.to_string();
            let ready = as_postgres(&self.bin.join("pg_isready"), &["-h", "127.0.0.1", "-p", &port]);
            if ready.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not accept connections within 30 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn admin_sql(&self, sql: &str) {
        let port = self.port.to_string();
        let out = as_postgres(
            &self.bin.join("psql"),
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql],
        );
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `postgresql://condagate@127.0.0.1:PORT/condagate`
    pub fn url(&self) -> String {
        format!("postgresql://condagate@127.0.0.1:{}/condagate", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server, keeping the data.
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        let out = as_postgres(&self.bin.join("pg_ctl"), &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        self.run_server();
    }

    /// Runs SQL as `condagate` on its database; the trimmed output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let out = as_postgres(
            &self.bin.join("psql"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "condagate",
                "-d",
                "condagate",
                "-v",
                "ON_ERROR_STOP=1",
                "-tA",
                "-c",
                sql,
            ],
        );
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&self.bin.join("pg_ctl"), &["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"]);
    }
}
