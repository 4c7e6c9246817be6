//! Cross-encoders against sentence-transformers 6.3's `CrossEncoder` (references written by
//! scripts/make_cross_fixtures.py): token ids and types of pairs, raw logits, activated and
//! soft-maxed scores, and rankings, through the library, the CLI and the server.

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/test_server.rs"]
mod test_server;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use common::fixtures;
use deberta_embed::server::ServerOptions;
use deberta_embed::tokenize::TextTokenizer;
use deberta_embed::{CrossEncoder, Device, Embedder, EmbedderOptions, ModelKind};
use serde_json::{json, Value};
use test_server::TestServer;

/// The numerics contract against sentence-transformers.
const VS_REFERENCE: f32 = 1e-4;

const MODELS: [&str; 5] = [
    "ce_hf_1label",
    "ce_st6_3label_types",
    "ce_st6_1label_tanh",
    "ce_legacy_2label",
    "ce_v4_1label_identity",
];

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

struct CrossRef {
    meta: Value,
    pairs: Vec<(String, String)>,
    num_labels: usize,
}

impl CrossRef {
    fn load(name: &str) -> Self {
        let p = fixtures().join("reference").join(format!("{name}.json"));
        let meta: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let pairs = meta["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let num_labels = meta["num_labels"].as_u64().unwrap() as usize;
        CrossRef {
            meta,
            pairs,
            num_labels,
        }
    }
    fn pair_refs(&self) -> Vec<(&str, &str)> {
        self.pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }
    /// `[N * num_labels]` of a score field (a list of numbers or of lists).
    fn rows(&self, key: &str) -> Vec<f32> {
        let mut out = Vec::new();
        for v in self.meta[key].as_array().unwrap() {
            match v {
                Value::Array(a) => out.extend(a.iter().map(|x| x.as_f64().unwrap() as f32)),
                x => out.push(x.as_f64().unwrap() as f32),
            }
        }
        assert_eq!(out.len(), self.pairs.len() * self.num_labels, "{key}");
        out
    }
    fn ids(&self, key: &str) -> Vec<Vec<u32>> {
        common::id_rows(&self.meta[key])
    }
}

/// Run `cmd`, which must succeed, and parse each line of its stdout as JSON.
fn json_lines(cmd: &mut Command, what: &str) -> Vec<Value> {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|x| serde_json::from_str(x).unwrap())
        .collect()
}

fn load(name: &str, batch_size: usize) -> CrossEncoder {
    let opts = EmbedderOptions {
        threads: Some(2),
        batch_size,
        ..Default::default()
    };
    CrossEncoder::load_with(model_dir(name), Device::Cpu, opts)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Each document's pair ids with `query`: documents the model sees identically score
/// identically here, while sentence-transformers' copies differ by float noise from their padded
/// batches, which orders them arbitrarily; rankings may swap such documents, no others.
fn seen_as(name: &str, query: &str, docs: &[&str]) -> Vec<Vec<u32>> {
    let pairs: Vec<(&str, &str)> = docs.iter().map(|d| (query, *d)).collect();
    load(name, 8).pair_ids(&pairs).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: got {g}, expected {w} (diff {:e})",
            (g - w).abs()
        );
    }
}

#[test]
fn pair_tokens_and_types_equal_sentence_transformers() {
    for name in MODELS {
        let r = CrossRef::load(name);
        let ce = load(name, 4);
        assert_eq!(
            ce.max_seq_length(),
            r.meta["max_seq_length"].as_u64().unwrap() as usize
        );
        let want_ids = r.ids("input_ids");
        let want_types = r.ids("token_type_ids");
        // the folded ids: id + type * vocab_size when the model has token types
        let typed = r.meta["type_vocab_size"].as_u64().unwrap() > 0;
        let vocab = ce.embedder().config().vocab_size as u32;
        let got = ce.pair_ids(&r.pair_refs()).unwrap();
        for (i, g) in got.iter().enumerate() {
            let want: Vec<u32> = want_ids[i]
                .iter()
                .zip(&want_types[i])
                .map(|(&id, &t)| if typed { id + t * vocab } else { id })
                .collect();
            assert_eq!(g, &want, "{name}: pair {i} {:?}", r.pairs[i]);
        }
    }
}

#[test]
fn logits_and_scores_equal_sentence_transformers() {
    for name in MODELS {
        let r = CrossRef::load(name);
        for batch_size in [1, 3, 32] {
            let ce = load(name, batch_size);
            let what = format!("{name} (batch {batch_size})");
            assert_eq!(ce.num_labels(), r.num_labels, "{what}");
            assert_eq!(
                ce.activation().name(),
                r.meta["activation_fn"].as_str().unwrap(),
                "{what}"
            );
            let pairs = r.pair_refs();
            for (got, key) in [
                (ce.predict_raw(&pairs).unwrap(), "logits"),
                (ce.predict(&pairs).unwrap(), "scores"),
                (ce.predict_softmax(&pairs).unwrap(), "softmax_scores"),
            ] {
                let label = format!("{what} {key}");
                assert_close(got.as_slice(), &r.rows(key), VS_REFERENCE, &label);
            }
        }
        // labels as id2label names them
        let ce = load(name, 8);
        let want: Vec<String> = (0..r.num_labels)
            .map(|i| {
                r.meta["id2label"][i.to_string()]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ce.labels(), want.as_slice(), "{name}");
    }
}

#[test]
fn rankings_equal_sentence_transformers() {
    let mut checked = 0;
    for name in MODELS {
        let r = CrossRef::load(name);
        let Some(ranks) = r.meta.get("rank").and_then(Value::as_array) else {
            // multi-label models: rank is refused, as sentence-transformers refuses it
            let ce = load(name, 8);
            let err = ce.rank("q", &["a", "b"], None).unwrap_err();
            assert!(err.to_string().contains("one label"), "{name}: {err}");
            continue;
        };
        let ce = load(name, 4);
        for case in ranks {
            let query = case["query"].as_str().unwrap();
            let docs: Vec<&str> = case["documents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap())
                .collect();
            let top_k = case["top_k"].as_u64().map(|k| k as usize);
            // ("", "   " and "\t\n" are seen alike: see `seen_as`)
            let seen = seen_as(name, query, &docs);
            for (key, raw) in [("result", false), ("raw_result", true)] {
                let want = case[key].as_array().unwrap();
                let got = ce.rank_with(query, &docs, top_k, raw).unwrap();
                assert_eq!(got.len(), want.len(), "{name} {key}");
                for (g, w) in got.iter().zip(want) {
                    let wi = w["corpus_id"].as_u64().unwrap() as usize;
                    assert!(
                        g.index == wi || seen[g.index] == seen[wi],
                        "{name} {key} query {query:?}: order {got:?}"
                    );
                    let ws = w["score"].as_f64().unwrap() as f32;
                    assert!(
                        (g.score - ws).abs() <= VS_REFERENCE,
                        "{name} {key}: {g:?} vs {ws}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 24, "{checked}");
}

#[test]
fn pairs_are_truncated_longest_first_like_the_real_deberta_v3_tokenizer() {
    let p = fixtures().join("realtok/pairs.json");
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let tok = TextTokenizer::load(&fixtures().join("realtok/model")).unwrap();
    assert_eq!(
        tok.max_seq_length(),
        meta["max_length"].as_u64().unwrap() as usize
    );
    let pairs: Vec<(&str, &str)> = meta["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
        .collect();
    let vocab = 1_000_000usize;
    let got = tok.encode_pair_batch(&pairs, Some(vocab), true).unwrap();
    let (mut cut, mut both_cut) = (0, 0);
    for (i, (g, over)) in got.iter().enumerate() {
        let ids = meta["input_ids"][i].as_array().unwrap();
        let types = meta["token_type_ids"][i].as_array().unwrap();
        let want: Vec<u32> = ids
            .iter()
            .zip(types)
            .map(|(a, t)| (a.as_u64().unwrap() + t.as_u64().unwrap() * vocab as u64) as u32)
            .collect();
        assert_eq!(g, &want, "pair {i}");
        cut += usize::from(*over);
        let full = tok.encode_pair_batch(&[pairs[i]], None, false).unwrap();
        let n1 = tok.encode_batch(&[pairs[i].0]).unwrap()[0].len();
        both_cut += usize::from(*over && n1 > 64 && full[0].0.len() - n1 > 64);
    }
    assert!(cut > 50 && both_cut > 10, "cut {cut}, both cut {both_cut}");
}

#[test]
fn model_kinds_are_told_apart() {
    for name in MODELS {
        assert_eq!(
            deberta_embed::cross::model_kind(&model_dir(name)).unwrap(),
            ModelKind::CrossEncoder,
            "{name}"
        );
    }
    for name in ["st2_v3like", "st6_proj_cls_norm", "hf_bf16_bin"] {
        assert_eq!(
            deberta_embed::cross::model_kind(&model_dir(name)).unwrap(),
            ModelKind::Embedding,
            "{name}"
        );
    }
    // a sentence-transformers embedding model is not loaded as a cross-encoder
    let err = CrossEncoder::load(model_dir("st6_proj_cls_norm"), Device::Cpu)
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("Pooling"), "{err}");
}

#[test]
fn head_errors_name_the_field_or_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = |edit: &dyn Fn(&mut Value)| -> PathBuf {
        let d = tmp.path().join(format!("m{}", rand_suffix()));
        std::fs::create_dir_all(&d).unwrap();
        for f in [
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            std::fs::copy(model_dir("ce_hf_1label").join(f), d.join(f)).unwrap();
        }
        let mut cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(model_dir("ce_hf_1label").join("config.json")).unwrap(),
        )
        .unwrap();
        edit(&mut cfg);
        std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
        d
    };
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|c| c["pooler_hidden_act"] = json!("gelu_10")),
            "pooler_hidden_act",
        ),
        (
            Box::new(|c| c["pooler_hidden_size"] = json!(16)),
            "pooler_hidden_size",
        ),
        (
            Box::new(|c| {
                c["id2label"] = json!({"0": "a", "1": "b"});
            }),
            "classifier.weight",
        ),
        (
            Box::new(|c| c["sentence_transformers"] = json!({"activation_fn": "torch.nn.GELU"})),
            "activation_fn",
        ),
        (
            Box::new(|c| c["type_vocab_size"] = json!(1)),
            "type_vocab_size",
        ),
    ];
    for (edit, needle) in cases {
        let d = copy(&*edit);
        let err = CrossEncoder::load(&d, Device::Cpu)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// CLI

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deberta-embed"))
}

#[test]
fn cli_rerank_and_predict_equal_sentence_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for name in MODELS {
        let r = CrossRef::load(name);
        let dir = model_dir(name);
        // predict: a TSV of pairs and the same as JSONL, both forms of line
        let tsv = tmp.path().join(format!("{name}.tsv"));
        let jsonl = tmp.path().join(format!("{name}.jsonl"));
        let (mut ft, mut fj) = (
            std::fs::File::create(&tsv).unwrap(),
            std::fs::File::create(&jsonl).unwrap(),
        );
        let tsv_ok = |s: &str| !s.contains(['\t', '\n', '\r']);
        let mut kept = Vec::new();
        for (i, (a, b)) in r.pairs.iter().enumerate() {
            if tsv_ok(a) && tsv_ok(b) {
                writeln!(ft, "{a}\t{b}").unwrap();
                kept.push(i);
            }
            let line = if i % 2 == 0 {
                json!([a, b])
            } else {
                json!({"text": a, "text_pair": b})
            };
            writeln!(fj, "{line}").unwrap();
        }
        drop((ft, fj));
        let want = r.rows("scores");
        let want_raw = r.rows("logits");
        let l = r.num_labels;
        for (input, rows, raw) in [
            (&jsonl, (0..r.pairs.len()).collect::<Vec<_>>(), false),
            (&tsv, kept.clone(), false),
            (&jsonl, (0..r.pairs.len()).collect::<Vec<_>>(), true),
        ] {
            let mut cmd = bin();
            cmd.args(["predict", "--model"])
                .arg(&dir)
                .arg("--input")
                .arg(input);
            if raw {
                cmd.arg("--raw-scores");
            }
            let lines = json_lines(&mut cmd, name);
            assert_eq!(lines.len(), rows.len(), "{name}");
            for (line, &i) in lines.iter().zip(&rows) {
                let got: Vec<f32> = match line {
                    Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
                    x => vec![x.as_f64().unwrap() as f32],
                };
                let w = if raw { &want_raw } else { &want };
                assert_close(
                    &got,
                    &w[i * l..(i + 1) * l],
                    VS_REFERENCE,
                    &format!("{name} cli {i}"),
                );
            }
        }
        // rerank: the documents of each rank case, one per line
        let Some(ranks) = r.meta.get("rank").and_then(Value::as_array) else {
            let o = bin()
                .args(["rerank", "--model"])
                .arg(&dir)
                .args(["--query", "q", "--input"])
                .arg(&tsv)
                .output()
                .unwrap();
            assert!(!o.status.success());
            assert!(String::from_utf8_lossy(&o.stderr).contains("one label"));
            continue;
        };
        for (c, case) in ranks.iter().enumerate() {
            let docs: Vec<&str> = case["documents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap())
                .collect();
            // .txt lines cannot hold a newline: JSONL documents
            let f = tmp.path().join(format!("{name}-{c}.jsonl"));
            let body: String = docs.iter().map(|d| format!("{}\n", json!(d))).collect();
            std::fs::write(&f, body).unwrap();
            let mut cmd = bin();
            cmd.args(["rerank", "--model"])
                .arg(&dir)
                .args(["--query", case["query"].as_str().unwrap(), "--input"])
                .arg(&f)
                .arg("--return-text");
            if let Some(k) = case["top_k"].as_u64() {
                cmd.args(["--top-k", &k.to_string()]);
            }
            let lines = json_lines(&mut cmd, name);
            let want = case["result"].as_array().unwrap();
            assert_eq!(lines.len(), want.len(), "{name} case {c}");
            let seen = seen_as(name, case["query"].as_str().unwrap(), &docs);
            for (g, w) in lines.iter().zip(want) {
                let (gi, wi) = (
                    g["index"].as_u64().unwrap() as usize,
                    w["corpus_id"].as_u64().unwrap() as usize,
                );
                assert!(
                    gi == wi || seen[gi] == seen[wi],
                    "{name} case {c}: {g} vs {w}"
                );
                assert_eq!(g["text"].as_str(), Some(docs[gi]), "{name} case {c}");
                let d = (g["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs();
                assert!(d <= VS_REFERENCE as f64, "{name} case {c}: {g} vs {w}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server

fn serve(name: &str) -> TestServer {
    let opts = EmbedderOptions {
        threads: Some(2),
        batch_size: 4,
        ..Default::default()
    };
    let ce = CrossEncoder::load_with(model_dir(name), Device::Cpu, opts).unwrap();
    TestServer::start(
        ce.into_embedder(),
        ServerOptions {
            model_name: name.into(),
            ..Default::default()
        },
    )
}

#[test]
fn rerank_route_equals_sentence_transformers() {
    let mut checked = 0;
    for name in MODELS {
        let r = CrossRef::load(name);
        let s = serve(name);
        let Some(ranks) = r.meta.get("rank").and_then(Value::as_array) else {
            let resp = http::post_json(s.addr, "/rerank", &json!({"query": "q", "texts": ["a"]}));
            assert_eq!(resp.status, 400, "{name}: {}", resp.text());
            assert!(resp.json()["error"].as_str().unwrap().contains("one label"));
            continue;
        };
        for case in ranks {
            let docs = &case["documents"];
            let doc_strs: Vec<&str> = docs
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap())
                .collect();
            let seen = seen_as(name, case["query"].as_str().unwrap(), &doc_strs);
            for (key, raw) in [("result", false), ("raw_result", true)] {
                let body = json!({
                    "query": case["query"],
                    "texts": docs,
                    "raw_scores": raw,
                    "return_text": !raw,
                    "truncate": true,
                });
                let resp = http::post_json(s.addr, "/rerank", &body);
                assert_eq!(resp.status, 200, "{name}: {}", resp.text());
                let got = resp.json();
                let got = got.as_array().unwrap();
                // TEI returns every text, sorted; sentence-transformers' top_k cuts the list
                let want = case[key].as_array().unwrap();
                assert_eq!(got.len(), docs.as_array().unwrap().len(), "{name}");
                for (g, w) in got.iter().zip(want) {
                    let (gi, wi) = (
                        g["index"].as_u64().unwrap() as usize,
                        w["corpus_id"].as_u64().unwrap() as usize,
                    );
                    assert!(gi == wi || seen[gi] == seen[wi], "{name} {key}: {got:?}");
                    let d = (g["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs();
                    assert!(d <= VS_REFERENCE as f64, "{name}: {g} vs {w}");
                    if raw {
                        assert!(g.get("text").is_none(), "{g}");
                    } else {
                        assert_eq!(g["text"].as_str(), Some(doc_strs[gi]));
                    }
                }
                checked += 1;
            }
        }
        // /embed (and POST /, its root alias) is refused for a cross-encoder, clearly
        for route in ["/embed", "/"] {
            let resp = http::post_json(s.addr, route, &json!({"inputs": ["a"]}));
            assert_eq!(resp.status, 400, "{route}: {}", resp.text());
            assert!(resp.text().contains("cross-encoder"), "{}", resp.text());
        }
        let resp = http::post_json(s.addr, "/v1/embeddings", &json!({"input": ["a"]}));
        assert_eq!(resp.status, 400, "{}", resp.text());
        s.shutdown().unwrap();
    }
    assert!(checked >= 24);
}

#[test]
fn predict_route_equals_sentence_transformers() {
    for name in MODELS {
        let r = CrossRef::load(name);
        let s = serve(name);
        let l = r.num_labels;
        let inputs: Vec<Value> = r.pairs.iter().map(|(a, b)| json!([a, b])).collect();
        for raw in [false, true] {
            let body = json!({"inputs": inputs, "raw_scores": raw, "truncate": true});
            let resp = http::post_json(s.addr, "/predict", &body);
            assert_eq!(resp.status, 200, "{name}: {}", resp.text());
            let got = resp.json();
            // TEI's /predict: per input, every label with its score, by descending score;
            // scores are the model's activation, then a softmax over several labels
            // (sentence-transformers' apply_softmax), or the logits with raw_scores
            let want = if raw {
                r.rows("logits")
            } else {
                r.rows("softmax_scores")
            };
            let labels: Vec<String> = (0..l)
                .map(|i| {
                    r.meta["id2label"][i.to_string()]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            for (i, per) in got.as_array().unwrap().iter().enumerate() {
                let per = per.as_array().unwrap();
                assert_eq!(per.len(), l);
                let mut last = f64::INFINITY;
                for e in per {
                    let k = labels
                        .iter()
                        .position(|x| x == e["label"].as_str().unwrap())
                        .unwrap();
                    let sc = e["score"].as_f64().unwrap();
                    assert!(sc <= last, "sorted");
                    last = sc;
                    assert!(
                        (sc as f32 - want[i * l + k]).abs() <= VS_REFERENCE,
                        "{name} pair {i} label {k}: {sc} vs {}",
                        want[i * l + k]
                    );
                }
            }
        }
        // one pair alone: a flat list
        let resp = http::post_json(s.addr, "/predict", &json!({"inputs": ["a b", "c"]}));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json().as_array().unwrap().len(), l);
        assert!(resp.json()[0]["label"].is_string());
        s.shutdown().unwrap();
    }
}

#[test]
fn rerank_and_predict_are_refused_for_an_embedding_model() {
    let e = Embedder::load_with(
        model_dir("st2_v3like"),
        Device::Cpu,
        EmbedderOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let s = TestServer::start(e, ServerOptions::default());
    for (route, body) in [
        ("/rerank", json!({"query": "q", "texts": ["a"]})),
        ("/predict", json!({"inputs": ["a", "b"]})),
    ] {
        let resp = http::post_json(s.addr, route, &body);
        assert_eq!(resp.status, 400, "{route}: {}", resp.text());
        assert!(resp.json()["error"]
            .as_str()
            .unwrap()
            .contains("not a cross-encoder"));
        assert_eq!(resp.json()["error_type"], "Validation");
    }
    s.shutdown().unwrap();
}

#[test]
fn rerank_requests_are_validated() {
    let s = serve("ce_hf_1label");
    let long = "word ".repeat(200);
    for (body, status, needle) in [
        (json!({"texts": ["a"]}), 422, "query"),
        (json!({"query": "q"}), 422, "texts"),
        (json!({"query": "q", "texts": []}), 400, "texts"),
        (json!({"query": 3, "texts": ["a"]}), 422, "query"),
        (
            json!({"query": "q", "texts": ["a"], "raw_scores": "yes"}),
            422,
            "raw_scores",
        ),
        (
            json!({"query": "q", "texts": [long.clone()]}),
            413,
            "truncate",
        ),
    ] {
        let resp = http::post_json(s.addr, "/rerank", &body);
        assert_eq!(resp.status, status, "{body}: {}", resp.text());
        assert!(
            resp.json()["error"].as_str().unwrap().contains(needle),
            "{}",
            resp.text()
        );
    }
    // truncated, the long text is scored like the same pair through the library
    let resp = http::post_json(
        s.addr,
        "/rerank",
        &json!({"query": "q", "texts": [long.clone(), "q"], "truncate": true}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let ce = load("ce_hf_1label", 4);
    let want = ce.predict(&[("q", long.as_str()), ("q", "q")]).unwrap();
    for e in resp.json().as_array().unwrap() {
        let i = e["index"].as_u64().unwrap() as usize;
        assert!((e["score"].as_f64().unwrap() as f32 - want.row(i)[0]).abs() < 1e-5);
    }
    s.shutdown().unwrap();
}

/// A child process (and its stderr, kept open: the server logs there) killed when the test
/// ends.
struct Running {
    child: std::process::Child,
    _stderr: Option<Box<dyn std::io::BufRead>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` picks the model's kind: a cross-encoder answers /rerank like sentence-transformers,
/// an embedding model does not; `--model-kind embedding` serves a classification checkpoint's
/// backbone as embeddings instead.
#[test]
fn binary_serves_by_model_kind() {
    use std::io::BufRead;
    let spawn = |name: &str, extra: &[&str]| -> (Running, std::net::SocketAddr) {
        let mut running = Running {
            child: bin()
                .args(["serve", "--model"])
                .arg(model_dir(name))
                .args(["--port", "0", "--threads", "2"])
                .args(extra)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
            _stderr: None,
        };
        let mut stderr = std::io::BufReader::new(running.child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "serve exited");
            if let Some(rest) = line.split("http://").nth(1) {
                let addr = rest.trim().parse().unwrap();
                running._stderr = Some(Box::new(stderr));
                return (running, addr);
            }
        }
    };
    let r = CrossRef::load("ce_hf_1label");
    let case = &r.meta["rank"][0];
    let (_c, addr) = spawn("ce_hf_1label", &[]);
    let body = json!({"query": case["query"], "texts": case["documents"], "truncate": true});
    let resp = http::post_json(addr, "/rerank", &body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let docs: Vec<&str> = case["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let seen = seen_as("ce_hf_1label", case["query"].as_str().unwrap(), &docs);
    let got = resp.json();
    for (g, w) in got
        .as_array()
        .unwrap()
        .iter()
        .zip(case["result"].as_array().unwrap())
    {
        let (gi, wi) = (
            g["index"].as_u64().unwrap() as usize,
            w["corpus_id"].as_u64().unwrap() as usize,
        );
        assert!(gi == wi || seen[gi] == seen[wi]);
        assert!((g["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs() < 1e-4);
    }
    assert_eq!(http::get(addr, "/info").json()["model_type"], "reranker");
    let (_c, addr) = spawn("ce_hf_1label", &["--model-kind", "embedding"]);
    assert_eq!(http::post_json(addr, "/rerank", &body).status, 400);
    let resp = http::post_json(addr, "/embed", &json!({"inputs": ["a b"]}));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()[0].as_array().unwrap().len(), 32);
}

/// `eval pairs` with a cross-encoder: sentence-transformers' CrossEncoderClassificationEvaluator
/// numbers, through the library and the CLI.
#[test]
fn pair_classification_with_cross_encoder_scores_equals_the_evaluator() {
    let p = fixtures().join("reference/ce_eval_pairs.json");
    let exp: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let data = fixtures().join("eval/pairs.csv");
    let pairs = deberta_embed::eval::read_pairs(&data).unwrap();
    let models = exp["models"].as_object().unwrap();
    assert_eq!(models.len(), 3);
    for (name, want) in models {
        let ce = load(name, 4);
        let report =
            deberta_embed::eval::evaluate_pairs_cross(&ce, &pairs, 16, &mut |_, _| {}).unwrap();
        let o = bin()
            .args(["eval", "pairs", "--json", "--quiet", "--model"])
            .arg(model_dir(name))
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let cli: Value = serde_json::from_slice(&o.stdout).unwrap();
        let got = report.metrics();
        assert_eq!(got.len(), want.as_object().unwrap().len(), "{name}");
        for (k, v) in got {
            let w = want[&k]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: no {k}"));
            // counts over 43 pairs are exact; thresholds are scores (1e-4 contract)
            let tol = if k.ends_with("threshold") { 1e-4 } else { 1e-9 };
            assert!((v - w).abs() <= tol, "{name} {k}: {v} vs {w}");
            assert_eq!(cli[&k].as_f64().unwrap(), v, "{name} {k} (CLI)");
        }
    }
    // a classifier with several labels: the CLI evaluates its backbone's embeddings instead
    let o = bin()
        .args(["eval", "pairs", "--json", "--quiet", "--model"])
        .arg(model_dir("ce_st6_3label_types"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cli: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(cli["cosine_ap"].is_f64(), "{cli}");
    // and the library's cross-encoder evaluation refuses it
    let ce = load("ce_st6_3label_types", 4);
    let err =
        deberta_embed::eval::evaluate_pairs_cross(&ce, &pairs, 16, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("one label"), "{err}");
}

/// `bench --rerank` runs the reranking workload (random ids, and text from a file) and reports it.
#[test]
fn bench_times_the_rerank_workload() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("w.txt");
    std::fs::write(
        &f,
        "a query\nfirst document\nsecond one, longer than the first\n",
    )
    .unwrap();
    for extra in [
        vec![],
        vec!["--rerank-input".to_string(), f.display().to_string()],
    ] {
        let o = bin()
            .args([
                "bench",
                "--rerank",
                "--iters",
                "2",
                "--warmup",
                "0",
                "--json",
                "--threads",
                "2",
                "--model",
            ])
            .arg(model_dir("ce_hf_1label"))
            .args(&extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(o.stdout).unwrap();
        let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(v["workload"], "rerank");
        let pairs = if extra.is_empty() { 100 } else { 2 };
        assert_eq!(v["pairs"], pairs, "{out}");
        assert!(v["median_ms"].as_f64().unwrap() > 0.0);
    }
}

/// `info` on a cross-encoder names its kind, labels and activation.
#[test]
fn info_describes_a_cross_encoder() {
    let o = bin()
        .args(["info", "--json", "--model"])
        .arg(model_dir("ce_st6_3label_types"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "cross-encoder");
    assert_eq!(v["dim"], 3);
    assert_eq!(
        v["cross_encoder"]["labels"],
        json!(["contradiction", "entailment", "neutral"])
    );
    assert_eq!(v["cross_encoder"]["activation_fn"], "Identity");
    assert_eq!(v["config"]["type_vocab_size"], 2);
}
