//! A throwaway PostgreSQL cluster for one test, from Debian's `postgresql` package: `initdb` in a temporary folder
//! owned by the `postgres` user (initdb refuses to run as root, so every binary runs through `runuser`), a server
//! on a free loopback port with its unix socket and log in that folder, trust authentication, and a `condagate`
//! role owning a `condagate` database. Dropping it stops the server at once; the folder goes with the `TempDir`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long any one step (start, stop, readiness) may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Postgres {
    /// Holds the data folder, the socket and `log`; removed on drop.
    dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .max()
        .map(|(_, bin)| bin)
}

/// A port nobody listens on right now (another process may still take it before the server binds it).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener.local_addr().expect("the free port's address").port()
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
                "PostgreSQL is not installed: no /usr/lib/postgresql/<version>/bin/initdb. These tests need Debian's \
                 postgresql package (apt-get install postgresql; scripts/test installs it), or \
                 CONDAGATE_SKIP_POSTGRES=1 to skip them"
            )
        });
        let dir = tempfile::tempdir().expect("create a temporary folder for the cluster");
        let chown = Command::new("chown").arg("postgres").arg(dir.path()).status().expect("run chown");
        assert!(chown.success(), "chown postgres {} failed (is there a postgres user?)", dir.path().display());
        let pg = Postgres { data: dir.path().join("data"), dir, bin, port: free_port() };

        let mut initdb = pg.tool("initdb");
        initdb.arg("-D").arg(&pg.data).args(["--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        let out = run(&mut initdb, "initdb");
        assert!(
            out.status.success(),
            "initdb -D {} failed (the postgres user must be able to reach that folder: check TMPDIR):\n{}{}",
            pg.data.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        pg.run_server();
        pg.sql_as("postgres", "postgres", "CREATE ROLE condagate LOGIN SUPERUSER");
        pg.sql_as("postgres", "postgres", "CREATE DATABASE condagate OWNER condagate");
        pg
    }

    /// `postgresql://condagate@127.0.0.1:PORT/condagate`
    pub fn url(&self) -> String {
        format!("postgresql://condagate@127.0.0.1:{}/condagate", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (`pg_ctl stop -m fast`), keeping the data.
    pub fn stop(&self) {
        let out = run(self.pg_ctl().args(["-m", "fast", "-w", "-t", "30", "stop"]), "pg_ctl stop");
        self.check(&out, "pg_ctl stop -m fast");
    }

    /// Starts it again on the same port and data, waiting until it accepts connections.
    pub fn restart(&self) {
        self.run_server();
    }

    /// Runs SQL as `condagate` on its database: the trimmed output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        self.sql_as("condagate", "condagate", sql)
    }

    /// One of the cluster's binaries, to be run as the `postgres` user from a folder that user may enter.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(self.bin.join(name)).current_dir(self.dir.path());
        cmd
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D").arg(&self.data);
        cmd
    }

    /// `pg_ctl start` on our port and socket folder, then `pg_isready` until it answers on TCP, all within [`TIMEOUT`].
    fn run_server(&self) {
        let deadline = Instant::now() + TIMEOUT;
        // One string for the server's argv, split by pg_ctl on spaces: the temporary path has none.
        let (port, dir) = (self.port, self.dir.path().display());
        let opts = format!("-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off");
        let mut start = self.pg_ctl();
        start.arg("-l").arg(self.dir.path().join("log")).args(["-o", &opts, "-w", "-t", "30", "start"]);
        self.check(&run(&mut start, "pg_ctl start"), "pg_ctl start");
        let port = port.to_string();
        loop {
            let ready = run(self.tool("pg_isready").args(["-h", "127.0.0.1", "-p", &port]), "pg_isready");
            if ready.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("PostgreSQL did not accept connections within {TIMEOUT:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sql_as(&self, user: &str, database: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let mut psql = self.tool("psql");
        psql.args(["-h", "127.0.0.1", "-p", &port, "-U", user, "-d", database]);
        psql.args(["-v", "ON_ERROR_STOP=1", "-tA", "-c", sql]);
        let out = run(&mut psql, "psql");
        self.check(&out, &format!("psql as {user}: {sql}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Panics naming `what`, with its stderr and the server log, unless it succeeded.
    fn check(&self, out: &Output, what: &str) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what} failed ({}):\n{stderr}\n{}", out.status, self.log());
    }

    /// The server log's last lines, for failure messages.
    fn log(&self) -> String {
        let path = self.dir.path().join("log");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("--- {} (last lines) ---\n{tail}", path.display())
            }
            Err(e) => format!("(no server log at {}: {e})", path.display()),
        }
    }
}

/// Runs `cmd`, failing the test when it cannot even be started (no `runuser`, say).
fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {what} ({:?}) through runuser: {e}", cmd.get_program()))
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Already stopped (after `stop`, or a failed start) is fine: pg_ctl just says so.
        let _ = self.pg_ctl().args(["-m", "immediate", "-w", "-t", "10", "stop"]).output();
    }
}
