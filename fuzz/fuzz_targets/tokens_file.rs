//! Any tokens file: reading it never panics (a broken file is an error that names the key or line).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = condagate::internals::tokens::file::parse(std::path::Path::new("tokens.toml"), text);
});
