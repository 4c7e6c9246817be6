//! Linear-layer GEMM throughput at the DeBERTa-v3-xsmall shapes (`m x k x n`, m = B * L tokens):
//! k = 384 -> n = 1152 (fused QKV), 384 (attention out), 1536 (FFN up); k = 1536 -> n = 384
//! (FFN down), for m in {16, 512, 4096}; 4096 x 384 x 1536 is the headline case.
//!
//! `cargo bench --bench gemm` first prints a quick summary (median GFLOP/s per shape, for every
//! kernel level this CPU runs, or the levels in `GEMM_LEVELS=avx512,avx2,portable`), then runs
//! the criterion benchmarks on the dispatched level. `GEMM_QUICK=1` prints the summary only.
//! Each shape is first checked against the naive reference on a few rows (check, then time).
//! The summary also times the 48 GEMMs of one 16-token forward with cold (DRAM) weights, in
//! GB/s of weights read: the figure the small-m path is tuned for.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use deberta_embed::backend::cpu::gemm::{
    amx_available, bf16_dot_available, linear_with, reference_linear, simd_level, Epilogue,
    PackedWeight, SimdLevel,
};
// deterministic inputs in [-1, 1)
use deberta_embed::testing::signed_fill as fill;

/// Which stored form of the weight a run uses.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    F32,
    /// bf16 pairs for the `avx512_bf16` dot-product kernel
    Dot,
    /// bf16 tiles for the AMX kernel
    Tiles,
}

const MS: [usize; 3] = [16, 512, 4096];
/// (k, n) pairs of the model's Linear layers.
const KN: [(usize, usize); 4] = [(384, 1152), (384, 384), (384, 1536), (1536, 384)];

struct Case {
    m: usize,
    k: usize,
    n: usize,
    x: Vec<f32>,
    w: PackedWeight,
    /// the same weight for the `avx512_bf16` dot-product kernel, where the CPU has it
    w_dot: Option<PackedWeight>,
    /// the same weight for the AMX-BF16 tile kernel, where the CPU has it
    w_tiles: Option<PackedWeight>,
    bias: Vec<f32>,
    out: Vec<f32>,
}

impl Case {
    fn new(m: usize, k: usize, n: usize) -> Case {
        let x = fill(m * k, 1 + m as u64);
        let w_torch = fill(n * k, 2 + n as u64 * 7 + k as u64);
        let bias = fill(n, 3);
        let w = PackedWeight::new(&w_torch, n, k);
        let w_dot = bf16_dot_available().then(|| PackedWeight::new(&w_torch, n, k).with_bf16_dot());
        let w_tiles = amx_available().then(|| bf16_tiles(&w_torch, n, k));
        let case = Case {
            m,
            k,
            n,
            x,
            w,
            w_dot,
            w_tiles,
            bias,
            out: vec![0.0; m * n],
        };
        case.check(&w_torch);
        case
    }

    /// Check every level on the first rows against the naive loop before timing anything.
    fn check(&self, w_torch: &[f32]) {
        let (k, n) = (self.k, self.n);
        let rows = self.m.min(4);
        let mut want = vec![0.0; rows * n];
        let ep = Epilogue::Bias(&self.bias);
        reference_linear(&self.x, rows, w_torch, n, k, ep, &mut want);
        for level in SimdLevel::available() {
            let mut got = vec![0.0; self.m * n];
            linear_with(level, &self.x, self.m, &self.w, ep, &mut got);
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{level}: {g} vs {e}"
                );
            }
        }
        for (name, w_bf16) in [("bf16 dot", &self.w_dot), ("bf16 tiles", &self.w_tiles)] {
            let Some(w_bf16) = w_bf16 else { continue };
            // against the reference on the bf16-rounded operands
            let round = |v: &[f32]| -> Vec<f32> {
                v.iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32())
                    .collect()
            };
            let (x, w) = (round(&self.x[..rows * k]), round(w_torch));
            reference_linear(&x, rows, &w, n, k, ep, &mut want);
            let mut got = vec![0.0; self.m * n];
            linear_with(SimdLevel::Avx512, &self.x, self.m, w_bf16, ep, &mut got);
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{name}: {g} vs {e}"
                );
            }
        }
    }

    fn flops(&self) -> u64 {
        2 * (self.m * self.n * self.k) as u64
    }

    fn run(&mut self, level: SimdLevel) {
        self.run_ep(level, Form::F32, false);
    }

    /// One product with the bias epilogue, or bias + GELU, with the weight in `form` (the bf16
    /// forms on the AVX-512 level).
    fn run_ep(&mut self, level: SimdLevel, form: Form, gelu: bool) {
        let ep = if gelu {
            Epilogue::BiasGelu(&self.bias)
        } else {
            Epilogue::Bias(&self.bias)
        };
        let w = match (form, &self.w_dot, &self.w_tiles) {
            (Form::Dot, Some(w), _) | (Form::Tiles, _, Some(w)) => w,
            _ => &self.w,
        };
        linear_with(level, black_box(&self.x), self.m, w, ep, &mut self.out);
        black_box(&mut self.out);
    }
}

/// Median seconds per call over `samples` samples of at least `min_sample` each.
fn median_secs(
    case: &mut Case,
    (level, form): (SimdLevel, Form),
    gelu: bool,
    samples: usize,
    min_sample: Duration,
) -> f64 {
    case.run_ep(level, form, gelu);
    let t = Instant::now();
    case.run_ep(level, form, gelu);
    let once = t.elapsed().max(Duration::from_nanos(100));
    let iters = (min_sample.as_secs_f64() / once.as_secs_f64())
        .ceil()
        .max(1.0) as u32;
    let mut per_call: Vec<f64> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                case.run_ep(level, form, gelu);
            }
            t.elapsed().as_secs_f64() / f64::from(iters)
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    per_call[per_call.len() / 2]
}

fn summary() {
    let levels: Vec<SimdLevel> = match std::env::var("GEMM_LEVELS") {
        Ok(s) => s
            .split(',')
            .filter_map(SimdLevel::parse)
            .filter(|l| l.is_available())
            .collect(),
        Err(_) => SimdLevel::available().into_iter().rev().collect(),
    };
    println!(
        "gemm summary: {} rayon threads, dispatched level {}",
        rayon::current_num_threads(),
        simd_level()
    );
    // (level, weight form): the levels, then the bf16 kernels where the CPU has them
    let mut runs: Vec<(SimdLevel, Form)> = levels.iter().map(|&l| (l, Form::F32)).collect();
    if bf16_dot_available() && levels.contains(&SimdLevel::Avx512) {
        runs.push((SimdLevel::Avx512, Form::Dot));
    }
    if amx_available() && levels.contains(&SimdLevel::Avx512) {
        runs.push((SimdLevel::Avx512, Form::Tiles));
    }
    for m in MS {
        for (k, n) in KN {
            let mut case = Case::new(m, k, n);
            for &(level, form) in &runs {
                let secs = median_secs(
                    &mut case,
                    (level, form),
                    false,
                    9,
                    Duration::from_millis(40),
                );
                let name = match form {
                    Form::F32 => level.to_string(),
                    Form::Dot => "bf16dot".to_string(),
                    Form::Tiles => "amx".to_string(),
                };
                println!(
                    "gemm {m:>5} x {k:>4} x {n:>4} [{name:>8}]: {:>9.1} us  {:>6.1} GFLOP/s{}",
                    secs * 1e6,
                    case.flops() as f64 / secs * 1e-9,
                    if (m, k, n) == (4096, 384, 1536) {
                        "  <- headline shape (issue 3: >= 80% of the sgemm ceiling)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    cold_forward_gemms(&levels);
    // The FFN-up epilogue: bias + exact erf GELU per element.
    let level = simd_level();
    let mut case = Case::new(4096, 384, 1536);
    let secs = median_secs(
        &mut case,
        (level, Form::F32),
        true,
        9,
        Duration::from_millis(40),
    );
    println!(
        "gemm  4096 x  384 x 1536 [{level:>8}] bias+gelu: {:>9.1} us  {:>6.1} GFLOP/s (GEMM flops only)",
        secs * 1e6,
        case.flops() as f64 / secs * 1e-9
    );
}

/// The 48 GEMMs of one 16-token forward (12 layers x the 4 Linear shapes, each with its own
/// weights: 85 MB, so every pass reads them from DRAM, as the model does), with the model's
/// epilogues (bias, bias + residual, bias + GELU). The time per pass and the weight bytes per
/// second: at m = 16 this is bound by the W stream, not by the arithmetic.
fn cold_forward_gemms(levels: &[SimdLevel]) {
    const LAYERS: usize = 12;
    let m = 16;
    let weights: Vec<Vec<PackedWeight>> = (0..LAYERS)
        .map(|l| {
            KN.iter()
                .map(|&(k, n)| PackedWeight::new(&fill(n * k, 100 + l as u64), n, k))
                .collect()
        })
        .collect();
    let bytes: usize = KN.iter().map(|&(k, n)| 4 * n * k).sum::<usize>() * LAYERS;
    let (x, bias, res) = (fill(m * 1536, 5), fill(1536, 6), fill(m * 1536, 7));
    let mut out = vec![0.0f32; m * 1536];
    for &level in levels {
        let mut pass = || {
            for layer in &weights {
                for (i, (&(k, n), w)) in KN.iter().zip(layer).enumerate() {
                    let ep = match i {
                        0 => Epilogue::Bias(&bias[..n]),
                        2 => Epilogue::BiasGelu(&bias[..n]),
                        _ => Epilogue::BiasResidual(&bias[..n], &res[..m * n]),
                    };
                    linear_with(level, &x[..m * k], m, w, ep, &mut out[..m * n]);
                }
            }
            black_box(&mut out);
        };
        pass();
        let mut secs: Vec<f64> = (0..31)
            .map(|_| {
                let t = Instant::now();
                pass();
                t.elapsed().as_secs_f64()
            })
            .collect();
        secs.sort_by(f64::total_cmp);
        let s = secs[secs.len() / 2];
        println!(
            "gemm 48 Linear layers of a 16-token forward, weights cold [{level:>8}]: {:>7.2} ms  {:>5.1} GB/s of weights",
            s * 1e3,
            bytes as f64 / s * 1e-9
        );
    }
}

fn criterion_benches(c: &mut Criterion) {
    let level = simd_level();
    let mut group = c.benchmark_group(format!("gemm_{level}"));
    for m in MS {
        for (k, n) in KN {
            let mut case = Case::new(m, k, n);
            // "Elements" here are FLOPs (2 m n k), so criterion's elem/s reads as FLOP/s.
            group.throughput(Throughput::Elements(case.flops()));
            if m >= 4096 {
                group.sample_size(10);
            } else {
                group.sample_size(30);
            }
            group.bench_function(BenchmarkId::new(format!("{m}x{k}x{n}"), "bias"), |b| {
                b.iter(|| case.run(level))
            });
        }
    }
    // The headline shape with the GELU epilogue (FFN up), to show what the erf GELU costs.
    let mut case = Case::new(4096, 384, 1536);
    group.throughput(Throughput::Elements(case.flops()));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("4096x384x1536", "bias_gelu"), |b| {
        b.iter(|| case.run_ep(level, Form::F32, true))
    });
    group.finish();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = std::env::var_os("GEMM_QUICK").is_some();
    // `cargo bench` passes --bench; `cargo test --benches` does not (criterion's test mode).
    if quick || args.iter().any(|a| a == "--bench") {
        summary();
    }
    if quick {
        return;
    }
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
}

/// `w` packed for the AMX kernel (x86-64 only; callers check `amx_available` first).
#[cfg(target_arch = "x86_64")]
fn bf16_tiles(w: &[f32], n: usize, k: usize) -> PackedWeight {
    PackedWeight::new(w, n, k).with_bf16_tiles()
}

#[cfg(not(target_arch = "x86_64"))]
fn bf16_tiles(_: &[f32], _: usize, _: usize) -> PackedWeight {
    unreachable!("amx_available is false off x86-64")
}
