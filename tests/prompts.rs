//! Prompts as sentence-transformers 6.3 applies them (tests/fixtures/prompts, written by
//! scripts/make_prompt_fixtures.py): the model's prompts and default prompt, `prompt_name` and
//! `prompt` in the library, the CLI (`embed`, `eval`) and the server (`/embed`, `/v1/embeddings`,
//! `/tokenize`), truncation with the prompt counted, and `include_prompt: false` pooling.

#[path = "common/http.rs"]
mod http;
#[path = "common/test_server.rs"]
mod test_server;

use std::path::PathBuf;
use std::process::Command;

use deberta_embed::server::ServerOptions;
use deberta_embed::{Device, Embedder, EmbedderOptions, EncodeOptions, Error};
use safetensors::SafeTensors;
use serde_json::{json, Value};
use test_server::TestServer;

/// The numerics contract against sentence-transformers.
const VS_REFERENCE: f32 = 1e-4;
/// Evaluator metrics (as tests/eval.rs).
const EVAL_TOL: f64 = 2e-3;

const MODELS: [&str; 2] = ["prompts_default", "prompts_exclude"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompts")
}

struct Case {
    prompt_name: Option<String>,
    prompt: Option<String>,
    prompt_length: Option<usize>,
    token_ids: Vec<Vec<u32>>,
    embeddings: Vec<f32>,
}

impl Case {
    fn options(&self) -> EncodeOptions<'_> {
        EncodeOptions {
            prompt_name: self.prompt_name.as_deref(),
            prompt: self.prompt.as_deref(),
        }
    }
    /// The request fields that ask for this case.
    fn fields(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        if let Some(n) = &self.prompt_name {
            m.insert("prompt_name".into(), json!(n));
        }
        if let Some(p) = &self.prompt {
            m.insert("prompt".into(), json!(p));
        }
        m
    }
}

struct Fixture {
    name: &'static str,
    meta: Value,
    sentences: Vec<String>,
    dim: usize,
    cases: Vec<Case>,
}

impl Fixture {
    fn load(name: &'static str) -> Fixture {
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let bytes = std::fs::read(dir().join(format!("{name}.safetensors"))).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let sentences: Vec<String> = serde_json::from_value(meta["sentences"].clone()).unwrap();
        let dim = meta["dim"].as_u64().unwrap() as usize;
        let cases = meta["cases"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let t = st.tensor(&format!("case{i}")).unwrap();
                assert_eq!(t.shape(), [sentences.len(), dim]);
                Case {
                    prompt_name: c["prompt_name"].as_str().map(String::from),
                    prompt: c["prompt"].as_str().map(String::from),
                    prompt_length: c["prompt_length"].as_u64().map(|n| n as usize),
                    token_ids: serde_json::from_value(c["token_ids"].clone()).unwrap(),
                    embeddings: t
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                }
            })
            .collect();
        Fixture {
            name,
            meta,
            sentences,
            dim,
            cases,
        }
    }
    fn model_dir(&self) -> PathBuf {
        dir().join(self.name)
    }
    fn embedder(&self) -> Embedder {
        let opts = EmbedderOptions {
            threads: Some(2),
            batch_size: 4,
            ..Default::default()
        };
        Embedder::load_with(self.model_dir(), Device::Cpu, opts).unwrap()
    }
    fn texts(&self) -> Vec<&str> {
        self.sentences.iter().map(String::as_str).collect()
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn prompts_and_default_are_read_as_sentence_transformers_reads_them() {
    for name in MODELS {
        let f = Fixture::load(name);
        let e = f.embedder();
        // the file's prompts plus sentence-transformers' empty `query` / `document` defaults
        let mut want: std::collections::BTreeMap<String, String> =
            serde_json::from_value(f.meta["prompts"].clone()).unwrap();
        for k in ["query", "document"] {
            want.entry(k.into()).or_default();
        }
        assert_eq!(e.prompts(), &want, "{name}");
        assert_eq!(
            e.default_prompt_name(),
            f.meta["default_prompt_name"].as_str(),
            "{name}"
        );
        assert_eq!(
            e.pipeline().include_prompt,
            f.meta["include_prompt"].as_bool().unwrap()
        );
        assert_eq!(
            e.max_seq_length(),
            f.meta["max_seq_length"].as_u64().unwrap() as usize
        );
    }
}

#[test]
fn library_matches_sentence_transformers_for_every_case() {
    for name in MODELS {
        let f = Fixture::load(name);
        let e = f.embedder();
        let texts = f.texts();
        for (i, c) in f.cases.iter().enumerate() {
            let what = format!("{name} case {i} ({:?}, {:?})", c.prompt_name, c.prompt);
            let resolved = e.resolve_prompt(&c.options()).unwrap();
            assert_eq!(
                resolved.as_ref().map(|p| p.length),
                c.prompt_length,
                "{what}"
            );
            // the ids fed to the model: prompt prepended, then truncated with it
            let prompted: Vec<String> = match &resolved {
                Some(p) => texts.iter().map(|t| p.apply(t)).collect(),
                None => texts.iter().map(|t| t.to_string()).collect(),
            };
            let refs: Vec<&str> = prompted.iter().map(String::as_str).collect();
            assert_eq!(e.token_ids(&refs).unwrap(), c.token_ids, "{what}");
            let got = e.encode_with(&texts, &c.options()).unwrap();
            let d = max_abs_diff(got.as_slice(), &c.embeddings);
            assert!(d <= VS_REFERENCE, "{what}: max |diff| {d:e}");
            // one at a time: the same rows
            for (s, t) in texts.iter().enumerate().step_by(5) {
                let one = e.encode_with(&[t], &c.options()).unwrap();
                let w = &c.embeddings[s * f.dim..(s + 1) * f.dim];
                assert!(
                    max_abs_diff(one.as_slice(), w) <= VS_REFERENCE,
                    "{what} #{s}"
                );
            }
            // chunked encoding applies the same prompt
            let mut rows = Vec::new();
            e.encode_chunked_with(
                &texts,
                3,
                &c.options(),
                |emb| -> deberta_embed::Result<()> {
                    rows.extend_from_slice(emb.as_slice());
                    Ok(())
                },
            )
            .unwrap();
            assert!(
                max_abs_diff(&rows, &c.embeddings) <= VS_REFERENCE,
                "{what} chunked"
            );
        }
    }
}

#[test]
fn plain_encode_applies_the_default_prompt() {
    let f = Fixture::load("prompts_default");
    let e = f.embedder();
    let default_case = &f.cases[0];
    assert!(default_case.prompt.is_none() && default_case.prompt_name.is_none());
    let got = e.encode(&f.texts()).unwrap();
    assert!(max_abs_diff(got.as_slice(), &default_case.embeddings) <= VS_REFERENCE);
    // and it differs from the text alone (the `prompt: ""` case)
    let bare = f
        .cases
        .iter()
        .find(|c| c.prompt.as_deref() == Some(""))
        .unwrap();
    assert!(max_abs_diff(got.as_slice(), &bare.embeddings) > 1e-3);
}

#[test]
fn unknown_prompt_name_is_an_input_error_naming_the_prompts() {
    for name in MODELS {
        let f = Fixture::load(name);
        let e = f.embedder();
        let opts = EncodeOptions {
            prompt_name: Some("no-such-prompt"),
            prompt: None,
        };
        match e.encode_with(&["x"], &opts) {
            Err(Error::Input(m)) => {
                assert!(
                    m.contains("no-such-prompt") && m.contains("\"query\""),
                    "{m}"
                )
            }
            other => panic!("{name}: {other:?}"),
        }
        // a prompt given as text wins over a bad name, as in sentence-transformers
        let both = EncodeOptions {
            prompt_name: Some("no-such-prompt"),
            prompt: Some("x: "),
        };
        assert!(e.encode_with(&["x"], &both).is_ok());
    }
}

#[test]
fn bad_prompt_configs_are_refused_naming_the_file() {
    let src = Fixture::load("prompts_default").model_dir();
    for (cfg, needle) in [
        (
            json!({"prompts": {"query": "q: "}, "default_prompt_name": "missing"}),
            "default_prompt_name",
        ),
        (json!({"prompts": {"query": 3}}), "prompt `query`"),
        (json!({"prompts": ["query: "]}), "`prompts`"),
        (
            json!({"prompts": {}, "default_prompt_name": 7}),
            "default_prompt_name",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(&src, tmp.path());
        std::fs::write(
            tmp.path().join("config_sentence_transformers.json"),
            cfg.to_string(),
        )
        .unwrap();
        let err = Embedder::load(tmp.path(), Device::Cpu)
            .map(|_| ())
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("config_sentence_transformers.json") && msg.contains(needle),
            "{cfg}: {msg}"
        );
    }
    // a null prompt is an empty one; a model without the file has just the two defaults
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&src, tmp.path());
    std::fs::write(
        tmp.path().join("config_sentence_transformers.json"),
        json!({"prompts": {"query": null, "x": "x: "}, "default_prompt_name": "query"}).to_string(),
    )
    .unwrap();
    let e = Embedder::load(tmp.path(), Device::Cpu).unwrap();
    assert_eq!(e.prompts()["query"], "");
    assert_eq!(e.resolve_prompt(&EncodeOptions::default()).unwrap(), None);
    std::fs::remove_file(tmp.path().join("config_sentence_transformers.json")).unwrap();
    let e = Embedder::load(tmp.path(), Device::Cpu).unwrap();
    assert_eq!(
        e.prompts().keys().collect::<Vec<_>>(),
        ["document", "query"]
    );
    assert_eq!(e.default_prompt_name(), None);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CLI

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_deberta-embed"))
        .args(args)
        .output()
        .expect("run deberta-embed")
}

#[test]
fn cli_embed_takes_prompt_name_and_prompt() {
    for name in MODELS {
        let f = Fixture::load(name);
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in.jsonl");
        let lines: Vec<String> = f
            .sentences
            .iter()
            .map(|s| serde_json::to_string(s).unwrap())
            .collect();
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let model = f.model_dir();
        for (i, c) in f.cases.iter().enumerate() {
            let mut args = vec![
                "embed".to_string(),
                "--model".into(),
                model.display().to_string(),
                "--input".into(),
                input.display().to_string(),
                "--quiet".into(),
            ];
            if let Some(n) = &c.prompt_name {
                args.extend(["--prompt-name".into(), n.clone()]);
            }
            if let Some(p) = &c.prompt {
                // `--prompt=` form: a prompt may start with a dash or be empty
                args.push(format!("--prompt={p}"));
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run(&refs);
            assert!(
                out.status.success(),
                "{name} case {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rows: Vec<f32> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .flat_map(|l| serde_json::from_str::<Vec<f32>>(l).unwrap())
                .collect();
            let d = max_abs_diff(&rows, &c.embeddings);
            assert!(d <= VS_REFERENCE, "{name} case {i}: {d:e}");
        }
        let out = run(&[
            "embed",
            "--model",
            &model.display().to_string(),
            "--input",
            &input.display().to_string(),
            "--prompt-name",
            "nope",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: ") && err.contains("\"nope\""),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn cli_eval_with_prompts_matches_the_evaluators() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval");
    for name in MODELS {
        let f = Fixture::load(name);
        for case in f.meta["eval"].as_array().unwrap() {
            for (kind, file) in [("sts", "sts.jsonl"), ("pairs", "pairs.jsonl")] {
                let mut args = vec![
                    "eval".to_string(),
                    kind.into(),
                    "--model".into(),
                    f.model_dir().display().to_string(),
                    "--data".into(),
                    data.join(file).display().to_string(),
                    "--json".into(),
                    "--quiet".into(),
                ];
                if let Some(n) = case["prompt_name"].as_str() {
                    args.extend(["--prompt-name".into(), n.into()]);
                }
                if let Some(p) = case["prompt"].as_str() {
                    args.push(format!("--prompt={p}"));
                }
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = run(&refs);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let got: Value = serde_json::from_slice(&out.stdout).unwrap();
                let want = case[kind].as_object().unwrap();
                assert!(!want.is_empty());
                for (k, w) in want {
                    let (g, w) = (got[k].as_f64().unwrap(), w.as_f64().unwrap());
                    assert!(
                        (g - w).abs() <= EVAL_TOL,
                        "{name} {case} {kind} {k}: {g} vs sentence-transformers {w}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server

fn start(f: &Fixture) -> TestServer {
    TestServer::start(
        f.embedder(),
        ServerOptions {
            model_name: f.name.into(),
            ..Default::default()
        },
    )
}

fn rows_of(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect()
}

#[test]
fn server_routes_apply_prompts_as_sentence_transformers() {
    for name in MODELS {
        let f = Fixture::load(name);
        let srv = start(&f);
        let normalizes = f.embedder().normalizes();
        for (i, c) in f.cases.iter().enumerate() {
            let what = format!("{name} case {i}");
            // /embed: `normalize` as the model does, truncating as sentence-transformers does
            let mut body = c.fields();
            body.insert("inputs".into(), json!(f.sentences));
            body.insert("truncate".into(), json!(true));
            body.insert("normalize".into(), json!(normalizes));
            let resp = http::post_json(srv.addr, "/embed", &Value::Object(body));
            assert_eq!(resp.status, 200, "{what}: {}", resp.text());
            let d = max_abs_diff(&rows_of(&resp.json()), &c.embeddings);
            assert!(d <= VS_REFERENCE, "{what} /embed: {d:e}");

            // /v1/embeddings (the same fields, an extension of OpenAI's request)
            let mut body = c.fields();
            body.insert("input".into(), json!(f.sentences));
            let resp = http::post_json(srv.addr, "/v1/embeddings", &Value::Object(body));
            assert_eq!(resp.status, 200, "{what}: {}", resp.text());
            let v = resp.json();
            let rows: Vec<f32> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|d| {
                    d["embedding"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect::<Vec<_>>()
                })
                .collect();
            assert!(
                max_abs_diff(&rows, &c.embeddings) <= VS_REFERENCE,
                "{what} openai"
            );
            // usage counts the prompt's tokens, after truncation
            let tokens: usize = c.token_ids.iter().map(Vec::len).sum();
            assert_eq!(v["usage"]["prompt_tokens"], tokens, "{what}");

            // /tokenize: the ids the model sees, prompt included
            let mut body = c.fields();
            body.insert("inputs".into(), json!(f.sentences));
            let resp = http::post_json(srv.addr, "/tokenize", &Value::Object(body));
            assert_eq!(resp.status, 200, "{what}: {}", resp.text());
            let ids: Vec<Vec<u32>> = resp
                .json()
                .as_array()
                .unwrap()
                .iter()
                .map(|toks| {
                    toks.as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t["id"].as_u64().unwrap() as u32)
                        .collect()
                })
                .collect();
            assert_eq!(ids, c.token_ids, "{what} /tokenize");
        }
    }
}

#[test]
fn server_refuses_unknown_prompt_names_and_counts_the_prompt_against_the_length() {
    let f = Fixture::load("prompts_default");
    let srv = start(&f);
    for (route, field) in [
        ("/embed", "inputs"),
        ("/tokenize", "inputs"),
        ("/v1/embeddings", "input"),
    ] {
        let resp = http::post_json(
            srv.addr,
            route,
            &json!({field: ["a"], "prompt_name": "nope"}),
        );
        assert_eq!(resp.status, 400, "{route}: {}", resp.text());
        let v = resp.json();
        let msg = if route == "/v1/embeddings" {
            assert_eq!(v["error"]["param"], "prompt_name");
            v["error"]["message"].as_str().unwrap().to_string()
        } else {
            assert_eq!(v["error_type"], "Validation");
            v["error"].as_str().unwrap().to_string()
        };
        assert!(
            msg.contains("\"nope\"") && msg.contains("\"passage\""),
            "{msg}"
        );
        // a prompt_name of the wrong type is 422
        let resp = http::post_json(srv.addr, route, &json!({field: ["a"], "prompt_name": 3}));
        assert_eq!(resp.status, 422, "{route}");
    }
    // max_seq_length 20: a text that fits alone (15 tokens) is too long with the default prompt
    let text = f.sentences[10].as_str();
    let bare = f
        .cases
        .iter()
        .position(|c| c.prompt.as_deref() == Some(""))
        .unwrap();
    assert_eq!(f.cases[bare].token_ids[10].len(), 15);
    let e = f.embedder();
    assert_eq!(e.token_ids(&[text]).unwrap()[0].len(), 15);
    let resp = http::post_json(srv.addr, "/embed", &json!({"inputs": text}));
    assert_eq!(resp.status, 413, "{}", resp.text());
    let resp = http::post_json(srv.addr, "/embed", &json!({"inputs": text, "prompt": ""}));
    assert_eq!(resp.status, 200, "{}", resp.text());
    // /info names the prompts
    let info = http::get(srv.addr, "/info").json();
    assert_eq!(info["default_prompt_name"], "query");
    assert_eq!(info["prompts"]["passage"], "passage: ");
    assert_eq!(info["include_prompt"], true);
}
