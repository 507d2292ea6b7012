//! Any document: filtering never panics; from valid JSON it makes valid JSON in which no package map holds a
//! hidden name; the span index agrees with the single-pass filter.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn visible(name: &str) -> bool {
    !name.starts_with('s')
}

fuzz_target!(|data: &[u8]| {
    let _ = condagate::internals::conda::filter::has_absolute_base_url(data);
    let mut out = Vec::new();
    let filtered = condagate::internals::conda::filter::filter_repodata(data, &visible, &mut out);
    // The span index views are made from accepts exactly what the single-pass filter accepts, and makes the same
    // document (records keep their own whitespace, so they are compared parsed).
    let spans = condagate::internals::conda::spans::Spans::index(data);
    assert_eq!(spans.is_ok(), filtered.is_ok(), "the index and the filter disagree on whether this is repodata");
    if let Ok(spans) = &spans {
        let mut view = Vec::new();
        spans.render(data, &visible, &mut view);
        let parsed = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
        assert_eq!(parsed(&out), parsed(&view), "the index made another view than the filter");
    }
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
