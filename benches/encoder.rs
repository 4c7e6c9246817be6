//! Attention and whole-encoder throughput at deberta-v3-xsmall shapes.
//!
//! * `attention/L`: one layer's fused disentangled attention (6 heads x 64, c2p + p2c,
//!   256 log buckets) over B sequences of L tokens, L in {16, 128, 512}; throughput counts the
//!   multiply-adds of QK^T, c2p, p2c and PV (4 * B * L^2 * H) as 2 FLOPs each.
//! * `encoder/BxL`: forward + mean pooling of the synthetic xsmall model (12 layers).
//!
//! `cargo bench --bench encoder`. The attention kernel is checked against the per-element
//! reference once per shape before it is timed.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use deberta_embed::backend::cpu::attention::{attention, AttentionParams, PosTable};
use deberta_embed::relpos::RelPosTable;
use deberta_embed::testing::{attention_reference, signed_fill as fill};
use deberta_embed::{Embedder, EmbedderOptions};

fn bench_attention(c: &mut Criterion) {
    let (heads, d, span) = (6usize, 64usize, 256usize);
    let h = heads * d;
    let p = AttentionParams {
        heads,
        head_dim: d,
        scale: 1.0 / ((d * 3) as f32).sqrt(),
        c2p: true,
        p2c: true,
    };
    let pk = fill(2 * span * h, 11);
    let pq = fill(2 * span * h, 12);
    let (pkt, pqt) = (
        PosTable::from_rows(&pk, 2 * span, heads, d),
        PosTable::from_rows(&pq, 2 * span, heads, d),
    );
    let mut g = c.benchmark_group("attention");
    g.measurement_time(Duration::from_secs(3)).sample_size(10);
    for (b, l) in [(32usize, 16usize), (8, 128), (2, 512)] {
        let relpos = RelPosTable::new(l, 256, 512, span);
        let t = b * l;
        let qkv = fill(t * 3 * h, 13 + l as u64);
        let offsets: Vec<usize> = (0..=b).map(|i| i * l).collect();
        let mut out = vec![0.0; t * h];
        let mut keys_t = Vec::new();
        // check, then time
        let mut want = vec![0.0; t * h];
        attention_reference(
            &p,
            &qkv,
            &offsets[..2],
            &pk,
            &pq,
            &relpos,
            &mut want[..l * h],
        );
        attention(
            &p,
            &qkv,
            &offsets,
            &pkt,
            &pqt,
            &relpos,
            &mut keys_t,
            &mut out,
        );
        let err = out[..l * h]
            .iter()
            .zip(&want[..l * h])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "attention L={l}: max err {err}");
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
                        &mut keys_t,
                        &mut out,
                    );
                })
            },
        );
    }
    g.finish();
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
