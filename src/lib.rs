//! deberta-embed: an inference engine for DeBERTa-v2/v3 sentence-embedding models, written from
//! scratch in Rust, whose embeddings match sentence-transformers' (max |diff| <= 1e-4 on the CPU
//! in f32). It reads model directories as users have them on disk (sentence-transformers 2.x/3.x
//! or 5.x+ layout, or a plain transformers checkpoint; `model.safetensors` or
//! `pytorch_model.bin`), tokenizes as transformers does, runs the encoder on the CPU (SIMD GEMM
//! and fused attention over rayon) or on an NVIDIA GPU (feature `cuda`), and pools as the
//! model's modules say.
//!
//! ```
//! use deberta_embed::{Device, Embedder, Similarity};
//!
//! # fn main() -> deberta_embed::Result<()> {
//! // A model directory: here a tiny test model of this repository (CLS pooling, normalized).
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/st6_proj_cls_norm");
//! let embedder = Embedder::load(dir, Device::Cpu)?;
//! let emb = embedder.encode(&["Hello world!", "Café naïve résumé"])?;
//! assert_eq!((emb.len(), emb.dim()), (2, 32));
//! let sims = Similarity::Cosine.matrix(&emb, &emb); // [2, 2], row-major
//! assert!((sims[1] - 0.800_854).abs() < 1e-4); // sentence-transformers 6.3: 0.800854
//! # Ok(())
//! # }
//! ```
//!
//! A hub id works wherever a directory does: `Embedder::load("org/name", Device::Cpu)` fetches
//! the model into the Hugging Face cache on first use and reads it from there after (see
//! [`hub`]; [`hub::resolve_model`] picks another revision). Options (threads, batch size,
//! normalization, precision) go through [`EmbedderOptions`] and [`Embedder::load_with`].
//!
//! Cross-encoders (sequence-classification checkpoints: rerankers, pair classifiers) load as a
//! [`CrossEncoder`], which scores text pairs on the same engine (see [`cross`]).
//! [`eval`] computes sentence-transformers' evaluator metrics (STS correlations, pair
//! classification). With the `server` feature, `server` serves a loaded model over HTTP
//! (OpenAI- and text-embeddings-inference-compatible routes, dynamic batching), as
//! `deberta-embed serve` does.
//!
//! # Features
//!
//! | Feature  | Default | What it adds |
//! |----------|---------|--------------|
//! | `hub`    | yes     | Models by hub id (`org/name`): downloads into the Hugging Face cache (hf-hub, ureq with rustls). Without it, local directories and models already in the cache still load. |
//! | `cli`    | yes     | The `deberta-embed` binary (clap, indicatif, anyhow, tracing-subscriber). |
//! | `server` | yes     | The `server` module: the HTTP server (tokio, axum, hyper, utoipa). |
//! | `cuda`   | no      | [`Device::Cuda`]: the hand-written CUDA kernels (nvcc at build time, libcuda at run time). |
//!
//! As a library, `deberta-embed = { version = "0.1", default-features = false }` builds the
//! engine alone; add the features you use.

#[doc(hidden)]
pub mod backend;
#[doc(hidden)]
pub mod checkpoint;
pub mod config;
pub mod cross;
pub mod error;
pub mod eval;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
#[doc(hidden)]
pub mod model;
pub mod pooling;
#[doc(hidden)]
pub mod relpos;
#[cfg(feature = "server")]
pub mod server;
pub mod similarity;
#[doc(hidden)]
pub mod testing;
pub mod tokenize;

use std::path::Path;
use std::sync::Mutex;

pub use config::{ModelConfig, PipelineConfig, PoolingMode};
pub use cross::{CrossEncoder, ModelKind};
pub use error::{Error, Result};
pub use similarity::Similarity;
pub use tokenize::Tokenized;

use backend::{run_batches, Backend};
use checkpoint::Checkpoint;
use model::{CpuModel, CpuState, HostWeights};
use tokenize::TextTokenizer;

/// Where the forward runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// fp32 on the CPU, parallel over rayon.
    Cpu,
    /// An NVIDIA GPU by ordinal (needs the `cuda` feature).
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        if s == "cuda" || s == "gpu" {
            return Ok(Device::Cuda(0));
        }
        if let Some(n) = s.strip_prefix("cuda:") {
            return n
                .parse()
                .map(Device::Cuda)
                .map_err(|_| Error::Input(format!("bad device `{s}`: expected cuda:N")));
        }
        Err(Error::Input(format!(
            "unknown device `{s}` (expected cpu, cuda or cuda:N)"
        )))
    }
}

/// Arithmetic precision of the forward. The CPU path is fp32, optionally with bf16 GEMM weights
/// (`BF16`: bf16 products with fp32 sums on AMX or `avx512_bf16`, or widened to fp32, as
/// `backend::cpu::gemm::bf16_gemm_form` decides for the CPU) or int8 GEMMs (`INT8`: int8
/// weights per output feature, each Linear's input quantized per row to 8 bits, exact integer
/// sums, on AMX-INT8, AVX512-VNNI or AVX-VNNI as `backend::cpu::gemm::int8_gemm_form` decides; f32
/// weights on a CPU with neither); the CUDA path runs fp32 (exact, for validation) or fp16/bf16
/// matrix products with fp32 accumulation and fp32 statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    F16,
    BF16,
    /// CPU only.
    INT8,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::BF16),
            "int8" | "i8" | "qint8" => Ok(Precision::INT8),
            other => Err(Error::Input(format!(
                "unknown dtype `{other}` (expected f32, f16, bf16 or int8)"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
            Precision::INT8 => "int8",
        })
    }
}

/// Load-time options of [`Embedder::load_with`] (and [`CrossEncoder::load_with`]).
///
/// ```
/// use deberta_embed::{Device, Embedder, EmbedderOptions};
///
/// # fn main() -> deberta_embed::Result<()> {
/// // A test model with max pooling and no Normalize module: normalization forced on here.
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/st6_pool_max");
/// let opts = EmbedderOptions { threads: Some(1), normalize: Some(true), ..Default::default() };
/// let embedder = Embedder::load_with(dir, Device::Cpu, opts)?;
/// assert!(embedder.normalizes());
/// let emb = embedder.encode(&["Hello world!"])?;
/// let norm = emb.row(0).iter().map(|x| x * x).sum::<f32>().sqrt();
/// assert!((norm - 1.0).abs() < 1e-5);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct EmbedderOptions {
    /// Worker threads for the forward; `None` = all available cores. More than
    /// [`max_threads`] is refused.
    pub threads: Option<usize>,
    /// Sentences per forward batch (inputs are sorted by length first, so batches are tight).
    pub batch_size: usize,
    /// Force L2 normalization on (`Some(true)`) or off (`Some(false)`); `None` follows the
    /// model directory (a `Normalize` module in modules.json).
    pub normalize: Option<bool>,
    /// Precision of the forward. On the CPU: f32 (default, the numerics contract) or bf16
    /// (opt-in: bf16 GEMM weights and inputs, fp32 sums; cosine >= 0.999 to f32).
    pub precision: Precision,
    /// Token budget of one forward batch (a single longer sequence still runs alone). Bounds
    /// activation memory; sequences are packed without padding, so it costs no extra work.
    pub max_batch_tokens: usize,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            threads: None,
            batch_size: 32,
            normalize: None,
            precision: Precision::F32,
            max_batch_tokens: 16384,
        }
    }
}

/// Per-call options of [`Embedder::encode_with`]: which prompt to prepend, as
/// sentence-transformers' `encode(prompt_name=..., prompt=...)` chooses it. `prompt` wins over
/// `prompt_name`; with neither, the model's `default_prompt_name` applies (if it has one); an
/// empty prompt (`prompt: Some("")`) embeds the text alone, even for a model with a default.
///
/// ```
/// use deberta_embed::{Device, Embedder, EncodeOptions};
///
/// # fn main() -> deberta_embed::Result<()> {
/// // A test model whose prompts are {"query": "query: ", "passage": "passage: ", "plain": ""},
/// // "query" by default.
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/prompts/prompts_default");
/// let embedder = Embedder::load(dir, Device::Cpu)?;
/// let query = EncodeOptions { prompt_name: Some("query"), ..Default::default() };
/// let p = embedder.resolve_prompt(&query)?.expect("a prompt");
/// assert_eq!((p.text.as_str(), p.length), ("query: ", 8)); // sentence-transformers' prompt_length
///
/// // The default prompt applies without options; the same text spelled out gives the same rows.
/// let by_default = embedder.encode(&["Hello world!"])?;
/// let spelled = EncodeOptions { prompt: Some("query: "), ..Default::default() };
/// assert_eq!(by_default, embedder.encode_with(&["Hello world!"], &spelled)?);
/// let none = EncodeOptions { prompt: Some(""), ..Default::default() };
/// assert_ne!(by_default, embedder.encode_with(&["Hello world!"], &none)?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeOptions<'a> {
    /// A key of the model's prompts (config_sentence_transformers.json); an unknown name is
    /// an error.
    pub prompt_name: Option<&'a str>,
    /// The prompt text itself.
    pub prompt: Option<&'a str>,
}

/// A prompt as it applies to one model: its text, prepended to every input before tokenizing
/// (so it counts against max_seq_length), and its length in tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPrompt {
    /// Prepended to each text as it is (sentence-transformers: `prompt + text`).
    pub text: String,
    /// Tokens of the prompt tokenized alone, `[CLS]` included and the closing `[SEP]` not,
    /// after truncation (sentence-transformers' `prompt_length`). With the Pooling module's
    /// `include_prompt: false` this many leading tokens are left out of pooling.
    pub length: usize,
}

impl ResolvedPrompt {
    /// `text` with the prompt in front.
    pub fn apply(&self, text: &str) -> String {
        let mut s = String::with_capacity(self.text.len() + text.len());
        s.push_str(&self.text);
        s.push_str(text);
        s
    }
}

/// Embeddings of a list of texts: row-major f32, one row per input, in input order.
///
/// ```
/// use deberta_embed::Embeddings;
///
/// # fn main() -> deberta_embed::Result<()> {
/// let emb = Embeddings::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3)?; // 2 rows of 3
/// assert_eq!((emb.len(), emb.dim()), (2, 3));
/// assert_eq!(emb.row(1), &[4.0, 5.0, 6.0]);
/// assert_eq!(emb.iter().count(), 2);
/// assert!(Embeddings::from_vec(vec![1.0; 4], 3).is_err()); // not whole rows
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    data: Vec<f32>,
    dim: usize,
}

impl Embeddings {
    /// Wrap row-major data of width `dim`.
    pub fn from_vec(data: Vec<f32>, dim: usize) -> Result<Self> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(Error::Input(format!(
                "{} values do not form rows of width {dim}",
                data.len()
            )));
        }
        Ok(Embeddings { data, dim })
    }
    /// Width of each embedding.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Row `i` (panics if out of range, like slice indexing).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
    /// All rows.
    pub fn iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.dim)
    }
    /// The flat row-major buffer.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
    /// The flat row-major buffer, mutable (the shape stays).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }
    /// Take the flat buffer.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

/// The backbone on its device.
#[allow(clippy::large_enum_variant)] // one per Embedder; the CPU variant is the big one
enum Engine {
    Cpu {
        model: CpuModel,
        state: Mutex<CpuState>,
    },
    #[cfg(feature = "cuda")]
    Cuda(backend::cuda::CudaModel),
}

/// A loaded model: tokenizer + backbone + pooling, ready to embed. A cross-encoder's is the
/// same with a classification head after `[CLS]` pooling ([`CrossEncoder`] wraps it): its
/// "embeddings" are the logits.
///
/// `Embedder` is `Send + Sync`: threads may share one (calls on the CPU take turns on its
/// forward; each call is parallel inside).
///
/// ```
/// use deberta_embed::{Device, Embedder};
///
/// # fn main() -> deberta_embed::Result<()> {
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/st6_proj_cls_norm");
/// let embedder = Embedder::load(dir, Device::Cpu)?;
/// assert_eq!((embedder.dim(), embedder.max_seq_length()), (32, 40));
/// // what the model sees: [CLS] pieces [SEP]
/// assert_eq!(embedder.token_ids(&["Hello world!"])?[0], [1, 85, 6, 635, 635, 637, 156, 591, 2]);
/// let emb = embedder.encode(&["Hello world!", "Café naïve résumé"])?;
/// assert!((emb.row(0)[0] - -0.177_861).abs() < 1e-4); // sentence-transformers 6.3
/// // batching does not change a row (beyond float rounding)
/// let alone = embedder.encode(&["Café naïve résumé"])?;
/// assert!(alone.row(0).iter().zip(emb.row(1)).all(|(a, b)| (a - b).abs() <= 1e-5));
///
/// fn shared<T: Send + Sync>(_: &T) {}
/// shared(&embedder); // one Embedder may serve many threads
/// # Ok(())
/// # }
/// ```
pub struct Embedder {
    pipeline: PipelineConfig,
    tokenizer: TextTokenizer,
    cfg: ModelConfig,
    engine: Engine,
    device: Device,
    pool: Option<rayon::ThreadPool>,
    opts: EmbedderOptions,
    num_params: usize,
    head: Option<(cross::ClassifierHead, cross::HeadConfig)>,
}

impl Embedder {
    /// Load a model directory, or a hub id (`org/name`, revision `main`), with default options.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::load_with(dir, device, EmbedderOptions::default())
    }

    /// Load a model directory, or a hub id (`org/name`, revision `main`): an existing path
    /// wins; an id is taken from the Hugging Face cache, downloaded there first if needed
    /// ([`hub::resolve_model`] with [`hub::HubOptions::default`], which follows `HF_ENDPOINT`,
    /// `HF_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE`; resolve with it yourself for another revision).
    pub fn load_with(dir: impl AsRef<Path>, device: Device, opts: EmbedderOptions) -> Result<Self> {
        check_device(device, opts.precision)?;
        let dir = hub::resolve_model(dir.as_ref(), &hub::HubOptions::default())?;
        let (pipeline, cfg) = PipelineConfig::load(&dir)?;
        let tokenizer = TextTokenizer::for_pipeline(&pipeline, &cfg)?;
        let ck = Checkpoint::open_dir(&pipeline.transformer_dir)?;
        let weights = HostWeights::load(&ck, &cfg)?;
        ck.release_resident_pages();
        drop(ck);
        Self::from_parts(pipeline, tokenizer, cfg, weights, device, opts, None)
    }

    /// Load a sequence-classification checkpoint: backbone, tokenizer and head (see
    /// [`CrossEncoder::load_with`]).
    pub(crate) fn load_cross_encoder(
        dir: &Path,
        device: Device,
        opts: EmbedderOptions,
    ) -> Result<Self> {
        check_device(device, opts.precision)?;
        let dir = hub::resolve_model(dir, &hub::HubOptions::default())?;
        let (mut pipeline, cfg) = PipelineConfig::load(&dir)?;
        if pipeline.has_pooling_module {
            return Err(Error::config(
                dir.join("modules.json"),
                "lists a Pooling module: this is a sentence-embedding model, not a cross-encoder",
            ));
        }
        pipeline.pooling = cross::CLS.to_vec();
        pipeline.normalize = false;
        let head_cfg = cross::HeadConfig::load(&dir, &pipeline.transformer_dir, &cfg)?;
        if cfg.type_vocab_size == 1 {
            return Err(Error::config(
                pipeline.transformer_dir.join("config.json"),
                "type_vocab_size is 1: the second text of a pair has token type 1, which the model has no embedding for",
            ));
        }
        let tokenizer = TextTokenizer::for_pipeline(&pipeline, &cfg)?;
        let ck = Checkpoint::open_dir(&pipeline.transformer_dir)?;
        let weights = HostWeights::load(&ck, &cfg)?;
        let head = cross::ClassifierHead::load(&ck, &cfg, &head_cfg)?;
        ck.release_resident_pages();
        drop(ck);
        let opts = EmbedderOptions {
            normalize: Some(false),
            ..opts
        };
        Self::from_parts(
            pipeline,
            tokenizer,
            cfg,
            weights,
            device,
            opts,
            Some((head, head_cfg)),
        )
    }

    /// The deberta-v3-xsmall architecture with deterministic random weights and no tokenizer
    /// (for benchmarks on a machine without a checkpoint): use [`SyntheticEmbedder::encode_ids`].
    #[doc(hidden)]
    pub fn synthetic_xsmall(opts: EmbedderOptions) -> Result<SyntheticEmbedder> {
        let cfg = ModelConfig::xsmall();
        let weights = HostWeights::random(&cfg, 0x5EED);
        let num_params = weights.num_params();
        let max_len = cfg.max_position_embeddings;
        let pool = build_pool(opts.threads)?;
        Ok(SyntheticEmbedder {
            model: CpuModel::new(cfg, weights, max_len, opts.precision),
            state: Mutex::new(CpuState::default()),
            pool,
            pooling: vec![PoolingMode::Mean],
            num_params,
        })
    }

    fn from_parts(
        pipeline: PipelineConfig,
        tokenizer: TextTokenizer,
        cfg: ModelConfig,
        weights: HostWeights,
        device: Device,
        opts: EmbedderOptions,
        head: Option<(cross::ClassifierHead, cross::HeadConfig)>,
    ) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(Error::Input("batch size must be at least 1".into()));
        }
        if opts.max_batch_tokens == 0 {
            return Err(Error::Input("max_batch_tokens must be at least 1".into()));
        }
        if cfg.position_biased_input && pipeline.max_seq_length > cfg.max_position_embeddings {
            return Err(Error::config(
                pipeline.transformer_dir.join("config.json"),
                format!(
                    "max_seq_length {} exceeds max_position_embeddings {} of a position_biased_input model",
                    pipeline.max_seq_length, cfg.max_position_embeddings
                ),
            ));
        }
        let num_params = weights.num_params() + head.as_ref().map_or(0, |(h, _)| h.num_params());
        let pool = build_pool(opts.threads)?;
        let engine = match device {
            Device::Cpu => Engine::Cpu {
                model: CpuModel::new(
                    cfg.clone(),
                    weights,
                    pipeline.max_seq_length,
                    opts.precision,
                ),
                state: Mutex::new(CpuState::default()),
            },
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => {
                // Pairs of a model with token types: the GPU embedding kernel adds one type row
                // to every token, so the types go into a widened vocabulary instead (row
                // `id + t * V` = word `id` + type `t`), which the folded ids index directly.
                let (mut dev_cfg, mut weights) = (cfg.clone(), weights);
                if head.is_some() && cfg.type_vocab_size > 1 {
                    fold_types_into_vocab(&mut dev_cfg, &mut weights);
                }
                Engine::Cuda(backend::cuda::CudaModel::new(
                    &dev_cfg,
                    &weights,
                    pipeline.max_seq_length,
                    ordinal,
                    opts.precision,
                )?)
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => return Err(no_cuda()),
        };
        Ok(Embedder {
            pipeline,
            tokenizer,
            cfg,
            engine,
            device,
            pool,
            opts,
            num_params,
            head,
        })
    }

    /// Width of the embeddings (for a cross-encoder: its number of labels).
    pub fn dim(&self) -> usize {
        match &self.head {
            Some((h, _)) => h.num_labels(),
            None => pooling::pooled_dim(&self.pipeline.pooling, self.cfg.hidden_size),
        }
    }

    /// What the model is: a sentence embedder, or a cross-encoder scoring pairs.
    pub fn kind(&self) -> ModelKind {
        if self.head.is_some() {
            ModelKind::CrossEncoder
        } else {
            ModelKind::Embedding
        }
    }

    /// A cross-encoder's head settings (labels, activation); `None` for an embedding model.
    pub fn head_config(&self) -> Option<&cross::HeadConfig> {
        self.head.as_ref().map(|(_, c)| c)
    }

    /// Token ids of text pairs as a cross-encoder sees them (see
    /// [`TextTokenizer::encode_pair_batch`]; token types folded in when the model has them),
    /// and whether each pair was longer than max_seq_length (cut when `truncate`).
    pub fn pair_ids(
        &self,
        pairs: &[(&str, &str)],
        truncate: bool,
    ) -> Result<Vec<(Vec<u32>, bool)>> {
        let stride = (self.cfg.type_vocab_size > 1).then_some(self.cfg.vocab_size);
        self.install(|| self.tokenizer.encode_pair_batch(pairs, stride, truncate))
    }
    /// Inputs are truncated to this many tokens, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.pipeline.max_seq_length
    }
    /// The backbone's resolved config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    /// The options it was loaded with.
    pub fn options(&self) -> &EmbedderOptions {
        &self.opts
    }

    /// The device the forward runs on.
    pub fn device(&self) -> Device {
        self.device
    }
    /// Pooling, normalization and file locations.
    pub fn pipeline(&self) -> &PipelineConfig {
        &self.pipeline
    }
    /// Parameters of the backbone.
    pub fn num_params(&self) -> usize {
        self.num_params
    }
    /// Whether outputs are L2-normalized (never for a cross-encoder's logits).
    pub fn normalizes(&self) -> bool {
        self.head.is_none() && self.opts.normalize.unwrap_or(self.pipeline.normalize)
    }

    /// The model's named prompts (config_sentence_transformers.json, with sentence-transformers'
    /// empty `query` and `document` defaults).
    pub fn prompts(&self) -> &std::collections::BTreeMap<String, String> {
        &self.pipeline.prompts
    }

    /// The prompt applied when a call names none.
    pub fn default_prompt_name(&self) -> Option<&str> {
        self.pipeline.default_prompt_name.as_deref()
    }

    /// The prompt `opts` asks for, as sentence-transformers resolves it (see [`EncodeOptions`]):
    /// `None` when no prompt applies or the prompt is empty. An unknown `prompt_name` is an
    /// [`Error::Input`] naming the model's prompts.
    pub fn resolve_prompt(&self, opts: &EncodeOptions<'_>) -> Result<Option<ResolvedPrompt>> {
        let prompts = &self.pipeline.prompts;
        let text = match (opts.prompt, opts.prompt_name) {
            (Some(p), _) => p,
            (None, Some(name)) => prompts.get(name).ok_or_else(|| {
                Error::Input(format!(
                    "unknown prompt_name {name:?}: this model's prompts are {}",
                    config::prompt_names(prompts)
                ))
            })?,
            (None, None) => match &self.pipeline.default_prompt_name {
                Some(name) => prompts.get(name).map_or("", String::as_str),
                None => "",
            },
        };
        if text.is_empty() {
            return Ok(None);
        }
        let alone = self.tokenizer.tokenize(&[text], true)?;
        let t = alone
            .first()
            .ok_or_else(|| Error::Input("the prompt did not tokenize".into()))?;
        let length = t.ids.len() - usize::from(t.special.last() == Some(&true));
        Ok(Some(ResolvedPrompt {
            text: text.to_string(),
            length,
        }))
    }

    /// Tokens left out of pooling at the start of each input prompted with `prompt`: its
    /// length when the Pooling module has `include_prompt: false`, else 0.
    pub(crate) fn pooling_skip(&self, prompt: Option<&ResolvedPrompt>) -> usize {
        match prompt {
            Some(p) if !self.pipeline.include_prompt => p.length,
            _ => 0,
        }
    }

    /// Each text as the model sees it (truncated, with special tokens): ids, vocabulary pieces,
    /// special-token flags, character offsets into the text, and whether truncation cut it.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokenized>> {
        self.tokenizer.tokenize(texts, true)
    }

    /// [`Embedder::tokenize`] without truncation: every token of each text (for counting or
    /// chunking; what the model sees is cut at [`Embedder::max_seq_length`]).
    pub fn tokenize_all(&self, texts: &[&str]) -> Result<Vec<Tokenized>> {
        self.tokenizer.tokenize(texts, false)
    }

    /// The tokenizer, bound to this model's max_seq_length and vocabulary.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Only the token ids of [`Embedder::tokenize`] (what [`Embedder::encode_ids`] takes).
    pub fn token_ids(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        self.tokenizer.encode_batch(texts)
    }

    /// Embed texts; rows come back in input order. The model's default prompt, if it has one,
    /// is prepended, as sentence-transformers' `encode` does ([`Embedder::encode_with`] picks
    /// another prompt or none).
    pub fn encode(&self, texts: &[&str]) -> Result<Embeddings> {
        self.encode_with(texts, &EncodeOptions::default())
    }

    /// [`Embedder::encode`] with a prompt chosen by `opts`: the prompt is prepended to each
    /// text before tokenizing, so truncation to max_seq_length counts its tokens.
    pub fn encode_with(&self, texts: &[&str], opts: &EncodeOptions<'_>) -> Result<Embeddings> {
        let prompt = self.resolve_prompt(opts)?;
        self.encode_prompted(texts, prompt.as_ref())
    }

    fn encode_prompted(
        &self,
        texts: &[&str],
        prompt: Option<&ResolvedPrompt>,
    ) -> Result<Embeddings> {
        let ids = match prompt {
            None => self.install(|| self.tokenizer.encode_batch(texts))?,
            Some(p) => {
                let owned: Vec<String> = texts.iter().map(|t| p.apply(t)).collect();
                let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
                self.install(|| self.tokenizer.encode_batch(&refs))?
            }
        };
        let skip = vec![self.pooling_skip(prompt); ids.len()];
        self.encode_ids_with(&ids, &skip, self.normalizes())
    }

    /// Embed `texts` in chunks of `chunk` sentences, handing each chunk's embeddings to
    /// `sink` in order (for inputs too large to hold every embedding at once). On a GPU the
    /// next chunk is tokenized on a host thread while the device embeds the current one; on
    /// the CPU, where tokenizer and forward share the cores, one after the other. Stops at the
    /// first error, from the model or from `sink` (whose error type `E` takes the model's).
    pub fn encode_chunked<E: From<Error>>(
        &self,
        texts: &[&str],
        chunk: usize,
        sink: impl FnMut(Embeddings) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.encode_chunked_with(texts, chunk, &EncodeOptions::default(), sink)
    }

    /// [`Embedder::encode_chunked`] with the prompt `opts` chooses.
    pub fn encode_chunked_with<E: From<Error>>(
        &self,
        texts: &[&str],
        chunk: usize,
        opts: &EncodeOptions<'_>,
        sink: impl FnMut(Embeddings) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let overlap = matches!(self.device, Device::Cuda(_));
        let prompt = self.resolve_prompt(opts)?;
        self.encode_chunked_inner(texts, chunk, overlap, prompt.as_ref(), sink)
    }

    fn encode_chunked_inner<E: From<Error>>(
        &self,
        texts: &[&str],
        chunk: usize,
        overlap: bool,
        prompt: Option<&ResolvedPrompt>,
        mut sink: impl FnMut(Embeddings) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let chunk = chunk.max(1);
        if !overlap {
            for c in texts.chunks(chunk) {
                sink(self.encode_prompted(c, prompt)?)?;
            }
            return Ok(());
        }
        let skip = self.pooling_skip(prompt);
        std::thread::scope(|s| {
            // One chunk of ids waits while the model embeds another: tokenization stays one
            // chunk ahead, no further.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Vec<u32>>>>(1);
            s.spawn(move || {
                for c in texts.chunks(chunk) {
                    let prompted: Vec<String>;
                    let c: Vec<&str> = match prompt {
                        None => c.to_vec(),
                        Some(p) => {
                            prompted = c.iter().map(|t| p.apply(t)).collect();
                            prompted.iter().map(String::as_str).collect()
                        }
                    };
                    let ids = self.install(|| self.tokenizer.encode_batch(&c));
                    let failed = ids.is_err();
                    // A closed channel means the consumer stopped (an error): stop too.
                    if tx.send(ids).is_err() || failed {
                        break;
                    }
                }
            });
            // Returning early drops `rx`, which ends the tokenizer thread before the scope
            // joins it.
            for ids in rx {
                let ids = ids?;
                let skips = vec![skip; ids.len()];
                sink(self.encode_ids_with(&ids, &skips, self.normalizes())?)?;
            }
            Ok(())
        })
    }

    /// Embed pre-tokenized sequences (ids from [`Embedder::token_ids`]).
    pub fn encode_ids(&self, ids: &[Vec<u32>]) -> Result<Embeddings> {
        self.encode_ids_with(ids, &[], self.normalizes())
    }

    /// [`Embedder::encode_ids`] without the final L2 normalization, whatever
    /// [`Embedder::normalizes`] says: the pooled vectors, for callers that normalize per
    /// request (the server's `/embed` takes a `normalize` flag).
    pub fn encode_ids_pooled(&self, ids: &[Vec<u32>]) -> Result<Embeddings> {
        self.encode_ids_with(ids, &[], false)
    }

    /// [`Embedder::encode_ids`] with the first `skip[i]` tokens of sequence `i` left out of
    /// pooling (ids of prompted texts: [`Embedder::pooling_skip`] of the prompt).
    pub(crate) fn encode_ids_skipping(
        &self,
        ids: &[Vec<u32>],
        skip: &[usize],
    ) -> Result<Embeddings> {
        self.encode_ids_with(ids, skip, self.normalizes())
    }

    /// [`Embedder::encode_ids_pooled`] with the first `skip[i]` tokens of sequence `i` left out
    /// of pooling ([`Embedder::pooling_skip`] of its prompt; an empty `skip` leaves out none).
    /// The server's batcher is its one caller.
    #[cfg(feature = "server")]
    pub(crate) fn encode_ids_pooled_skipping(
        &self,
        ids: &[Vec<u32>],
        skip: &[usize],
    ) -> Result<Embeddings> {
        self.encode_ids_with(ids, skip, false)
    }

    fn encode_ids_with(
        &self,
        ids: &[Vec<u32>],
        skip: &[usize],
        normalize: bool,
    ) -> Result<Embeddings> {
        if !skip.is_empty() && skip.len() != ids.len() {
            return Err(Error::Input(format!(
                "{} pooling offsets for {} sequences",
                skip.len(),
                ids.len()
            )));
        }
        let skip = if skip.iter().all(|&s| s == 0) {
            &[][..]
        } else {
            skip
        };
        let limit = self.pipeline.max_seq_length;
        // a cross-encoder's ids may carry a token type (`id + t * vocab_size`)
        let id_limit = match &self.head {
            Some(_) => self.cfg.vocab_size * self.cfg.type_vocab_size.max(1),
            None => self.cfg.vocab_size,
        };
        for (i, s) in ids.iter().enumerate() {
            if s.len() > limit {
                return Err(Error::Input(format!(
                    "sequence {i} has {} tokens, more than max_seq_length {limit}",
                    s.len()
                )));
            }
            if let Some(&bad) = s.iter().find(|&&t| t as usize >= id_limit) {
                return Err(Error::Input(format!(
                    "sequence {i}: token id {bad} is outside the vocabulary"
                )));
            }
        }
        let modes = &self.pipeline.pooling;
        let mut out = match &self.engine {
            Engine::Cpu { model, state } => {
                // Locked here, on the caller's thread, before entering the worker pool: a
                // caller waiting for the lock inside the pool could be run (stolen) by the very
                // worker that holds it, in the middle of its forward, and wait for itself.
                let mut st = lock_state(state);
                let st: &mut CpuState = &mut st;
                let dim = pooling::pooled_dim(modes, self.cfg.hidden_size);
                let (batch, tokens) = (self.opts.batch_size, self.opts.max_batch_tokens);
                self.install(|| run_batches(model, st, ids, skip, modes, dim, batch, tokens))?
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(m) => {
                let (batch, tokens) = (self.opts.batch_size, self.opts.max_batch_tokens);
                m.encode_batches_skipping(ids, skip, batch, tokens, modes)?
            }
        };
        if let Some((head, _)) = &self.head {
            // `out` holds the [CLS] rows (the pipeline's pooling is CLS)
            out = head.apply(&out);
        } else if normalize {
            for row in out.chunks_exact_mut(self.dim()) {
                pooling::l2_normalize(row);
            }
        }
        check_finite(&out)?;
        Embeddings::from_vec(out, self.dim())
    }

    /// Every layer's output for one sequence of ids (index 0 = embedding output), [n, H] each:
    /// the per-layer comparison the tests make against transformers.
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        if ids.len() > self.pipeline.max_seq_length {
            return Err(Error::Input("sequence longer than max_seq_length".into()));
        }
        match &self.engine {
            Engine::Cpu { model, state } => {
                let mut guard = state.lock().map_err(|_| poisoned())?;
                let st: &mut CpuState = &mut guard;
                self.install(|| model.hidden_states(st, ids))
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(m) => m.hidden_states(ids),
        }
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}

/// The synthetic xsmall model of `bench --synthetic xsmall`: the same forward and pooling,
/// fed with token ids.
#[doc(hidden)]
pub struct SyntheticEmbedder {
    model: CpuModel,
    state: Mutex<CpuState>,
    pool: Option<rayon::ThreadPool>,
    pooling: Vec<PoolingMode>,
    num_params: usize,
}

impl SyntheticEmbedder {
    /// Embed token-id sequences (any ids below 128100), in one batch per call.
    pub fn encode_ids(&self, ids: &[Vec<u32>]) -> Result<Embeddings> {
        let dim = self.model.config().hidden_size;
        for s in ids {
            if s.len() > self.model.max_len()
                || s.iter()
                    .any(|&t| t as usize >= self.model.config().vocab_size)
            {
                return Err(Error::Input("synthetic input out of range".into()));
            }
        }
        // (locked before entering the pool: see `Embedder::encode_ids_pooled_skipping`)
        let mut st = lock_state(&self.state);
        let st: &mut CpuState = &mut st;
        let (model, modes) = (&self.model, &self.pooling);
        let mut run = move || {
            run_batches(
                model,
                st,
                ids,
                &[],
                modes,
                dim,
                ids.len().max(1),
                usize::MAX,
            )
        };
        let out = match &self.pool {
            Some(p) => p.install(run),
            None => run(),
        }?;
        Embeddings::from_vec(out, dim)
    }
    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }
    /// Parameter count.
    pub fn num_params(&self) -> usize {
        self.num_params
    }
}

/// The state of a backend, locked. A poisoned lock only means an earlier forward panicked; the
/// buffers are rewritten by the next one anyway.
fn lock_state<T>(state: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Input indices grouped into the batches every backend runs: at most `batch_size` sequences
/// and `max_tokens` tokens (a longer sequence forms a batch of its own), longest sequences
/// first (ties keep input order), so that each batch is tight.
pub(crate) fn batches_by_length(
    lens: &[usize],
    batch_size: usize,
    max_tokens: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    token_batches(&order, |i| lens[i], batch_size, max_tokens)
        .map(<[usize]>::to_vec)
        .collect()
}

/// Consecutive groups of `order` with at most `batch_size` items and at most `max_tokens`
/// tokens (an item longer than the budget forms a group of its own).
pub(crate) fn token_batches<'a>(
    order: &'a [usize],
    len: impl Fn(usize) -> usize + 'a,
    batch_size: usize,
    max_tokens: usize,
) -> impl Iterator<Item = &'a [usize]> + 'a {
    let mut rest = order;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut tokens = 0usize;
        let mut n = 0;
        while n < rest.len() && n < batch_size.max(1) {
            let l = len(rest[n]);
            if n > 0 && tokens + l > max_tokens {
                break;
            }
            tokens += l;
            n += 1;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// A model with token types as one without: the word-embedding table widened to
/// `type_vocab_size * vocab_size` rows, row `id + t * V` = word `id` + token type `t` (so ids
/// folded by [`cross::fold_type`] need no type table), and no type row added per token.
#[cfg(feature = "cuda")]
fn fold_types_into_vocab(cfg: &mut ModelConfig, w: &mut HostWeights) {
    let (v, e, t) = (cfg.vocab_size, cfg.embedding_size, cfg.type_vocab_size);
    let types = w.type_emb.take().unwrap_or_default();
    let mut table = Vec::with_capacity(v * e * t);
    for trow in types.chunks_exact(e).take(t) {
        for word in w.word_emb.chunks_exact(e).take(v) {
            table.extend(word.iter().zip(trow).map(|(a, b)| a + b));
        }
    }
    w.word_emb = table.into();
    w.type_emb0 = None;
    cfg.vocab_size = v * t;
    cfg.type_vocab_size = 0;
}

fn check_finite(v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(p) => Err(Error::Device(format!(
            "the forward produced a non-finite value (element {p}); the weights may be corrupt"
        ))),
        None => Ok(()),
    }
}

fn poisoned() -> Error {
    Error::Device("internal state poisoned by an earlier panic".into())
}

fn check_device(device: Device, precision: Precision) -> Result<()> {
    match device {
        Device::Cpu if precision == Precision::F16 => Err(Error::Input(format!(
            "dtype {precision} is not available on the CPU (use f32, or bf16 for bf16 weights)"
        ))),
        Device::Cpu => Ok(()),
        Device::Cuda(_) if precision == Precision::INT8 => Err(Error::Input(format!(
            "dtype {precision} is only available on the CPU (use f32, f16 or bf16 on CUDA)"
        ))),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => Ok(()),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(no_cuda()),
    }
}

#[cfg(not(feature = "cuda"))]
fn no_cuda() -> Error {
    Error::Device("CUDA support is not compiled in: rebuild with `--features cuda`".into())
}

/// Most worker threads an [`Embedder`] starts: 4 per core. More only adds stacks and context
/// switches (and thousands of them exhaust memory or the process limit).
pub fn max_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The embedder's own worker pool (default: one thread per core). The forward always runs
/// inside it, so the calling thread is a worker that takes part in the GEMM jobs instead of
/// sleeping until a global-pool worker finishes (which costs as much as a small GEMM).
fn build_pool(threads: Option<usize>) -> Result<Option<rayon::ThreadPool>> {
    let threads = threads.or_else(|| {
        std::thread::available_parallelism()
            .ok()
            .map(std::num::NonZeroUsize::get)
    });
    match threads {
        None => Ok(None),
        Some(0) => Err(Error::Input("threads must be at least 1".into())),
        Some(n) if n > max_threads() => Err(Error::Input(format!(
            "threads = {n} is more than {} (4 per core)",
            max_threads()
        ))),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map(Some)
            .map_err(|e| Error::Device(format!("cannot start {n} threads: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_model() -> Embedder {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/st2_v3like");
        let opts = EmbedderOptions {
            threads: Some(2),
            batch_size: 4,
            ..Default::default()
        };
        Embedder::load_with(dir, Device::Cpu, opts).expect("fixture model")
    }

    #[test]
    fn thread_counts_past_the_cap_are_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/st2_v3like");
        for threads in [0, max_threads() + 1, usize::MAX] {
            let opts = EmbedderOptions {
                threads: Some(threads),
                ..Default::default()
            };
            let err = Embedder::load_with(&dir, Device::Cpu, opts)
                .map(|_| ())
                .unwrap_err();
            assert!(err.to_string().contains("threads"), "{threads}: {err}");
        }
    }

    #[test]
    fn chunked_encoding_equals_one_call_with_and_without_overlap() {
        let e = fixture_model();
        let owned: Vec<String> = (0..23)
            .map(|i| format!("sentence number {i} {}", "word ".repeat(i % 7)))
            .collect();
        let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
        let want = e.encode(&texts).unwrap();
        for overlap in [false, true] {
            let mut rows = Vec::new();
            let mut sizes = Vec::new();
            e.encode_chunked_inner(&texts, 5, overlap, None, |emb| -> Result<()> {
                sizes.push(emb.len());
                rows.extend_from_slice(emb.as_slice());
                Ok(())
            })
            .unwrap();
            assert_eq!(sizes, [5, 5, 5, 5, 3], "overlap {overlap}");
            assert_eq!(rows, want.as_slice(), "overlap {overlap}");
        }
    }

    #[test]
    fn chunked_encoding_stops_at_the_first_sink_error() {
        let e = fixture_model();
        let texts = ["a"; 40];
        for overlap in [false, true] {
            let mut calls = 0;
            let r = e.encode_chunked_inner(&texts, 4, overlap, None, |_| {
                calls += 1;
                if calls == 2 {
                    return Err(Error::Input("disk full".into()));
                }
                Ok(())
            });
            assert!(matches!(r, Err(Error::Input(m)) if m == "disk full"));
            assert_eq!(calls, 2, "overlap {overlap}");
        }
    }

    #[test]
    fn batches_sorted_longest_first() {
        let lens = [3, 10, 1, 10, 7];
        let b = batches_by_length(&lens, 2, usize::MAX);
        assert_eq!(b, vec![vec![1, 3], vec![4, 0], vec![2]]);
        let all: usize = b.iter().map(Vec::len).sum();
        assert_eq!(all, lens.len());
        assert!(batches_by_length(&[], 4, 100).is_empty());
        // the token budget cuts too: 10 + 10 > 15, 7 + 3 + 1 <= 11
        let b = batches_by_length(&lens, 8, 15);
        assert_eq!(b, vec![vec![1], vec![3], vec![4, 0, 2]]);
        // a sequence over the budget still gets a batch
        assert_eq!(batches_by_length(&[40, 2], 8, 16), vec![vec![0], vec![1]]);
    }

    #[test]
    fn batches_respect_count_and_token_budget() {
        let lens = [10, 8, 8, 5, 3, 3, 1];
        let order: Vec<usize> = (0..lens.len()).collect();
        let groups: Vec<Vec<usize>> = token_batches(&order, |i| lens[i], 3, 16)
            .map(<[usize]>::to_vec)
            .collect();
        assert_eq!(groups, vec![vec![0], vec![1, 2], vec![3, 4, 5], vec![6]]);
        let all: Vec<usize> = token_batches(&order, |i| lens[i], 100, 1)
            .flatten()
            .copied()
            .collect();
        assert_eq!(all, order, "every item exactly once, oversize items alone");
    }
}
