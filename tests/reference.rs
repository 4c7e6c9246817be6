//! The numerics contract (README, Numerics guarantee) against sentence-transformers / transformers
//! references produced by scripts/make_fixtures.py: token ids equal, embeddings within
//! max |diff| <= 1e-4 and cosine >= 0.99999, per-layer hidden states close, batch invariance.

mod common;

use common::{cosine, max_abs_diff, model_names, Reference};
use deberta_embed::relpos::{log_bucket, RelPosTable};
use deberta_embed::{Device, Embedder, EmbedderOptions, Precision};

const MAX_ABS: f32 = 1e-4;
const MIN_COS: f64 = 0.99999;

fn load(r: &Reference, batch_size: usize) -> Embedder {
    let opts = EmbedderOptions {
        batch_size,
        ..Default::default()
    };
    Embedder::load_with(r.model_dir(), Device::Cpu, opts)
        .unwrap_or_else(|e| panic!("{}: load failed: {e}", r.name))
}

#[test]
fn token_ids_match_sentence_transformers() {
    for name in model_names() {
        let r = Reference::load(&name);
        let e = load(&r, 4);
        let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
        let ids = e.token_ids(&texts).unwrap();
        for (i, (got, want)) in ids.iter().zip(&r.token_ids).enumerate() {
            assert_eq!(got, want, "{name}: sentence {i} {:?}", r.sentences[i]);
        }
        assert_eq!(
            e.max_seq_length(),
            r.meta["max_seq_length"].as_u64().unwrap() as usize,
            "{name}"
        );
    }
}

#[test]
fn embeddings_match_sentence_transformers() {
    for name in model_names() {
        let r = Reference::load(&name);
        let want = r.embeddings();
        for batch_size in [4, 32] {
            let e = load(&r, batch_size);
            assert_eq!(e.dim(), r.dim, "{name}");
            let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
            let got = e.encode(&texts).unwrap();
            assert_eq!(got.len(), texts.len());
            let mut worst = 0.0f32;
            for i in 0..texts.len() {
                let w = &want[i * r.dim..(i + 1) * r.dim];
                let d = max_abs_diff(got.row(i), w);
                let c = cosine(got.row(i), w);
                assert!(
                    d <= MAX_ABS,
                    "{name} (batch {batch_size}): sentence {i} max |diff| {d:e}"
                );
                assert!(
                    c >= MIN_COS,
                    "{name} (batch {batch_size}): sentence {i} cosine {c}"
                );
                worst = worst.max(d);
            }
            eprintln!("{name}: batch {batch_size}: max |diff| {worst:.2e}");
        }
    }
}

/// The opt-in low precisions on the CPU keep cosine >= 0.999 to the fp32 sentence-transformers
/// embeddings on every fixture model.
fn low_precision_stays_within_cosine_0_999(precision: Precision) {
    for name in model_names() {
        let r = Reference::load(&name);
        let want = r.embeddings();
        let opts = EmbedderOptions {
            precision,
            ..Default::default()
        };
        let e = Embedder::load_with(r.model_dir(), Device::Cpu, opts)
            .unwrap_or_else(|e| panic!("{name}: load failed: {e}"));
        let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
        let got = e.encode(&texts).unwrap();
        let mut worst = 1.0f64;
        for i in 0..texts.len() {
            let c = cosine(got.row(i), &want[i * r.dim..(i + 1) * r.dim]);
            assert!(c >= 0.999, "{name}: sentence {i} {precision} cosine {c}");
            worst = worst.min(c);
        }
        eprintln!("{name}: {precision}: min cosine {worst:.6}");
    }
}

/// `--dtype bf16` on the CPU (bf16 weights).
#[test]
fn bf16_weights_stay_within_cosine_0_999() {
    low_precision_stays_within_cosine_0_999(Precision::BF16);
}

/// `--dtype int8` on the CPU (int8 weights, inputs quantized per row; f32 on a CPU without an
/// int8 kernel, see `int8_gemm_form`).
#[test]
fn int8_stays_within_cosine_0_999() {
    eprintln!(
        "int8 kernel: {:?}",
        deberta_embed::backend::cpu::gemm::int8_gemm_form()
    );
    low_precision_stays_within_cosine_0_999(Precision::INT8);
}

#[test]
fn hidden_states_match_transformers() {
    for name in model_names() {
        let r = Reference::load(&name);
        if r.meta["hidden"].as_bool() != Some(true) {
            continue;
        }
        let e = load(&r, 4);
        let layers = r.meta["num_layers"].as_u64().unwrap() as usize;
        let n_sent = r.meta["hidden_sentences"].as_u64().unwrap() as usize;
        let h = r.meta["hidden_size"].as_u64().unwrap() as usize;
        for s in 0..n_sent {
            let got = e.hidden_states(&r.token_ids[s]).unwrap();
            assert_eq!(got.len(), layers + 1);
            for (l, g) in got.iter().enumerate() {
                let (shape, want) = r.tensor(&format!("hidden.{l}.{s}")).expect("hidden state");
                assert_eq!(shape, vec![r.token_ids[s].len(), h]);
                let d = max_abs_diff(g, &want);
                assert!(
                    d <= MAX_ABS,
                    "{name}: layer {l} sentence {s}: max |diff| {d:e}"
                );
            }
        }
    }
}

#[test]
fn a_sentence_alone_equals_it_inside_a_mixed_batch() {
    for name in model_names() {
        let r = Reference::load(&name);
        let e = load(&r, 64);
        let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
        let batched = e.encode(&texts).unwrap();
        for (i, t) in texts.iter().enumerate() {
            let alone = e.encode(&[t]).unwrap();
            let d = max_abs_diff(alone.row(0), batched.row(i));
            assert!(d <= 1e-5, "{name}: sentence {i} alone vs batched: {d:e}");
        }
    }
}

#[test]
fn relative_position_buckets_match_transformers() {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("relpos.json")).unwrap(),
    )
    .unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for c in cases {
        let l = c["L"].as_u64().unwrap() as usize;
        let pb = c["position_buckets"].as_i64().unwrap();
        let mr = c["max_relative_positions"].as_i64().unwrap();
        let r_min = c["r_min"].as_i64().unwrap();
        let buckets: Vec<i64> = c["bucket"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        for (k, &want) in buckets.iter().enumerate() {
            let r = r_min + k as i64;
            assert_eq!(
                log_bucket(r, pb, mr),
                want,
                "L={l} buckets={pb} max_rel={mr} r={r}"
            );
        }
        // the index table is clamp(bucket + S) for every (i, j)
        let span = if pb > 0 { pb as usize } else { mr as usize };
        let t = RelPosTable::new(l, pb, mr as usize, span);
        for i in 0..l {
            for j in 0..l {
                let b = buckets[(i as i64 - j as i64 - r_min) as usize];
                let want = (b + span as i64).clamp(0, 2 * span as i64 - 1) as usize;
                assert_eq!(t.index(i, j), want);
            }
        }
    }
}

/// Rare characters where a tokenizer.json's own normalizer and transformers 5.25 may disagree: we
/// follow transformers 5.25 as sentence-transformers 6.3 drives it, for 4.x, 5.0-5.24 and 5.25
/// files alike.
#[test]
fn tokenizer_edge_cases_follow_transformers() {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("reference/tokenizer_edge_cases.json"))
            .unwrap(),
    )
    .unwrap();
    let sentences: Vec<&str> = v["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let cases = v["tokenizers"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let label = case["model"].as_str().unwrap();
        let name = label.split_whitespace().next().unwrap();
        let e = Embedder::load(common::fixtures().join("models").join(name), Device::Cpu).unwrap();
        let got = e.token_ids(&sentences).unwrap();
        let want: Vec<Vec<u32>> =
            serde_json::from_value(case["sentence_transformers_ids"].clone()).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{label}: sentence {i} {:?}", sentences[i]);
        }
    }
}

/// The opt-in low precisions on a full-size architecture: the synthetic xsmall (384 wide, heads
/// of 64, position buckets 256), whose attention runs on the AMX-BF16 tiles with bf16 and int8
/// where the CPU has them, keeps cosine >= 0.999 to its own fp32 embeddings from 1 to 512
/// tokens (log-bucketed offsets past 128), one batch of mixed lengths.
#[test]
fn synthetic_xsmall_low_precision_stays_within_cosine_0_999() {
    eprintln!(
        "attention on tiles with bf16 / int8: {}",
        deberta_embed::backend::cpu::attention::tiles_available(64)
    );
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let lens = [1usize, 2, 16, 31, 32, 33, 128, 129, 300, 512];
    let ids: Vec<Vec<u32>> = lens
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 128_000) as u32
                })
                .collect()
        })
        .collect();
    let f32_model = Embedder::synthetic_xsmall(EmbedderOptions::default()).unwrap();
    let want = f32_model.encode_ids(&ids).unwrap();
    for precision in [Precision::BF16, Precision::INT8] {
        let opts = EmbedderOptions {
            precision,
            ..Default::default()
        };
        let got = Embedder::synthetic_xsmall(opts)
            .unwrap()
            .encode_ids(&ids)
            .unwrap();
        let mut worst = 1.0f64;
        for (i, n) in lens.iter().enumerate() {
            let c = cosine(got.row(i), want.row(i));
            assert!(c >= 0.999, "{precision}: {n} tokens: cosine {c}");
            worst = worst.min(c);
        }
        eprintln!("synthetic xsmall {precision}: min cosine {worst:.6}");
    }
}
