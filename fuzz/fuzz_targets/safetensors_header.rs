//! Arbitrary bytes as `model.safetensors`: the checkpoint opener (header validation, duplicate
//! names, prefix detection), every tensor the header declares read both ways (copied with dtype
//! conversion, and in place), and the model loader's shape checks against the config of the
//! fixture whose weights are in the seed corpus (`deberta_embed::fuzzing::safetensors_case`).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deberta_embed::{fuzzing, ModelConfig};
use libfuzzer_sys::fuzz_target;

fn config() -> &'static ModelConfig {
    static CONFIG: OnceLock<ModelConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models/st6_proj_cls_norm/config.json");
        ModelConfig::from_file(&path).expect("fixture config")
    })
}

/// The file each input is written to, in a temporary directory (statics are never dropped, so
/// the directory and its one file stay behind when the fuzzer exits).
fn scratch() -> &'static PathBuf {
    static SCRATCH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &SCRATCH
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("scratch dir");
            let file = dir.path().join("model.safetensors");
            (dir, file)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    fuzzing::safetensors_case(data, config(), scratch());
});
