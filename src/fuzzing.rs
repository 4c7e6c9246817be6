//! Entry points for the fuzz targets in `fuzz/` (docs/FUZZING.md), shared with the corpus
//! replay test (tests/fuzz_corpus.rs) so that both run exactly the same steps. Each one reaches
//! the code a user's file, directory or request reaches, from bytes in memory where the library
//! only offers a path. Not a stable API.
//!
//! The `*_case` functions return whether the input got past the first check, and panic only
//! when the library breaks a promise of its own (a tensor whose bytes do not match its shape,
//! two readers of one tensor disagreeing): a failure a fuzzer should report. Every error a bad
//! input deserves is an `Err`, which they swallow.

use std::path::Path;

use crate::checkpoint::{pytorch, to_f32, Checkpoint, OwnedTensor};
use crate::config::{ModelConfig, PipelineConfig};
use crate::error::{Error, Result};
use crate::model::HostWeights;
use crate::tokenize::TextTokenizer;
use crate::{Device, Embedder, EmbedderOptions};

/// The name a fuzzed `pytorch_model.bin` goes by in error messages.
const PYTORCH_NAME: &str = "pytorch_model.bin";

/// The pytorch reader's bound on the tensor bytes it produces, per byte of file.
const MAX_EXPANSION: usize = 16;

/// `bytes` as a `model.safetensors` file: written to `scratch` (a file path the caller owns,
/// replaced) and opened with [`Checkpoint::open_safetensors`]. A real file, not an anonymous
/// map: the loader drops pages it has read (`MADV_DONTNEED`), which a file mapping reads back
/// from the file and an anonymous one would read back as zeros.
pub fn open_safetensors(bytes: &[u8], scratch: &Path) -> Result<Checkpoint> {
    std::fs::write(scratch, bytes).map_err(|e| Error::io(scratch, e))?;
    Checkpoint::open_safetensors(scratch)
}

/// `bytes` as a `pytorch_model.bin` file, through the zip + pickle reader of
/// [`pytorch::load`].
pub fn load_pytorch(bytes: &[u8]) -> Result<Vec<(String, OwnedTensor)>> {
    pytorch::load_slice(bytes).map_err(|msg| Error::checkpoint(PYTORCH_NAME, msg))
}

/// [`Embedder::load_with`] for the model directory `dir`, except that the weights come from
/// `weights` (opened once by the caller) instead of the directory's own weight file: config
/// resolution, the tokenizer, every shape check of the weight loader and the engine's setup run
/// as they do for a real load.
pub fn load_with_weights(
    dir: &Path,
    weights: &Checkpoint,
    opts: EmbedderOptions,
) -> Result<Embedder> {
    let (pipeline, cfg) = PipelineConfig::load(dir)?;
    let tokenizer = TextTokenizer::for_pipeline(&pipeline, &cfg)?;
    let host = HostWeights::load(weights, &cfg)?;
    Embedder::from_parts(pipeline, tokenizer, cfg, host, Device::Cpu, opts, None)
}

/// The `safetensors_header` target: open `bytes` as `model.safetensors`, read every tensor its
/// header declares both ways (copied with dtype conversion, and in place), then load a model of
/// config `cfg` from it. `scratch` is [`open_safetensors`]'s. Returns whether the file opened.
pub fn safetensors_case(bytes: &[u8], cfg: &ModelConfig, scratch: &Path) -> bool {
    let Ok(ck) = open_safetensors(bytes, scratch) else {
        return false;
    };
    let Ok((_, meta)) = safetensors::SafeTensors::read_metadata(bytes) else {
        panic!("the checkpoint opened a header that safetensors refuses");
    };
    for (name, info) in meta.tensors() {
        // `tensor` takes backbone names; a detected `deberta.` prefix is put back.
        for key in [
            name.as_str(),
            name.strip_prefix("deberta.").unwrap_or(&name),
        ] {
            let copied = ck.tensor(key, &info.shape);
            let in_place = ck.tensor_f32(key, &info.shape);
            match (copied, in_place) {
                (Ok(c), Ok(m)) => {
                    assert_eq!(c.len(), info.shape.iter().product::<usize>(), "{key}");
                    let same = c
                        .iter()
                        .zip(m.iter())
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same && c.len() == m.len(), "{key}: copy and map differ");
                }
                (Err(_), Err(_)) => {}
                (c, m) => panic!(
                    "{key}: the copy {} but the in-place read {}",
                    if c.is_ok() { "succeeded" } else { "failed" },
                    if m.is_ok() { "succeeded" } else { "failed" }
                ),
            }
        }
    }
    let _ = HostWeights::load(&ck, cfg);
    ck.release_resident_pages();
    true
}

/// The `pytorch_zip` target: read `bytes` as `pytorch_model.bin`; every tensor must hold
/// exactly the bytes its shape and dtype say, and all of them at most `MAX_EXPANSION` times the
/// file. Returns whether the file loaded.
pub fn pytorch_case(bytes: &[u8]) -> bool {
    let Ok(tensors) = load_pytorch(bytes) else {
        return false;
    };
    let mut total = 0usize;
    for (name, t) in &tensors {
        let n = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or_else(|| panic!("{name}: shape {:?} overflows", t.shape));
        assert_eq!(t.data.len(), n * t.dtype.size(), "{name}: bytes vs shape");
        assert_eq!(to_f32(t.dtype, &t.data).len(), n, "{name}");
        total += t.data.len();
    }
    assert!(
        total <= MAX_EXPANSION * bytes.len(),
        "{total} tensor bytes from a {}-byte file",
        bytes.len()
    );
    true
}

/// The files of a model directory the `config_resolution` target writes, in input order.
pub const CONFIG_FILES: [&str; 7] = [
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "tokenizer_config.json",
    "config_sentence_transformers.json",
    "added_tokens.json",
];

/// The `config_resolution` target. `data` is split at NUL bytes into the [`CONFIG_FILES`]
/// (an empty part: that file is absent) and an eighth part naming the tokenizer file (`json`:
/// `tokenizer.json`, anything else: `spm.model`), linked from the model directory `source`.
/// The directory is written as `dir` (replaced), loaded as [`load_with_weights`] does against
/// `weights`, and a model that loads embeds two texts. Returns whether it loaded.
pub fn config_case(data: &[u8], dir: &Path, source: &Path, weights: &Checkpoint) -> bool {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("1_Pooling")).expect("scratch directory");
    let mut parts = data.split(|&b| b == 0);
    for name in CONFIG_FILES {
        match parts.next() {
            Some(p) if !p.is_empty() => std::fs::write(dir.join(name), p).expect("scratch file"),
            _ => {}
        }
    }
    let tokenizer = match parts.next() {
        Some(b"json") => "tokenizer.json",
        _ => "spm.model",
    };
    #[cfg(unix)]
    std::os::unix::fs::symlink(source.join(tokenizer), dir.join(tokenizer)).expect("link");
    #[cfg(not(unix))]
    std::fs::copy(source.join(tokenizer), dir.join(tokenizer)).expect("tokenizer file");
    let opts = EmbedderOptions {
        threads: Some(1),
        ..Default::default()
    };
    let Ok(e) = load_with_weights(dir, weights, opts) else {
        return false;
    };
    if let Ok(emb) = e.encode(&["A man is eating food.", ""]) {
        assert_eq!((emb.len(), emb.dim()), (2, e.dim()));
    }
    true
}
