//! CUDA backend (feature `cuda`): hand-written kernels (`kernels/*.cu`, compiled into one
//! fatbin by build.rs and embedded here), driven through cudarc's driver API with the driver
//! library loaded at run time.
//!
//! * [`device`]: driver probe, context, module, device buffers, graphs, the generic launch.
//! * [`kernels`]: one safe wrapper per kernel (the testbed API: every kernel callable on its
//!   own) and the choice of variant; `profile`: per-kernel device time.
//! * [`launch`]: launch geometry and batch layout as plain functions, unit-tested without a GPU.
//! * [`CudaModel`]: weights uploaded once, persistent activation buffers, the forward.
//!
//! Precisions: `F32` runs every op in fp32 (SIMT GEMM; the exact path, checked against the
//! fixtures at 1e-4); `F16` / `BF16` run the GEMMs on tensor cores and attention on 16-bit
//! inputs, with fp32 accumulation, fp32 LayerNorm / softmax statistics and an fp32 residual
//! stream (hidden states are kept in fp32 and copied to 16 bits for the next GEMM).
//!
//! Repeated batch shapes replay a CUDA graph of the whole forward + pooling
//! (`Resident::forward_pooled`).
//!
//! STATUS: validated on an H200 on 2026-11-27 (`tests/gpu.rs`, `scripts/gpu-check.sh`, see
//! docs/CUDA.md) except what came later and has not run on a GPU yet: attention v2, CUDA graphs
//! and the one-copy batch upload.

pub mod device;
pub mod kernels;
pub mod launch;
mod profile;
pub mod testbed;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::{ModelConfig, PoolingMode};
use crate::error::{Error, Result};
use crate::model::HostWeights;
use crate::relpos::RelPosTable;
use crate::Precision;

pub use device::{DevBuf, DeviceBatch, DeviceRelPos, Dtype, Gpu, GpuGraph};
pub use kernels::{AttentionKernel, Epi, GemmKernel};
use launch::{Packed, Workspace};

/// One layer's weights on the device. Matrices in the compute type, vectors fp32.
struct DevLayer {
    qkv_w: DevBuf,      // [3H, H]  query, key, value stacked
    qkv_b: DevBuf,      // [3H]
    attn_out_w: DevBuf, // [H, H]
    attn_out_b: DevBuf, // [H]
    attn_ln_w: DevBuf,  // [H]
    attn_ln_b: DevBuf,  // [H]
    inter_w: DevBuf,    // [I, H]
    inter_b: DevBuf,    // [I]
    out_w: DevBuf,      // [H, I]
    out_b: DevBuf,      // [H]
    out_ln_w: DevBuf,   // [H]
    out_ln_b: DevBuf,   // [H]
    pk: Option<DevBuf>, // [2S, H]  c2p: R Wk^T + bk (or pos_key_proj)
    pq: Option<DevBuf>, // [2S, H]  p2c: R Wq^T + bq (or pos_query_proj)
}

struct DevConv {
    weight: DevBuf, // [H, H / groups, k] fp32
    bias: DevBuf,   // [H]
    ln_w: DevBuf,   // [H]
    ln_b: DevBuf,   // [H]
}

/// Activation buffers for up to `cap` tokens and `cap_batch` sequences.
#[derive(Default)]
struct RunBuffers {
    cap: usize,
    cap_batch: usize,
    x32: Option<DevBuf>,    // [T, H] fp32 hidden state
    xc: Option<DevBuf>,     // [T, H] compute-type copy (16-bit precisions)
    x0: Option<DevBuf>,     // [T, H] fp32 embedding output (conv models)
    emb: Option<DevBuf>,    // [T, E] compute type (embed_proj models)
    qkv: Option<DevBuf>,    // [T, 3H] compute type
    ctx: Option<DevBuf>,    // [T, H] compute type
    tmp32: Option<DevBuf>,  // [T, H] fp32 scratch (GEMM + residual output, conv output)
    attn32: Option<DevBuf>, // [T, H] fp32 attention-block output
    attnc: Option<DevBuf>,  // [T, H] compute-type copy
    ffn: Option<DevBuf>,    // [T, I] compute type
    pooled: Option<DevBuf>, // [B, modes * H] fp32 (sized for 6 modes)
    batch: Option<DeviceBatch>,
    /// Captured forwards of the shapes seen so far, valid while the buffers above stay put.
    graphs: HashMap<GraphKey, Slot>,
}

/// What a forward + pooling launches depends on besides buffer addresses: two batches with
/// the same key replay the same graph (with their own ids, positions and tiles uploaded into
/// the same buffers first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct GraphKey {
    tokens: usize,
    batch: usize,
    tiles: usize,
    /// the tiles that start a 64-row group: the grid of the tensor-core attention, which
    /// `tokens`, `batch` and `tiles` do not fix (lengths 64 + 32 and 80 + 16 both make 6
    /// tiles, but 2 and 3 such blocks)
    tiles_tc: usize,
    /// the packed mode codes and their count (the codes alone do not tell `[cls]` from
    /// `[cls, cls]`: code 0 both, but a different output width)
    pool_modes: (u32, i32),
    attention: AttentionKernel,
    gemm: GemmKernel,
}

impl GraphKey {
    fn new(
        p: &Packed,
        modes: &[PoolingMode],
        attention: AttentionKernel,
        gemm: GemmKernel,
    ) -> Result<Self> {
        Ok(GraphKey {
            tokens: p.tokens(),
            batch: p.batch(),
            tiles: p.tiles.len(),
            tiles_tc: launch::attention_tc_tiles(&p.tiles),
            pool_modes: launch::pool_modes_code(modes)?,
            attention,
            gemm,
        })
    }
}

/// A shape seen once (run eagerly), or captured (the second time: shapes seen only once, such
/// as the many token counts of a corpus, never pay for a capture).
enum Slot {
    Seen,
    Graph(GpuGraph),
    /// The capture failed (the reason is kept): this shape runs eagerly.
    Failed(String),
}

/// How many shapes have a captured graph, and why captures failed (see
/// [`CudaModel::graph_stats`]).
#[derive(Clone, Debug, Default)]
pub struct GraphStats {
    pub captured: usize,
    pub failures: Vec<String>,
}

/// At most this many graphs are kept; past it the cache starts over.
const MAX_GRAPHS: usize = 64;

/// Take a buffer that `ensure` allocated.
fn buf(b: &Option<DevBuf>) -> Result<&DevBuf> {
    b.as_ref()
        .ok_or_else(|| Error::Device("internal: activation buffer missing".into()))
}

/// The model's device state (boxed inside [`CudaModel`], which stays pointer-sized).
struct Resident {
    gpu: Gpu,
    cfg: ModelConfig,
    dt: Dtype,
    word_emb: DevBuf,           // [V, E]
    pos_emb: Option<DevBuf>,    // [P, E]
    type_emb0: Option<DevBuf>,  // [E]
    embed_proj: Option<DevBuf>, // [H, E]
    emb_ln_w: DevBuf,           // [H]
    emb_ln_b: DevBuf,           // [H]
    conv: Option<DevConv>,
    layers: Vec<DevLayer>,
    relpos: DeviceRelPos,
    max_len: usize,
    state: Mutex<RunBuffers>,
}

impl Resident {
    /// Upload weights (fp16/bf16 copies plus fp32 where needed), compute PK/PQ and the index
    /// table, allocate persistent buffers for up to `max_len` tokens per sequence.
    fn new(
        cfg: &ModelConfig,
        w: &HostWeights,
        max_len: usize,
        ordinal: usize,
        precision: Precision,
    ) -> Result<Self> {
        let gpu = Gpu::new(ordinal)?;
        let dt = Dtype::from(precision);
        launch::attention_dpl(cfg.head_dim)?;
        let (e, i) = (cfg.embedding_size, cfg.intermediate_size);
        let s2 = 2 * cfg.att_span;
        let max_len = max_len.max(1);
        let up = |v: &[f32], what: &str| gpu.upload(dt, v, what);
        let up32 = |v: &[f32], what: &str| gpu.upload(Dtype::F32, v, what);

        let mut layers = Vec::with_capacity(w.layers.len());
        for (li, l) in w.layers.iter().enumerate() {
            let name = |s: &str| format!("layer {li} {s}");
            // PK / PQ projected on the host (once per load), then rounded to the compute type.
            let (pk, pq) = l.position_tables(cfg, w.rel.as_deref());
            let pk = pk.map(|t| up(&t, &name("PK"))).transpose()?;
            let pq = pq.map(|t| up(&t, &name("PQ"))).transpose()?;
            let (qkv_w, qkv_b) = l.fused_qkv();
            layers.push(DevLayer {
                qkv_w: up(&qkv_w, &name("qkv weight"))?,
                qkv_b: up32(&qkv_b, &name("qkv bias"))?,
                attn_out_w: up(&l.attn_out_w, &name("attention output weight"))?,
                attn_out_b: up32(&l.attn_out_b, &name("attention output bias"))?,
                attn_ln_w: up32(&l.attn_ln_w, &name("attention LayerNorm"))?,
                attn_ln_b: up32(&l.attn_ln_b, &name("attention LayerNorm"))?,
                inter_w: up(&l.inter_w, &name("intermediate weight"))?,
                inter_b: up32(&l.inter_b, &name("intermediate bias"))?,
                out_w: up(&l.out_w, &name("output weight"))?,
                out_b: up32(&l.out_b, &name("output bias"))?,
                out_ln_w: up32(&l.out_ln_w, &name("output LayerNorm"))?,
                out_ln_b: up32(&l.out_ln_b, &name("output LayerNorm"))?,
                pk,
                pq,
            });
        }
        debug_assert!(w.word_emb.len() == cfg.vocab_size * e && layers.iter().all(|_| i > 0));
        let conv = match &w.conv {
            Some(c) => Some(DevConv {
                weight: up32(&c.weight, "conv weight")?,
                bias: up32(&c.bias, "conv bias")?,
                ln_w: up32(&c.ln_w, "conv LayerNorm")?,
                ln_b: up32(&c.ln_b, "conv LayerNorm")?,
            }),
            None => None,
        };
        let table = RelPosTable::new(
            max_len,
            cfg.position_buckets,
            cfg.max_relative_positions,
            cfg.att_span,
        );
        let relpos = gpu.upload_relpos(&table, s2.max(1))?;
        let word_emb = up(&w.word_emb, "word embeddings")?;
        let pos_emb = w
            .pos_emb
            .as_ref()
            .map(|p| up(p, "position embeddings"))
            .transpose()?;
        let type_emb0 = w
            .type_emb0
            .as_ref()
            .map(|t| up(t, "token-type embedding"))
            .transpose()?;
        let embed_proj = w
            .embed_proj
            .as_ref()
            .map(|p| up(p, "embed_proj"))
            .transpose()?;
        let emb_ln_w = up32(&w.emb_ln_w, "embedding LayerNorm")?;
        let emb_ln_b = up32(&w.emb_ln_b, "embedding LayerNorm")?;
        gpu.sync()?;
        Ok(Resident {
            gpu,
            cfg: cfg.clone(),
            dt,
            word_emb,
            pos_emb,
            type_emb0,
            embed_proj,
            emb_ln_w,
            emb_ln_b,
            conv,
            layers,
            relpos,
            max_len,
            state: Mutex::new(RunBuffers::default()),
        })
    }

    /// Pooled (not normalized) embeddings of `ids`, rows in input order.
    /// (each batch's ids and pooling offsets are checked by `encode_batch`)
    fn encode_batches(
        &self,
        ids: &[Vec<u32>],
        skip: &[usize],
        batch_size: usize,
        max_tokens: usize,
        modes: &[PoolingMode],
    ) -> Result<Vec<f32>> {
        let dim = modes.len() * self.cfg.hidden_size;
        launch::pool_modes_code(modes)?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        crate::backend::run_batches(self, &mut st, ids, skip, modes, dim, batch_size, max_tokens)
    }

    /// Forward + pooling of one packed batch into `st.pooled` (queued, not waited for):
    /// eagerly the first time a shape is seen, captured into a graph the second time, and
    /// replayed from then on.
    fn forward_pooled(&self, st: &mut RunBuffers, p: &Packed, modes: &[PoolingMode]) -> Result<()> {
        self.prepare(st, p)?;
        let h = self.cfg.hidden_size;
        let run = |st: &RunBuffers| -> Result<()> {
            self.record(st, None)?;
            let db = st
                .batch
                .as_ref()
                .ok_or_else(|| Error::Device("internal: no batch".into()))?;
            self.gpu.pool(db, buf(&st.x32)?, h, modes, buf(&st.pooled)?)
        };
        if !self.gpu.graphs_enabled() {
            return run(st);
        }
        let key = GraphKey::new(
            p,
            modes,
            self.gpu.attention_kernel(),
            self.gpu.gemm_kernel(),
        )?;
        match st.graphs.get(&key) {
            Some(Slot::Graph(g)) => self.gpu.replay(g),
            Some(Slot::Failed(_)) => run(st),
            Some(Slot::Seen) => match self.gpu.capture(|| run(st)) {
                Ok(g) => {
                    self.gpu.replay(&g)?;
                    st.graphs.insert(key, Slot::Graph(g));
                    Ok(())
                }
                Err(e) => {
                    // Still embed (eagerly); a broken context fails again right here.
                    st.graphs.insert(key, Slot::Failed(e.to_string()));
                    run(st)
                }
            },
            None => {
                if st.graphs.len() >= MAX_GRAPHS {
                    st.graphs.clear();
                }
                st.graphs.insert(key, Slot::Seen);
                run(st)
            }
        }
    }

    fn check_inputs<'a>(&self, seqs: impl Iterator<Item = &'a [u32]>) -> Result<()> {
        for (i, s) in seqs.enumerate() {
            if s.len() > self.max_len {
                return Err(Error::Input(format!(
                    "sequence {i} has {} tokens, more than the {} this model was loaded for",
                    s.len(),
                    self.max_len
                )));
            }
            if let Some(&bad) = s.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return Err(Error::Input(format!(
                    "sequence {i}: token id {bad} is outside the vocabulary"
                )));
            }
        }
        Ok(())
    }

    /// Grow the activation buffers to hold `tokens` tokens and `batch` sequences.
    fn ensure(&self, st: &mut RunBuffers, tokens: usize, batch: usize) -> Result<()> {
        let cfg = &self.cfg;
        let (h, e, i) = (cfg.hidden_size, cfg.embedding_size, cfg.intermediate_size);
        if batch > st.cap_batch || st.pooled.is_none() {
            let cap_batch = launch::capacity_for(batch);
            st.graphs.clear(); // they name the buffers about to be replaced
            st.pooled = None;
            st.pooled = Some(self.gpu.alloc(cap_batch * 6 * h * 4, "pooled output")?);
            st.cap_batch = cap_batch;
        }
        if tokens <= st.cap && st.x32.is_some() {
            return Ok(());
        }
        let cap = launch::capacity_for(tokens);
        let ws = Workspace::new(cap, h, e, i, self.embed_proj.is_some(), self.conv.is_some())?;
        let (c, f) = (self.dt.size(), 4);
        let sixteen = self.dt != Dtype::F32;
        // free first, so that growing does not need old + new at once (and the graphs that
        // name the old buffers with them)
        *st = RunBuffers {
            pooled: st.pooled.take(),
            cap_batch: st.cap_batch,
            batch: st.batch.take(),
            ..Default::default()
        };
        let a = |n: usize, what: &str| self.gpu.alloc(n, what).map(Some);
        st.x32 = a(ws.hidden * f, "hidden state")?;
        st.xc = if sixteen {
            a(ws.hidden * c, "hidden state copy")?
        } else {
            None
        };
        st.x0 = if ws.conv_in > 0 {
            a(ws.conv_in * f, "conv input")?
        } else {
            None
        };
        st.emb = if ws.emb > 0 {
            a(ws.emb * c, "embeddings")?
        } else {
            None
        };
        st.qkv = a(ws.qkv * c, "qkv")?;
        st.ctx = a(ws.hidden * c, "attention context")?;
        st.tmp32 = a(ws.hidden * f, "fp32 scratch")?;
        st.attn32 = a(ws.hidden * f, "attention output")?;
        st.attnc = if sixteen {
            a(ws.hidden * c, "attention output copy")?
        } else {
            None
        };
        st.ffn = a(ws.ffn * c, "intermediate")?;
        st.cap = cap;
        Ok(())
    }

    /// Make room for `p` and upload it into `st.batch`: every allocation and host copy of a
    /// forward, so that [`Resident::record`] only launches kernels (and can be captured).
    fn prepare(&self, st: &mut RunBuffers, p: &Packed) -> Result<()> {
        self.ensure(st, p.tokens(), p.batch())?;
        if self
            .gpu
            .refill_batch(&mut st.batch, p, self.cfg.vocab_size)?
        {
            st.graphs.clear(); // they name the batch buffers just replaced
        }
        Ok(())
    }

    /// Queue the encoder over the batch in `st.batch` (see [`Resident::prepare`]); leaves the
    /// last hidden state in `st.x32`. With `hidden`, every layer's output is downloaded (which
    /// synchronizes, so never while capturing).
    fn record(&self, st: &RunBuffers, mut hidden: Option<&mut Vec<Vec<f32>>>) -> Result<()> {
        let cfg = &self.cfg;
        let (h, e, inter) = (cfg.hidden_size, cfg.embedding_size, cfg.intermediate_size);
        let dt = self.dt;
        let g = &self.gpu;
        let db = st
            .batch
            .as_ref()
            .ok_or_else(|| Error::Device("internal: no batch".into()))?;
        let t = db.tokens;
        let x32 = buf(&st.x32)?;
        let tmp32 = buf(&st.tmp32)?;
        let attn32 = buf(&st.attn32)?;
        // GEMM inputs: the compute-type copies, or the fp32 buffers themselves in F32.
        let (xin, attn_in) = if dt == Dtype::F32 {
            (x32, attn32)
        } else {
            (buf(&st.xc)?, buf(&st.attnc)?)
        };
        let xc = (dt != Dtype::F32).then_some(xin);
        let attnc = (dt != Dtype::F32).then_some(attn_in);
        let qkv = buf(&st.qkv)?;
        let ctx = buf(&st.ctx)?;
        let ffn = buf(&st.ffn)?;
        let eps = cfg.layer_norm_eps;
        let pos_emb = self
            .pos_emb
            .as_ref()
            .map(|b| (b, cfg.max_position_embeddings));
        let emb_ln = (&self.emb_ln_w, &self.emb_ln_b, eps);

        // --- embeddings
        match &self.embed_proj {
            Some(proj) => {
                let emb = buf(&st.emb)?;
                g.embed_gather(
                    dt,
                    db,
                    e,
                    &self.word_emb,
                    pos_emb,
                    self.type_emb0.as_ref(),
                    emb,
                )?;
                g.gemm(dt, true, emb, proj, t, h, e, Epi::None, tmp32)?;
                g.layernorm(dt, tmp32, None, t, h, emb_ln, x32, xc)?;
            }
            None => g.embed_gather_ln(
                dt,
                db,
                h,
                &self.word_emb,
                pos_emb,
                self.type_emb0.as_ref(),
                emb_ln,
                x32,
                xc,
            )?,
        }
        if let Some(hs) = hidden.as_deref_mut() {
            hs.clear();
            hs.push(g.download(Dtype::F32, x32, t * h)?);
        }
        if self.conv.is_some() {
            g.copy(x32, buf(&st.x0)?, t * h * 4)?;
        }

        // --- encoder layers (post-LayerNorm)
        let scale = 1.0 / ((cfg.head_dim * cfg.scale_factor()) as f32).sqrt();
        for (li, l) in self.layers.iter().enumerate() {
            g.gemm(
                dt,
                false,
                xin,
                &l.qkv_w,
                t,
                3 * h,
                h,
                Epi::Bias(&l.qkv_b),
                qkv,
            )?;
            g.attention(
                dt,
                db,
                qkv,
                l.pk.as_ref(),
                l.pq.as_ref(),
                &self.relpos,
                cfg.num_heads,
                cfg.head_dim,
                scale,
                ctx,
            )?;
            g.gemm(
                dt,
                true,
                ctx,
                &l.attn_out_w,
                t,
                h,
                h,
                Epi::BiasResidual(&l.attn_out_b, x32),
                tmp32,
            )?;
            g.layernorm(
                dt,
                tmp32,
                None,
                t,
                h,
                (&l.attn_ln_w, &l.attn_ln_b, eps),
                attn32,
                attnc,
            )?;
            g.gemm(
                dt,
                false,
                attn_in,
                &l.inter_w,
                t,
                inter,
                h,
                Epi::BiasGelu(&l.inter_b),
                ffn,
            )?;
            g.gemm(
                dt,
                true,
                ffn,
                &l.out_w,
                t,
                h,
                inter,
                Epi::BiasResidual(&l.out_b, attn32),
                tmp32,
            )?;
            g.layernorm(
                dt,
                tmp32,
                None,
                t,
                h,
                (&l.out_ln_w, &l.out_ln_b, eps),
                x32,
                xc,
            )?;
            if li == 0 {
                if let (Some(conv), Some(cc)) = (&self.conv, &cfg.conv) {
                    // x = LN(x + act(conv1d(x_emb))); tmp32 is free here
                    g.conv1d_act(
                        db,
                        buf(&st.x0)?,
                        h,
                        cc.kernel_size,
                        cc.groups,
                        &conv.weight,
                        &conv.bias,
                        cc.act,
                        tmp32,
                    )?;
                    g.layernorm(
                        dt,
                        x32,
                        Some(tmp32),
                        t,
                        h,
                        (&conv.ln_w, &conv.ln_b, eps),
                        x32,
                        xc,
                    )?;
                }
            }
            if let Some(hs) = hidden.as_deref_mut() {
                hs.push(g.download(Dtype::F32, x32, t * h)?);
            }
        }
        Ok(())
    }
}

impl crate::backend::Backend for Resident {
    type State = RunBuffers;

    fn encode_batch(
        &self,
        st: &mut RunBuffers,
        seqs: &[&[u32]],
        modes: &[PoolingMode],
        skip: &[usize],
        out: &mut [f32],
    ) -> Result<()> {
        if skip.iter().any(|&s| s > 0) {
            return Err(Error::Input(
                "a prompt left out of pooling (include_prompt: false) is not supported on the GPU yet; use --device cpu".into(),
            ));
        }
        self.check_inputs(seqs.iter().copied())?;
        let packed = Packed::new(seqs)?;
        if packed.tokens() == 0 {
            out.fill(0.0); // all empty: zeros, as the CPU path
            return Ok(());
        }
        self.forward_pooled(st, &packed, modes)?;
        let rows = self.gpu.download(Dtype::F32, buf(&st.pooled)?, out.len())?;
        out.copy_from_slice(&rows);
        Ok(())
    }

    /// Every layer's output for one sequence (index 0 = embedding output), [n, H] each.
    fn hidden_states(&self, st: &mut RunBuffers, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check_inputs(std::iter::once(ids))?;
        let mut hs = Vec::new();
        if ids.is_empty() {
            return Ok(vec![Vec::new(); self.cfg.num_layers + 1]);
        }
        let packed = Packed::new(&[ids])?;
        self.prepare(st, &packed)?;
        self.record(st, Some(&mut hs))?;
        self.gpu.sync()?;
        Ok(hs)
    }
}

/// The model resident on one GPU.
pub struct CudaModel(Box<Resident>);

impl CudaModel {
    /// Upload weights (fp16/bf16 copies plus fp32 where needed), compute PK/PQ and the index
    /// table, allocate persistent buffers for up to `max_len` tokens per sequence.
    pub fn new(
        cfg: &ModelConfig,
        w: &HostWeights,
        max_len: usize,
        ordinal: usize,
        precision: Precision,
    ) -> Result<Self> {
        Resident::new(cfg, w, max_len, ordinal, precision).map(|r| CudaModel(Box::new(r)))
    }

    /// Pooled (not normalized) embeddings of `ids`, rows in input order, in batches of at most
    /// `batch_size` sequences and `max_tokens` tokens (sorted by length).
    pub fn encode_batches(
        &self,
        ids: &[Vec<u32>],
        batch_size: usize,
        max_tokens: usize,
        modes: &[PoolingMode],
    ) -> Result<Vec<f32>> {
        self.0
            .encode_batches(ids, &[], batch_size, max_tokens, modes)
    }

    /// [`encode_batches`](Self::encode_batches) leaving the first `skip[i]` tokens of sequence
    /// `i` out of pooling (`skip` empty: none); any non-zero offset is refused on the GPU for
    /// now.
    pub(crate) fn encode_batches_skipping(
        &self,
        ids: &[Vec<u32>],
        skip: &[usize],
        batch_size: usize,
        max_tokens: usize,
        modes: &[PoolingMode],
    ) -> Result<Vec<f32>> {
        self.0
            .encode_batches(ids, skip, batch_size, max_tokens, modes)
    }

    /// Every layer's output for one sequence (index 0 = embedding output), [n, H] each.
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        crate::backend::Backend::hidden_states(&*self.0, &mut st, ids)
    }

    /// Graphs captured so far for the shapes seen, and the failed captures' errors.
    pub fn graph_stats(&self) -> GraphStats {
        let st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = GraphStats::default();
        for slot in st.graphs.values() {
            match slot {
                Slot::Graph(_) => s.captured += 1,
                Slot::Failed(e) => s.failures.push(e.clone()),
                Slot::Seen => {}
            }
        }
        s
    }

    /// The GPU this model lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.0.gpu
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.0.cfg
    }
}

/// `bench --synthetic xsmall --device cuda`: the deberta-v3-xsmall architecture with the same
/// deterministic random weights as the CPU's synthetic model.
pub fn synthetic_xsmall(ordinal: usize, precision: Precision) -> Result<CudaModel> {
    let cfg = ModelConfig::xsmall();
    let w = HostWeights::random(&cfg, 0x5EED);
    CudaModel::new(&cfg, &w, cfg.max_position_embeddings, ordinal, precision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CudaModel>();
        check::<Gpu>();
    }

    #[test]
    fn graph_key_tells_tensor_core_attention_grids_apart() {
        let key = |lens: &[usize]| {
            let ids: Vec<Vec<u32>> = lens.iter().map(|&l| vec![1u32; l]).collect();
            GraphKey::new(
                &Packed::new(&ids).unwrap(),
                &[PoolingMode::Mean],
                AttentionKernel::V2,
                GemmKernel::Tile64,
            )
            .unwrap()
        };
        // same tokens (96), sequences (2) and 16-row tiles (6), but 2 and 3 blocks of version 2
        let (a, b) = (key(&[64, 32]), key(&[80, 16]));
        assert_eq!((a.tokens, a.batch, a.tiles), (b.tokens, b.batch, b.tiles));
        assert_eq!((a.tiles_tc, b.tiles_tc), (2, 3));
        assert_ne!(a, b);
        assert_eq!(a, key(&[32, 64]));
    }

    #[test]
    fn graph_key_tells_pooling_mode_counts_apart() {
        let p = Packed::new(&[vec![1u32, 2, 3]]).unwrap();
        let key = |m: &[PoolingMode]| {
            GraphKey::new(&p, m, AttentionKernel::V1, GemmKernel::Tile64).unwrap()
        };
        // [cls] and [cls, cls] pack to the same code (0) but pool into different widths
        let (one, two) = (key(&[PoolingMode::Cls]), key(&[PoolingMode::Cls; 2]));
        assert_eq!(one.pool_modes.0, two.pool_modes.0);
        assert_ne!(one, two);
        assert_eq!(one, key(&[PoolingMode::Cls]));
        // and the kernel variants, whose grids differ
        let cls = [PoolingMode::Cls];
        let v2 = GraphKey::new(&p, &cls, AttentionKernel::V2, GemmKernel::Tile64).unwrap();
        let t128 = GraphKey::new(&p, &cls, AttentionKernel::V1, GemmKernel::Tile128).unwrap();
        assert_ne!(one, v2);
        assert_ne!(one, t128);
    }

    #[test]
    fn dtype_round_trip() {
        let v = [0.0f32, 1.0, -2.5, 65504.0, 1e-3];
        assert_eq!(Dtype::F32.round(&v), v.to_vec());
        let h = Dtype::F16.round(&v);
        assert_eq!(h[..4], v[..4]);
        assert!((h[4] - 1e-3).abs() < 1e-6);
        let b = Dtype::BF16.round(&[1.0, 3.0]);
        assert_eq!(b, vec![1.0, 3.0]);
        assert_eq!(Dtype::from(Precision::BF16).suffix(), "bf16");
    }

    #[test]
    fn no_gpu_is_an_error_not_a_panic() {
        // On a machine with a GPU this opens it; without one it must fail cleanly.
        match Gpu::new(0) {
            Ok(g) => eprintln!(
                "GPU present: {} (cc {:?})",
                g.name(),
                g.compute_capability()
            ),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("device"), "{msg}");
                eprintln!("no GPU (as expected here): {msg}");
            }
        }
        // A bad ordinal is an error either way.
        assert!(Gpu::new(10_000).is_err());
    }
}
