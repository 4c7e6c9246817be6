//! `GET /openapi.json` against the live server: every route the server answers is in the
//! document with its methods, and every answer — successes and each kind of error, on every
//! route — has a status the document lists for that operation and a body that validates
//! against the schema it gives (JSON Schema 2020-12, as OpenAPI 3.1 uses). Request bodies the
//! schemas accept are served; bodies they refuse are refused.

#[path = "common/http.rs"]
mod http;
#[path = "common/test_server.rs"]
mod test_server;

use std::path::PathBuf;

use deberta_embed::server::ServerOptions;
use deberta_embed::{CrossEncoder, Device, Embedder, EmbedderOptions};
use serde_json::{json, Value};
use test_server::TestServer;

const KEY: &str = "openapi-test-key";

/// Every route the router serves, with its method.
const ROUTES: [(&str, &str); 11] = [
    ("post", "/v1/embeddings"),
    ("post", "/embed"),
    ("post", "/"),
    ("post", "/tokenize"),
    ("post", "/rerank"),
    ("post", "/predict"),
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/info"),
    ("get", "/v1/models"),
    ("get", "/openapi.json"),
];

fn start() -> TestServer {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompts/prompts_exclude");
    let e = Embedder::load_with(
        dir,
        Device::Cpu,
        EmbedderOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    TestServer::start(
        e,
        ServerOptions {
            model_name: "doc-test".into(),
            api_key: Some(KEY.into()),
            max_inputs: 4,
            ..Default::default()
        },
    )
}

/// A cross-encoder fixture served with the same key (`/rerank`, `/predict`).
fn start_cross(name: &str) -> TestServer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name);
    let ce = CrossEncoder::load_with(
        dir,
        Device::Cpu,
        EmbedderOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    TestServer::start(
        ce.into_embedder(),
        ServerOptions {
            model_name: name.into(),
            api_key: Some(KEY.into()),
            max_inputs: 4,
            ..Default::default()
        },
    )
}

fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    auth: bool,
) -> http::Response {
    let mut c = http::Conn::connect(addr).unwrap();
    let bearer = format!("Bearer {KEY}");
    let mut headers = vec![("Content-Type", "application/json")];
    if auth {
        headers.push(("Authorization", bearer.as_str()));
    }
    c.send(&method.to_uppercase(), path, body.unwrap_or(b""), &headers)
        .unwrap();
    c.read_response().unwrap()
}

/// Every object schema with `properties` closed (`additionalProperties: false`), so that an
/// answer with a field the document does not name fails.
fn closed(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            m.values_mut().for_each(closed);
        }
        Value::Array(a) => a.iter_mut().for_each(closed),
        _ => {}
    }
}

/// A validator for `schema`, with the document's components in reach of its `$ref`s.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    build(doc, schema, false)
}

/// [`validator`] for answers: no undocumented fields either.
fn answer_validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    build(doc, schema, true)
}

fn build(doc: &Value, schema: &Value, strict: bool) -> jsonschema::Validator {
    let mut s = schema.clone();
    if let Value::Object(m) = &mut s {
        m.insert("components".into(), doc["components"].clone());
    }
    if strict {
        closed(&mut s);
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&s)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}: {schema}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Check `resp` against the document's operation `method path`.
fn check_answer(doc: &Value, method: &str, path: &str, resp: &http::Response, what: &str) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in the document");
    let status = resp.status.to_string();
    let documented = &op["responses"][&status];
    assert!(
        documented.is_object(),
        "{what}: {method} {path} answered {status}, which the document does not list ({}): {}",
        op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        resp.text()
    );
    let content = documented["content"].as_object().expect("content");
    let ctype = resp.header("content-type").unwrap_or("");
    let (media, spec) = content
        .iter()
        .find(|(m, _)| ctype.starts_with(m.as_str()))
        .unwrap_or_else(|| {
            panic!("{what}: content-type {ctype:?} is not documented ({content:?})")
        });
    if media == "application/json" {
        let v = answer_validator(doc, &spec["schema"]);
        let body = resp.json();
        let errs = errors(&v, &body);
        assert!(
            errs.is_empty(),
            "{what}: {method} {path} {status}: {errs:?}\nbody: {body}"
        );
    } else {
        assert_eq!(spec["schema"]["type"], "string", "{what}");
    }
}

#[test]
fn the_document_lists_every_route_and_only_those() {
    let srv = start();
    let resp = call(srv.addr, "get", "/openapi.json", None, true);
    assert_eq!(resp.status, 200);
    let doc = resp.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    // the library's copy is the one served
    assert_eq!(doc, deberta_embed::server::openapi_json());
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
    // each documented operation is really there (no 404 / 405), and the API key scheme is bearer
    for (m, p) in &served {
        let r = call(srv.addr, m, p, Some(b"{}"), true);
        assert!(![404, 405].contains(&r.status), "{m} {p}: {}", r.status);
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    // a served path not in the document is 404 (and that answer is JSON too)
    assert_eq!(call(srv.addr, "get", "/docs", None, true).status, 404);
}

#[test]
fn every_answer_matches_its_schema() {
    let srv = start();
    let doc = call(srv.addr, "get", "/openapi.json", None, true).json();
    let long = "word ".repeat(200);
    // (method, path, body, authorized, expected status)
    let cases: Vec<(&str, &str, Value, bool, u16)> = vec![
        (
            "post",
            "/v1/embeddings",
            json!({"input": ["a b", "c"]}),
            true,
            200,
        ),
        (
            "post",
            "/v1/embeddings",
            json!({"input": "a", "encoding_format": "base64"}),
            true,
            200,
        ),
        (
            "post",
            "/v1/embeddings",
            json!({"input": "a", "prompt_name": "q", "model": "m", "user": "u", "dimensions": 192}),
            true,
            200,
        ),
        ("post", "/v1/embeddings", json!({"input": "a"}), false, 401),
        ("post", "/v1/embeddings", json!({"input": []}), true, 400),
        (
            "post",
            "/v1/embeddings",
            json!({"input": "a", "prompt_name": "nope"}),
            true,
            400,
        ),
        (
            "post",
            "/v1/embeddings",
            json!({"input": "a", "dimensions": 3}),
            true,
            400,
        ),
        (
            "post",
            "/v1/embeddings",
            json!({"input": "a", "encoding_format": "hex"}),
            true,
            400,
        ),
        (
            "post",
            "/v1/embeddings",
            json!({"input": ["a", "b", "c", "d", "e"]}),
            true,
            413,
        ),
        ("post", "/v1/embeddings", json!({"input": 5}), true, 422),
        ("post", "/v1/embeddings", json!({}), true, 422),
        (
            "post",
            "/embed",
            json!({"inputs": ["a", "b"], "normalize": false}),
            true,
            200,
        ),
        (
            "post",
            "/embed",
            json!({"inputs": long, "truncate": true, "truncation_direction": "Right", "prompt": "q: "}),
            true,
            200,
        ),
        ("post", "/embed", json!({"inputs": "a"}), false, 401),
        ("post", "/embed", json!({"inputs": long}), true, 413),
        (
            "post",
            "/embed",
            json!({"inputs": "a", "truncation_direction": "Left"}),
            true,
            400,
        ),
        (
            "post",
            "/embed",
            json!({"inputs": "a", "prompt_name": "nope"}),
            true,
            400,
        ),
        (
            "post",
            "/embed",
            json!({"inputs": "a", "normalize": "yes"}),
            true,
            422,
        ),
        ("post", "/embed", json!({"inputs": [1, 2]}), true, 422),
        (
            "post",
            "/",
            json!({"inputs": "a", "truncation_direction": "Right"}),
            true,
            200,
        ),
        ("post", "/", json!({"inputs": "a"}), false, 401),
        ("post", "/", json!({"inputs": false}), true, 422),
        (
            "post",
            "/tokenize",
            json!({"inputs": ["I´m here", ""], "add_special_tokens": false}),
            true,
            200,
        ),
        (
            "post",
            "/tokenize",
            json!({"inputs": long, "truncate": false, "prompt_name": "query"}),
            true,
            200,
        ),
        ("post", "/tokenize", json!({"inputs": "a"}), false, 401),
        (
            "post",
            "/tokenize",
            json!({"inputs": "a", "truncate": 1}),
            true,
            422,
        ),
        ("post", "/tokenize", json!({"inputs": []}), true, 400),
        ("get", "/health", Value::Null, false, 200),
        ("get", "/metrics", Value::Null, false, 200),
        ("get", "/info", Value::Null, true, 200),
        ("get", "/info", Value::Null, false, 401),
        ("get", "/v1/models", Value::Null, true, 200),
        ("get", "/v1/models", Value::Null, false, 401),
        ("get", "/openapi.json", Value::Null, true, 200),
        ("get", "/openapi.json", Value::Null, false, 401),
    ];
    let mut statuses = std::collections::BTreeSet::new();
    for (i, (method, path, body, auth, want)) in cases.iter().enumerate() {
        let what = format!("case {i} ({method} {path} {body})");
        let bytes = (!body.is_null()).then(|| serde_json::to_vec(body).unwrap());
        let resp = call(srv.addr, method, path, bytes.as_deref(), *auth);
        assert_eq!(resp.status, *want, "{what}: {}", resp.text());
        check_answer(&doc, method, path, &resp, &what);
        statuses.insert(resp.status);
        // the request schema agrees: what it accepts is served, what it refuses is refused
        if let Some(schema) =
            doc["paths"][*path][*method]["requestBody"]["content"]["application/json"].get("schema")
        {
            if *auth {
                // (400 and 413 refuse values the schema cannot express: limits, the model's
                // own width, prompt names)
                let ok = errors(&validator(&doc, schema), body).is_empty();
                if *want == 422 {
                    assert!(
                        !ok,
                        "{what}: the request schema accepts a body the server refuses with 422"
                    );
                } else if *want == 200 {
                    assert!(
                        ok,
                        "{what}: the request schema refuses a body the server takes"
                    );
                }
            }
        }
    }
    // a body that is not JSON: 400 in the route's own error shape
    for path in ["/embed", "/v1/embeddings", "/tokenize"] {
        let resp = call(srv.addr, "post", path, Some(b"{not json"), true);
        assert_eq!(resp.status, 400);
        check_answer(&doc, "post", path, &resp, &format!("{path} not JSON"));
    }
    assert!(statuses.len() >= 5, "{statuses:?}");
}

/// The bearer scheme is matched in any case; other schemes and wrong keys are 401.
#[test]
fn the_api_key_is_a_bearer_token_in_any_case() {
    let srv = start();
    for (header, want) in [
        (format!("Bearer {KEY}"), 200),
        (format!("bearer {KEY}"), 200),
        (format!("BEARER {KEY}"), 200),
        (format!("Basic {KEY}"), 401),
        (format!("Bearer {KEY}x"), 401),
        (format!("Bearer{KEY}"), 401),
        (KEY.to_string(), 401),
    ] {
        let mut c = http::Conn::connect(srv.addr).unwrap();
        c.send("GET", "/info", b"", &[("Authorization", header.as_str())])
            .unwrap();
        assert_eq!(c.read_response().unwrap().status, want, "{header}");
    }
}

#[test]
fn request_examples_in_the_document_are_served() {
    let srv = start();
    let cross = start_cross("ce_hf_1label");
    let doc = call(srv.addr, "get", "/openapi.json", None, true).json();
    let mut n = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(content) = op["requestBody"]["content"]["application/json"].as_object() else {
                continue;
            };
            let schema = &content["schema"];
            // the example of the referenced component
            let name = schema["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
            let example = &doc["components"]["schemas"][name]["example"];
            assert!(example.is_object(), "{path}: no example");
            assert!(errors(&validator(&doc, schema), example).is_empty());
            // (the cross-encoder routes' examples on a cross-encoder)
            let addr = match path.as_str() {
                "/rerank" | "/predict" => cross.addr,
                _ => srv.addr,
            };
            let resp = call(
                addr,
                method,
                path,
                Some(&serde_json::to_vec(example).unwrap()),
                true,
            );
            assert_eq!(resp.status, 200, "{path}: {}", resp.text());
            check_answer(&doc, method, path, &resp, &format!("{path} example"));
            n += 1;
        }
    }
    assert_eq!(n, 6);
}

/// `/rerank` and `/predict` answer as the document says, on one- and three-label
/// cross-encoders and on an embedding model (400).
#[test]
fn cross_encoder_answers_match_their_schemas() {
    let embedding = start();
    let one = start_cross("ce_hf_1label");
    let three = start_cross("ce_st6_3label_types");
    let doc = call(one.addr, "get", "/openapi.json", None, true).json();
    assert_eq!(
        doc,
        call(embedding.addr, "get", "/openapi.json", None, true).json()
    );
    let long = "word ".repeat(200);
    let cases: Vec<(&TestServer, &str, Value, bool, u16)> = vec![
        (
            &one,
            "/rerank",
            json!({"query": "q", "texts": ["a", "b c"]}),
            true,
            200,
        ),
        (
            &one,
            "/rerank",
            json!({"query": "q", "texts": ["a"], "return_text": true, "raw_scores": true}),
            true,
            200,
        ),
        (
            &one,
            "/rerank",
            json!({"query": "q", "texts": [long.clone()]}),
            true,
            413,
        ),
        (
            &one,
            "/rerank",
            json!({"query": "q", "texts": [long.clone()], "truncate": true}),
            true,
            200,
        ),
        (
            &one,
            "/rerank",
            json!({"query": "q", "texts": []}),
            true,
            400,
        ),
        (&one, "/rerank", json!({"texts": ["a"]}), true, 422),
        (
            &one,
            "/rerank",
            json!({"query": "q", "texts": ["a"]}),
            false,
            401,
        ),
        (
            &three,
            "/rerank",
            json!({"query": "q", "texts": ["a"]}),
            true,
            400,
        ),
        (
            &embedding,
            "/rerank",
            json!({"query": "q", "texts": ["a"]}),
            true,
            400,
        ),
        (&one, "/predict", json!({"inputs": "a"}), true, 200),
        (&three, "/predict", json!({"inputs": ["a", "b"]}), true, 200),
        (
            &three,
            "/predict",
            json!({"inputs": [["a", "b"], ["c"]], "raw_scores": true}),
            true,
            200,
        ),
        (&three, "/predict", json!({"inputs": []}), true, 400),
        (&three, "/predict", json!({"inputs": 5}), true, 422),
        (
            &three,
            "/predict",
            json!({"inputs": ["a", "b", "c"]}),
            true,
            422,
        ),
        (&embedding, "/predict", json!({"inputs": "a"}), true, 400),
    ];
    let mut statuses = std::collections::BTreeSet::new();
    for (srv, path, body, auth, want) in &cases {
        let resp = call(
            srv.addr,
            "post",
            path,
            Some(&serde_json::to_vec(body).unwrap()),
            *auth,
        );
        let what = format!("{path} {body}");
        assert_eq!(resp.status, *want, "{what}: {}", resp.text());
        check_answer(&doc, "post", path, &resp, &what);
        statuses.insert(resp.status);
    }
    assert_eq!(statuses.len(), 5, "{statuses:?}");
}
