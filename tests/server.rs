//! The HTTP server (`deberta_embed::server`, `deberta-embed serve`): real servers on loopback
//! ports, spoken to over TCP. Embeddings must equal `Embedder::encode` (1e-5) and the
//! sentence-transformers references (1e-4) whatever else is batched with them; every bad request
//! gets a JSON error with the right status and leaves the server up; shutdown finishes the
//! requests in flight.

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/test_server.rs"]
mod test_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{fixtures, max_abs_diff, model_names, Reference};
use deberta_embed::server::{Server, ServerOptions};
use deberta_embed::{Device, Embedder, EmbedderOptions};
use serde_json::{json, Value};
use test_server::TestServer;

/// Same numbers as `encode`: the forward is batch-invariant to rounding.
const VS_ENCODE: f32 = 1e-5;
/// The numerics contract against sentence-transformers.
const VS_REFERENCE: f32 = 1e-4;

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn load(name: &str, normalize: Option<bool>) -> Embedder {
    let opts = EmbedderOptions {
        threads: Some(2),
        normalize,
        ..Default::default()
    };
    Embedder::load_with(model_dir(name), Device::Cpu, opts)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Start `name` (CPU, `load`) with `opts` on a loopback port.
fn start(name: &str, opts: ServerOptions) -> TestServer {
    TestServer::start(load(name, None), opts)
}

/// Start `name` with default limits, reporting `name` as the model.
fn start_model(name: &str) -> TestServer {
    start(
        name,
        ServerOptions {
            model_name: name.into(),
            ..Default::default()
        },
    )
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// The rows of an OpenAI response, checking the envelope.
fn openai_rows(resp: &http::Response, n: usize, model: &str) -> Vec<Vec<f32>> {
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let v = resp.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], model);
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), n);
    data.iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            floats(&d["embedding"])
        })
        .collect()
}

fn tei_rows(resp: &http::Response, n: usize) -> Vec<Vec<f32>> {
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    let rows: Vec<Vec<f32>> = v.as_array().expect("array").iter().map(floats).collect();
    assert_eq!(rows.len(), n);
    rows
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: width");
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{what}: max |diff| {d:e} > {tol:e}");
}

#[test]
fn openai_route_matches_encode_and_sentence_transformers() {
    for name in model_names() {
        let r = Reference::load(&name);
        let want = r.embeddings();
        let e = load(&name, None);
        let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
        let local = e.encode(&texts).unwrap();
        let srv = start_model(&name);

        let resp = http::post_json(
            srv.addr,
            "/v1/embeddings",
            &json!({"input": r.sentences, "model": "my-model"}),
        );
        let rows = openai_rows(&resp, texts.len(), "my-model");
        for (i, row) in rows.iter().enumerate() {
            assert_close(
                row,
                local.row(i),
                VS_ENCODE,
                &format!("{name} #{i} vs encode"),
            );
            let w = &want[i * r.dim..(i + 1) * r.dim];
            assert_close(row, w, VS_REFERENCE, &format!("{name} #{i} vs reference"));
        }
        // usage counts the real tokens, special tokens included, after truncation
        let tokens: usize = r.token_ids.iter().map(Vec::len).sum();
        let usage = &resp.json()["usage"];
        assert_eq!(usage["prompt_tokens"], tokens, "{name}");
        assert_eq!(usage["total_tokens"], tokens, "{name}");

        // one string, and no model named: the served name comes back
        let resp = http::post_json(srv.addr, "/v1/embeddings", &json!({"input": texts[3]}));
        let rows = openai_rows(&resp, 1, &name);
        assert_close(&rows[0], local.row(3), VS_ENCODE, &format!("{name} single"));
        assert_eq!(resp.json()["usage"]["prompt_tokens"], r.token_ids[3].len());
        srv.shutdown().expect("clean shutdown");
    }
}

#[test]
fn embed_route_matches_encode_and_sentence_transformers() {
    for name in model_names() {
        let r = Reference::load(&name);
        let want = r.embeddings();
        let model_normalizes = r.meta["normalize"].as_bool().unwrap();
        let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
        let srv = start_model(&name);
        // the reference is what the model directory asks for
        let resp = http::post_json(
            srv.addr,
            "/embed",
            &json!({"inputs": r.sentences, "normalize": model_normalizes, "truncate": true}),
        );
        for (i, row) in tei_rows(&resp, texts.len()).iter().enumerate() {
            let w = &want[i * r.dim..(i + 1) * r.dim];
            assert_close(row, w, VS_REFERENCE, &format!("{name} #{i} vs reference"));
        }
        // normalize defaults to true; false gives the pooled vector without the L2 step
        for (normalize, body) in [
            (true, json!({"inputs": r.sentences, "truncate": true})),
            (
                false,
                json!({"inputs": r.sentences, "truncate": true, "normalize": false}),
            ),
        ] {
            let local = load(&name, Some(normalize)).encode(&texts).unwrap();
            let resp = http::post_json(srv.addr, "/embed", &body);
            for (i, row) in tei_rows(&resp, texts.len()).iter().enumerate() {
                let what = format!("{name} #{i} normalize={normalize}");
                assert_close(row, local.row(i), VS_ENCODE, &what);
            }
        }
        // a single string
        let resp = http::post_json(srv.addr, "/embed", &json!({"inputs": texts[0]}));
        let local = load(&name, Some(true)).encode(&texts[..1]).unwrap();
        assert_close(&tei_rows(&resp, 1)[0], local.row(0), VS_ENCODE, &name);
    }
}

#[test]
fn base64_decodes_to_the_float_output() {
    let srv = start_model("st6_proj_cls_norm");
    let input = json!(["A man is eating food.", "", "Ein Mann isst."]);
    let float = http::post_json(srv.addr, "/v1/embeddings", &json!({"input": input}));
    let float = openai_rows(&float, 3, "st6_proj_cls_norm");
    let resp = http::post_json(
        srv.addr,
        "/v1/embeddings",
        &json!({"input": input, "encoding_format": "base64"}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        let b64 = d["embedding"].as_str().expect("a base64 string");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("valid base64");
        let row: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // JSON floats print the shortest string that reads back to the same f32: exact
        assert_eq!(row, float[i], "row {i}");
    }
    // "float" explicitly is the default
    let resp = http::post_json(
        srv.addr,
        "/v1/embeddings",
        &json!({"input": input, "encoding_format": "float"}),
    );
    assert_eq!(openai_rows(&resp, 3, "st6_proj_cls_norm"), float);
}

#[test]
fn dimensions_other_than_the_models_are_refused() {
    let srv = start_model("st2_v3like");
    let dim = 32;
    let ok = http::post_json(
        srv.addr,
        "/v1/embeddings",
        &json!({"input": "hi", "dimensions": dim}),
    );
    assert_eq!(openai_rows(&ok, 1, "st2_v3like")[0].len(), dim);
    let ok = http::post_json(
        srv.addr,
        "/embed",
        &json!({"inputs": "hi", "dimensions": dim}),
    );
    assert_eq!(tei_rows(&ok, 1)[0].len(), dim);
    for d in [json!(16), json!(64), json!(0), json!(-1), json!(32.5)] {
        let resp = http::post_json(
            srv.addr,
            "/v1/embeddings",
            &json!({"input": "hi", "dimensions": d}),
        );
        assert_eq!(resp.status, 400, "dimensions {d}: {}", resp.text());
        let v = resp.json();
        assert_eq!(v["error"]["param"], "dimensions");
        assert!(v["error"]["message"].as_str().unwrap().contains("32"));
        let resp = http::post_json(
            srv.addr,
            "/embed",
            &json!({"inputs": "hi", "dimensions": d}),
        );
        assert_eq!(resp.status, 400, "dimensions {d}: {}", resp.text());
        assert_eq!(resp.json()["error_type"], "Validation");
    }
    let resp = http::post_json(
        srv.addr,
        "/v1/embeddings",
        &json!({"input": "hi", "dimensions": "32"}),
    );
    assert_eq!(resp.status, 422, "{}", resp.text());
}

/// (route, raw body, status, a word the message must contain)
const BAD_REQUESTS: &[(&str, &str, u16, &str)] = &[
    ("/v1/embeddings", "", 400, "not valid JSON"),
    ("/v1/embeddings", "{\"input\": ", 400, "not valid JSON"),
    ("/v1/embeddings", "input=hello", 400, "not valid JSON"),
    ("/v1/embeddings", "[\"a\"]", 422, "JSON object"),
    ("/v1/embeddings", "\"a\"", 422, "JSON object"),
    ("/v1/embeddings", "{}", 422, "missing field `input`"),
    (
        "/v1/embeddings",
        "{\"input\": null}",
        422,
        "missing field `input`",
    ),
    (
        "/v1/embeddings",
        "{\"inputs\": \"a\"}",
        422,
        "missing field `input`",
    ),
    (
        "/v1/embeddings",
        "{\"input\": 7}",
        422,
        "string or an array",
    ),
    (
        "/v1/embeddings",
        "{\"input\": {\"a\": 1}}",
        422,
        "string or an array",
    ),
    ("/v1/embeddings", "{\"input\": [1, 2, 3]}", 422, "token-id"),
    ("/v1/embeddings", "{\"input\": [[1, 2]]}", 422, "token-id"),
    (
        "/v1/embeddings",
        "{\"input\": [\"a\", null]}",
        422,
        "`input[1]`",
    ),
    ("/v1/embeddings", "{\"input\": []}", 400, "empty"),
    (
        "/v1/embeddings",
        "{\"input\": \"a\", \"model\": 5}",
        422,
        "`model`",
    ),
    (
        "/v1/embeddings",
        "{\"input\": \"a\", \"encoding_format\": \"int8\"}",
        400,
        "encoding_format",
    ),
    (
        "/v1/embeddings",
        "{\"input\": \"a\", \"encoding_format\": 1}",
        422,
        "encoding_format",
    ),
    (
        "/v1/embeddings",
        "{\"input\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}",
        413,
        "limit is 4",
    ),
    ("/embed", "", 400, "not valid JSON"),
    ("/embed", "{\"inputs\": [\"a\",]}", 400, "not valid JSON"),
    (
        "/embed",
        "{\"input\": \"a\"}",
        422,
        "missing field `inputs`",
    ),
    ("/embed", "{\"inputs\": 3.5}", 422, "string or an array"),
    ("/embed", "{\"inputs\": [true]}", 422, "`inputs[0]`"),
    ("/embed", "{\"inputs\": []}", 400, "empty"),
    (
        "/embed",
        "{\"inputs\": \"a\", \"normalize\": \"yes\"}",
        422,
        "`normalize`",
    ),
    (
        "/embed",
        "{\"inputs\": \"a\", \"truncate\": 1}",
        422,
        "`truncate`",
    ),
    (
        "/embed",
        "{\"inputs\": \"a\", \"truncation_direction\": \"Left\"}",
        400,
        "truncation_direction",
    ),
    (
        "/embed",
        "{\"inputs\": \"a\", \"prompt_name\": \"no-such-prompt\"}",
        400,
        "prompt_name",
    ),
    (
        "/embed",
        "{\"inputs\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}",
        413,
        "limit is 4",
    ),
];

fn assert_error_shape(route: &str, resp: &http::Response, needle: &str, what: &str) {
    let v = resp.json();
    let msg = if route == "/embed" {
        let kind = v["error_type"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {v}"));
        assert!(!kind.is_empty());
        v["error"].as_str()
    } else {
        let kind = v["error"]["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {v}"));
        assert!(!kind.is_empty());
        v["error"]["message"].as_str()
    }
    .unwrap_or_else(|| panic!("{what}: no message in {v}"));
    assert!(
        msg.contains(needle),
        "{what}: message {msg:?} should contain {needle:?}"
    );
}

#[test]
fn bad_requests_get_json_errors_and_the_server_stays_up() {
    let srv = start(
        "st2_v3like",
        ServerOptions {
            max_inputs: 4,
            ..Default::default()
        },
    );
    let local = load("st2_v3like", None).encode(&["still up"]).unwrap();
    for &(route, body, status, needle) in BAD_REQUESTS {
        let what = format!("POST {route} {body:?}");
        let resp = http::request(srv.addr, "POST", route, body.as_bytes()).expect(&what);
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        assert_error_shape(route, &resp, needle, &what);
        // after every error the server still answers, correctly
        let ok = http::post_json(srv.addr, "/v1/embeddings", &json!({"input": "still up"}));
        let row = &openai_rows(&ok, 1, "deberta-embed")[0];
        assert_close(row, local.row(0), VS_ENCODE, &what);
    }
    // bytes that are not UTF-8
    let resp = http::request(srv.addr, "POST", "/embed", b"{\"inputs\": \"\xff\xfe\"}").unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_error_shape("/embed", &resp, "not valid JSON", "invalid UTF-8");
    // four inputs is the limit, not over it
    let resp = http::post_json(srv.addr, "/embed", &json!({"inputs": ["a", "b", "c", "d"]}));
    tei_rows(&resp, 4);
    // unknown routes and methods
    let resp = http::get(srv.addr, "/v2/nothing");
    assert_eq!(resp.status, 404);
    assert_error_shape("/v1/embeddings", &resp, "/v2/nothing", "404");
    let resp = http::get(srv.addr, "/v1/embeddings");
    assert_eq!(resp.status, 405);
    assert_error_shape("/v1/embeddings", &resp, "GET", "405");
    assert_eq!(http::get(srv.addr, "/health").status, 200);
    srv.shutdown().expect("clean shutdown");
}

#[test]
fn too_large_a_body_is_413() {
    let srv = start(
        "st2_v3like",
        ServerOptions {
            max_body_bytes: 1000,
            ..Default::default()
        },
    );
    let small = json!({"input": "x".repeat(900)});
    assert_eq!(
        http::post_json(srv.addr, "/v1/embeddings", &small).status,
        200
    );
    for route in ["/v1/embeddings", "/embed"] {
        let key = if route == "/embed" { "inputs" } else { "input" };
        let big = json!({key: "word ".repeat(400)}).to_string();
        let resp = http::request(srv.addr, "POST", route, big.as_bytes()).unwrap();
        assert_eq!(resp.status, 413, "{}", resp.text());
        assert_error_shape(route, &resp, "1000 bytes", route);
    }
    assert_eq!(http::get(srv.addr, "/health").status, 200);
}

#[test]
fn over_long_inputs_are_refused_by_embed_unless_truncated() {
    let name = "st2_v3like"; // max_seq_length 24
    let srv = start_model(name);
    let long = "The quick brown fox jumps over the lazy dog again and again and again, \
                until the sun goes down behind the hills and the night falls.";
    let short = "A short one.";
    let e = load(name, Some(true));
    let ids = e.token_ids(&[long]).unwrap();
    assert_eq!(
        ids[0].len(),
        e.max_seq_length(),
        "the text must be over-long"
    );

    for body in [
        json!({"inputs": [short, long]}),
        json!({"inputs": long, "truncate": false}),
    ] {
        let resp = http::post_json(srv.addr, "/embed", &body);
        assert_eq!(resp.status, 413, "{}", resp.text());
        assert_error_shape("/embed", &resp, "truncate", "over-long");
        assert_eq!(resp.json()["error_type"], "Validation");
    }
    // truncate: true embeds the first max_seq_length tokens, as encode does
    let want = e.encode(&[short, long]).unwrap();
    let resp = http::post_json(
        srv.addr,
        "/embed",
        &json!({"inputs": [short, long], "truncate": true}),
    );
    let rows = tei_rows(&resp, 2);
    assert_close(&rows[0], want.row(0), VS_ENCODE, "short");
    assert_close(&rows[1], want.row(1), VS_ENCODE, "long, truncated");
    // /v1/embeddings always truncates, and counts the tokens kept
    let resp = http::post_json(srv.addr, "/v1/embeddings", &json!({"input": long}));
    assert_eq!(openai_rows(&resp, 1, name).len(), 1);
    assert_eq!(resp.json()["usage"]["prompt_tokens"], e.max_seq_length());
    // an exactly-max-length input is not "over-long": find one by growing a text
    let mut words = vec!["word"];
    while e.token_ids(&[&words.join(" ")]).unwrap()[0].len() < e.max_seq_length() {
        words.push("word");
    }
    let exact = words.join(" ");
    let resp = http::post_json(srv.addr, "/embed", &json!({"inputs": exact}));
    tei_rows(&resp, 1);

    // --auto-truncate: a request that does not say `truncate` is truncated; one that says false
    // is still refused
    let auto = start(
        name,
        ServerOptions {
            auto_truncate: true,
            ..Default::default()
        },
    );
    let resp = http::post_json(auto.addr, "/embed", &json!({"inputs": [short, long]}));
    let rows = tei_rows(&resp, 2);
    assert_close(&rows[1], want.row(1), VS_ENCODE, "auto-truncated");
    let resp = http::post_json(
        auto.addr,
        "/embed",
        &json!({"inputs": long, "truncate": false}),
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_eq!(http::get(auto.addr, "/info").json()["auto_truncate"], true);
}

/// Distinct texts for client `c`, request `k`: 1 to 4 sentences.
/// With room for one waiting request, a burst of concurrent requests gets 429s with a JSON
/// error for the overflow, the exact rows for the rest, and the server stays up.
#[test]
fn a_full_queue_answers_429_and_the_server_stays_up() {
    let srv = start(
        "st2_v3like",
        ServerOptions {
            max_queued_requests: 1,
            ..Default::default()
        },
    );
    let addr = srv.addr;
    let e = load("st2_v3like", None);
    // 48 inputs of ~100 words: each batch keeps the batcher busy for a while
    let long: Vec<String> = (0..48)
        .map(|i| {
            format!(
                "{i} {}",
                "the quick brown fox jumps over the lazy dog ".repeat(10)
            )
        })
        .collect();
    let want = std::sync::Arc::new(
        e.encode(&long.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap(),
    );
    let long = std::sync::Arc::new(long);
    let (mut ok, mut overloaded) = (0, 0);
    // A burst usually overflows at once; a few rounds make a slow machine no exception.
    for round in 0..20 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(24));
        let clients: Vec<_> = (0..24)
            .map(|_| {
                let (long, barrier) = (long.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    http::post_json(addr, "/v1/embeddings", &json!({ "input": *long }))
                })
            })
            .collect();
        for c in clients {
            let resp = c.join().expect("client");
            match resp.status {
                200 => {
                    let rows = openai_rows(&resp, long.len(), "deberta-embed");
                    for (i, row) in rows.iter().enumerate() {
                        assert_close(row, want.row(i), VS_ENCODE, &format!("round {round} #{i}"));
                    }
                    ok += 1;
                }
                429 => {
                    assert_error_shape("/v1/embeddings", &resp, "overloaded", "429");
                    overloaded += 1;
                }
                other => panic!("round {round}: status {other}: {}", resp.text()),
            }
        }
        if overloaded > 0 && ok > 0 {
            break;
        }
    }
    assert!(overloaded > 0, "no 429 in 20 bursts of 24 ({ok} answered)");
    assert!(ok > 0, "every request was refused");
    assert_eq!(
        http::get(addr, "/health").status,
        200,
        "the server is still up"
    );
}

fn client_texts(c: usize, k: usize) -> Vec<String> {
    let base = [
        "A man is eating food.",
        "A woman plays the violin on a stage",
        "Le chat dort sur le canapé.",
        "Zürich's café serves déjà-vu pastries",
        "numbers 12345 and symbols #@!",
    ];
    (0..1 + (c + k) % 4)
        .map(|j| {
            format!(
                "{} client {c} request {k} part {j}",
                base[(c + j) % base.len()]
            )
        })
        .collect()
}

#[test]
fn sixty_four_concurrent_clients_each_get_their_own_embeddings() {
    let name = "st6_pool_mean_sqrt_len_tokens";
    let srv = start_model(name);
    let e = load(name, None);
    let (clients, requests) = (64, 4);
    // what encode gives, computed up front
    let mut expected = Vec::new();
    for c in 0..clients {
        let mut mine = Vec::new();
        for k in 0..requests {
            let texts = client_texts(c, k);
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            mine.push((texts.clone(), e.encode(&refs).unwrap()));
        }
        expected.push(mine);
    }
    let addr = srv.addr;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let handles: Vec<_> = expected
        .into_iter()
        .enumerate()
        .map(|(c, mine)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut conn = http::Conn::connect(addr).unwrap();
                barrier.wait();
                for (k, (texts, want)) in mine.into_iter().enumerate() {
                    let tei = (c + k) % 2 == 0;
                    let (route, body) = if tei {
                        ("/embed", json!({"inputs": texts, "normalize": false}))
                    } else {
                        ("/v1/embeddings", json!({"input": texts}))
                    };
                    let resp = conn
                        .request("POST", route, body.to_string().as_bytes())
                        .unwrap();
                    let rows = if tei {
                        tei_rows(&resp, texts.len())
                    } else {
                        openai_rows(&resp, texts.len(), name)
                    };
                    for (i, row) in rows.iter().enumerate() {
                        let what = format!("client {c} request {k} row {i}");
                        assert_close(row, want.row(i), VS_ENCODE, &what);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a client failed");
    }
    // every sequence went through the batcher exactly once
    let total: usize = (0..clients)
        .flat_map(|c| (0..requests).map(move |k| client_texts(c, k).len()))
        .sum();
    let metrics = http::get(addr, "/metrics").text();
    assert_eq!(
        metric(&metrics, "deberta_embed_batch_size_sum"),
        total as f64
    );
    assert_eq!(metric(&metrics, "deberta_embed_inputs_total"), total as f64);
    assert_eq!(
        metric(&metrics, "deberta_embed_batch_requests_sum"),
        (clients * requests) as f64
    );
    let batches = metric(&metrics, "deberta_embed_batch_requests_count");
    eprintln!("{} requests in {batches} batches", clients * requests);
}

#[test]
fn thirty_two_concurrent_clients_match_sentence_transformers() {
    for (name, route) in [
        ("st2_v3like", "/v1/embeddings"),
        ("st6_proj_cls_norm", "/embed"),
    ] {
        let r = Reference::load(name);
        let want = std::sync::Arc::new(r.embeddings());
        let sentences = std::sync::Arc::new(r.sentences.clone());
        let normalize = r.meta["normalize"].as_bool().unwrap();
        let (dim, n) = (r.dim, r.sentences.len());
        let srv = start_model(name);
        let addr = srv.addr;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(32));
        let handles: Vec<_> = (0..32)
            .map(|c| {
                let (want, sentences, barrier) = (want.clone(), sentences.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // client c asks for a window of the reference sentences starting at c
                    let idx: Vec<usize> = (0..1 + c % 5).map(|j| (c + 3 * j) % n).collect();
                    let texts: Vec<&str> = idx.iter().map(|&i| sentences[i].as_str()).collect();
                    let body = if route == "/embed" {
                        json!({"inputs": texts, "normalize": normalize, "truncate": true})
                    } else {
                        json!({"input": texts})
                    };
                    barrier.wait();
                    let resp = http::post_json(addr, route, &body);
                    let rows = if route == "/embed" {
                        tei_rows(&resp, texts.len())
                    } else {
                        openai_rows(&resp, texts.len(), name)
                    };
                    for (row, &i) in rows.iter().zip(&idx) {
                        let w = &want[i * dim..(i + 1) * dim];
                        assert_close(row, w, VS_REFERENCE, &format!("{name} client {c} #{i}"));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a client failed");
        }
    }
}

/// The value of the first sample line that starts with `series` (name and labels).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn health_and_metrics() {
    let srv = start(
        "st2_v3like",
        ServerOptions {
            model_name: "served \"name\"".into(),
            ..Default::default()
        },
    );
    let h = http::get(srv.addr, "/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");

    let e = load("st2_v3like", None);
    let texts = ["one sentence", "and another one here", "third"];
    let tokens: usize = e.token_ids(&texts).unwrap().iter().map(Vec::len).sum();
    for t in texts {
        let resp = http::post_json(srv.addr, "/v1/embeddings", &json!({"input": t}));
        assert_eq!(resp.status, 200);
    }
    let resp = http::post_json(srv.addr, "/embed", &json!({"inputs": texts}));
    assert_eq!(resp.status, 200);
    assert_eq!(
        http::post_json(srv.addr, "/embed", &json!({"inputs": []})).status,
        400
    );
    assert_eq!(
        http::request(srv.addr, "POST", "/v1/embeddings", b"{")
            .unwrap()
            .status,
        400
    );
    assert_eq!(http::get(srv.addr, "/nope").status, 404);

    let m = http::get(srv.addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    let count = |route: &str, status: u16| {
        metric(
            &text,
            &format!("deberta_embed_requests_total{{route=\"{route}\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(count("/v1/embeddings", 200), 3.0);
    assert_eq!(count("/v1/embeddings", 400), 1.0);
    assert_eq!(count("/embed", 200), 1.0);
    assert_eq!(count("/embed", 400), 1.0);
    assert_eq!(count("/health", 200), 1.0);
    assert_eq!(count("other", 404), 1.0);
    assert_eq!(
        metric(&text, "deberta_embed_tokens_total"),
        (2 * tokens) as f64
    );
    assert_eq!(metric(&text, "deberta_embed_inputs_total"), 6.0);
    assert_eq!(metric(&text, "deberta_embed_batch_size_sum"), 6.0);
    assert_eq!(
        metric(&text, "deberta_embed_batch_size_bucket{le=\"+Inf\"}"),
        metric(&text, "deberta_embed_batch_size_count")
    );
    assert_eq!(
        metric(
            &text,
            "deberta_embed_request_duration_seconds_count{route=\"/v1/embeddings\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "deberta_embed_request_duration_seconds_bucket{route=\"/embed\",le=\"+Inf\"}"
        ),
        2.0
    );
    assert_eq!(metric(&text, "deberta_embed_queued_requests"), 0.0);
    assert!(text.contains("# TYPE deberta_embed_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE deberta_embed_requests_total counter"));
    assert!(text.contains("model=\"served \\\"name\\\"\",dim=\"32\""));
    // every sample line is `name{labels} value` with a numeric value
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = l.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "bad sample line {l:?}");
    }
    // the scrape itself is counted afterwards
    let again = http::get(srv.addr, "/metrics").text();
    assert_eq!(
        metric(
            &again,
            "deberta_embed_requests_total{route=\"/metrics\",status=\"200\"}"
        ),
        1.0
    );
}

#[test]
fn shutdown_finishes_the_request_in_flight() {
    let name = "st2_v3like";
    let mut srv = start_model(name);
    let addr = srv.addr;
    let text = "finished after the shutdown began";
    let body = json!({"input": [text]}).to_string();
    let (head, tail) = body.as_bytes().split_at(body.len() / 2);
    let mut conn = http::Conn::connect(addr).unwrap();
    let start = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_raw(start.as_bytes()).unwrap();
    conn.write_raw(head).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    srv.begin_shutdown();
    std::thread::sleep(Duration::from_millis(300));
    conn.write_raw(tail).unwrap();
    let resp = conn
        .read_response()
        .expect("the request in flight is answered");
    let want = load(name, None).encode(&[text]).unwrap();
    assert_close(
        &openai_rows(&resp, 1, name)[0],
        want.row(0),
        VS_ENCODE,
        "in flight",
    );
    srv.shutdown().expect("clean shutdown");
    assert!(
        http::request(addr, "GET", "/health", b"").is_err(),
        "nothing listens after shutdown"
    );
}

#[test]
fn server_options_must_be_positive() {
    for opts in [
        ServerOptions {
            max_batch_tokens: 0,
            ..Default::default()
        },
        ServerOptions {
            max_queued_requests: 0,
            ..Default::default()
        },
    ] {
        let err = Server::new(load("st2_v3like", None), opts)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}

/// The real binary: `serve --port 0` prints its address, serves, and exits 0 on SIGTERM.
#[cfg(unix)]
#[test]
fn binary_serves_and_exits_cleanly_on_sigterm() {
    let name = "st6_proj_cls_norm";
    let (mut child, mut stderr, addr) = spawn_binary(name);
    assert!(addr.ip().is_loopback(), "binds loopback by default: {addr}");
    assert_eq!(http::get(addr, "/health").status, 200);
    let want = load(name, None).encode(&["hello there"]).unwrap();
    let resp = http::post_json(addr, "/v1/embeddings", &json!({"input": "hello there"}));
    assert_close(
        &openai_rows(&resp, 1, name)[0],
        want.row(0),
        VS_ENCODE,
        "binary",
    );

    signal(&child, "-TERM");
    let exit = wait_exit(&mut child, 30).expect("serve exits after SIGTERM");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(exit.success(), "exit {exit:?}; stderr: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
    assert!(
        !rest.contains("panicked") && !rest.contains("error"),
        "{rest}"
    );
}

/// A child process that is killed if a test fails before it exits.
#[cfg(unix)]
struct Running(std::process::Child);

#[cfg(unix)]
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start `serve --port 0` on a fixture model; return the child, its stderr and its address.
#[cfg(unix)]
fn spawn_binary(name: &str) -> (Running, BufReader<std::process::ChildStderr>, SocketAddr) {
    spawn_binary_env(name, &[])
}

/// [`spawn_binary`] with extra environment variables.
fn spawn_binary_env(
    name: &str,
    env: &[(&str, &str)],
) -> (Running, BufReader<std::process::ChildStderr>, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deberta-embed"))
        .envs(env.iter().copied())
        .args(["serve", "--model"])
        .arg(model_dir(name))
        .args(["--port", "0", "--threads", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn deberta-embed serve");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let child = Running(child);
    let mut line = String::new();
    let addr: SocketAddr = loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("serve exited before listening");
        }
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.trim().parse().expect("address");
        }
    };
    (child, stderr, addr)
}

#[cfg(unix)]
fn signal(child: &Running, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Wait up to `secs` for the child to exit.
#[cfg(unix)]
fn wait_exit(child: &mut Running, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client that never finishes its request holds the graceful shutdown up; a second signal
/// ends the process at once, with exit code 1 and one error line.
#[cfg(unix)]
#[test]
fn binary_second_signal_stops_at_once() {
    let (mut child, mut stderr, addr) = spawn_binary("st2_v3like");
    let mut conn = http::Conn::connect(addr).unwrap();
    conn.write_raw(
        b"POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"inputs\": ",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-INT");
    assert!(
        wait_exit(&mut child, 1).is_none(),
        "the unfinished request holds the shutdown up"
    );
    signal(&child, "-INT");
    let exit = wait_exit(&mut child, 30).expect("exits after the second signal");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(exit.code(), Some(1), "{rest}");
    assert!(rest.contains("error: stopped before"), "{rest}");
    assert!(!rest.contains("panicked"), "{rest}");
}

#[test]
fn binary_refuses_bad_serve_flags_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_deberta-embed"))
        .args(["serve", "--model"])
        .arg(model_dir("st2_v3like"))
        .args(["--max-batch-tokens", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("at least 1"),
        "{err}"
    );
}

/// Every `serve` flag can come from a `DEBERTA_EMBED_*` variable: here the API key, a limit and
/// the served model name.
#[cfg(unix)]
#[test]
fn binary_takes_serve_settings_from_the_environment() {
    let (child, _stderr, addr) = spawn_binary_env(
        "st2_v3like",
        &[
            ("DEBERTA_EMBED_API_KEY", "k-123"),
            ("DEBERTA_EMBED_MAX_INPUTS", "2"),
            ("DEBERTA_EMBED_SERVED_MODEL_NAME", "from-env"),
        ],
    );
    assert_eq!(http::get(addr, "/info").status, 401);
    let mut c = http::Conn::connect(addr).unwrap();
    c.send("GET", "/info", b"", &[("Authorization", "Bearer k-123")])
        .unwrap();
    let info = c.read_response().unwrap().json();
    assert_eq!(info["model_id"], "from-env");
    assert_eq!(info["max_client_batch_size"], 2);
    drop(child);
}

/// `--log-format json`: one line per request with route, status, inputs, tokens and timings,
/// and never the request's text.
#[cfg(unix)]
#[test]
fn binary_logs_one_json_line_per_request_without_the_text() {
    let (child, mut stderr, addr) =
        spawn_binary_env("st2_v3like", &[("DEBERTA_EMBED_LOG_FORMAT", "json")]);
    let secret = "confidential sentence about zebras";
    let resp = http::post_json(addr, "/embed", &json!({"inputs": [secret, "two"]}));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(http::get(addr, "/nope").status, 404);
    let mut lines: Vec<Value> = Vec::new();
    let mut line = String::new();
    while lines.len() < 2 {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve closed stderr"
        );
        assert!(!line.contains("zebras"), "request text logged: {line}");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["message"] == "request" {
                lines.push(v);
            }
        }
    }
    let e = &lines[0];
    assert_eq!(e["route"], "/embed", "{e}");
    assert_eq!(e["status"], 200, "{e}");
    assert_eq!(e["inputs"], 2, "{e}");
    let want_tokens: usize = load("st2_v3like", None)
        .token_ids(&[secret, "two"])
        .unwrap()
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(e["tokens"], want_tokens, "{e}");
    for k in ["queue_ms", "compute_ms", "total_ms"] {
        assert!(e[k].as_f64().is_some_and(|x| x >= 0.0), "{k} in {e}");
    }
    assert_eq!(lines[1]["route"], "other");
    assert_eq!(lines[1]["status"], 404);
    drop(child);
}
