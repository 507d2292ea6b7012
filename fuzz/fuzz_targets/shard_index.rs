//! Any shard index (the fuzz input is the msgpack payload; zstd is applied here so the fuzzer reaches the decoder):
//! decoding never panics, and the filtered index decodes again and holds no hidden name.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn visible(name: &str) -> bool {
    !name.starts_with('s')
}

fuzz_target!(|data: &[u8]| {
    let _ = condagate::internals::conda::filter::ShardIndex::decode(data);
    let Ok(compressed) = zstd::encode_all(data, 1) else { return };
    let Ok(index) = condagate::internals::conda::filter::ShardIndex::decode(&compressed) else { return };
    let Ok(filtered) = index.encode_filtered(&visible) else { return };
    let again = condagate::internals::conda::filter::ShardIndex::decode(&filtered).expect("a filtered index does not decode");
    for name in again.names_by_hash().values() {
        assert!(visible(name), "hidden {name:?} kept");
    }
});
