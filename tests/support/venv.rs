//! Python environments for the tests that drive real Python clients (py-rattler, anaconda-client).
//!
//! [`python`] prepares `target/<name>` on first use: `python3 -m venv` (without pip on Debian systems that lack
//! `ensurepip`, installing with the system's `pip --python` instead), then `pip install` of the pinned requirements.
//! A file lock keeps parallel tests and test binaries from racing, and a stamp in the venv remembers which
//! requirements it holds, so a changed pin reinstalls. Without `python3` it panics with a clear message, unless
//! `CONDAGATE_SKIP_E2E=1` is set: then it prints `SKIPPED: CONDAGATE_SKIP_E2E=1` and returns `None`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// A Python environment a test needs.
#[derive(Debug, Clone, Copy)]
pub struct PyEnv {
    /// Its folder under `target/`.
    pub name: &'static str,
    /// The pinned requirements, in `requirements.txt` syntax.
    pub requirements: &'static str,
    /// A module that must import once it is ready.
    pub module: &'static str,
}

/// `target/` of this build: the parent of `CARGO_TARGET_TMPDIR` (`target/tmp`).
fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| manifest.join("target"))
}

/// The environment's `python`, ready; `None` when `CONDAGATE_SKIP_E2E=1`. Panics, saying why, when it cannot be
/// prepared.
pub async fn python(env: PyEnv) -> Option<PathBuf> {
    if std::env::var("CONDAGATE_SKIP_E2E").is_ok_and(|v| v == "1") {
        super::report_skip("CONDAGATE_SKIP_E2E=1 (this test needs a Python client)");
        return None;
    }
    static READY: Mutex<Option<HashMap<&'static str, Result<PathBuf, String>>>> = Mutex::new(None);
    let ready = tokio::task::spawn_blocking(move || {
        let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
        ready.get_or_insert_with(HashMap::new).entry(env.name).or_insert_with(|| prepare(env)).clone()
    })
    .await
    .expect("venv preparation panicked");
    match ready {
        Ok(p) => Some(p),
        Err(e) => panic!("{e}"),
    }
}

fn run_logged(cmd: &mut Command) -> Result<(), String> {
    eprintln!("venv: running {cmd:?}");
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn imports(python: &Path, module: &str) -> bool {
    python.is_file()
        && Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn prepare(env: PyEnv) -> Result<PathBuf, String> {
    let skip = "(set CONDAGATE_SKIP_E2E=1 to skip these tests)";
    let target = target_dir();
    let venv = target.join(env.name);
    let python = venv.join("bin/python");
    let stamp = venv.join(".condagate-requirements.txt");
    std::fs::create_dir_all(&target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let lock_path = target.join(format!("{}.lock", env.name));
    let lock = File::create(&lock_path).map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    fs4::fs_std::FileExt::lock_exclusive(&lock).map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    // The lock is released when `lock` is dropped, on every return path.

    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == env.requirements) && imports(&python, env.module) {
        return Ok(python);
    }
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            return Err(format!(
                "these tests need `python3` (with the venv module) on PATH to install {} into {} {skip}",
                env.requirements.trim().replace('\n', ", "),
                venv.display()
            ))
        }
    }
    if !python.is_file() {
        eprintln!("venv: creating {} (first use)", venv.display());
        // Debian's python3 lacks ensurepip unless python3-venv is installed: then make the venv without pip and
        // install into it with the system's pip (`pip --python`, pip >= 22.3).
        if let Err(e) = run_logged(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv)) {
            eprintln!("venv: {e}\nvenv: retrying without pip in the venv");
            run_logged(Command::new("python3").args(["-m", "venv", "--clear", "--without-pip"]).arg(&venv))
                .map_err(|e| format!("cannot create {} {skip}:\n{e}", venv.display()))?;
        }
    }
    let pending = venv.join(".condagate-requirements.pending");
    std::fs::write(&pending, env.requirements).map_err(|e| format!("cannot write {}: {e}", pending.display()))?;
    let venv_has_pip = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut pip = if venv_has_pip {
        let mut c = Command::new(&python);
        c.args(["-m", "pip"]);
        c
    } else {
        let mut c = Command::new("python3");
        c.args(["-m", "pip", "--python"]).arg(&python);
        c
    };
    pip.args(["install", "--disable-pip-version-check", "-r"]).arg(&pending);
    run_logged(&mut pip).map_err(|e| format!("installing into {} failed {skip}:\n{e}", venv.display()))?;
    if !imports(&python, env.module) {
        return Err(format!("{} cannot `import {}` after the install", python.display(), env.module));
    }
    std::fs::rename(&pending, &stamp).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(python)
}

/// py-rattler, as pinned in `tests/e2e/requirements.txt`.
pub const RATTLER: PyEnv =
    PyEnv { name: "e2e-venv", requirements: include_str!("../e2e/requirements.txt"), module: "rattler" };

/// The `anaconda` CLI.
pub const ANACONDA_CLIENT: PyEnv =
    PyEnv { name: "anaconda-venv", requirements: "anaconda-client==1.16.0\n", module: "binstar_client" };

/// conda-package-streaming, the library conda uses to read a package's metadata by HTTP Range.
pub const PACKAGE_STREAMING: PyEnv =
    PyEnv { name: "cps-venv", requirements: "conda-package-streaming==0.13.0\n", module: "conda_package_streaming" };
