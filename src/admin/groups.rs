//! Changing a group's members or packages in the configuration file itself, keeping its comments and layout.
//!
//! The change is made under an exclusive lock on `<config>.lock`, checked by parsing the whole new file as a
//! configuration, and written atomically; a change that would make the file invalid is refused and nothing is
//! written.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use fs4::fs_std::FileExt;
use http::StatusCode;
use toml_edit::{DocumentMut, Value};

use crate::config::Config;

/// A refused change: the status for the API and a message.
#[derive(Debug)]
pub struct ChangeError(pub StatusCode, pub String);

fn bad(m: impl Into<String>) -> ChangeError {
    ChangeError(StatusCode::BAD_REQUEST, m.into())
}

fn internal(m: impl std::fmt::Display) -> ChangeError {
    ChangeError(StatusCode::INTERNAL_SERVER_ERROR, m.to_string())
}

/// Adds (`add`) or removes `item` in the `what` list (`members` or `packages`) of group `group` of `channel`.
pub fn change(
    config: &Config,
    channel: &str,
    group: &str,
    what: &str,
    item: &str,
    add: bool,
) -> Result<(), ChangeError> {
    let path = config.path.as_deref().ok_or_else(|| bad("this server was not started from a configuration file"))?;
    let lock_path = path.with_extension("toml.lock");
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(internal)?;
    lock.lock_exclusive().map_err(internal)?;
    let text = fs::read_to_string(path).map_err(internal)?;
    let mut doc: DocumentMut = text.parse().map_err(internal)?;
    let groups = doc
        .get_mut("groups")
        .and_then(|g| g.as_array_of_tables_mut())
        .ok_or_else(|| ChangeError(StatusCode::NOT_FOUND, format!("channel {channel:?} has no groups")))?;
    let table = groups
        .iter_mut()
        .find(|t| {
            t.get("name").and_then(|v| v.as_str()) == Some(group)
                && t.get("channel").and_then(|v| v.as_str()) == Some(channel)
        })
        .ok_or_else(|| ChangeError(StatusCode::NOT_FOUND, format!("channel {channel:?} has no group {group:?}")))?;
    if !table.contains_key(what) {
        table.insert(what, toml_edit::value(toml_edit::Array::new()));
    }
    let list = table
        .get_mut(what)
        .and_then(|v| v.as_array_mut())
        .ok_or_else(|| bad(format!("{what} of group {group:?} is not a list")))?;
    let pos = list.iter().position(|v| v.as_str() == Some(item));
    match (add, pos) {
        (true, Some(_)) | (false, None) => return Ok(()),
        (true, None) => list.push(Value::from(item)),
        (false, Some(i)) => {
            list.remove(i);
        }
    }
    let new_text = doc.to_string();
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Config::from_toml_str(&new_text, base)
        .map_err(|e| bad(format!("the change would make the configuration invalid: {}", e.problems.join("; "))))?;
    let tmp = path.with_extension(format!("toml.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(new_text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        internal(e)
    })
}
