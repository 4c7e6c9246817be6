//! The kernel testbed (`deberta-embed bench --device cuda --ops`): each kernel variant at the
//! deberta-v3-xsmall shapes, first checked against the CPU reference on the same (rounded)
//! inputs, then timed, with its achieved TFLOP/s and GB/s set against the device's measured
//! peaks: a device-to-device copy for memory, and the `mma.sync` probe of kernels/peak.cu for
//! the tensor cores (the instruction our GEMM and attention v2 use).
//!
//! A variant whose check fails is still timed, and its row says FAIL.

use std::time::Instant;

use super::device::{DevBuf, Dtype, Gpu};
use super::kernels::{AttentionKernel, Epi, GemmKernel};
use super::launch::Packed;
use crate::backend::cpu::gemm::{reference_linear, Epilogue};
use crate::error::{Error, Result};
use crate::relpos::RelPosTable;
pub use crate::testing::rel_err;
use crate::testing::{attention_reference, tol, AttentionParams, XorShift};

/// The device's measured ceilings.
#[derive(Clone, Copy, Debug)]
pub struct Peaks {
    /// `mma.sync` m16n8k16, fp32 accumulation, in the testbed's dtype.
    pub mma_tflops: f64,
    /// Device-to-device copy (bytes read + written per second).
    pub copy_gbps: f64,
}

/// One variant at one shape.
#[derive(Clone, Debug)]
pub struct Row {
    pub op: &'static str,
    pub variant: String,
    pub shape: String,
    /// ||got - want|| / ||want|| on the checked part
    pub rel_err: f64,
    pub tolerance: f64,
    pub median_us: f64,
    pub tflops: f64,
    pub gbps: f64,
}

impl Row {
    /// Whether the check passed.
    pub fn ok(&self) -> bool {
        self.rel_err.is_finite() && self.rel_err <= self.tolerance
    }
}

/// Median seconds of one call of `f`, over 5 samples of `reps` calls each (after one warm-up
/// call), synchronizing at the end of each sample.
fn time(g: &Gpu, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    g.sync()?;
    let mut samples = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        g.sync()?;
        samples.push(t.elapsed().as_secs_f64() / reps as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Check tolerance on the relative norm of the error (inputs pre-rounded to `dt`, so only the
/// accumulation order and the output rounding differ; `out16`: rounded to `dt` on output).
/// tests/gpu.rs checks the kernels with the same values ([`crate::testing::tol`]).
pub fn tolerance(dt: Dtype, out16: bool) -> f64 {
    match (dt, out16) {
        (Dtype::F32, _) => tol::F32,
        (Dtype::F16, false) | (Dtype::BF16, false) => tol::HALF_IN_F32_OUT,
        (Dtype::F16, true) => tol::F16_OUT,
        (Dtype::BF16, true) => tol::BF16_OUT,
    }
}

/// Measure the peaks (f16 / bf16 `dt` for the tensor-core probe).
pub fn peaks(g: &Gpu, dt: Dtype) -> Result<Peaks> {
    let bytes = 256 << 20;
    let (src, dst) = (g.alloc(bytes, "copy probe")?, g.alloc(bytes, "copy probe")?);
    g.poison(&src)?;
    let copy_s = time(g, 10, || g.copy(&src, &dst, bytes))?;
    // 8 blocks of 4 warps per SM, 256 rounds: ~3.5e13 FLOPs on an H100, tens of ms a launch
    let blocks = g.sm_count() * 8;
    let out = g.alloc(blocks * 128 * 4, "mma probe")?;
    let mut flops = 0.0;
    let mma_s = time(g, 3, || {
        flops = g.mma_peak(dt, blocks, 256, &out)?;
        Ok(())
    })?;
    Ok(Peaks {
        mma_tflops: flops / mma_s / 1e12,
        copy_gbps: 2.0 * bytes as f64 / copy_s / 1e9,
    })
}

/// The GEMM of one Linear layer as the forward runs it: `[m, k] x [n, k]^T` with its epilogue
/// (QKV: bias, 16-bit out; FFN up: bias + GELU, 16-bit out; the two projections back to H:
/// bias + fp32 residual, fp32 out).
fn gemm_row(
    g: &Gpu,
    dt: Dtype,
    tiles: GemmKernel,
    m: usize,
    k: usize,
    n: usize,
    what: &str,
) -> Result<Row> {
    g.set_gemm_kernel(tiles);
    let mut rng = XorShift(0x6E44 + (m * 31 + k * 7 + n) as u64);
    let x = dt.round(&rng.normal_vec(m * k, 0.0, 1.0));
    let w = dt.round(&rng.normal_vec(n * k, 0.0, 1.0 / (k as f32).sqrt()));
    let bias = rng.normal_vec(n, 0.0, 0.1);
    let residual = rng.normal_vec(m * n, 0.0, 1.0);
    let out16 = what != "out";
    let gelu = what == "ffn-up";
    let (dx, dw) = (g.upload(dt, &x, "x")?, g.upload(dt, &w, "w")?);
    let (db, dr) = (
        g.upload(Dtype::F32, &bias, "bias")?,
        g.upload(Dtype::F32, &residual, "residual")?,
    );
    let out_dt = if out16 { dt } else { Dtype::F32 };
    let dc = g.alloc(m * n * out_dt.size(), "gemm output")?;
    g.poison(&dc)?;
    let epi = match (out16, gelu) {
        (true, true) => Epi::BiasGelu(&db),
        (true, false) => Epi::Bias(&db),
        (false, _) => Epi::BiasResidual(&db, &dr),
    };
    let run = || g.gemm(dt, !out16, &dx, &dw, m, n, k, epi, &dc);
    run()?;
    let got = g.download(out_dt, &dc, m * n)?;
    // Check the first and last 8 rows (the f64-free reference is O(m n k)).
    let rows: Vec<usize> = (0..8.min(m)).chain(m.saturating_sub(8).max(8)..m).collect();
    let mut want_all = Vec::with_capacity(rows.len() * n);
    let mut got_all = Vec::with_capacity(rows.len() * n);
    for &i in &rows {
        let mut want = vec![0.0f32; n];
        let ep = match (out16, gelu) {
            (true, true) => Epilogue::BiasGelu(&bias),
            (true, false) => Epilogue::Bias(&bias),
            (false, _) => Epilogue::BiasResidual(&bias, &residual[i * n..(i + 1) * n]),
        };
        reference_linear(&x[i * k..(i + 1) * k], 1, &w, n, k, ep, &mut want);
        want_all.extend(if out16 { dt.round(&want) } else { want });
        got_all.extend_from_slice(&got[i * n..(i + 1) * n]);
    }
    let secs = time(g, 20, run)?;
    g.set_gemm_kernel(GemmKernel::Tile64);
    let bytes =
        (m * k + n * k) * dt.size() + m * n * out_dt.size() + if out16 { 0 } else { m * n * 4 };
    Ok(Row {
        op: "gemm",
        variant: match tiles {
            GemmKernel::Tile64 => format!("{what} mma.sync"),
            GemmKernel::Tile128 => format!("{what} mma.sync 128x128"),
        },
        shape: format!("{m} x {k} x {n}"),
        rel_err: rel_err(&got_all, &want_all),
        tolerance: tolerance(dt, out16),
        median_us: secs * 1e6,
        tflops: 2.0 * (m * n * k) as f64 / secs / 1e12,
        gbps: bytes as f64 / secs / 1e9,
    })
}

/// One layer's attention over `b` sequences of `l` tokens, xsmall's 6 heads of 64 with c2p and
/// p2c (256 buckets), with `kernel`; checked on the first two sequences.
fn attention_row(g: &Gpu, dt: Dtype, kernel: AttentionKernel, b: usize, l: usize) -> Result<Row> {
    let (heads, d, span) = (6usize, 64usize, 256usize);
    let h = heads * d;
    let rel = RelPosTable::new(512, 256, 512, span);
    let mut rng = XorShift(0xA77 + (b * 1000 + l) as u64);
    let pk = dt.round(&rng.normal_vec(2 * span * h, 0.0, 1.0));
    let pq = dt.round(&rng.normal_vec(2 * span * h, 0.0, 1.0));
    let scale = 1.0 / ((d * 3) as f32).sqrt();
    let drel = g.upload_relpos(&rel, 2 * span)?;
    let (dpk, dpq) = (g.upload(dt, &pk, "pk")?, g.upload(dt, &pq, "pq")?);
    g.set_attention_kernel(kernel);
    // version 2 falls back to version 1 where the device lacks its shared memory: say so
    let ran = g.attention_runs(dt, d);
    let variant = if ran == kernel {
        format!("{kernel:?}").to_lowercase()
    } else {
        format!("{kernel:?} (ran {ran:?}: shared memory)").to_lowercase()
    };
    let launch = |nseq: usize, qkv: &DevBuf, ctx: &DevBuf| -> Result<()> {
        let ids = vec![vec![0u32; l]; nseq];
        let db = g.upload_batch(&Packed::new(&ids)?, 1)?;
        g.attention(
            dt,
            &db,
            qkv,
            Some(&dpk),
            Some(&dpq),
            &drel,
            heads,
            d,
            scale,
            ctx,
        )
    };
    // check on two sequences
    let nchk = 2.min(b);
    let qkv = dt.round(&rng.normal_vec(nchk * l * 3 * h, 0.0, 1.0));
    let (dq, dc) = (
        g.upload(dt, &qkv, "qkv")?,
        g.alloc(nchk * l * h * dt.size(), "ctx")?,
    );
    g.poison(&dc)?;
    launch(nchk, &dq, &dc)?;
    let got = g.download(dt, &dc, nchk * l * h)?;
    let mut want = vec![0.0f32; nchk * l * h];
    let offsets: Vec<usize> = (0..=nchk).map(|s| s * l).collect();
    let p = AttentionParams {
        heads,
        head_dim: d,
        scale,
        c2p: true,
        p2c: true,
        tiles: false,
    };
    attention_reference(&p, &qkv, &offsets, &pk, &pq, &rel, &mut want);
    let want = dt.round(&want);
    // time on the whole batch (the upload of the batch is outside the timed launches)
    let t = b * l;
    let dq = g.upload(dt, &rng.normal_vec(t * 3 * h, 0.0, 1.0), "qkv")?;
    let dc = g.alloc(t * h * dt.size(), "ctx")?;
    let ids = vec![vec![0u32; l]; b];
    let db = g.upload_batch(&Packed::new(&ids)?, 1)?;
    let secs = time(g, 10, || {
        g.attention(
            dt,
            &db,
            &dq,
            Some(&dpk),
            Some(&dpq),
            &drel,
            heads,
            d,
            scale,
            &dc,
        )
    })?;
    g.set_attention_kernel(AttentionKernel::V1);
    // QK^T, c2p, p2c, PV: 2 L^2 d FLOPs each, per sequence and head
    let flops = 8.0 * (b * heads) as f64 * (l * l * d) as f64;
    let bytes = (t * 3 * h + t * h) * dt.size();
    Ok(Row {
        op: "attention",
        variant,
        shape: format!("{b} x {l}"),
        rel_err: rel_err(&got, &want),
        tolerance: tolerance(dt, true),
        median_us: secs * 1e6,
        tflops: flops / secs / 1e12,
        gbps: bytes as f64 / secs / 1e9,
    })
}

/// Every variant at the model's shapes, in `dt` (f16 or bf16).
pub fn run(g: &Gpu, dt: Dtype) -> Result<(Peaks, Vec<Row>)> {
    if dt == Dtype::F32 {
        return Err(Error::Input(
            "the kernel testbed runs the tensor-core kernels: --dtype f16 or bf16".into(),
        ));
    }
    let peaks = peaks(g, dt)?;
    let mut rows = Vec::new();
    for m in [4096, 32768] {
        for (k, n, what) in [
            (384, 1152, "qkv"),
            (384, 384, "out"),
            (384, 1536, "ffn-up"),
            (1536, 384, "out"),
        ] {
            for tiles in [GemmKernel::Tile64, GemmKernel::Tile128] {
                rows.push(gemm_row(g, dt, tiles, m, k, n, what)?);
            }
        }
    }
    for (b, l) in [(256, 32), (64, 128), (16, 512)] {
        for kernel in [
            AttentionKernel::V1,
            AttentionKernel::V2,
            AttentionKernel::V2Async,
        ] {
            rows.push(attention_row(g, dt, kernel, b, l)?);
        }
    }
    Ok((peaks, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_fail_unwritten_outputs() {
        let row = |rel_err| Row {
            op: "gemm",
            variant: String::new(),
            shape: String::new(),
            rel_err,
            tolerance: 1e-3,
            median_us: 1.0,
            tflops: 1.0,
            gbps: 1.0,
        };
        assert!(row(1e-4).ok() && !row(2e-3).ok() && !row(f64::INFINITY).ok());
    }
}
