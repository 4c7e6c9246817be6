//! The DeBERTa-v2/v3 backbone: weights (shape-commented, in torch's layout), loaded once and
//! validated against the config, and the fp32 CPU forward over a preallocated [`RunState`].
//!
//! Sequences are packed back to back (`offsets`), with no padding anywhere: DeBERTa uses
//! relative positions only, so a sequence's real-token outputs do not depend on where it sits.
//!
//! Notation: T = tokens in the batch, H = hidden, E = embedding size, I = intermediate,
//! nH heads of d dims, S = attention span (the rel-embedding tables have 2S rows).

use rayon::prelude::*;

use crate::backend::cpu::attention::{self, AttentionParams, AttentionScratch, PosTable};
use crate::backend::cpu::gemm::{
    bf16_gemm_form, int8_gemm_form, linear, linear_seqs, Bf16Form, Epilogue, Int8Form, PackedWeight,
};
use crate::backend::cpu::ops::{conv1d_act_into, layer_norm_rows};
use crate::checkpoint::{Checkpoint, F32Tensor};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::relpos::RelPosTable;
use crate::testing::XorShift;
use crate::Precision;

/// One encoder layer's weights as stored by torch (Linear weights are [out, in]).
pub struct HostLayer {
    pub query_w: Vec<f32>, // [H, H]
    pub query_b: Vec<f32>, // [H]
    pub key_w: Vec<f32>,   // [H, H]
    pub key_b: Vec<f32>,   // [H]
    pub value_w: Vec<f32>, // [H, H]
    pub value_b: Vec<f32>, // [H]
    /// `attention.self.pos_key_proj` (share_att_key = false and c2p)
    pub pos_key: Option<(Vec<f32>, Vec<f32>)>, // [H, H], [H]
    /// `attention.self.pos_query_proj` (share_att_key = false and p2c)
    pub pos_query: Option<(Vec<f32>, Vec<f32>)>, // [H, H], [H]
    pub attn_out_w: Vec<f32>, // [H, H]
    pub attn_out_b: Vec<f32>, // [H]
    pub attn_ln_w: Vec<f32>, // [H]
    pub attn_ln_b: Vec<f32>, // [H]
    pub inter_w: Vec<f32>, // [I, H]
    pub inter_b: Vec<f32>, // [I]
    pub out_w: Vec<f32>,   // [H, I]
    pub out_b: Vec<f32>,   // [H]
    pub out_ln_w: Vec<f32>, // [H]
    pub out_ln_b: Vec<f32>, // [H]
}

/// The Conv1d + LayerNorm block applied after layer 0 (conv_kernel_size > 0).
pub struct HostConv {
    pub weight: Vec<f32>, // [H, H / groups, k]
    pub bias: Vec<f32>,   // [H]
    pub ln_w: Vec<f32>,   // [H]
    pub ln_b: Vec<f32>,   // [H]
}

/// All weights, fp32, torch layout. Backends build their own layouts from this.
pub struct HostWeights {
    /// in place in the safetensors map when stored as f32 (it is most of the file)
    pub word_emb: F32Tensor, // [V, E]
    pub pos_emb: Option<Vec<f32>>,    // [P, E]   position_biased_input
    pub type_emb0: Option<Vec<f32>>,  // [E]      row 0 of token_type_embeddings
    pub type_emb: Option<Vec<f32>>,   // [T, E]   all of token_type_embeddings (pairs)
    pub embed_proj: Option<Vec<f32>>, // [H, E]   embedding_size != hidden_size
    pub emb_ln_w: Vec<f32>,           // [H]
    pub emb_ln_b: Vec<f32>,           // [H]
    /// LN_enc(rel_embeddings) (or raw when norm_rel_ebd has no layer_norm)
    pub rel: Option<Vec<f32>>, // [2S, H]  relative_attention
    pub conv: Option<HostConv>,
    pub layers: Vec<HostLayer>,
}

impl HostLayer {
    /// Query, key and value stacked into one `[3H, H]` weight and `[3H]` bias, the one fused
    /// product both backends run.
    pub fn fused_qkv(&self) -> (Vec<f32>, Vec<f32>) {
        let w = [&self.query_w[..], &self.key_w[..], &self.value_w[..]].concat();
        let b = [&self.query_b[..], &self.key_b[..], &self.value_b[..]].concat();
        (w, b)
    }

    /// The position tables of this layer's attention, `[2S, H]` each, projected once at load
    /// (both backends use them): PK = `rel . Wk^T + bk` for c2p and PQ = `rel . Wq^T + bq` for
    /// p2c, with the separate `pos_key_proj` / `pos_query_proj` where the checkpoint has them
    /// (`share_att_key = false`); `None` for a term the config does not use, or without
    /// relative embeddings. The CPU's fp32 GEMM computes them.
    pub fn position_tables(
        &self,
        cfg: &ModelConfig,
        rel: Option<&[f32]>,
    ) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
        let Some(rel) = rel else {
            return (None, None);
        };
        let (h, s2) = (cfg.hidden_size, 2 * cfg.att_span);
        let project = |(w, b): (&Vec<f32>, &Vec<f32>)| {
            let mut out = vec![0.0; s2 * h];
            linear(
                rel,
                s2,
                &PackedWeight::new(w, h, h),
                Epilogue::Bias(b),
                &mut out,
            );
            out
        };
        let key = self
            .pos_key
            .as_ref()
            .map_or((&self.key_w, &self.key_b), |(w, b)| (w, b));
        let query = self
            .pos_query
            .as_ref()
            .map_or((&self.query_w, &self.query_b), |(w, b)| (w, b));
        (
            cfg.uses_c2p().then(|| project(key)),
            cfg.uses_p2c().then(|| project(query)),
        )
    }
}

impl HostWeights {
    /// Pull every tensor the config requires out of a checkpoint, checking each shape.
    pub fn load(ck: &Checkpoint, cfg: &ModelConfig) -> Result<Self> {
        let (h, e, i) = (cfg.hidden_size, cfg.embedding_size, cfg.intermediate_size);
        let ln = |name: &str| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((
                ck.tensor(&format!("{name}.weight"), &[h])?,
                ck.tensor(&format!("{name}.bias"), &[h])?,
            ))
        };
        let lin = |name: &str, out: usize, inp: usize| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((
                ck.tensor(&format!("{name}.weight"), &[out, inp])?,
                ck.tensor(&format!("{name}.bias"), &[out])?,
            ))
        };

        let word_emb = ck.tensor_f32("embeddings.word_embeddings.weight", &[cfg.vocab_size, e])?;
        let pos_emb = if cfg.position_biased_input {
            Some(ck.tensor(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, e],
            )?)
        } else {
            None
        };
        let type_emb = if cfg.type_vocab_size > 0 {
            Some(ck.tensor(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, e],
            )?)
        } else {
            None
        };
        let type_emb0 = type_emb.as_ref().map(|t| t[..e].to_vec());
        let embed_proj = if e != h {
            Some(ck.tensor("embeddings.embed_proj.weight", &[h, e])?)
        } else {
            None
        };
        let (emb_ln_w, emb_ln_b) = ln("embeddings.LayerNorm")?;

        let rel = if cfg.relative_attention {
            let mut r = ck.tensor("encoder.rel_embeddings.weight", &[2 * cfg.att_span, h])?;
            if cfg.norm_rel_ebd {
                let (w, b) = ln("encoder.LayerNorm")?;
                layer_norm_rows(&mut r, h, &w, &b, cfg.layer_norm_eps);
            }
            Some(r)
        } else {
            None
        };

        let conv = match &cfg.conv {
            Some(c) => {
                let (ln_w, ln_b) = ln("encoder.conv.LayerNorm")?;
                Some(HostConv {
                    weight: ck.tensor(
                        "encoder.conv.conv.weight",
                        &[h, h / c.groups, c.kernel_size],
                    )?,
                    bias: ck.tensor("encoder.conv.conv.bias", &[h])?,
                    ln_w,
                    ln_b,
                })
            }
            None => None,
        };

        // num_hidden_layers comes from config.json: check the file holds that many layers before
        // anything is sized by it (the loop then grows `layers` one loaded layer at a time).
        let last = format!(
            "encoder.layer.{}.attention.self.query_proj.weight",
            cfg.num_layers - 1
        );
        if !ck.contains(&last) {
            let have = (0..cfg.num_layers)
                .take_while(|l| {
                    ck.contains(&format!(
                        "encoder.layer.{l}.attention.self.query_proj.weight"
                    ))
                })
                .count();
            return Err(Error::checkpoint(
                ck.path(),
                format!(
                    "config.json has num_hidden_layers = {}, but tensor `{last}` is missing (the weights hold {have} layers)",
                    cfg.num_layers
                ),
            ));
        }
        let mut layers = Vec::new();
        for l in 0..cfg.num_layers {
            let p = format!("encoder.layer.{l}");
            let (query_w, query_b) = lin(&format!("{p}.attention.self.query_proj"), h, h)?;
            let (key_w, key_b) = lin(&format!("{p}.attention.self.key_proj"), h, h)?;
            let (value_w, value_b) = lin(&format!("{p}.attention.self.value_proj"), h, h)?;
            let separate = cfg.relative_attention && !cfg.share_att_key;
            let pos_key = if separate && cfg.c2p {
                Some(lin(&format!("{p}.attention.self.pos_key_proj"), h, h)?)
            } else {
                None
            };
            let pos_query = if separate && cfg.p2c {
                Some(lin(&format!("{p}.attention.self.pos_query_proj"), h, h)?)
            } else {
                None
            };
            let (attn_out_w, attn_out_b) = lin(&format!("{p}.attention.output.dense"), h, h)?;
            let (attn_ln_w, attn_ln_b) = ln(&format!("{p}.attention.output.LayerNorm"))?;
            let (inter_w, inter_b) = lin(&format!("{p}.intermediate.dense"), i, h)?;
            let (out_w, out_b) = lin(&format!("{p}.output.dense"), h, i)?;
            let (out_ln_w, out_ln_b) = ln(&format!("{p}.output.LayerNorm"))?;
            layers.push(HostLayer {
                query_w,
                query_b,
                key_w,
                key_b,
                value_w,
                value_b,
                pos_key,
                pos_query,
                attn_out_w,
                attn_out_b,
                attn_ln_w,
                attn_ln_b,
                inter_w,
                inter_b,
                out_w,
                out_b,
                out_ln_w,
                out_ln_b,
            });
        }
        Ok(HostWeights {
            word_emb,
            pos_emb,
            type_emb0,
            type_emb,
            embed_proj,
            emb_ln_w,
            emb_ln_b,
            rel,
            conv,
            layers,
        })
    }

    /// Deterministic random weights for `cfg` (benchmarks on a machine with no checkpoint).
    /// Scaled like a trained model: unit-ish activations, LayerNorm gains near 1.
    pub fn random(cfg: &ModelConfig, seed: u64) -> Self {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (h, e, i) = (cfg.hidden_size, cfg.embedding_size, cfg.intermediate_size);
        let mut mat = |rows: usize, cols: usize, std: f32| -> Vec<f32> {
            (0..rows * cols).map(|_| rng.normal() * std).collect()
        };
        let w_std = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
        let lnp = |n: usize| -> (Vec<f32>, Vec<f32>) {
            let mut r = XorShift(0xA5A5_5A5A ^ n as u64);
            (
                (0..n).map(|_| 1.0 + 0.1 * r.normal()).collect(),
                (0..n).map(|_| 0.05 * r.normal()).collect(),
            )
        };
        let word_emb = mat(cfg.vocab_size, e, 0.5).into();
        let pos_emb = cfg
            .position_biased_input
            .then(|| mat(cfg.max_position_embeddings, e, 0.5));
        let type_emb = (cfg.type_vocab_size > 0).then(|| mat(cfg.type_vocab_size, e, 0.5));
        let type_emb0 = type_emb.as_ref().map(|t| t[..e].to_vec());
        let embed_proj = (e != h).then(|| mat(h, e, w_std(e)));
        let rel = cfg
            .relative_attention
            .then(|| mat(2 * cfg.att_span, h, 1.0));
        let conv = cfg.conv.as_ref().map(|c| HostConv {
            weight: mat(
                h,
                h / c.groups * c.kernel_size,
                w_std(h / c.groups * c.kernel_size),
            ),
            bias: mat(1, h, 0.05),
            ln_w: vec![1.0; h],
            ln_b: vec![0.0; h],
        });
        let (emb_ln_w, emb_ln_b) = lnp(h);
        let layers = (0..cfg.num_layers)
            .map(|_| {
                let separate = cfg.relative_attention && !cfg.share_att_key;
                HostLayer {
                    query_w: mat(h, h, w_std(h)),
                    query_b: mat(1, h, 0.05),
                    key_w: mat(h, h, w_std(h)),
                    key_b: mat(1, h, 0.05),
                    value_w: mat(h, h, w_std(h)),
                    value_b: mat(1, h, 0.05),
                    pos_key: (separate && cfg.c2p).then(|| (mat(h, h, w_std(h)), mat(1, h, 0.05))),
                    pos_query: (separate && cfg.p2c)
                        .then(|| (mat(h, h, w_std(h)), mat(1, h, 0.05))),
                    attn_out_w: mat(h, h, w_std(h)),
                    attn_out_b: mat(1, h, 0.05),
                    attn_ln_w: vec![1.0; h],
                    attn_ln_b: vec![0.0; h],
                    inter_w: mat(i, h, w_std(h)),
                    inter_b: mat(1, i, 0.05),
                    out_w: mat(h, i, w_std(i)),
                    out_b: mat(1, h, 0.05),
                    out_ln_w: vec![1.0; h],
                    out_ln_b: vec![0.0; h],
                }
            })
            .collect();
        HostWeights {
            word_emb,
            pos_emb,
            type_emb0,
            type_emb,
            embed_proj,
            emb_ln_w,
            emb_ln_b,
            rel,
            conv,
            layers,
        }
    }

    /// Number of parameters the forward uses.
    pub fn num_params(&self) -> usize {
        let opt = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, Vec::len);
        let pair =
            |v: &Option<(Vec<f32>, Vec<f32>)>| v.as_ref().map_or(0, |(a, b)| a.len() + b.len());
        let mut n = self.word_emb.len()
            + opt(&self.pos_emb)
            + opt(&self.type_emb)
            + opt(&self.embed_proj)
            + self.emb_ln_w.len()
            + self.emb_ln_b.len()
            + opt(&self.rel);
        if let Some(c) = &self.conv {
            n += c.weight.len() + c.bias.len() + c.ln_w.len() + c.ln_b.len();
        }
        for l in &self.layers {
            n += l.query_w.len() + l.query_b.len() + l.key_w.len() + l.key_b.len();
            n += l.value_w.len() + l.value_b.len() + pair(&l.pos_key) + pair(&l.pos_query);
            n += l.attn_out_w.len() + l.attn_out_b.len() + l.attn_ln_w.len() + l.attn_ln_b.len();
            n += l.inter_w.len() + l.inter_b.len() + l.out_w.len() + l.out_b.len();
            n += l.out_ln_w.len() + l.out_ln_b.len();
        }
        n
    }
}

/// One layer in the CPU backend's layout.
struct CpuLayer {
    qkv: PackedWeight,      // [3H, H]: query_proj, key_proj, value_proj stacked
    qkv_b: Vec<f32>,        // [3H]
    attn_out: PackedWeight, // [H, H]
    attn_out_b: Vec<f32>,   // [H]
    attn_ln_w: Vec<f32>,    // [H]
    attn_ln_b: Vec<f32>,    // [H]
    inter: PackedWeight,    // [I, H]
    inter_b: Vec<f32>,      // [I]
    out: PackedWeight,      // [H, I]
    out_b: Vec<f32>,        // [H]
    out_ln_w: Vec<f32>,     // [H]
    out_ln_b: Vec<f32>,     // [H]
    /// PK = R Wk^T + bk (c2p), per head transposed
    pos_key: PosTable, // [nH, d, 2S] (empty without c2p)
    /// PQ = R Wq^T + bq (p2c), per head transposed
    pos_query: PosTable, // [nH, d, 2S] (empty without p2c)
}

/// The model ready to run on the CPU.
pub struct CpuModel {
    cfg: ModelConfig,
    word_emb: F32Tensor,              // [V, E] (possibly memory-mapped)
    pos_emb: Option<Vec<f32>>,        // [P, E]
    type_emb: Option<Vec<f32>>,       // [Tt, E] token_type_embeddings
    embed_proj: Option<PackedWeight>, // [H, E]
    emb_ln_w: Vec<f32>,               // [H]
    emb_ln_b: Vec<f32>,               // [H]
    conv: Option<HostConv>,
    layers: Vec<CpuLayer>,
    relpos: RelPosTable,
    /// the attention's products on the AMX-BF16 tiles (bf16 and int8, where available)
    tile_attention: bool,
}

/// A batch of token sequences packed back to back.
#[derive(Clone, Debug, Default)]
pub struct PackedBatch {
    /// `[T]` token ids
    pub ids: Vec<u32>,
    /// [B + 1] start of each sequence in `ids`; the last entry is T
    pub offsets: Vec<usize>,
}

impl PackedBatch {
    /// Pack sequences in the given order.
    pub fn new<S: AsRef<[u32]>>(seqs: &[S]) -> Self {
        let mut b = PackedBatch::default();
        b.fill(seqs.iter().map(AsRef::as_ref));
        b
    }
    /// Refill in place (keeps capacity).
    pub fn fill<'a>(&mut self, seqs: impl Iterator<Item = &'a [u32]>) {
        self.ids.clear();
        self.offsets.clear();
        self.offsets.push(0);
        for s in seqs {
            self.ids.extend_from_slice(s);
            self.offsets.push(self.ids.len());
        }
    }
    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
    /// No sequences.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Total tokens.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
    /// Longest sequence.
    pub fn max_len(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0)
    }
}

/// The CPU backend's state (`backend::Backend::State`): the activation buffers and the packed
/// ids of the batch being run, both reused across calls.
#[derive(Default)]
pub struct CpuState {
    pub run: RunState,
    pub batch: PackedBatch,
}

impl crate::backend::Backend for CpuModel {
    type State = CpuState;

    fn encode_batch(
        &self,
        st: &mut CpuState,
        seqs: &[&[u32]],
        modes: &[crate::config::PoolingMode],
        skip: &[usize],
        out: &mut [f32],
    ) -> crate::Result<()> {
        let h = self.cfg.hidden_size;
        let dim = crate::pooling::pooled_dim(modes, h);
        st.batch.fill(seqs.iter().copied());
        self.forward(&st.batch, &mut st.run, None);
        let hidden = st.run.hidden();
        for (b, row) in out.chunks_exact_mut(dim.max(1)).enumerate() {
            let (s, e) = (st.batch.offsets[b], st.batch.offsets[b + 1]);
            let skip = skip.get(b).copied().unwrap_or(0);
            crate::pooling::pool_skipping(modes, &hidden[s * h..e * h], h, skip, row);
        }
        Ok(())
    }

    fn hidden_states(&self, st: &mut CpuState, ids: &[u32]) -> crate::Result<Vec<Vec<f32>>> {
        st.batch.fill(std::iter::once(ids));
        let mut hs = Vec::new();
        self.forward(&st.batch, &mut st.run, Some(&mut hs));
        Ok(hs)
    }
}

/// Activation buffers, sized for the largest batch seen and reused across calls.
#[derive(Default)]
pub struct RunState {
    cap: usize,
    emb: Vec<f32>, // [T, E]  pre-projection embeddings (embed_proj models)
    x: Vec<f32>,   // [T, H]  hidden state; holds the last layer's output after a forward
    x0: Vec<f32>,  // [T, H]  embedding output, input of the conv block (conv models)
    qkv: Vec<f32>, // [T, 3H]
    ctx: Vec<f32>, // [T, H]  attention context, heads side by side
    attention: AttentionScratch, // prepared keys (and values) per sequence and head
    attn: Vec<f32>, // [T, H]  post-attention LayerNorm output
    ffn: Vec<f32>, // [min(T, FFN_ROWS), I]  one row chunk of the FFN's inner activations
}

/// Tokens one group of whole sequences holds at most when a layer runs group by group (a
/// longer sequence is a group of its own): the group's [rows, 3H] QKV, context and attention
/// output then stay in the cores' caches from one step of the layer to the next instead of
/// going through memory (at 256 x 32 tokens the QKV alone is 37 MB). Sequences are independent
/// in a layer, so the result is the same for any grouping.
pub const LAYER_ROWS: usize = 512;

/// Consecutive groups of the sequences `offsets` delimits (`[B + 1]` starts), each holding at
/// most `max_rows` tokens unless it is a single longer sequence: the first sequence index of
/// each group, then B.
fn row_groups(offsets: &[usize], max_rows: usize) -> Vec<usize> {
    let b = offsets.len().saturating_sub(1);
    let mut starts = vec![0];
    let mut first = 0;
    for s in 1..b {
        if offsets[s + 1] - offsets[first] > max_rows {
            starts.push(s);
            first = s;
        }
    }
    if b > 0 {
        starts.push(b);
    }
    starts
}

/// Rows the feed-forward block runs at a time (FFN up + GELU, FFN down + residual, LayerNorm):
/// its [rows, I] inner activations then stay in the cores' caches between the two products
/// instead of making a round trip through memory (at T = 4096 they would be 25 MB), and the
/// buffer stays small. Rows are independent here, so the result is the same for any chunking.
pub const FFN_ROWS: usize = 256;

/// The row ranges the FFN runs on within a group of sequences (`offsets`, from 0): `FFN_ROWS`
/// rows at a time, or with `whole`, groups of whole sequences of at most `FFN_ROWS` rows (a
/// longer sequence alone), as the int8 corrections need whole sequences. Chunk `c` is rows
/// `chunks[c] .. chunks[c + 1]`.
fn ffn_chunks(offsets: &[usize], whole: bool, chunks: &mut Vec<usize>) {
    chunks.clear();
    let rows = offsets.last().copied().unwrap_or(0);
    if whole {
        chunks.extend(row_groups(offsets, FFN_ROWS).iter().map(|&s| offsets[s]));
    } else {
        chunks.extend((0..rows).step_by(FFN_ROWS));
        chunks.push(rows);
    }
}

impl RunState {
    fn ensure(&mut self, cfg: &ModelConfig, tokens: usize) {
        if tokens <= self.cap {
            return;
        }
        let cap = tokens.next_power_of_two().max(64);
        let (h, e, i) = (cfg.hidden_size, cfg.embedding_size, cfg.intermediate_size);
        self.emb = vec![0.0; if e != h { cap * e } else { 0 }];
        self.x = vec![0.0; cap * h];
        self.x0 = vec![0.0; if cfg.conv.is_some() { cap * h } else { 0 }];
        self.qkv = vec![0.0; cap * 3 * h];
        self.ctx = vec![0.0; cap * h];
        self.attn = vec![0.0; cap * h];
        self.ffn = vec![0.0; cap.min(FFN_ROWS) * i];
        self.cap = cap;
    }

    /// Final hidden states of the last forward, [T, H].
    pub fn hidden(&self) -> &[f32] {
        &self.x
    }
}

impl CpuModel {
    /// Build the CPU layout: fused QKV, packed GEMM weights, PK/PQ precomputed per layer.
    /// `max_len` bounds the sequence length (sizes the relative-position table). `precision`
    /// picks how the encoder's GEMM weights are kept (embeddings, LayerNorms and biases stay
    /// f32 in every case; with bf16 and int8 the attention's products go to the AMX-BF16 tiles
    /// where [`attention::tiles_for`] says so, else they stay f32):
    /// * `BF16` (opt-in: half the weight traffic): in the form [`bf16_gemm_form`] picks for
    ///   this CPU: AMX-BF16 tiles or `avx512_bf16` dot products (each Linear's input rounded
    ///   to bf16 too, fp32 sums), else widened to f32 inside fp32 products;
    /// * `INT8` (opt-in: a quarter of the weight bytes): int8 per output feature, each Linear's
    ///   input quantized per row, on the kernel [`int8_gemm_form`] picks (AMX-INT8,
    ///   AVX512-VNNI or AVX-VNNI); f32 where the CPU has none of them;
    /// * anything else: f32.
    pub fn new(cfg: ModelConfig, w: HostWeights, max_len: usize, precision: Precision) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let pack = |w: &[f32], n: usize, k: usize| {
            if precision == Precision::INT8 && int8_gemm_form() != Int8Form::F32 {
                return PackedWeight::new_int8(w, n, k);
            }
            let p = PackedWeight::new(w, n, k);
            match precision {
                Precision::BF16 => match bf16_gemm_form() {
                    #[cfg(target_arch = "x86_64")]
                    Bf16Form::Tiles => p.with_bf16_tiles(),
                    #[cfg(not(target_arch = "x86_64"))]
                    Bf16Form::Tiles => p,
                    Bf16Form::Dot => p.with_bf16_dot(),
                    Bf16Form::Storage => p.with_bf16_storage(),
                    Bf16Form::F32 => p,
                },
                // (int8 without an int8 kernel: f32 weights)
                Precision::INT8 | Precision::F32 | Precision::F16 => p,
            }
        };
        let rel = w.rel;
        let tile_attention = attention::tiles_for(precision, cfg.head_dim);
        let table = |rows: Option<Vec<f32>>| match rows {
            Some(r) => {
                let t = PosTable::from_rows(&r, 2 * cfg.att_span, cfg.num_heads, cfg.head_dim);
                if tile_attention {
                    t.with_tile_panels(&r, cfg.num_heads)
                } else {
                    t
                }
            }
            None => PosTable::default(),
        };
        let layers = w
            .layers
            .into_iter()
            .map(|l| {
                let (pk, pq) = l.position_tables(&cfg, rel.as_deref());
                let (pos_key, pos_query) = (table(pk), table(pq));
                let (qkv_w, qkv_b) = l.fused_qkv();
                CpuLayer {
                    qkv: pack(&qkv_w, 3 * h, h),
                    qkv_b,
                    attn_out: pack(&l.attn_out_w, h, h),
                    attn_out_b: l.attn_out_b,
                    attn_ln_w: l.attn_ln_w,
                    attn_ln_b: l.attn_ln_b,
                    inter: pack(&l.inter_w, i, h),
                    inter_b: l.inter_b,
                    out: pack(&l.out_w, h, i),
                    out_b: l.out_b,
                    out_ln_w: l.out_ln_w,
                    out_ln_b: l.out_ln_b,
                    pos_key,
                    pos_query,
                }
            })
            .collect();
        let relpos = RelPosTable::new(
            max_len,
            cfg.position_buckets,
            cfg.max_relative_positions,
            cfg.att_span,
        );
        CpuModel {
            embed_proj: w
                .embed_proj
                .as_ref()
                .map(|p| pack(p, h, cfg.embedding_size)),
            word_emb: w.word_emb,
            pos_emb: w.pos_emb,
            type_emb: w.type_emb,
            emb_ln_w: w.emb_ln_w,
            emb_ln_b: w.emb_ln_b,
            conv: w.conv,
            layers,
            relpos,
            tile_attention,
            cfg,
        }
    }

    /// The resolved architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Longest sequence this model instance accepts.
    pub fn max_len(&self) -> usize {
        self.relpos.max_len()
    }

    /// Run the encoder over a packed batch. Afterwards `st.hidden()` holds the last layer's
    /// output, [T, H]. With `hidden_states`, every layer's output is also copied out
    /// (index 0 = embedding output, as transformers' `output_hidden_states`).
    pub fn forward(
        &self,
        batch: &PackedBatch,
        st: &mut RunState,
        mut hidden_states: Option<&mut Vec<Vec<f32>>>,
    ) {
        let cfg = &self.cfg;
        let (h, e) = (cfg.hidden_size, cfg.embedding_size);
        let t = batch.tokens();
        assert!(
            batch.max_len() <= self.max_len(),
            "sequence longer than the model's max_len (caller must truncate)"
        );
        st.ensure(cfg, t);
        if t == 0 {
            return;
        }

        // --- embeddings: gather (+ position) (+ type 0), optional projection, LayerNorm
        // An id at or past the vocabulary carries a token type: `id + type * vocab_size` (the
        // second text of a pair, see `TextTokenizer::encode_pair_batch`).
        let vocab = cfg.vocab_size;
        let gather_into = |dst: &mut [f32]| {
            for w in batch.offsets.windows(2) {
                for (p, tok) in (w[0]..w[1]).enumerate() {
                    let row = &mut dst[tok * e..(tok + 1) * e];
                    let raw = batch.ids[tok] as usize;
                    let (id, ty) = (raw % vocab, raw / vocab);
                    row.copy_from_slice(&self.word_emb[id * e..(id + 1) * e]);
                    if let Some(pe) = &self.pos_emb {
                        for (r, v) in row.iter_mut().zip(&pe[p * e..(p + 1) * e]) {
                            *r += v;
                        }
                    }
                    if let Some(te) = &self.type_emb {
                        // (callers keep `ty` below type_vocab_size; clamped for safety)
                        let ty = ty.min(te.len() / e - 1);
                        for (r, v) in row.iter_mut().zip(&te[ty * e..(ty + 1) * e]) {
                            *r += v;
                        }
                    }
                }
            }
        };
        match &self.embed_proj {
            Some(p) => {
                gather_into(&mut st.emb[..t * e]);
                let x = &mut st.x[..t * h];
                linear_seqs(&st.emb, t, p, Epilogue::None, x, &batch.offsets);
            }
            None => gather_into(&mut st.x[..t * h]),
        }
        layer_norm_rows(
            &mut st.x[..t * h],
            h,
            &self.emb_ln_w,
            &self.emb_ln_b,
            cfg.layer_norm_eps,
        );
        if let Some(hs) = hidden_states.as_deref_mut() {
            hs.clear();
            hs.push(st.x[..t * h].to_vec());
        }
        if self.conv.is_some() {
            st.x0[..t * h].copy_from_slice(&st.x[..t * h]);
        }

        // --- encoder layers (post-LayerNorm)
        let params = AttentionParams {
            heads: cfg.num_heads,
            head_dim: cfg.head_dim,
            scale: 1.0 / ((cfg.head_dim * cfg.scale_factor()) as f32).sqrt(),
            c2p: cfg.uses_c2p(),
            p2c: cfg.uses_p2c(),
            tiles: self.tile_attention,
        };
        let groups = row_groups(&batch.offsets, LAYER_ROWS);
        let mut group_offsets = Vec::with_capacity(batch.offsets.len());
        let (mut chunks, mut chunk_offsets) = (Vec::new(), Vec::new());
        for (li, layer) in self.layers.iter().enumerate() {
            // The layer runs on one group of whole sequences at a time (rows g0 .. g1), so its
            // intermediates stay in cache between the steps.
            for g in groups.windows(2) {
                let (s0, s1) = (g[0], g[1]);
                let (g0, g1) = (batch.offsets[s0], batch.offsets[s1]);
                let rows = g1 - g0;
                group_offsets.clear();
                group_offsets.extend(batch.offsets[s0..=s1].iter().map(|&o| o - g0));
                let (xr, qkv_len) = (g0 * h..g1 * h, rows * 3 * h);
                linear_seqs(
                    &st.x[xr.clone()],
                    rows,
                    &layer.qkv,
                    Epilogue::Bias(&layer.qkv_b),
                    &mut st.qkv[..qkv_len],
                    &group_offsets,
                );
                attention::attention(
                    &params,
                    &st.qkv[..qkv_len],
                    &group_offsets,
                    &layer.pos_key,
                    &layer.pos_query,
                    &self.relpos,
                    &mut st.attention,
                    &mut st.ctx[..rows * h],
                );
                linear_seqs(
                    &st.ctx[..rows * h],
                    rows,
                    &layer.attn_out,
                    Epilogue::BiasResidual(&layer.attn_out_b, &st.x[xr.clone()]),
                    &mut st.attn[..rows * h],
                    &group_offsets,
                );
                layer_norm_rows(
                    &mut st.attn[..rows * h],
                    h,
                    &layer.attn_ln_w,
                    &layer.attn_ln_b,
                    cfg.layer_norm_eps,
                );
                // FFN, FFN_ROWS rows at a time (int8: whole sequences, for their corrections)
                let inter = cfg.intermediate_size;
                ffn_chunks(&group_offsets, layer.inter.is_int8(), &mut chunks);
                let longest = chunks.windows(2).map(|c| c[1] - c[0]).max().unwrap_or(0);
                if st.ffn.len() < longest * inter {
                    st.ffn.resize(longest * inter, 0.0);
                }
                for c in chunks.windows(2) {
                    let (r0, n) = (c[0], c[1] - c[0]);
                    let attn = &st.attn[r0 * h..(r0 + n) * h];
                    let x = (g0 + r0) * h..(g0 + r0 + n) * h;
                    chunk_offsets.clear();
                    chunk_offsets.push(0);
                    chunk_offsets.extend(
                        group_offsets
                            .iter()
                            .filter(|&&o| o > r0 && o < r0 + n)
                            .map(|&o| o - r0),
                    );
                    chunk_offsets.push(n);
                    linear_seqs(
                        attn,
                        n,
                        &layer.inter,
                        Epilogue::BiasGelu(&layer.inter_b),
                        &mut st.ffn[..n * inter],
                        &chunk_offsets,
                    );
                    linear_seqs(
                        &st.ffn[..n * inter],
                        n,
                        &layer.out,
                        Epilogue::BiasResidual(&layer.out_b, attn),
                        &mut st.x[x.clone()],
                        &chunk_offsets,
                    );
                    layer_norm_rows(
                        &mut st.x[x],
                        h,
                        &layer.out_ln_w,
                        &layer.out_ln_b,
                        cfg.layer_norm_eps,
                    );
                }
            }

            if li == 0 {
                if let (Some(conv), Some(cc)) = (&self.conv, &cfg.conv) {
                    // x = LN(x + act(conv1d(x_emb))) per sequence; ctx is free scratch here.
                    conv1d_act_into(
                        &st.x0[..t * h],
                        &batch.offsets,
                        h,
                        cc.kernel_size,
                        cc.groups,
                        &conv.weight,
                        &conv.bias,
                        cc.act,
                        &mut st.ctx[..t * h],
                    );
                    st.x[..t * h]
                        .par_iter_mut()
                        .zip(&st.ctx[..t * h])
                        .for_each(|(x, c)| *x += c);
                    layer_norm_rows(
                        &mut st.x[..t * h],
                        h,
                        &conv.ln_w,
                        &conv.ln_b,
                        cfg.layer_norm_eps,
                    );
                }
            }
            if let Some(hs) = hidden_states.as_deref_mut() {
                hs.push(st.x[..t * h].to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_groups_hold_whole_sequences_within_the_budget() {
        // lengths 100 x 7, then one 600-token sequence, then 3 x 200
        let lens = [100, 100, 100, 100, 100, 100, 100, 600, 200, 200, 200];
        let mut offsets = vec![0];
        for l in lens {
            offsets.push(offsets.last().copied().unwrap_or(0) + l);
        }
        let g = row_groups(&offsets, 512);
        assert_eq!(g, vec![0, 5, 7, 8, 10, 11]);
        for w in g.windows(2) {
            let rows = offsets[w[1]] - offsets[w[0]];
            assert!(
                rows <= 512 || w[1] - w[0] == 1,
                "group {w:?} has {rows} rows"
            );
        }
        assert_eq!(row_groups(&[0], 512), vec![0]);
        assert_eq!(row_groups(&[0, 3], 512), vec![0, 1]);
    }

    /// A batch whose layers run in several groups gives every sequence the hidden states it
    /// gets alone (fp32, bf16 and int8 weights).
    #[test]
    fn grouped_layers_equal_sequences_run_alone() {
        let mut cfg = ModelConfig::xsmall();
        cfg.num_layers = 2;
        for precision in [Precision::F32, Precision::BF16, Precision::INT8] {
            let model = CpuModel::new(cfg.clone(), HostWeights::random(&cfg, 7), 512, precision);
            let mut seed = 0x2545_F491_4F6C_DD1Du64;
            let seqs: Vec<Vec<u32>> = [300, 5, 400, 130, 512, 64, 64]
                .iter()
                .map(|&n| {
                    (0..n)
                        .map(|_| {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            (seed % 1000) as u32
                        })
                        .collect()
                })
                .collect();
            let batch = PackedBatch::new(&seqs);
            assert!(row_groups(&batch.offsets, LAYER_ROWS).len() > 3);
            let mut st = RunState::default();
            model.forward(&batch, &mut st, None);
            let h = cfg.hidden_size;
            for (s, seq) in seqs.iter().enumerate() {
                let mut alone = RunState::default();
                model.forward(&PackedBatch::new(&[seq]), &mut alone, None);
                let (a, b) = (batch.offsets[s] * h, batch.offsets[s + 1] * h);
                let grouped = &st.hidden()[a..b];
                let single = &alone.hidden()[..b - a];
                let worst = grouped
                    .iter()
                    .zip(single)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    worst <= 1e-5,
                    "sequence {s} ({precision}): max |diff| {worst}"
                );
            }
        }
    }
}
