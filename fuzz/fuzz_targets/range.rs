//! Any Range / If-Range / If-None-Match / If-Modified-Since values over any length: never panics, and a part asked
//! for lies inside the file.
#![no_main]
use condagate::internals::http::conditional::{not_modified, range, RangeAsk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    let mut parts = data[8..].split(|b| *b == b'\n');
    let mut h = http::HeaderMap::new();
    for name in
        [http::header::RANGE, http::header::IF_RANGE, http::header::IF_NONE_MATCH, http::header::IF_MODIFIED_SINCE]
    {
        if let Some(v) = parts.next().and_then(|p| http::HeaderValue::from_bytes(p).ok()) {
            h.insert(name, v);
        }
    }
    let modified = Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
    let _ = not_modified(&h, "\"e1\"", modified);
    if let RangeAsk::Part { start, end } = range(&h, len, "\"e1\"", modified) {
        assert!(start <= end && end < len, "{start}-{end} of {len}");
    }
});
