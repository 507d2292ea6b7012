//! Any Authorization header value: reading the credential never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = http::HeaderValue::from_bytes(data) else { return };
    let mut h = http::HeaderMap::new();
    h.insert(http::header::AUTHORIZATION, v);
    let _ = condagate::internals::auth::header_token(&h);
});
