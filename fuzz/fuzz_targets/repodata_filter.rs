//! Any document: filtering never panics; from valid JSON it makes valid JSON in which no package map holds a
//! hidden name.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn visible(name: &str) -> bool {
    !name.starts_with('s')
}

fuzz_target!(|data: &[u8]| {
    let _ = condagate::internals::conda::filter::has_absolute_base_url(data);
    let mut out = Vec::new();
    let filtered = condagate::internals::conda::filter::filter_repodata(data, &visible, &mut out);
    let Ok(serde_json::Value::Object(_)) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if filtered.is_err() {
        return;
    }
    let doc: serde_json::Value = serde_json::from_slice(&out).expect("the filter made invalid JSON from valid JSON");
    for map in ["packages", "packages.conda"] {
        if let Some(m) = doc.get(map).and_then(|m| m.as_object()) {
            for key in m.keys() {
                if let Some(name) = condagate::internals::conda::route::package_name_of_key(key) {
                    assert!(visible(name), "hidden {key:?} kept");
                }
            }
        }
    }
});
