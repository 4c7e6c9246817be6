//! Attention and whole-encoder throughput at deberta-v3-xsmall shapes.
//!
//! * `attention/L`: one layer's fused disentangled attention (6 heads x 64, c2p + p2c,
//!   256 log buckets) over B sequences of L tokens, L in {16, 128, 512}; throughput counts the
//!   multiply-adds of QK^T, c2p, p2c and PV (4 * B * L^2 * H) as 2 FLOPs each.
//! * `encoder/BxL`: forward + mean pooling of the synthetic xsmall model (12 layers).
//!
//! `attention-tiles/L`: the same on the AMX-BF16 tiles (bf16 operands), where the CPU has them
//! (L >= 24: shorter sequences run the fp32 path).
//!
//! `cargo bench --bench encoder`. The attention kernel is checked against the per-element
//! reference once per shape before it is timed (the tiles against it on their bf16 operands).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use deberta_embed::backend::cpu::attention::{
    attention, tiles_available, AttentionParams, AttentionScratch, PosTable,
};
use deberta_embed::relpos::RelPosTable;
use deberta_embed::testing::{attention_reference_with, signed_fill as fill};
use deberta_embed::{Embedder, EmbedderOptions};

fn bench_attention(c: &mut Criterion) {
    let (heads, d, span) = (6usize, 64usize, 256usize);
    let h = heads * d;
    let pk = fill(2 * span * h, 11);
    let pq = fill(2 * span * h, 12);
    let bf16 = |x: f32| half::bf16::from_f32(x).to_f32();
    let round_all = |v: &[f32]| v.iter().map(|&x| bf16(x)).collect::<Vec<f32>>();
    // fp32, then (where the CPU has them) the tiles with bf16 operands
    for tiles in [false, true] {
        if tiles && !tiles_available(d) {
            eprintln!("attention-tiles: no AMX-BF16 tiles on this CPU, skipped");
            continue;
        }
        let p = AttentionParams {
            heads,
            head_dim: d,
            scale: 1.0 / ((d * 3) as f32).sqrt(),
            c2p: true,
            p2c: true,
            tiles,
        };
        let (mut pkt, mut pqt) = (
            PosTable::from_rows(&pk, 2 * span, heads, d),
            PosTable::from_rows(&pq, 2 * span, heads, d),
        );
        if tiles {
            pkt = pkt.with_tile_panels(&pk, heads);
            pqt = pqt.with_tile_panels(&pq, heads);
        }
        let name = if tiles {
            "attention-tiles"
        } else {
            "attention"
        };
        let mut g = c.benchmark_group(name);
        g.measurement_time(Duration::from_secs(3)).sample_size(10);
        for (b, l) in [(32usize, 16usize), (8, 128), (2, 512)] {
            if tiles && l < 24 {
                continue; // (sequences this short run the fp32 path: see `attention`)
            }
            let relpos = RelPosTable::new(l, 256, 512, span);
            let t = b * l;
            let qkv = fill(t * 3 * h, 13 + l as u64);
            let offsets: Vec<usize> = (0..=b).map(|i| i * l).collect();
            let mut out = vec![0.0; t * h];
            let mut scratch = AttentionScratch::default();
            // check (the tiles against the reference on their bf16 operands), then time
            let mut want = vec![0.0; t * h];
            let (qkv_r, pk_r, pq_r) = if tiles {
                (round_all(&qkv), round_all(&pk), round_all(&pq))
            } else {
                (qkv.clone(), pk.clone(), pq.clone())
            };
            let round: &dyn Fn(f32) -> f32 = if tiles { &bf16 } else { &|x| x };
            attention_reference_with(
                &p,
                &qkv_r,
                &offsets[..2],
                &pk_r,
                &pq_r,
                &relpos,
                round,
                &mut want[..l * h],
            );
            attention(
                &p,
                &qkv,
                &offsets,
                &pkt,
                &pqt,
                &relpos,
                &mut scratch,
                &mut out,
            );
            let err = out[..l * h]
                .iter()
                .zip(&want[..l * h])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            let tol = if tiles { 2e-3 } else { 1e-4 };
            assert!(err < tol, "{name} L={l}: max err {err}");
            g.throughput(Throughput::Elements((2 * 4 * b * l * l * h) as u64));
            g.bench_with_input(
                BenchmarkId::from_parameter(format!("{b}x{l}")),
                &l,
                |bench, _| {
                    bench.iter(|| {
                        attention(
                            &p,
                            black_box(&qkv),
                            &offsets,
                            &pkt,
                            &pqt,
                            &relpos,
                            &mut scratch,
                            &mut out,
                        );
                    })
                },
            );
        }
        g.finish();
    }
}

fn bench_encoder(c: &mut Criterion) {
    let e = Embedder::synthetic_xsmall(EmbedderOptions::default()).expect("synthetic model");
    let mut g = c.benchmark_group("encoder");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    for (b, l) in [(1usize, 16usize), (32, 128), (256, 32)] {
        let ids: Vec<Vec<u32>> = (0..b)
            .map(|s| {
                let mut v = vec![1u32];
                v.extend((1..l - 1).map(|i| 4 + ((s * 7919 + i * 104_729) % 128_000) as u32));
                v.push(2);
                v
            })
            .collect();
        g.throughput(Throughput::Elements((b * l) as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{b}x{l}")),
            &b,
            |bench, _| bench.iter(|| e.encode_ids(black_box(&ids)).expect("forward")),
        );
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_attention(&mut c);
    bench_encoder(&mut c);
    c.final_summary();
}
