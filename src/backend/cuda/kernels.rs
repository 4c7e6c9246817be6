//! One safe wrapper per kernel entry point of `kernels/*.cu` (the testbed API used by
//! `tests/gpu.rs` and by [`super::CudaModel`]), and the choice of variant: which entry point of
//! [`launch::names`] runs for a dtype, a head dim, the selected [`GemmKernel`] /
//! [`AttentionKernel`].
//!
//! Every wrapper checks the sizes of the buffers it is given against the shapes before it
//! launches, so a kernel never indexes past a buffer; index-bearing inputs (token ids, the
//! relative-position table, attention tiles) only reach the kernels through [`DeviceBatch`] and
//! [`DeviceRelPos`], whose constructors validate them on the host.

use std::sync::atomic::Ordering;

use super::device::{opt_need, Arg, DevBuf, DeviceBatch, DeviceRelPos, Dtype, Gpu};
use super::launch::{self, names};
use crate::config::{Activation, PoolingMode};
use crate::error::{Error, Result};

/// Fused epilogue of [`Gpu::gemm`].
#[derive(Clone, Copy)]
pub enum Epi<'a> {
    None,
    /// `+ bias[n]` (fp32 [N])
    Bias(&'a DevBuf),
    /// `gelu(. + bias[n])`
    BiasGelu(&'a DevBuf),
    /// `+ bias[n] + residual[m, n]` (fp32 [M, N], not the output buffer)
    BiasResidual(&'a DevBuf, &'a DevBuf),
}

/// The tensor-core GEMM tiles (`bench --kernel gemm=64|128`, or `DEBERTA_CUDA_GEMM=64|128`
/// when the device is opened).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GemmKernel {
    /// 64 x 64 tiles, 4 warps, 3 stages (the default).
    Tile64 = 1,
    /// 128 x 128 tiles, 8 warps, 4 stages in 80 KB of dynamic shared memory, where the `_k8`
    /// variant applies (K % 8 == 0, aligned operands) and the device allows that much shared
    /// memory; otherwise 64 x 64. Not yet measured.
    Tile128 = 2,
}

impl std::str::FromStr for GemmKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "64" | "64x64" => Ok(GemmKernel::Tile64),
            "128" | "128x128" => Ok(GemmKernel::Tile128),
            other => Err(Error::Input(format!(
                "unknown GEMM tiles `{other}` (expected 64 or 128)"
            ))),
        }
    }
}

/// The attention kernel variants (`bench --kernel attention=v1|v2|v2-async`, or
/// `DEBERTA_CUDA_ATTENTION=v1|v2|v2-async` when the device is opened).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AttentionKernel {
    /// kernels/attention.cu: SIMT fp32 FMAs, any head dim and dtype (the default).
    V1 = 1,
    /// kernels/attention_tc.cu: tensor cores, f16 / bf16 with head dim 64; other cases fall
    /// back to V1.
    V2 = 2,
    /// V2 with K / V double-buffered and every operand staged with `cp.async`, the next key
    /// tile's loads overlapping this one's work (`attention_tc_async_*`; not yet measured).
    V2Async = 3,
}

impl std::str::FromStr for AttentionKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(AttentionKernel::V1),
            "v2" | "2" | "tc" => Ok(AttentionKernel::V2),
            "v2-async" | "v2a" => Ok(AttentionKernel::V2Async),
            other => Err(Error::Input(format!(
                "unknown attention kernel `{other}` (expected v1, v2 or v2-async)"
            ))),
        }
    }
}

impl Gpu {
    /// Select the attention kernel for the following launches.
    pub fn set_attention_kernel(&self, k: AttentionKernel) {
        self.attention_kernel.store(k as u8, Ordering::Relaxed);
    }

    /// The attention kernel selected (see [`AttentionKernel`]).
    pub fn attention_kernel(&self) -> AttentionKernel {
        match self.attention_kernel.load(Ordering::Relaxed) {
            2 => AttentionKernel::V2,
            3 => AttentionKernel::V2Async,
            _ => AttentionKernel::V1,
        }
    }

    /// Select the tensor-core GEMM tiles for the following launches.
    pub fn set_gemm_kernel(&self, k: GemmKernel) {
        self.gemm_kernel.store(k as u8, Ordering::Relaxed);
    }

    /// The tensor-core GEMM tiles selected (see [`GemmKernel`]).
    pub fn gemm_kernel(&self) -> GemmKernel {
        match self.gemm_kernel.load(Ordering::Relaxed) {
            2 => GemmKernel::Tile128,
            _ => GemmKernel::Tile64,
        }
    }

    /// The attention kernel that [`Gpu::attention`] runs for `dt` and head dim `d`: the one
    /// selected, except that version 2 (either variant) needs `d` = 64, f16 or bf16, and its
    /// shared memory (117 KB, pipelined 135 KB) within the device's opt-in limit per block
    /// (sm_86 / sm_89 have 99 KB): otherwise version 1 runs.
    pub fn attention_runs(&self, dt: Dtype, d: usize) -> AttentionKernel {
        let k = self.attention_kernel();
        let smem = match k {
            AttentionKernel::V1 => return k,
            AttentionKernel::V2 => launch::attention_tc_smem_bytes(),
            AttentionKernel::V2Async => launch::attention_tc_async_smem_bytes(),
        };
        if d == launch::ATT_TC_D
            && matches!(dt, Dtype::F16 | Dtype::BF16)
            && smem <= self.max_smem_optin
        {
            k
        } else {
            AttentionKernel::V1
        }
    }

    /// `out[t] = word[ids[t]] (+ pos_emb[pos[t]]) (+ type0)` ([T, n], type `dt`).
    #[allow(clippy::too_many_arguments)]
    pub fn embed_gather(
        &self,
        dt: Dtype,
        b: &DeviceBatch,
        n: usize,
        word: &DevBuf,
        pos_emb: Option<(&DevBuf, usize)>,
        type0: Option<&DevBuf>,
        out: &DevBuf,
    ) -> Result<()> {
        let (pe, pe_rows) = pos_emb.map_or((None, 0), |(b, r)| (Some(b), r));
        if pe.is_some() && b.max_len > pe_rows {
            return Err(Error::Input(format!(
                "sequence of {} tokens exceeds the {pe_rows} position embeddings",
                b.max_len
            )));
        }
        let args = [
            Arg::P(b.ids.need("ids", b.tokens, Dtype::F32)?),
            Arg::P(b.pos.need("pos", b.tokens, Dtype::F32)?),
            Arg::I(b.tokens as i32),
            Arg::I(n as i32),
            Arg::P(word.need("word embeddings", b.vocab * n, dt)?),
            Arg::P(opt_need(pe, "position embeddings", pe_rows * n, dt)?),
            Arg::P(opt_need(type0, "token-type row", n, dt)?),
            Arg::P(out.need("embedding output", b.tokens * n, dt)?),
        ];
        let name = by_dtype(dt, EMBED_GATHER);
        // SAFETY: 8 args = (const uint32_t* ids, const int* pos, int tokens, int n, const T* word,
        // const T* pos_emb, const T* type0, T* out); ids < vocab (DeviceBatch), pos < pe_rows
        // (max_len checked), every buffer size checked above; smem n floats.
        unsafe {
            self.launch(
                name,
                (b.tokens as u32, 1, 1),
                (launch::row_threads(n), 1, 1),
                n * 4,
                &args,
            )
        }
    }

    /// `out32 = LayerNorm(word[ids] (+ pos) (+ type0))`, compute-type copy to `outc`.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_gather_ln(
        &self,
        dt: Dtype,
        b: &DeviceBatch,
        n: usize,
        word: &DevBuf,
        pos_emb: Option<(&DevBuf, usize)>,
        type0: Option<&DevBuf>,
        ln: (&DevBuf, &DevBuf, f32),
        out32: &DevBuf,
        outc: Option<&DevBuf>,
    ) -> Result<()> {
        let (pe, pe_rows) = pos_emb.map_or((None, 0), |(b, r)| (Some(b), r));
        if pe.is_some() && b.max_len > pe_rows {
            return Err(Error::Input(format!(
                "sequence of {} tokens exceeds the {pe_rows} position embeddings",
                b.max_len
            )));
        }
        let args = [
            Arg::P(b.ids.need("ids", b.tokens, Dtype::F32)?),
            Arg::P(b.pos.need("pos", b.tokens, Dtype::F32)?),
            Arg::I(b.tokens as i32),
            Arg::I(n as i32),
            Arg::P(word.need("word embeddings", b.vocab * n, dt)?),
            Arg::P(opt_need(pe, "position embeddings", pe_rows * n, dt)?),
            Arg::P(opt_need(type0, "token-type row", n, dt)?),
            Arg::P(ln.0.need("LayerNorm weight", n, Dtype::F32)?),
            Arg::P(ln.1.need("LayerNorm bias", n, Dtype::F32)?),
            Arg::F(ln.2),
            Arg::P(out32.need("embedding output", b.tokens * n, Dtype::F32)?),
            Arg::P(opt_need(outc, "embedding output copy", b.tokens * n, dt)?),
        ];
        let name = by_dtype(dt, EMBED_GATHER_LN);
        // SAFETY: 12 args = (ids, pos, int tokens, int n, word, pos_emb, type0, const float* w,
        // const float* b, float eps, float* out32, T* outc), sizes checked above, ids < vocab
        // and positions < pe_rows; smem n floats.
        unsafe {
            self.launch(
                name,
                (b.tokens as u32, 1, 1),
                (launch::row_threads(n), 1, 1),
                n * 4,
                &args,
            )
        }
    }

    /// `out32 = LayerNorm(input (+ residual))` per row of `n`; `out32` may be `input`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm(
        &self,
        dt: Dtype,
        input: &DevBuf,
        residual: Option<&DevBuf>,
        rows: usize,
        n: usize,
        ln: (&DevBuf, &DevBuf, f32),
        out32: &DevBuf,
        outc: Option<&DevBuf>,
    ) -> Result<()> {
        let args = [
            Arg::P(input.need("LayerNorm input", rows * n, Dtype::F32)?),
            Arg::P(opt_need(
                residual,
                "LayerNorm residual",
                rows * n,
                Dtype::F32,
            )?),
            Arg::I(rows as i32),
            Arg::I(n as i32),
            Arg::P(ln.0.need("LayerNorm weight", n, Dtype::F32)?),
            Arg::P(ln.1.need("LayerNorm bias", n, Dtype::F32)?),
            Arg::F(ln.2),
            Arg::P(out32.need("LayerNorm output", rows * n, Dtype::F32)?),
            Arg::P(opt_need(outc, "LayerNorm output copy", rows * n, dt)?),
        ];
        let name = by_dtype(dt, LAYERNORM);
        // SAFETY: 9 args = (const float* in, const float* residual, int rows, int n, const float* w,
        // const float* b, float eps, float* out32, T* outc), sizes checked above; smem n floats.
        unsafe {
            self.launch(
                name,
                (rows as u32, 1, 1),
                (launch::row_threads(n), 1, 1),
                n * 4,
                &args,
            )
        }
    }

    /// `c[M, N] = epi(a[M, K] . w[N, K]^T)`. `dt` is the input type (F32: the SIMT kernel);
    /// the output is fp32 when `out_f32`, else `dt`. The residual must not be `c`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        dt: Dtype,
        out_f32: bool,
        a: &DevBuf,
        w: &DevBuf,
        m: usize,
        n: usize,
        k: usize,
        epi: Epi<'_>,
        c: &DevBuf,
    ) -> Result<()> {
        let out_dt = if out_f32 { Dtype::F32 } else { dt };
        let (code, bias, res) = match epi {
            Epi::None => (launch::EPI_NONE, None, None),
            Epi::Bias(b) => (launch::EPI_BIAS, Some(b), None),
            Epi::BiasGelu(b) => (launch::EPI_BIAS_GELU, Some(b), None),
            Epi::BiasResidual(b, r) => (launch::EPI_BIAS_RESIDUAL, Some(b), Some(r)),
        };
        if let Some(r) = res {
            if r.ptr() == c.ptr() {
                return Err(Error::Device(
                    "gemm: the residual must not be the output".into(),
                ));
            }
        }
        let args = [
            Arg::P(a.need("GEMM A", m * k, dt)?),
            Arg::P(w.need("GEMM W", n * k, dt)?),
            Arg::P(opt_need(bias, "GEMM bias", n, Dtype::F32)?),
            Arg::P(opt_need(res, "GEMM residual", m * n, Dtype::F32)?),
            Arg::P(c.need("GEMM output", m * n, out_dt)?),
            Arg::I(m as i32),
            Arg::I(n as i32),
            Arg::I(k as i32),
            Arg::I(code),
        ];
        if m == 0 || n == 0 {
            return Ok(());
        }
        let variant = if dt == Dtype::F32 {
            GemmVariant::Simt
        } else if !launch::gemm_k8_ok(k, a.ptr(), w.ptr()) {
            GemmVariant::Plain
        } else if self.gemm_kernel() == GemmKernel::Tile128
            && launch::gemm_tc_big_smem_bytes() <= self.max_smem_optin
        {
            GemmVariant::K8Big
        } else {
            GemmVariant::K8
        };
        let name = gemm_name(dt, out_dt, variant)?;
        let (grid, threads, smem) = match variant {
            GemmVariant::Simt => (
                launch::gemm_grid(m, n, launch::SG_BM, launch::SG_BN)?,
                launch::SG_THREADS,
                0,
            ),
            GemmVariant::Plain | GemmVariant::K8 => (
                launch::gemm_grid(m, n, launch::TC_BM, launch::TC_BN)?,
                launch::TC_THREADS,
                0,
            ),
            GemmVariant::K8Big => (
                launch::gemm_grid(m, n, launch::TC_BIG, launch::TC_BIG)?,
                launch::TC_BIG_THREADS,
                launch::gemm_tc_big_smem_bytes(),
            ),
        };
        // SAFETY: 9 args = (const T* A, const T* W, const float* bias, const float* residual,
        // Tout* C, int M, int N, int K, int epi); sizes checked above (bias / residual non-null
        // whenever `epi` reads them); the _k8 variants (incl. _k8_128) only with K % 8 == 0 and
        // 16-byte aligned A / W; static shared memory, except _k8_128's dynamic ring of
        // gemm_tc_big_smem_bytes() (raised above 48 KB in `launch`, checked against the
        // device's limit above).
        unsafe { self.launch(name, grid, (threads, 1, 1), smem, &args) }
    }

    /// Disentangled attention: `ctx[T, H] = attention(qkv[T, 3H])` for every sequence of `b`.
    /// `pk` (c2p) / `pq` (p2c): [2S, H] in `dt`, `None` when the term is off.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        dt: Dtype,
        b: &DeviceBatch,
        qkv: &DevBuf,
        pk: Option<&DevBuf>,
        pq: Option<&DevBuf>,
        rel: &DeviceRelPos,
        heads: usize,
        d: usize,
        scale: f32,
        ctx: &DevBuf,
    ) -> Result<()> {
        let h = heads * d;
        if (pk.is_some() || pq.is_some()) && b.max_len > rel.max_len {
            return Err(Error::Input(format!(
                "sequence of {} tokens exceeds the relative-position table ({})",
                b.max_len, rel.max_len
            )));
        }
        if heads > 65_535 {
            return Err(Error::Device(format!("{heads} heads: at most 65535")));
        }
        let args = [
            Arg::P(qkv.need("qkv", b.tokens * 3 * h, dt)?),
            Arg::P(opt_need(pk, "PK", rel.rows * h, dt)?),
            Arg::P(opt_need(pq, "PQ", rel.rows * h, dt)?),
            Arg::P(
                rel.idx
                    .need("relative index", 2 * rel.max_len - 1, Dtype::F32)?,
            ),
            Arg::I(rel.max_len as i32),
            Arg::P(b.tiles.need("tiles", b.n_tiles * 4, Dtype::F32)?),
            Arg::I(heads as i32),
            Arg::I(d as i32),
            Arg::F(scale),
            Arg::I(pk.is_some() as i32),
            Arg::I(pq.is_some() as i32),
            Arg::P(ctx.need("attention output", b.tokens * h, dt)?),
        ];
        let kernel = self.attention_runs(dt, d);
        let name = attention_name(dt, kernel, d)?;
        let (threads, smem, blocks) = match kernel {
            AttentionKernel::V2 => (
                launch::ATT_TC_THREADS,
                launch::attention_tc_smem_bytes(),
                b.n_tiles_tc,
            ),
            AttentionKernel::V2Async => (
                launch::ATT_TC_THREADS,
                launch::attention_tc_async_smem_bytes(),
                b.n_tiles_tc,
            ),
            AttentionKernel::V1 => (
                launch::ATT_THREADS,
                launch::attention_smem_bytes(d),
                b.n_tiles,
            ),
        };
        // SAFETY: 12 args = (const T* qkv, const T* pk, const T* pq, const uint32_t* relidx,
        // int max_len, const int4* tiles, int heads, int d, float scale, int c2p, int p2c,
        // T* ctx), the signature of both kernels; tiles stay inside their sequences
        // (DeviceBatch), every relidx entry is < rel.rows (DeviceRelPos) and the kernels clamp
        // offsets to the table, pk / pq are read only when their flag is 1; sizes checked
        // above. Version 1: d <= 32 * DPL. Version 2 (tensor cores): d = 64 and a 2-byte T as
        // it assumes, every row it reads or writes 16-byte aligned (d = 64 and 3H, H multiples
        // of 64 elements; device allocations are 256-byte aligned). smem as
        // attention_smem_bytes(d) / attention_tc_smem_bytes() / attention_tc_async_smem_bytes()
        // (raised above 48 KB in `launch`).
        unsafe {
            self.launch(
                name,
                (blocks as u32, heads as u32, 1),
                (threads, 1, 1),
                smem,
                &args,
            )
        }
    }

    /// Pool each sequence of `b` from `x` (fp32 [T, h]) into `out` (fp32 [B, modes * h]).
    pub fn pool(
        &self,
        b: &DeviceBatch,
        x: &DevBuf,
        h: usize,
        modes: &[PoolingMode],
        out: &DevBuf,
    ) -> Result<()> {
        let (code, nm) = launch::pool_modes_code(modes)?;
        let args = [
            Arg::P(x.need("pool input", b.tokens * h, Dtype::F32)?),
            Arg::P(b.cu_seqlens.need("cu_seqlens", b.batch + 1, Dtype::F32)?),
            Arg::I(b.batch as i32),
            Arg::I(h as i32),
            Arg::U(code),
            Arg::I(nm),
            Arg::P(out.need("pool output", b.batch * nm as usize * h, Dtype::F32)?),
        ];
        let grid = (
            b.batch as u32,
            h.div_ceil(launch::COL_THREADS as usize) as u32,
            1,
        );
        // SAFETY: 7 args = (const float* x, const int* cu_seqlens, int batch, int H,
        // unsigned modes, int nmodes, float* out); cu_seqlens is monotone and ends at T
        // (Packed), sizes checked above.
        unsafe { self.launch(names::POOL, grid, (launch::COL_THREADS, 1, 1), 0, &args) }
    }

    /// The tensor-core probe of the kernel testbed (kernels/peak.cu): `blocks` blocks of 128
    /// threads, each warp `iters` rounds of 8 mma.sync m16n8k16 in `dt` (f16 or bf16). Returns
    /// the FLOPs it queued; `out` takes one fp32 per thread.
    pub fn mma_peak(&self, dt: Dtype, blocks: usize, iters: usize, out: &DevBuf) -> Result<f64> {
        const THREADS: usize = launch::PEAK_THREADS as usize;
        let name = match dt {
            Dtype::F16 => names::MMA_PEAK_F16,
            Dtype::BF16 => names::MMA_PEAK_BF16,
            Dtype::F32 => return Err(Error::Input("the mma probe runs in f16 or bf16".into())),
        };
        let iters = i32::try_from(iters).map_err(|_| Error::Input("too many iterations".into()))?;
        let args = [
            Arg::I(iters),
            Arg::P(out.need("probe output", blocks * THREADS, Dtype::F32)?),
        ];
        // SAFETY: 2 args = (int iters, float* out), the kernel's signature; it writes
        // out[blockIdx.x * 128 + threadIdx.x] only, inside the `blocks * 128` floats checked.
        unsafe {
            self.launch(
                name,
                (blocks as u32, 1, 1),
                (THREADS as u32, 1, 1),
                0,
                &args,
            )?
        };
        Ok(launch::mma_peak_flops(blocks, iters as usize))
    }

    /// L2-normalize each row of `x` (fp32 [rows, dim]) in place.
    pub fn l2_normalize(&self, x: &DevBuf, rows: usize, dim: usize) -> Result<()> {
        let args = [
            Arg::P(x.need("normalize", rows * dim, Dtype::F32)?),
            Arg::I(rows as i32),
            Arg::I(dim as i32),
        ];
        // SAFETY: 3 args = (float* x, int rows, int dim), size checked above.
        unsafe {
            self.launch(
                names::L2_NORMALIZE,
                (rows as u32, 1, 1),
                (launch::row_threads(dim), 1, 1),
                0,
                &args,
            )
        }
    }

    /// Conv block: `out = act(conv1d(x) + bias)` per sequence of `b` (fp32 [T, h]);
    /// `weight`: fp32 [h, h / groups, k].
    #[allow(clippy::too_many_arguments)]
    pub fn conv1d_act(
        &self,
        b: &DeviceBatch,
        x: &DevBuf,
        h: usize,
        k: usize,
        groups: usize,
        weight: &DevBuf,
        bias: &DevBuf,
        act: Activation,
        out: &DevBuf,
    ) -> Result<()> {
        if groups == 0 || !h.is_multiple_of(groups) || k == 0 {
            return Err(Error::Device(format!(
                "conv: bad groups {groups} / kernel {k} for {h} channels"
            )));
        }
        let act_code = launch::activation_code(act);
        let args = [
            Arg::P(x.need("conv input", b.tokens * h, Dtype::F32)?),
            Arg::P(b.pos.need("pos", b.tokens, Dtype::F32)?),
            Arg::P(b.len.need("len", b.tokens, Dtype::F32)?),
            Arg::I(b.tokens as i32),
            Arg::I(h as i32),
            Arg::I(k as i32),
            Arg::I(groups as i32),
            Arg::P(weight.need("conv weight", h * (h / groups) * k, Dtype::F32)?),
            Arg::P(bias.need("conv bias", h, Dtype::F32)?),
            Arg::I(act_code),
            Arg::P(out.need("conv output", b.tokens * h, Dtype::F32)?),
        ];
        let grid = (
            b.tokens as u32,
            h.div_ceil(launch::COL_THREADS as usize) as u32,
            1,
        );
        // SAFETY: 11 args = (const float* x, const int* pos, const int* len, int tokens, int H,
        // int k, int groups, const float* weight, const float* bias, int act, float* out);
        // pos / len describe the packed sequences (Packed), so every source row stays inside
        // the token's own sequence; sizes checked above.
        unsafe {
            self.launch(
                names::CONV1D_ACT,
                grid,
                (launch::COL_THREADS, 1, 1),
                0,
                &args,
            )
        }
    }
}

/// An entry point per compute type (f32, f16, bf16).
type ByDtype = [&'static str; 3];

const EMBED_GATHER: ByDtype = [
    names::EMBED_GATHER_F32,
    names::EMBED_GATHER_F16,
    names::EMBED_GATHER_BF16,
];
const EMBED_GATHER_LN: ByDtype = [
    names::EMBED_GATHER_LN_F32,
    names::EMBED_GATHER_LN_F16,
    names::EMBED_GATHER_LN_BF16,
];
const LAYERNORM: ByDtype = [
    names::LAYERNORM_F32,
    names::LAYERNORM_F16,
    names::LAYERNORM_BF16,
];

fn by_dtype(dt: Dtype, table: ByDtype) -> &'static str {
    match dt {
        Dtype::F32 => table[0],
        Dtype::F16 => table[1],
        Dtype::BF16 => table[2],
    }
}

/// The GEMM kernels: the fp32 SIMT one, and the tensor-core tiles of [`GemmKernel`] with or
/// without the `_k8` operand streaming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmVariant {
    /// `gemm_simt_f32` (fp32 in and out)
    Simt,
    /// `gemm_<in>_<out>`: any K, element-wise loads
    Plain,
    /// `gemm_<in>_<out>_k8`: K % 8 == 0 and 16-byte aligned operands
    K8,
    /// `gemm_<in>_<out>_k8_128`: the 128 x 128 tiles
    K8Big,
}

/// The GEMM entry point for input `dt`, output `out` (fp32 or `dt`) and `v`.
pub fn gemm_name(dt: Dtype, out: Dtype, v: GemmVariant) -> Result<&'static str> {
    use Dtype::{BF16, F16, F32};
    use GemmVariant::{K8Big, Plain, Simt, K8};
    Ok(match (dt, out, v) {
        (F32, F32, Simt) => names::GEMM_SIMT_F32,
        (F16, F16, Plain) => names::GEMM_F16_F16,
        (F16, F32, Plain) => names::GEMM_F16_F32,
        (BF16, BF16, Plain) => names::GEMM_BF16_BF16,
        (BF16, F32, Plain) => names::GEMM_BF16_F32,
        (F16, F16, K8) => names::GEMM_F16_F16_K8,
        (F16, F32, K8) => names::GEMM_F16_F32_K8,
        (BF16, BF16, K8) => names::GEMM_BF16_BF16_K8,
        (BF16, F32, K8) => names::GEMM_BF16_F32_K8,
        (F16, F16, K8Big) => names::GEMM_F16_F16_K8_128,
        (F16, F32, K8Big) => names::GEMM_F16_F32_K8_128,
        (BF16, BF16, K8Big) => names::GEMM_BF16_BF16_K8_128,
        (BF16, F32, K8Big) => names::GEMM_BF16_F32_K8_128,
        _ => {
            return Err(Error::Device(format!(
                "no GEMM kernel for {dt:?} -> {out:?} ({v:?})"
            )))
        }
    })
}

/// The attention entry point for `dt`, `kernel` (as [`Gpu::attention_runs`] resolved it) and
/// head dim `d` (version 1: the DPL instantiation of [`launch::attention_dpl`]).
pub fn attention_name(dt: Dtype, kernel: AttentionKernel, d: usize) -> Result<&'static str> {
    use Dtype::{BF16, F16, F32};
    let v1 = |table: [&'static str; 4]| -> Result<&'static str> {
        Ok(match launch::attention_dpl(d)? {
            1 => table[0],
            2 => table[1],
            4 => table[2],
            _ => table[3],
        })
    };
    match (kernel, dt) {
        (AttentionKernel::V1, F32) => v1([
            names::ATTENTION_F32_DPL1,
            names::ATTENTION_F32_DPL2,
            names::ATTENTION_F32_DPL4,
            names::ATTENTION_F32_DPL8,
        ]),
        (AttentionKernel::V1, F16) => v1([
            names::ATTENTION_F16_DPL1,
            names::ATTENTION_F16_DPL2,
            names::ATTENTION_F16_DPL4,
            names::ATTENTION_F16_DPL8,
        ]),
        (AttentionKernel::V1, BF16) => v1([
            names::ATTENTION_BF16_DPL1,
            names::ATTENTION_BF16_DPL2,
            names::ATTENTION_BF16_DPL4,
            names::ATTENTION_BF16_DPL8,
        ]),
        (AttentionKernel::V2, F16) => Ok(names::ATTENTION_TC_F16),
        (AttentionKernel::V2, BF16) => Ok(names::ATTENTION_TC_BF16),
        (AttentionKernel::V2Async, F16) => Ok(names::ATTENTION_TC_ASYNC_F16),
        (AttentionKernel::V2Async, BF16) => Ok(names::ATTENTION_TC_ASYNC_BF16),
        (k, F32) => Err(Error::Device(format!(
            "the tensor-core attention ({k:?}) has no f32 kernel"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

    /// Every entry point is chosen by exactly one (op, dtype, variant), and is the name the
    /// kernel-name scheme of kernels/*.cu gives it.
    #[test]
    fn every_entry_point_is_selected_by_its_name() {
        let mut chosen: Vec<(&str, String)> = Vec::new();
        for dt in DTYPES {
            let s = dt.suffix();
            chosen.push((by_dtype(dt, EMBED_GATHER), format!("embed_gather_{s}")));
            chosen.push((
                by_dtype(dt, EMBED_GATHER_LN),
                format!("embed_gather_ln_{s}"),
            ));
            chosen.push((by_dtype(dt, LAYERNORM), format!("layernorm_{s}")));
            for (d, dpl) in [(32, 1), (64, 2), (100, 4), (256, 8)] {
                let got = attention_name(dt, AttentionKernel::V1, d).unwrap();
                chosen.push((got, format!("attention_{s}_dpl{dpl}")));
            }
            if dt == Dtype::F32 {
                chosen.push((
                    gemm_name(dt, dt, GemmVariant::Simt).unwrap(),
                    "gemm_simt_f32".into(),
                ));
                for k in [AttentionKernel::V2, AttentionKernel::V2Async] {
                    assert!(attention_name(dt, k, 64).is_err());
                }
                assert!(gemm_name(dt, dt, GemmVariant::K8).is_err());
                continue;
            }
            chosen.push((
                attention_name(dt, AttentionKernel::V2, 64).unwrap(),
                format!("attention_tc_{s}"),
            ));
            chosen.push((
                attention_name(dt, AttentionKernel::V2Async, 64).unwrap(),
                format!("attention_tc_async_{s}"),
            ));
            for out in [dt, Dtype::F32] {
                let o = out.suffix();
                for (v, tail) in [
                    (GemmVariant::Plain, ""),
                    (GemmVariant::K8, "_k8"),
                    (GemmVariant::K8Big, "_k8_128"),
                ] {
                    let got = gemm_name(dt, out, v).unwrap();
                    chosen.push((got, format!("gemm_{s}_{o}{tail}")));
                }
            }
            assert!(gemm_name(dt, dt, GemmVariant::Simt).is_err());
        }
        assert!(gemm_name(Dtype::F16, Dtype::BF16, GemmVariant::Plain).is_err());
        assert!(attention_name(Dtype::F16, AttentionKernel::V1, 0).is_err());
        assert!(attention_name(Dtype::F16, AttentionKernel::V1, 257).is_err());
        for (got, want) in &chosen {
            assert_eq!(got, want);
        }
        // with pool, l2_normalize, conv1d_act and the two probes, every entry point once
        let mut all: Vec<&str> = chosen.iter().map(|c| c.0).collect();
        all.extend([
            names::POOL,
            names::L2_NORMALIZE,
            names::CONV1D_ACT,
            names::MMA_PEAK_F16,
            names::MMA_PEAK_BF16,
        ]);
        all.sort_unstable();
        let mut listed = names::ALL.to_vec();
        listed.sort_unstable();
        assert_eq!(all, listed);
    }
}
