//! Shared by the benches: a realistic large repodata.json, and the `condagate` binary started on a configuration.

#![allow(dead_code)]

use std::fmt::Write;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A server process, killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the release `condagate serve --config <config>` (no access log) and returns it with the address it printed.
pub fn start_condagate(config: &Path) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_condagate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("condagate starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit("http://").next().expect("condagate prints its address").to_owned();
    (Killed(child), addr)
}

/// A `conda:download` token named `name` for `user`, made with `condagate token create`.
pub fn token(config: &Path, name: &str, user: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_condagate"))
        .args(["token", "create", "--name", name, "--user", user, "--scopes", "conda:download", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_owned()
}

/// A memory figure of process `pid` (`"self"` for this one) in MiB: `key` is a `/proc/<pid>/status` field such as
/// `VmHWM` (the peak RSS) or `VmRSS`; 0 when it cannot be read.
pub fn status_mib(pid: &str, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::to_owned)))
        .and_then(|v| v.split_whitespace().next().and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A repodata.json with `records` records spread over `names` package names (half `.tar.bz2`, half `.conda`), each
/// record shaped like conda-forge's (depends, constrains, hashes, sizes, timestamps, license).
pub fn repodata(records: usize, names: usize) -> Vec<u8> {
    let mut tar = String::with_capacity(records * 300);
    let mut conda = String::with_capacity(records * 300);
    let per_name = records.div_ceil(names).max(1);
    for i in 0..records {
        let name = format!("pkg-{:05}", i / per_name);
        let v = i % per_name;
        let fname_stem = format!("{name}-1.{v}.0-py312h{:08x}_{}", i.wrapping_mul(2654435761) as u32, v % 3);
        let (map, ext) = if i % 2 == 0 { (&mut tar, "tar.bz2") } else { (&mut conda, "conda") };
        if !map.is_empty() {
            map.push(',');
        }
        let _ = write!(
            map,
            r#""{fname_stem}.{ext}":{{"build":"py312h{h:08x}_{b}","build_number":{b},"constrains":["libfoo >=1.2,<2.0a0","pypy <0a0"],"depends":["libgcc-ng >=12","libstdcxx-ng >=12","python >=3.12,<3.13.0a0","python_abi 3.12.* *_cp312","numpy >=1.26.4,<2.0a0","{name}-base ==1.{v}.0"],"license":"BSD-3-Clause AND MIT","license_family":"BSD","md5":"{md5:032x}","name":"{name}","sha256":"{sha:064x}","size":{size},"subdir":"linux-64","timestamp":{ts},"version":"1.{v}.0"}}"#,
            h = i.wrapping_mul(2654435761) as u32,
            b = v % 3,
            md5 = (i as u128).wrapping_mul(0x9e3779b97f4a7c15f39cc0605cedc834),
            sha = (i as u128).wrapping_mul(0x2545f4914f6cdd1d9e3779b97f4a7c15),
            size = 10_000 + i * 37 % 5_000_000,
            ts = 1_700_000_000_000u64 + i as u64 * 1000,
        );
    }
    format!(
        r#"{{"info":{{"subdir":"linux-64"}},"packages":{{{tar}}},"packages.conda":{{{conda}}},"removed":[],"repodata_version":1}}"#
    )
    .into_bytes()
}

/// Names of the first `n` generated packages.
pub fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("pkg-{i:05}")).collect()
}
