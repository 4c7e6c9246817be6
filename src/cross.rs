//! Cross-encoders: DeBERTa-v2/v3 sequence-classification checkpoints that score a text pair
//! jointly (rerankers, NLI and STS classifiers), as sentence-transformers' `CrossEncoder` does.
//!
//! The backbone forward is the embedding one (packed, padding-free batches; CPU or CUDA); a
//! pair is tokenized `[CLS] a [SEP] b [SEP]`, the second text with token type 1 when the model
//! has token-type embeddings, truncated longest-first to max_seq_length. The head is
//! transformers' `DebertaV2ForSequenceClassification`: the `[CLS]` hidden state through the
//! ContextPooler (`pooler.dense`, then `pooler_hidden_act`; dropout is inactive at inference)
//! and the `classifier` Linear, giving `num_labels` logits. It runs on the host for every device
//! (a few thousand multiply-adds per pair).
//!
//! Scores: `CrossEncoder.predict` applies the model's activation function to the logits — the
//! one saved by sentence-transformers (`activation_fn` in config_sentence_transformers.json,
//! else `sentence_transformers.activation_fn` or the pre-4.0 `sbert_ce_default_activation_function`
//! in config.json), else sigmoid for one label and identity for more.
//!
//! ```
//! use deberta_embed::{CrossEncoder, Device};
//!
//! # fn main() -> deberta_embed::Result<()> {
//! // A tiny test reranker of this repository (one label, tanh activation).
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/ce_st6_1label_tanh");
//! let ce = CrossEncoder::load(dir, Device::Cpu)?;
//! let scores = ce.predict(&[("Hello world!", "  leading and trailing spaces  ")])?;
//! assert!((scores.row(0)[0] - 0.985_727).abs() < 1e-4); // sentence-transformers 6.3
//!
//! // `rank`: documents best first, as `CrossEncoder.rank` orders them.
//! let query = "Line one\twith a tab\nand a newline\r\nand  more   spaces.";
//! let docs = ["a", "Café naïve résumé", "  leading and trailing spaces  "];
//! let ranked = ce.rank(query, &docs, None)?;
//! let order: Vec<usize> = ranked.iter().map(|r| r.index).collect();
//! assert_eq!(order, [1, 2, 0]);
//! assert!((ranked[0].score - 0.960_070).abs() < 1e-4); // sentence-transformers 6.3
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::config::{ModelConfig, PipelineConfig, PoolingMode};
use crate::error::{Error, Result};
use crate::{Device, Embedder, EmbedderOptions, Embeddings};

/// An activation function as transformers' `ACT2FN` names it (`pooler_hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HiddenAct {
    /// `gelu`, `gelu_python`: exact erf GELU.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `gelu_fast`: the tanh approximation written as transformers' FastGELU.
    GeluFast,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    Relu,
    Relu6,
    /// `silu`, `swish`.
    Silu,
    Mish,
    Tanh,
    Sigmoid,
    /// `linear`, `identity`.
    Identity,
}

impl HiddenAct {
    /// The ACT2FN name, or `None` if it is not one we run.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" | "gelu_python" => HiddenAct::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => HiddenAct::GeluTanh,
            "gelu_fast" => HiddenAct::GeluFast,
            "quick_gelu" => HiddenAct::QuickGelu,
            "relu" => HiddenAct::Relu,
            "relu6" => HiddenAct::Relu6,
            "silu" | "swish" => HiddenAct::Silu,
            "mish" => HiddenAct::Mish,
            "tanh" => HiddenAct::Tanh,
            "sigmoid" => HiddenAct::Sigmoid,
            "linear" | "identity" => HiddenAct::Identity,
            _ => return None,
        })
    }

    /// Apply to one value (in f64 inside, so the approximations agree with torch's f32 to
    /// rounding).
    pub fn apply(self, x: f32) -> f32 {
        let v = x as f64;
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        let y = match self {
            HiddenAct::Gelu => return crate::backend::cpu::ops::gelu(x),
            HiddenAct::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
            }
            HiddenAct::GeluFast => {
                0.5 * v * (1.0 + (v * 0.797_884_560_8 * (1.0 + 0.044715 * v * v)).tanh())
            }
            HiddenAct::QuickGelu => v * sig(1.702 * v),
            HiddenAct::Relu => v.max(0.0),
            HiddenAct::Relu6 => v.clamp(0.0, 6.0),
            HiddenAct::Silu => v * sig(v),
            HiddenAct::Mish => v * (v.exp().ln_1p()).tanh(),
            HiddenAct::Tanh => v.tanh(),
            HiddenAct::Sigmoid => sig(v),
            HiddenAct::Identity => v,
        };
        y as f32
    }
}

/// What `CrossEncoder.predict` applies to the logits (`activation_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreActivation {
    /// `torch.nn.Identity`: the raw logits.
    Identity,
    /// `torch.nn.Sigmoid`.
    Sigmoid,
    /// `torch.nn.Tanh`.
    Tanh,
    /// `torch.nn.Softmax` (over the labels of each pair).
    Softmax,
    /// `torch.nn.ReLU`.
    Relu,
}

impl ScoreActivation {
    /// From the dotted class path sentence-transformers saves (`torch.nn.modules.activation.Sigmoid`,
    /// `torch.nn.Sigmoid`, ...).
    pub fn from_class_path(path: &str) -> Option<Self> {
        let last = path.rsplit('.').next().unwrap_or(path);
        Some(match last {
            "Identity" => ScoreActivation::Identity,
            "Sigmoid" => ScoreActivation::Sigmoid,
            "Tanh" => ScoreActivation::Tanh,
            "Softmax" => ScoreActivation::Softmax,
            "ReLU" => ScoreActivation::Relu,
            _ => return None,
        })
    }

    /// The class name, as sentence-transformers reports it.
    pub fn name(self) -> &'static str {
        match self {
            ScoreActivation::Identity => "Identity",
            ScoreActivation::Sigmoid => "Sigmoid",
            ScoreActivation::Tanh => "Tanh",
            ScoreActivation::Softmax => "Softmax",
            ScoreActivation::Relu => "ReLU",
        }
    }

    /// Apply to one pair's logits in place.
    pub fn apply(self, row: &mut [f32]) {
        match self {
            ScoreActivation::Identity => {}
            ScoreActivation::Sigmoid => row.iter_mut().for_each(|x| *x = sigmoid(*x)),
            ScoreActivation::Tanh => row.iter_mut().for_each(|x| *x = x.tanh()),
            ScoreActivation::Relu => row.iter_mut().for_each(|x| *x = x.max(0.0)),
            ScoreActivation::Softmax => softmax(row),
        }
    }
}

/// The logistic function, as torch computes it in f32 (to rounding).
pub fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-(x as f64)).exp())) as f32
}

/// Softmax over one row in place (max-subtracted).
pub fn softmax(row: &mut [f32]) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for x in row.iter_mut() {
        let e = ((*x - m) as f64).exp();
        *x = e as f32;
        sum += e;
    }
    for x in row.iter_mut() {
        *x = (*x as f64 / sum) as f32;
    }
}

/// The sequence-classification head: ContextPooler + classifier.
#[derive(Clone, Debug)]
pub(crate) struct ClassifierHead {
    hidden: usize,
    labels: usize,
    pooler_w: Vec<f32>, // [H, H]
    pooler_b: Vec<f32>, // [H]
    act: HiddenAct,
    classifier_w: Vec<f32>, // [L, H]
    classifier_b: Vec<f32>, // [L]
}

impl ClassifierHead {
    /// Read `pooler.dense.*` and `classifier.*` (shapes from `head`).
    pub fn load(ck: &Checkpoint, cfg: &ModelConfig, head: &HeadConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let l = head.num_labels;
        Ok(ClassifierHead {
            hidden: h,
            labels: l,
            pooler_w: ck.head_tensor("pooler.dense.weight", &[h, h])?,
            pooler_b: ck.head_tensor("pooler.dense.bias", &[h])?,
            act: head.pooler_act,
            classifier_w: ck.head_tensor("classifier.weight", &[l, h])?,
            classifier_b: ck.head_tensor("classifier.bias", &[l])?,
        })
    }

    /// Number of logits per pair.
    pub fn num_labels(&self) -> usize {
        self.labels
    }

    /// Parameters of the head.
    pub fn num_params(&self) -> usize {
        self.pooler_w.len()
            + self.pooler_b.len()
            + self.classifier_w.len()
            + self.classifier_b.len()
    }

    /// `[CLS]` hidden states `[N, H]` to logits `[N, L]` (f32 products as torch's Linear, with
    /// f64 sums: rounding differences stay far below 1e-6).
    pub fn apply(&self, cls: &[f32]) -> Vec<f32> {
        let (h, l) = (self.hidden, self.labels);
        let n = cls.len() / h;
        let mut out = vec![0.0f32; n * l];
        let mut pooled = vec![0.0f32; h];
        for (row, logits) in cls.chunks_exact(h).zip(out.chunks_exact_mut(l)) {
            for (j, p) in pooled.iter_mut().enumerate() {
                let w = &self.pooler_w[j * h..(j + 1) * h];
                let s: f64 = w.iter().zip(row).map(|(a, b)| *a as f64 * *b as f64).sum();
                *p = self.act.apply((s + self.pooler_b[j] as f64) as f32);
            }
            for (k, o) in logits.iter_mut().enumerate() {
                let w = &self.classifier_w[k * h..(k + 1) * h];
                let s: f64 = w
                    .iter()
                    .zip(&pooled)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                *o = (s + self.classifier_b[k] as f64) as f32;
            }
        }
        out
    }
}

/// The head's settings, from config.json and the sentence-transformers files.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadConfig {
    /// Logits per pair (`id2label`'s size, else `num_labels`, else transformers' default 2).
    pub num_labels: usize,
    /// Label names by index (`id2label`; `LABEL_i` where the config names none).
    pub labels: Vec<String>,
    /// `pooler_hidden_act`.
    pub pooler_act: HiddenAct,
    /// `CrossEncoder.activation_fn` as saved, else its default.
    pub activation: ScoreActivation,
}

impl HeadConfig {
    /// Read the head's settings of a model directory whose backbone config is `cfg`.
    pub fn load(dir: &Path, transformer_dir: &Path, cfg: &ModelConfig) -> Result<Self> {
        let path = transformer_dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(&path, format!("not valid JSON: {e}")))?;
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());

        let id2label: Option<Vec<(usize, String)>> = match field("id2label") {
            None => None,
            Some(Value::Object(m)) => {
                let mut out = Vec::new();
                for (k, name) in m {
                    let i = k.trim().parse::<usize>().map_err(|_| {
                        Error::config(
                            &path,
                            format!("field `id2label` has a non-integer key {k:?}"),
                        )
                    })?;
                    let name = name.as_str().ok_or_else(|| {
                        Error::config(&path, format!("field `id2label` entry {k} is not a string"))
                    })?;
                    out.push((i, name.to_string()));
                }
                Some(out)
            }
            Some(_) => return Err(Error::config(&path, "field `id2label` must be an object")),
        };
        let num_labels = match (&id2label, field("num_labels")) {
            (Some(m), _) if !m.is_empty() => m.len(),
            (_, Some(n)) => n
                .as_u64()
                .filter(|&n| (1..=1 << 20).contains(&n))
                .ok_or_else(|| {
                    Error::config(
                        &path,
                        format!("field `num_labels` must be a positive integer, found {n}"),
                    )
                })? as usize,
            _ => 2,
        };
        let mut labels: Vec<String> = (0..num_labels).map(|i| format!("LABEL_{i}")).collect();
        if let Some(m) = id2label {
            for (i, name) in m {
                let slot = labels.get_mut(i).ok_or_else(|| {
                    Error::config(
                        &path,
                        format!("field `id2label` has index {i}, beyond its {num_labels} labels"),
                    )
                })?;
                *slot = name;
            }
        }

        let pooler_hidden = match field("pooler_hidden_size") {
            None => cfg.hidden_size,
            Some(n) => n.as_u64().ok_or_else(|| {
                Error::config(
                    &path,
                    format!("field `pooler_hidden_size` must be an integer, found {n}"),
                )
            })? as usize,
        };
        if pooler_hidden != cfg.hidden_size {
            return Err(Error::config(
                &path,
                format!(
                    "field `pooler_hidden_size` ({pooler_hidden}) differs from hidden_size ({}): transformers' ContextPooler cannot run it either",
                    cfg.hidden_size
                ),
            ));
        }
        let act_name = match field("pooler_hidden_act") {
            None => "gelu".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::config(
                    &path,
                    format!("field `pooler_hidden_act` must be a string, found {other}"),
                ))
            }
        };
        let pooler_act = HiddenAct::parse(&act_name).ok_or_else(|| {
            Error::config(
                &path,
                format!(
                    "field `pooler_hidden_act` is \"{act_name}\"; supported: gelu, gelu_python, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, relu6, silu, swish, mish, tanh, sigmoid, linear"
                ),
            )
        })?;

        // sentence-transformers' precedence: config_sentence_transformers.json's activation_fn
        // (6.x saves), then config.json's `sentence_transformers.activation_fn` (4.x/5.x), then
        // the pre-4.0 key, then the default.
        let st_path = dir.join("config_sentence_transformers.json");
        let mut saved: Option<(std::path::PathBuf, String)> = None;
        if st_path.is_file() {
            let t = std::fs::read_to_string(&st_path).map_err(|e| Error::io(&st_path, e))?;
            let sv: Value = serde_json::from_str(&t)
                .map_err(|e| Error::config(&st_path, format!("not valid JSON: {e}")))?;
            if let Some(s) = sv.get("activation_fn").and_then(Value::as_str) {
                saved = Some((st_path.clone(), s.to_string()));
            }
        }
        if saved.is_none() {
            let nested = field("sentence_transformers")
                .and_then(|s| s.get("activation_fn"))
                .and_then(Value::as_str);
            let legacy = field("sbert_ce_default_activation_function").and_then(Value::as_str);
            if let Some(s) = nested.or(legacy) {
                saved = Some((path.clone(), s.to_string()));
            }
        }
        let default = if num_labels == 1 {
            ScoreActivation::Sigmoid
        } else {
            ScoreActivation::Identity
        };
        let activation = match saved {
            None => default,
            // sentence-transformers only imports `torch.*` classes without trust_remote_code
            // and otherwise falls back to the default, with a warning
            Some((_, s)) if !s.starts_with("torch.") => default,
            Some((p, s)) => ScoreActivation::from_class_path(&s).ok_or_else(|| {
                Error::config(
                    &p,
                    format!(
                        "activation_fn \"{s}\" is not supported (Identity, Sigmoid, Tanh, Softmax, ReLU)"
                    ),
                )
            })?,
        };
        Ok(HeadConfig {
            num_labels,
            labels,
            pooler_act,
            activation,
        })
    }
}

/// What kind of model a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A sentence-embedding model (or a plain backbone, mean-pooled).
    Embedding,
    /// A sequence-classification model scoring text pairs.
    CrossEncoder,
}

/// Whether a resolved model directory is a cross-encoder: sentence-transformers saved it as a
/// `CrossEncoder` (config_sentence_transformers.json `model_type`), or it is a transformers
/// `*ForSequenceClassification` checkpoint without sentence-transformers' embedding modules
/// (a Pooling module makes it an embedding model, as sentence-transformers loads it).
pub fn model_kind(dir: &Path) -> Result<ModelKind> {
    let st = dir.join("config_sentence_transformers.json");
    if st.is_file() {
        let t = std::fs::read_to_string(&st).map_err(|e| Error::io(&st, e))?;
        if let Ok(v) = serde_json::from_str::<Value>(&t) {
            match v.get("model_type").and_then(Value::as_str) {
                Some("CrossEncoder") => return Ok(ModelKind::CrossEncoder),
                Some(_) => return Ok(ModelKind::Embedding),
                None => {}
            }
        }
    }
    if dir.join("modules.json").is_file() {
        let (pipeline, _) = PipelineConfig::load(dir)?;
        if pipeline.has_pooling_module {
            return Ok(ModelKind::Embedding);
        }
        return Ok(sequence_classification(
            &pipeline.transformer_dir.join("config.json"),
        ));
    }
    Ok(sequence_classification(&dir.join("config.json")))
}

fn sequence_classification(config: &Path) -> ModelKind {
    let arch = std::fs::read_to_string(config)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("architectures").cloned());
    let seqcls = arch.as_ref().and_then(Value::as_array).is_some_and(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .any(|s| s.ends_with("ForSequenceClassification"))
    });
    if seqcls {
        ModelKind::CrossEncoder
    } else {
        ModelKind::Embedding
    }
}

/// One document's place in a ranking.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// Index of the document in the input.
    pub index: usize,
    /// Its score (activated as `predict` does, unless raw).
    pub score: f32,
}

/// Scores of pairs: `[N, num_labels]`, row-major, in input order.
pub type Scores = Embeddings;

/// A loaded cross-encoder: tokenizer + backbone + classification head.
pub struct CrossEncoder {
    inner: Embedder,
    head: HeadConfig,
}

impl CrossEncoder {
    /// Load a model directory or hub id with default options.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::load_with(dir, device, EmbedderOptions::default())
    }

    /// Load a sequence-classification checkpoint (transformers layout, or sentence-transformers'
    /// CrossEncoder layout), or a hub id. `opts.normalize` is ignored.
    pub fn load_with(dir: impl AsRef<Path>, device: Device, opts: EmbedderOptions) -> Result<Self> {
        let inner = Embedder::load_cross_encoder(dir.as_ref(), device, opts)?;
        let head = inner
            .head_config()
            .cloned()
            .ok_or_else(|| Error::Input("the model loaded without its head".into()))?;
        Ok(CrossEncoder { inner, head })
    }

    /// The backbone and tokenizer (its `encode_ids` gives logits).
    pub fn embedder(&self) -> &Embedder {
        &self.inner
    }

    /// Take the backbone and tokenizer (to serve it: `server::Server::new`, feature `server`).
    pub fn into_embedder(self) -> Embedder {
        self.inner
    }

    /// Logits per pair.
    pub fn num_labels(&self) -> usize {
        self.head.num_labels
    }

    /// Label names by index.
    pub fn labels(&self) -> &[String] {
        &self.head.labels
    }

    /// The activation `predict` applies.
    pub fn activation(&self) -> ScoreActivation {
        self.head.activation
    }

    /// Pairs are truncated (longest first) to this many tokens, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.inner.max_seq_length()
    }

    /// Token ids of each pair as the model sees them (`[CLS] a [SEP] b [SEP]`, truncated),
    /// with the token types folded in (see [`crate::tokenize::TextTokenizer::encode_pair_batch`]).
    pub fn pair_ids(&self, pairs: &[(&str, &str)]) -> Result<Vec<Vec<u32>>> {
        self.inner
            .pair_ids(pairs, true)
            .map(|v| v.into_iter().map(|(ids, _)| ids).collect())
    }

    /// Raw logits of each pair, `[N, num_labels]`.
    pub fn predict_raw(&self, pairs: &[(&str, &str)]) -> Result<Scores> {
        let ids = self.pair_ids(pairs)?;
        self.logits_of_ids(&ids)
    }

    /// Logits of pre-tokenized pairs ([`CrossEncoder::pair_ids`]). Identical sequences are run
    /// once, so equal inputs get bit-identical scores.
    pub fn logits_of_ids(&self, ids: &[Vec<u32>]) -> Result<Scores> {
        let mut unique: Vec<Vec<u32>> = Vec::new();
        let mut seen: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
        let mut slot = Vec::with_capacity(ids.len());
        for s in ids {
            let k = *seen.entry(s.as_slice()).or_insert_with(|| {
                unique.push(s.clone());
                unique.len() - 1
            });
            slot.push(k);
        }
        let out = self.inner.encode_ids_pooled(&unique)?;
        let l = out.dim();
        let mut rows = Vec::with_capacity(ids.len() * l);
        for k in slot {
            rows.extend_from_slice(out.row(k));
        }
        Embeddings::from_vec(rows, l)
    }

    /// Scores as `CrossEncoder.predict(pairs)`: the logits through the model's activation.
    pub fn predict(&self, pairs: &[(&str, &str)]) -> Result<Scores> {
        let mut s = self.predict_raw(pairs)?;
        self.activate(&mut s, false);
        Ok(s)
    }

    /// Scores as `CrossEncoder.predict(pairs, apply_softmax=True)`: the activation, then a
    /// softmax over the labels when there are several.
    pub fn predict_softmax(&self, pairs: &[(&str, &str)]) -> Result<Scores> {
        let mut s = self.predict_raw(pairs)?;
        self.activate(&mut s, true);
        Ok(s)
    }

    /// Apply the model's activation (and with `softmax`, a softmax over several labels) to
    /// logits in place.
    pub fn activate(&self, logits: &mut Scores, softmax_labels: bool) {
        let act = self.activation();
        let l = logits.dim();
        for row in logits.as_mut_slice().chunks_exact_mut(l) {
            act.apply(row);
            if softmax_labels && l > 1 {
                softmax(row);
            }
        }
    }

    /// `CrossEncoder.rank(query, documents, top_k)`: documents by descending score (ties keep
    /// input order), the first `top_k` of them. Needs a one-label model.
    pub fn rank(&self, query: &str, docs: &[&str], top_k: Option<usize>) -> Result<Vec<Ranked>> {
        self.rank_with(query, docs, top_k, false)
    }

    /// [`CrossEncoder::rank`] with raw logits as scores when `raw`.
    pub fn rank_with(
        &self,
        query: &str,
        docs: &[&str],
        top_k: Option<usize>,
        raw: bool,
    ) -> Result<Vec<Ranked>> {
        if self.num_labels() != 1 {
            return Err(Error::Input(format!(
                "ranking needs a model with one label; this one has {} (use predict)",
                self.num_labels()
            )));
        }
        let pairs: Vec<(&str, &str)> = docs.iter().map(|d| (query, *d)).collect();
        let mut s = self.predict_raw(&pairs)?;
        if !raw {
            self.activate(&mut s, false);
        }
        Ok(rank_scores(s.as_slice(), top_k))
    }
}

/// Indices by descending score, stable (equal scores keep input order, as Python's `sorted`),
/// cut to `top_k`.
pub fn rank_scores(scores: &[f32], top_k: Option<usize>) -> Vec<Ranked> {
    let mut r: Vec<Ranked> = scores
        .iter()
        .enumerate()
        .map(|(index, &score)| Ranked { index, score })
        .collect();
    r.sort_by(|a, b| b.score.total_cmp(&a.score));
    if let Some(k) = top_k {
        r.truncate(k);
    }
    r
}

/// Fold a token type into an id: `id + type * vocab_size` (what the forward unfolds).
pub(crate) fn fold_type(id: u32, ty: u32, vocab: usize) -> u32 {
    id + ty * vocab as u32
}

/// The pooling a cross-encoder's backbone output goes through before the head.
pub(crate) const CLS: [PoolingMode; 1] = [PoolingMode::Cls];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_stable_and_cut() {
        let r = rank_scores(&[0.5, 0.9, 0.5, -1.0, 0.9], Some(4));
        let idx: Vec<usize> = r.iter().map(|x| x.index).collect();
        assert_eq!(idx, [1, 4, 0, 2]);
        assert!(rank_scores(&[1.0], Some(0)).is_empty());
    }

    #[test]
    fn activations_match_their_definitions() {
        let mut row = [1.0f32, 2.0, 3.0];
        softmax(&mut row);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|x| x.exp()).collect();
        let s: f64 = e.iter().sum();
        for (a, b) in row.iter().zip(&e) {
            assert!((*a as f64 - b / s).abs() < 1e-7);
        }
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((HiddenAct::GeluTanh.apply(1.0) - 0.841_192).abs() < 1e-6);
        assert!((HiddenAct::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((HiddenAct::Silu.apply(1.0) - 0.731_058_6).abs() < 1e-6);
        assert_eq!(HiddenAct::Relu6.apply(7.0), 6.0);
        assert_eq!(
            ScoreActivation::from_class_path("torch.nn.modules.activation.Sigmoid"),
            Some(ScoreActivation::Sigmoid)
        );
        assert_eq!(
            ScoreActivation::from_class_path("torch.nn.modules.linear.Identity"),
            Some(ScoreActivation::Identity)
        );
        assert_eq!(HiddenAct::parse("gelu_10"), None);
    }
}
