//! The fuzz corpus (fuzz/corpus/<target>/, docs/FUZZING.md) replayed without a fuzzer, through
//! the very steps the fuzz targets take (`deberta_embed::fuzzing`): every input a fuzzer once
//! found crashing stays a plain test, and the seeds still reach what they were made for.

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/test_server.rs"]
mod test_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::fixtures;
use deberta_embed::checkpoint::{to_f32, Checkpoint};
use deberta_embed::fuzzing;
use deberta_embed::server::ServerOptions;
use deberta_embed::{Device, Embedder, EmbedderOptions, ModelConfig};
use test_server::TestServer;

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

/// Every input of one target's corpus, by file name.
fn corpus(target: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("corpus entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        out.insert(name, std::fs::read(&p).expect("corpus file"));
    }
    assert!(!out.is_empty(), "{target}: empty corpus");
    out
}

/// The corpus inputs of `target` for which `case` returned true.
fn passing(target: &str, mut case: impl FnMut(&[u8]) -> bool) -> Vec<String> {
    corpus(target)
        .into_iter()
        .filter(|(_, bytes)| case(bytes))
        .map(|(name, _)| name)
        .collect()
}

fn assert_split(target: &str, passed: &[String], want_pass: &[&str], want_fail: &[&str]) {
    for n in want_pass {
        assert!(passed.iter().any(|p| p == n), "{target}/{n} should pass");
    }
    for n in want_fail {
        assert!(
            !passed.iter().any(|p| p == n),
            "{target}/{n} should be refused"
        );
    }
}

#[test]
fn safetensors_corpus_replays() {
    let cfg = ModelConfig::from_file(&model_dir("st6_proj_cls_norm").join("config.json"))
        .expect("config");
    let scratch = tempfile::tempdir().expect("scratch");
    let file = scratch.path().join("model.safetensors");
    let opened = passing("safetensors_header", |b| {
        fuzzing::safetensors_case(b, &cfg, &file)
    });
    assert_split(
        "safetensors_header",
        &opened,
        &[
            "fixture_st6_proj_cls_norm",
            "fixture_hf_seqcls_prefix",
            "f32_2x2",
            "f32_unaligned",
            "f16_bf16",
            "prefix",
            "nan",
        ],
        &["dup_names", "huge_len", "short"],
    );
    // the real file loads as a whole model through the in-memory opener
    let bytes = &corpus("safetensors_header")["fixture_st6_proj_cls_norm"];
    let ck = fuzzing::open_safetensors(bytes, &file).expect("fixture");
    deberta_embed::model::HostWeights::load(&ck, &cfg).expect("fixture weights");
    // the hand-made dtypes convert as written
    drop(ck);
    let ck = fuzzing::open_safetensors(&corpus("safetensors_header")["f16_bf16"], &file).unwrap();
    assert_eq!(ck.tensor("h", &[3]).unwrap(), [1.0, -2.0, 0.5]);
    assert_eq!(ck.tensor("b", &[2]).unwrap(), [1.0, -3.0]);
    let err = ck.tensor("h", &[4]).unwrap_err().to_string();
    assert!(err.contains("[3]") && err.contains("[4]"), "{err}");
}

#[test]
fn pytorch_corpus_replays() {
    let loaded = passing("pytorch_zip", fuzzing::pytorch_case);
    assert_split(
        "pytorch_zip",
        &loaded,
        &[
            "fixture_st2_v3like",
            "fixture_hf_bf16_bin",
            "fixture_st3_conv_multipool",
            "strided_shared",
            "nested_state_dict",
            "big_endian",
            "deflated",
        ],
        &["double", "legacy_pickle"],
    );
    // the seed writer's strided, shared and offset views come out as PyTorch would give them
    let tensors = fuzzing::load_pytorch(&corpus("pytorch_zip")["strided_shared"]).unwrap();
    let got: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.shape.clone(), to_f32(t.dtype, &t.data)))
        .collect();
    let want: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
        ("contig", vec![2, 3], vec![0., 1., 2., 3., 4., 5.]),
        ("transposed", vec![3, 2], vec![0., 3., 1., 4., 2., 5.]),
        ("offset_view", vec![2], vec![2., 4.]),
        ("scalar", vec![], vec![5.]),
        ("half", vec![2], vec![1., 2.]),
        ("bf16", vec![2], vec![1., 2.]),
    ];
    assert_eq!(got, want, "integer tensors are skipped, the rest in order");
    let err = fuzzing::load_pytorch(&corpus("pytorch_zip")["double"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("float64") || err.contains("Double"), "{err}");
}

#[test]
fn config_corpus_replays() {
    let source = model_dir("st2_v3like");
    let weights = Checkpoint::open_dir(&source).expect("fixture weights");
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("model");
    let loaded = passing("config_resolution", |b| {
        fuzzing::config_case(b, &dir, &source, &weights)
    });
    assert_split(
        "config_resolution",
        &loaded,
        &["st2_v3like_spm", "st2_v3like_json"],
        &[
            "layers_1e8",
            "heads_3",
            "hidden_0",
            "vocab_huge",
            "modules_escape",
            "max_seq_1",
        ],
    );
}

#[test]
fn http_corpus_replays() {
    let opts = EmbedderOptions {
        threads: Some(2),
        ..Default::default()
    };
    let embedder =
        Embedder::load_with(model_dir("st2_v3like"), Device::Cpu, opts).expect("fixture model");
    let server = TestServer::start(embedder, ServerOptions::default());
    let routes = ["/v1/embeddings", "/embed", "/tokenize"];
    let mut statuses = BTreeMap::new();
    for (name, data) in corpus("http_bodies") {
        let Some((&pick, body)) = data.split_first() else {
            continue;
        };
        let route = routes[pick as usize % routes.len()];
        let resp = http::request(server.addr, "POST", route, body)
            .unwrap_or_else(|e| panic!("{name}: {route}: {e}"));
        assert!(resp.status < 500, "{name}: {route}: {}", resp.text());
        resp.json();
        statuses.insert(name, resp.status);
    }
    for (name, status) in [
        ("v1_embeddings_0", 200),
        ("v1_embeddings_1", 200),
        ("v1_embeddings_3", 400),
        ("embed_0", 200),
        ("embed_1", 200),
        ("embed_2", 413),
        ("tokenize_0", 200),
        ("not_json", 400),
    ] {
        assert_eq!(statuses.get(name), Some(&status), "{name}");
    }
    server.shutdown().expect("clean shutdown");
}
