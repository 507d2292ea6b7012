//! Any request path: routing never panics, and whatever it accepts names, after the upstream decodes the URL once
//! more, exactly the checked segments; redaction never panics and never lets a generated token through.
#![no_main]
use condagate::internals::conda::route::{parse, redact_path, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    for base in ["", "/conda"] {
        if let Ok(Route::Channel(c)) = parse(path, base) {
            let url = condagate::internals::upstream::upstream_url("http://m/r", c.upstream_path());
            let rel = url.strip_prefix("http://m/r/").unwrap();
            let decoded = percent_encoding::percent_decode_str(rel).decode_utf8().unwrap();
            assert_eq!(decoded, c.upstream_path());
            for seg in decoded.split('/') {
                assert!(!seg.is_empty() && seg != "." && seg != "..", "{path:?}");
                assert!(seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+!".contains(&b)), "{path:?} -> {seg:?}");
            }
        }
    }
    let shown = redact_path(path);
    assert!(!shown.contains('\n') && !shown.contains('\r'));
    // A generated token appended anywhere is never shown (beyond copies of its text the input already held).
    let token = "cg-Zq8TuvWx0123456789abcdefgh";
    let secret = &token[3..];
    let before = path.matches(secret).count();
    for with in [format!("{path}{token}"), format!("{token}{path}"), format!("{path}/t/{token}")] {
        let shown = redact_path(&with);
        assert!(shown.matches(secret).count() <= before, "{with:?} is logged as {shown:?}");
    }
});
