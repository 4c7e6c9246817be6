//! A model directory built from the input: NUL-separated parts become config.json,
//! modules.json, sentence_bert_config.json, 1_Pooling/config.json, tokenizer_config.json,
//! config_sentence_transformers.json and added_tokens.json (an empty part: the file is absent),
//! and an eighth part picks the tokenizer (`json`: the fixture's tokenizer.json, otherwise its
//! spm.model). The directory is resolved and loaded as `Embedder::load` does, against the
//! fixture model's weights, and a model that loads embeds two texts
//! (`deberta_embed::fuzzing::config_case`).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deberta_embed::checkpoint::Checkpoint;
use deberta_embed::fuzzing;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    weights: Checkpoint,
    source: PathBuf,
    scratch: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/st2_v3like");
        Fixture {
            weights: Checkpoint::open_dir(&source).expect("fixture weights"),
            source,
            scratch: tempfile::tempdir().expect("scratch dir"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    fuzzing::config_case(data, &f.scratch.path().join("model"), &f.source, &f.weights);
});
