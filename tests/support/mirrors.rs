//! Real static mirrors for the tests that need the upstream to behave as deployed ones do: nginx with a plain `root`
//! and Python's `http.server`. Both decode the request path again and resolve `..` in it, which is exactly what makes
//! a proxy that forwards decoded text unsafe, so they are the parts a path-encoding test must run against.
//!
//! A missing binary makes the test fail with what to install, unless `CONDAGATE_SKIP_MIRRORS=1` asks for a skip,
//! which is printed as `SKIPPED: …`.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running static file server over a folder, stopped when dropped.
pub struct Mirror {
    /// What it is, for messages.
    pub kind: &'static str,
    /// Its root URL, without a trailing slash.
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `None`, after printing the skip, when `CONDAGATE_SKIP_MIRRORS=1`; otherwise panics with `install` when `binary`
/// is missing.
fn required(binary: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(binary))
        .find(|p| p.is_file());
    if std::env::var("CONDAGATE_SKIP_MIRRORS").is_ok_and(|v| v == "1") {
        super::report_skip(&format!("CONDAGATE_SKIP_MIRRORS=1 (this test needs {binary})"));
        return None;
    }
    Some(found.unwrap_or_else(|| {
        panic!("{binary} is not installed: {install} (or set CONDAGATE_SKIP_MIRRORS=1 to skip this test)")
    }))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} exited ({status}) before listening on port {port}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port} within 20 s");
}

/// nginx serving `root` with a plain `root` directive, as a mirror is usually set up.
pub fn nginx(root: &Path) -> Option<Mirror> {
    let bin = required("nginx", "apt-get install nginx-light")?;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = free_port();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"#,
        root = root.display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let log = dir.path().join("error.log");
    let mut child = Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-e")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx");
    wait_listening(port, &mut child, "nginx", &log);
    Some(Mirror { kind: "nginx", url: format!("http://127.0.0.1:{port}"), child, _dir: dir })
}

/// Python's `http.server` over `root`.
pub fn python_http_server(root: &Path) -> Option<Mirror> {
    let bin = required("python3", "apt-get install python3")?;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting python3 -m http.server");
    // It prints "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..." once it listens.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("http.server said {line:?}"));
    Some(Mirror { kind: "http.server", url: format!("http://127.0.0.1:{port}"), child, _dir: dir })
}
