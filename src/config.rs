//! config.json + the sentence-transformers files -> a validated [`ModelConfig`] and
//! [`PipelineConfig`] (pooling, normalization, max_seq_length).
//!
//! Defaults follow transformers' `DebertaV2Config` and the attribute look-ups of
//! `modeling_deberta_v2.py` (`getattr(config, "position_buckets", -1)` and friends), so a
//! config.json that transformers accepts resolves to the same model here. Anything we cannot run
//! exactly is an error that names the offending field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Activation of the optional conv block (`conv_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf GELU (`"gelu"`).
    Gelu,
    Tanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "tanh" => Some(Activation::Tanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }
    /// Apply to one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => crate::backend::cpu::ops::gelu(x),
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.max(0.0),
        }
    }
}

/// The Conv1d + LayerNorm block some DeBERTa-v2 models apply after layer 0.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvConfig {
    pub kernel_size: usize,
    pub groups: usize,
    pub act: Activation,
}

/// The backbone's architecture, resolved and validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    /// H
    pub hidden_size: usize,
    /// E (== H unless the model has `embeddings.embed_proj`)
    pub embedding_size: usize,
    pub num_layers: usize,
    /// nH
    pub num_heads: usize,
    /// d = H / nH unless `attention_head_size` says otherwise (nH * d must equal H)
    pub head_dim: usize,
    /// I
    pub intermediate_size: usize,
    pub layer_norm_eps: f32,
    pub max_position_embeddings: usize,
    /// add `embeddings.position_embeddings[pos]` to the word embeddings
    pub position_biased_input: bool,
    /// `embeddings.token_type_embeddings` has this many rows: row 0 is added for a single text,
    /// rows 0 and 1 for the two texts of a pair (none when 0)
    pub type_vocab_size: usize,
    /// disentangled position terms at all (`relative_attention`)
    pub relative_attention: bool,
    /// resolved: -1 / 0 in the file means max_position_embeddings
    pub max_relative_positions: usize,
    /// log-bucketing of relative positions when > 0
    pub position_buckets: i64,
    /// S: `encoder.rel_embeddings` has 2S rows
    pub att_span: usize,
    /// `encoder.LayerNorm` is applied to the rel embeddings
    pub norm_rel_ebd: bool,
    /// positions projected with the layer's own query/key projections
    pub share_att_key: bool,
    pub c2p: bool,
    pub p2c: bool,
    pub conv: Option<ConvConfig>,
}

impl ModelConfig {
    /// `1 + number of position terms`: the attention scale is `1/sqrt(d * factor)`.
    /// transformers counts the configured terms even when `relative_attention` is false.
    pub fn scale_factor(&self) -> usize {
        1 + self.c2p as usize + self.p2c as usize
    }

    /// Multiply-add FLOPs (2 per MAC) of one token's forward through the encoder layers in a
    /// sequence of `seq_len` tokens: the four Linear layers (QKV, attention output, FFN up and
    /// down) plus the attention products `Q K^T`, `P V` and each enabled position term (each
    /// `2 L H` per token). Embeddings, LayerNorm, softmax and pooling are left out. xsmall:
    /// 42.5 M in the Linear layers, 43.1 M in all at L = 16, 47.2 M at L = 128.
    pub fn forward_flops_per_token(&self, seq_len: usize) -> f64 {
        let (h, i, l) = (
            self.hidden_size as f64,
            self.intermediate_size as f64,
            seq_len as f64,
        );
        let linear = 2.0 * (4.0 * h * h + 2.0 * h * i);
        let rel = self.relative_attention as usize;
        let products = 2 + rel * (self.c2p as usize + self.p2c as usize);
        let attention = products as f64 * 2.0 * l * h;
        self.num_layers as f64 * (linear + attention)
    }

    /// Whether c2p/p2c terms are actually computed.
    pub fn uses_c2p(&self) -> bool {
        self.relative_attention && self.c2p
    }
    /// Whether p2c terms are actually computed.
    pub fn uses_p2c(&self) -> bool {
        self.relative_attention && self.p2c
    }

    /// The deberta-v3-xsmall architecture (for `bench --synthetic xsmall`).
    pub fn xsmall() -> Self {
        ModelConfig {
            vocab_size: 128100,
            hidden_size: 384,
            embedding_size: 384,
            num_layers: 12,
            num_heads: 6,
            head_dim: 64,
            intermediate_size: 1536,
            layer_norm_eps: 1e-7,
            max_position_embeddings: 512,
            position_biased_input: false,
            type_vocab_size: 0,
            relative_attention: true,
            max_relative_positions: 512,
            position_buckets: 256,
            att_span: 256,
            norm_rel_ebd: true,
            share_att_key: true,
            c2p: true,
            p2c: true,
            conv: None,
        }
    }

    /// Read and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parse and validate the text of a config.json (`path` is only used in messages).
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::config(path, "expected a JSON object"))?;
        let f = Fields { obj, path };

        if let Some(mt) = obj.get("model_type") {
            match mt.as_str() {
                Some("deberta-v2") => {}
                Some(other) => {
                    return Err(f.err(
                        "model_type",
                        format!("is \"{other}\"; only \"deberta-v2\" (DeBERTa-v2/v3) is supported"),
                    ))
                }
                None => return Err(f.err("model_type", "must be a string")),
            }
        }

        let hidden_size = f.usize_or("hidden_size", 1536)?;
        let num_heads = f.usize_or("num_attention_heads", 24)?;
        let num_layers = f.usize_or("num_hidden_layers", 24)?;
        let vocab_size = f.usize_or("vocab_size", 128100)?;
        let intermediate_size = f.usize_or("intermediate_size", 6144)?;
        let embedding_size = match obj.get("embedding_size") {
            None | Some(Value::Null) => hidden_size,
            Some(_) => f.usize_or("embedding_size", hidden_size)?,
        };
        for (name, v) in [
            ("hidden_size", hidden_size),
            ("num_attention_heads", num_heads),
            ("num_hidden_layers", num_layers),
            ("vocab_size", vocab_size),
            ("intermediate_size", intermediate_size),
            ("embedding_size", embedding_size),
        ] {
            if v == 0 {
                return Err(f.err(name, "must be positive"));
            }
        }
        let head_dim = match obj.get("attention_head_size") {
            None | Some(Value::Null) => {
                if hidden_size % num_heads != 0 {
                    return Err(f.err(
                        "num_attention_heads",
                        format!("({num_heads}) does not divide hidden_size ({hidden_size})"),
                    ));
                }
                hidden_size / num_heads
            }
            Some(_) => f.usize_or("attention_head_size", 0)?,
        };
        if head_dim == 0 || head_dim * num_heads != hidden_size {
            return Err(f.err(
                "attention_head_size",
                format!(
                    "({head_dim}) x num_attention_heads ({num_heads}) must equal hidden_size ({hidden_size})"
                ),
            ));
        }

        let hidden_act = f.str_or("hidden_act", "gelu")?;
        if hidden_act != "gelu" {
            return Err(f.err(
                "hidden_act",
                format!("is \"{hidden_act}\"; only \"gelu\" (exact erf GELU) is supported"),
            ));
        }

        let layer_norm_eps = f.f64_or("layer_norm_eps", 1e-7)?;
        if !(layer_norm_eps > 0.0 && layer_norm_eps.is_finite()) {
            return Err(f.err("layer_norm_eps", "must be a positive number"));
        }
        let max_position_embeddings = f.usize_or("max_position_embeddings", 512)?;
        let position_biased_input = f.bool_or("position_biased_input", true)?;
        if position_biased_input && max_position_embeddings == 0 {
            return Err(f.err(
                "max_position_embeddings",
                "must be positive when position_biased_input is true",
            ));
        }
        let type_vocab_size = f.usize_or("type_vocab_size", 0)?;
        let relative_attention = f.bool_or("relative_attention", false)?;
        let max_rel_raw = f.i64_or("max_relative_positions", -1)?;
        let max_relative_positions = if max_rel_raw < 1 {
            max_position_embeddings
        } else {
            max_rel_raw as usize
        };
        let position_buckets = f.i64_or("position_buckets", -1)?;
        let att_span = if position_buckets > 0 {
            position_buckets as usize
        } else {
            max_relative_positions
        };
        if relative_attention {
            if att_span == 0 {
                return Err(f.err(
                    "max_relative_positions",
                    "resolves to 0 (and max_position_embeddings is 0): no relative span",
                ));
            }
            if position_buckets > 0 {
                let mid = position_buckets / 2;
                if mid < 1 || (max_relative_positions as i64 - 1) <= mid {
                    return Err(f.err(
                        "position_buckets",
                        format!(
                            "({position_buckets}) needs max_relative_positions - 1 ({}) > position_buckets / 2 ({mid}) for log bucketing",
                            max_relative_positions as i64 - 1
                        ),
                    ));
                }
            }
        }

        let norm_rel_ebd = match obj.get("norm_rel_ebd") {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => {
                let parts: Vec<String> = s
                    .to_lowercase()
                    .split('|')
                    .map(|p| p.trim().to_string())
                    .collect();
                for p in &parts {
                    if p != "layer_norm" && p != "none" && !p.is_empty() {
                        return Err(f.err(
                            "norm_rel_ebd",
                            format!(
                                "has unknown entry \"{p}\" (expected \"none\" or \"layer_norm\")"
                            ),
                        ));
                    }
                }
                parts.iter().any(|p| p == "layer_norm")
            }
            Some(_) => return Err(f.err("norm_rel_ebd", "must be a string")),
        };
        let share_att_key = f.bool_or("share_att_key", false)?;

        let pos_att: Vec<String> = match obj.get("pos_att_type") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s
                .to_lowercase()
                .split('|')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for it in items {
                    match it.as_str() {
                        Some(s) => out.push(s.trim().to_lowercase()),
                        None => return Err(f.err("pos_att_type", "list entries must be strings")),
                    }
                }
                out
            }
            Some(_) => {
                return Err(f.err(
                    "pos_att_type",
                    "must be a list of strings or a \"a|b\" string",
                ))
            }
        };
        let mut c2p = false;
        let mut p2c = false;
        for p in &pos_att {
            match p.as_str() {
                "c2p" => c2p = true,
                "p2c" => p2c = true,
                other => {
                    return Err(f.err(
                        "pos_att_type",
                        format!("has unsupported entry \"{other}\" (DeBERTa-v2 knows c2p and p2c)"),
                    ))
                }
            }
        }

        let conv_kernel_size = f.usize_or("conv_kernel_size", 0)?;
        let conv = if conv_kernel_size > 0 {
            let groups = f.usize_or("conv_groups", 1)?;
            if groups == 0 || hidden_size % groups != 0 {
                return Err(f.err(
                    "conv_groups",
                    format!("({groups}) must be positive and divide hidden_size ({hidden_size})"),
                ));
            }
            let act_name = f.str_or("conv_act", "tanh")?;
            let act = Activation::parse(&act_name).ok_or_else(|| {
                f.err(
                    "conv_act",
                    format!("is \"{act_name}\"; supported: tanh, gelu, relu"),
                )
            })?;
            if conv_kernel_size % 2 == 0 {
                // Conv1d with padding (k-1)/2 and an even k changes the sequence length:
                // transformers itself fails on such a model.
                return Err(f.err(
                    "conv_kernel_size",
                    format!("({conv_kernel_size}) must be odd"),
                ));
            }
            Some(ConvConfig {
                kernel_size: conv_kernel_size,
                groups,
                act,
            })
        } else {
            None
        };

        Ok(ModelConfig {
            vocab_size,
            hidden_size,
            embedding_size,
            num_layers,
            num_heads,
            head_dim,
            intermediate_size,
            layer_norm_eps: layer_norm_eps as f32,
            max_position_embeddings,
            position_biased_input,
            type_vocab_size,
            relative_attention,
            max_relative_positions,
            position_buckets,
            att_span,
            norm_rel_ebd,
            share_att_key,
            c2p,
            p2c,
            conv,
        })
    }
}

/// Typed look-ups into a config object, with errors that name the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, field: &str, msg: impl std::fmt::Display) -> Error {
        Error::config(self.path, format!("field `{field}` {msg}"))
    }
    fn get(&self, key: &str) -> Option<&Value> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }
    fn i64_or(&self, key: &str, default: i64) -> Result<i64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => {
                if let Some(i) = v.as_i64() {
                    Ok(i)
                } else if let Some(x) = v.as_f64().filter(|x| x.fract() == 0.0 && x.abs() < 1e15) {
                    Ok(x as i64)
                } else {
                    Err(self.err(key, format!("must be an integer, found {v}")))
                }
            }
        }
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        let v = self.i64_or(key, default as i64)?;
        if v < 0 {
            return Err(self.err(key, format!("must not be negative, found {v}")));
        }
        if v > (1 << 31) {
            return Err(self.err(key, format!("is implausibly large ({v})")));
        }
        Ok(v as usize)
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(key, format!("must be a number, found {v}"))),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("must be true or false, found {v}"))),
        }
    }
    fn str_or(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.err(key, format!("must be a string, found {v}"))),
        }
    }
}

/// One sentence-transformers pooling mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolingMode {
    Cls,
    Max,
    Mean,
    MeanSqrtLen,
    WeightedMean,
    LastToken,
}

impl PoolingMode {
    /// Concatenation order of sentence-transformers' Pooling module.
    pub const ORDER: [PoolingMode; 6] = [
        PoolingMode::Cls,
        PoolingMode::Max,
        PoolingMode::Mean,
        PoolingMode::MeanSqrtLen,
        PoolingMode::WeightedMean,
        PoolingMode::LastToken,
    ];

    /// The name sentence-transformers uses for the mode (`pooling_mode` values).
    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Cls => "cls",
            PoolingMode::Max => "max",
            PoolingMode::Mean => "mean",
            PoolingMode::MeanSqrtLen => "mean_sqrt_len_tokens",
            PoolingMode::WeightedMean => "weightedmean",
            PoolingMode::LastToken => "lasttoken",
        }
    }

    /// The boolean key of the 2.x/3.x config format.
    fn legacy_key(self) -> &'static str {
        match self {
            PoolingMode::Cls => "pooling_mode_cls_token",
            PoolingMode::Max => "pooling_mode_max_tokens",
            PoolingMode::Mean => "pooling_mode_mean_tokens",
            PoolingMode::MeanSqrtLen => "pooling_mode_mean_sqrt_len_tokens",
            PoolingMode::WeightedMean => "pooling_mode_weightedmean_tokens",
            PoolingMode::LastToken => "pooling_mode_lasttoken",
        }
    }

    /// Parse a mode name as written in `pooling_mode` (several spellings are accepted).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_lowercase().as_str() {
            "cls" | "cls_token" => Some(PoolingMode::Cls),
            "max" | "max_tokens" => Some(PoolingMode::Max),
            "mean" | "mean_tokens" => Some(PoolingMode::Mean),
            "mean_sqrt_len_tokens" | "mean_sqrt_len" => Some(PoolingMode::MeanSqrtLen),
            "weightedmean" | "weightedmean_tokens" | "weighted_mean" => {
                Some(PoolingMode::WeightedMean)
            }
            "lasttoken" | "last_token" => Some(PoolingMode::LastToken),
            _ => None,
        }
    }
}

/// Everything around the backbone: where its files are, and what happens to its output.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The folder holding config.json, tokenizer.json and the weights.
    pub transformer_dir: PathBuf,
    /// Enabled pooling modes, in concatenation order.
    pub pooling: Vec<PoolingMode>,
    /// L2-normalize the pooled embedding (a `Normalize` module is listed).
    pub normalize: bool,
    /// Inputs are truncated to this many tokens, specials included.
    pub max_seq_length: usize,
    /// Lower-case inputs before tokenizing (`do_lower_case` in sentence_bert_config.json).
    pub do_lower_case: bool,
    /// Where the pooling came from, for `info`.
    pub layout: Layout,
    /// Named prompts (`prompts` in config_sentence_transformers.json), with sentence-transformers'
    /// own defaults `query` and `document` (empty) where the file has none.
    pub prompts: BTreeMap<String, String>,
    /// The prompt prepended when a caller names none (`default_prompt_name`).
    pub default_prompt_name: Option<String>,
    /// Whether prompt tokens take part in pooling (the Pooling module's `include_prompt`,
    /// default true); false leaves `[CLS]` and the prompt's tokens out.
    pub include_prompt: bool,
    /// modules.json lists a Pooling module (an embedding model, whatever its backbone's
    /// architecture says).
    pub has_pooling_module: bool,
}

/// Which on-disk layout the model directory has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// modules.json present (sentence-transformers).
    SentenceTransformers,
    /// A plain transformers checkpoint: mean pooling, no normalization.
    Transformers,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, format!("not valid JSON: {e}")))
}

impl PipelineConfig {
    /// Resolve a model directory as sentence-transformers would: find the
    /// Transformer, Pooling and Normalize modules (or fall back to mean pooling for a plain
    /// transformers checkpoint), read and validate config.json, and resolve max_seq_length.
    pub fn load(dir: &Path) -> Result<(PipelineConfig, ModelConfig)> {
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "model directory {} does not exist or is not a directory",
                dir.display()
            )));
        }
        let modules_path = dir.join("modules.json");
        let mut transformer_dir = dir.to_path_buf();
        let mut pooling_dir: Option<PathBuf> = None;
        let mut normalize = false;
        let layout = if modules_path.is_file() {
            let modules = read_json(&modules_path)?;
            let list = modules
                .as_array()
                .ok_or_else(|| Error::config(&modules_path, "expected a JSON list of modules"))?;
            for (i, m) in list.iter().enumerate() {
                let ty = m.get("type").and_then(Value::as_str).ok_or_else(|| {
                    Error::config(&modules_path, format!("module {i} has no string `type`"))
                })?;
                let sub = m.get("path").and_then(Value::as_str).unwrap_or("");
                let sub = module_subdir(sub).ok_or_else(|| {
                    Error::config(
                        &modules_path,
                        format!(
                            "module {i} has path {sub:?}: a module must lie inside the model directory"
                        ),
                    )
                })?;
                let last = ty.rsplit('.').next().unwrap_or(ty);
                match last {
                    "Transformer" => transformer_dir = dir.join(sub),
                    "Pooling" => pooling_dir = Some(dir.join(sub)),
                    "Normalize" => normalize = true,
                    _ => {
                        return Err(Error::config(
                            &modules_path,
                            format!(
                                "module {i} has type `{ty}`; supported modules are Transformer, Pooling and Normalize"
                            ),
                        ))
                    }
                }
            }
            Layout::SentenceTransformers
        } else {
            Layout::Transformers
        };
        let config_path = transformer_dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::Input(format!(
                "{} not found: not a DeBERTa model directory",
                config_path.display()
            )));
        }
        let model = ModelConfig::from_file(&config_path)?;
        let has_pooling_module = pooling_dir.is_some();
        let pooling = match &pooling_dir {
            Some(p) => parse_pooling(&p.join("config.json"))?,
            None => vec![PoolingMode::Mean],
        };
        let include_prompt = match &pooling_dir {
            Some(p) => parse_include_prompt(&p.join("config.json"))?,
            None => true,
        };
        let (prompts, default_prompt_name) =
            parse_prompts(&dir.join("config_sentence_transformers.json"))?;
        let (max_seq_length, do_lower_case) = resolve_max_seq_length(&transformer_dir, &model)?;
        Ok((
            PipelineConfig {
                transformer_dir,
                pooling,
                normalize,
                max_seq_length,
                do_lower_case,
                layout,
                prompts,
                default_prompt_name,
                include_prompt,
                has_pooling_module,
            },
            model,
        ))
    }
}

/// A module's `path` from modules.json as a relative path that stays inside the model
/// directory (plain names only: no root, no `..`, no prefix); `None` otherwise.
fn module_subdir(sub: &str) -> Option<PathBuf> {
    use std::path::Component;
    let p = Path::new(sub);
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| p.to_path_buf())
}

/// Parse `1_Pooling/config.json` in either the 2.x/3.x boolean-key form or the 5.x+
/// `pooling_mode` form.
pub fn parse_pooling(path: &Path) -> Result<Vec<PoolingMode>> {
    let v = read_json(path)?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::config(path, "expected a JSON object"))?;
    let mut enabled: Vec<PoolingMode> = Vec::new();
    if let Some(pm) = obj.get("pooling_mode").filter(|v| !v.is_null()) {
        let names: Vec<&str> = match pm {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => {
                return Err(Error::config(
                    path,
                    "field `pooling_mode` must be a string or a list of strings",
                ))
            }
        };
        for n in names {
            let m = PoolingMode::parse(n).ok_or_else(|| {
                Error::config(
                    path,
                    format!(
                        "field `pooling_mode` has unknown mode \"{n}\" (expected cls, mean, max, mean_sqrt_len_tokens, weightedmean or lasttoken)"
                    ),
                )
            })?;
            enabled.push(m);
        }
    }
    for m in PoolingMode::ORDER {
        match obj.get(m.legacy_key()) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(true)) => enabled.push(m),
            Some(Value::Bool(false)) => {}
            Some(other) => {
                return Err(Error::config(
                    path,
                    format!(
                        "field `{}` must be true or false, found {other}",
                        m.legacy_key()
                    ),
                ))
            }
        }
    }
    let ordered: Vec<PoolingMode> = PoolingMode::ORDER
        .into_iter()
        .filter(|m| enabled.contains(m))
        .collect();
    if ordered.is_empty() {
        return Err(Error::config(path, "no pooling mode is enabled"));
    }
    Ok(ordered)
}

/// `include_prompt` of a Pooling config (sentence-transformers 3.x and later; default true).
fn parse_include_prompt(path: &Path) -> Result<bool> {
    match read_json(path)?.get("include_prompt") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::config(
            path,
            format!("field `include_prompt` must be true or false, found {other}"),
        )),
    }
}

/// `prompts` and `default_prompt_name` of config_sentence_transformers.json, as
/// sentence-transformers 6.3 reads them: its own `query` and `document` prompts (empty) unless
/// the file names them, a null prompt read as empty, and a default name that must be one of the
/// prompts. No file: just the two empty defaults.
pub fn parse_prompts(path: &Path) -> Result<(BTreeMap<String, String>, Option<String>)> {
    let mut prompts: BTreeMap<String, String> = ["query", "document"]
        .into_iter()
        .map(|k| (k.to_string(), String::new()))
        .collect();
    if !path.is_file() {
        return Ok((prompts, None));
    }
    let v = read_json(path)?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::config(path, "expected a JSON object"))?;
    match obj.get("prompts") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, text) in map {
                let text = match text {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => {
                        return Err(Error::config(
                            path,
                            format!("prompt `{name}` must be a string, found {other}"),
                        ))
                    }
                };
                prompts.insert(name.clone(), text);
            }
        }
        Some(other) => {
            return Err(Error::config(
                path,
                format!("field `prompts` must be an object of name: text, found {other}"),
            ))
        }
    }
    let default = match obj.get("default_prompt_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if prompts.contains_key(s) => Some(s.clone()),
        Some(Value::String(s)) => {
            return Err(Error::config(
                path,
                format!(
                    "`default_prompt_name` {s:?} is not one of the prompts ({})",
                    prompt_names(&prompts)
                ),
            ))
        }
        Some(other) => {
            return Err(Error::config(
                path,
                format!("field `default_prompt_name` must be a string, found {other}"),
            ))
        }
    };
    Ok((prompts, default))
}

/// The prompt names, quoted and comma-separated, for messages.
pub fn prompt_names(prompts: &BTreeMap<String, String>) -> String {
    prompts
        .keys()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Longest max_seq_length accepted (sizes a table at load time; DeBERTa models use <= 8k).
pub const MAX_SEQ_LIMIT: usize = 1 << 16;

/// `max_seq_length` as sentence-transformers resolves it: sentence_bert_config.json, else
/// `min(max_position_embeddings, tokenizer_config.json model_max_length)`.
pub fn resolve_max_seq_length(
    transformer_dir: &Path,
    model: &ModelConfig,
) -> Result<(usize, bool)> {
    let sbert = transformer_dir.join("sentence_bert_config.json");
    let mut do_lower_case = false;
    if sbert.is_file() {
        let v = read_json(&sbert)?;
        if let Some(b) = v.get("do_lower_case").and_then(Value::as_bool) {
            do_lower_case = b;
        }
        match v.get("max_seq_length") {
            None | Some(Value::Null) => {}
            Some(x) => {
                let n = x
                    .as_u64()
                    .filter(|&n| (2..=MAX_SEQ_LIMIT as u64).contains(&n))
                    .ok_or_else(|| {
                        Error::config(
                            &sbert,
                            format!(
                                "field `max_seq_length` must be an integer in 2..={MAX_SEQ_LIMIT}, found {x}"
                            ),
                        )
                    })?;
                return Ok((n as usize, do_lower_case));
            }
        }
    }
    let mut max_len = model.max_position_embeddings;
    let tok_cfg = transformer_dir.join("tokenizer_config.json");
    if tok_cfg.is_file() {
        let v = read_json(&tok_cfg)?;
        match v.get("model_max_length") {
            None | Some(Value::Null) => {}
            Some(x) => {
                // transformers writes int(1e30) for "no limit": any number >= 2 is accepted
                let n = x.as_f64().filter(|n| *n >= 2.0).ok_or_else(|| {
                    Error::config(
                        &tok_cfg,
                        format!("field `model_max_length` must be a number >= 2, found {x}"),
                    )
                })?;
                if n < max_len as f64 {
                    max_len = n as usize;
                }
            }
        }
    }
    if !(2..=MAX_SEQ_LIMIT).contains(&max_len) {
        return Err(Error::config(
            transformer_dir.join("config.json"),
            format!(
                "max_seq_length resolves to {max_len}: set max_position_embeddings (2..={MAX_SEQ_LIMIT}) or sentence_bert_config.json"
            ),
        ));
    }
    Ok((max_len, do_lower_case))
}

#[cfg(test)]
mod flops_tests {
    use super::ModelConfig;

    #[test]
    fn forward_flops_of_xsmall() {
        let c = ModelConfig::xsmall();
        // 12 x (2 (4 * 384^2 + 2 * 384 * 1536) + 4 * 2 * L * 384)
        let per_layer_linear = 2.0 * (4.0 * 384.0 * 384.0 + 2.0 * 384.0 * 1536.0);
        for l in [16usize, 128, 512] {
            let want = 12.0 * (per_layer_linear + 4.0 * 2.0 * l as f64 * 384.0);
            assert_eq!(c.forward_flops_per_token(l), want, "L = {l}");
        }
        assert!((c.forward_flops_per_token(16) / 1e6 - 43.06).abs() < 0.01);
        assert!((c.forward_flops_per_token(128) / 1e6 - 47.19).abs() < 0.01);
        let plain = ModelConfig {
            relative_attention: false,
            ..ModelConfig::xsmall()
        };
        let fewer = 12.0 * 2.0 * 2.0 * 128.0 * 384.0;
        assert_eq!(
            plain.forward_flops_per_token(128),
            c.forward_flops_per_token(128) - fewer
        );
    }
}
