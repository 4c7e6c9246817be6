//! `deberta-embed eval sts|pairs` against sentence-transformers 6.2's own evaluators
//! (EmbeddingSimilarityEvaluator, BinaryClassificationEvaluator) run on the same files and
//! fixture models by scripts/make_eval_fixtures.py, and every degenerate input ending in one
//! clear `error:` line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Every key must agree within this (the engine agrees with sentence-transformers to ~1e-5 on
/// the embeddings; the metrics themselves are exact).
const TOL: f64 = 2e-3;

const MODELS: [&str; 2] = ["st6_proj_cls_norm", "st2_v3like"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model(name: &str) -> String {
    fixtures().join("models").join(name).display().to_string()
}

fn data(name: &str) -> String {
    fixtures().join("eval").join(name).display().to_string()
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("eval/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deberta-embed"))
        .env("RUST_BACKTRACE", "1") // must still print no backtrace
        .args(args)
        .output()
        .expect("run deberta-embed")
}

fn run_json(args: &[&str]) -> serde_json::Map<String, Value> {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{args:?} failed: {err}");
    // stderr is not a terminal here: no progress bar, nothing at all
    assert!(err.is_empty(), "unexpected stderr: {err:?}");
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 1, "one JSON line expected: {out:?}");
    match serde_json::from_str(&out).unwrap() {
        Value::Object(m) => m,
        v => panic!("not a JSON object: {v}"),
    }
}

/// Compare every expected key; return the largest |diff| per key.
fn compare(
    got: &serde_json::Map<String, Value>,
    want: &serde_json::Map<String, Value>,
    what: &str,
    worst: &mut std::collections::BTreeMap<String, f64>,
) {
    for (k, w) in want {
        let w = w.as_f64().unwrap();
        let g = got
            .get(k)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("{what}: key {k} missing from {got:?}"));
        let d = (g - w).abs();
        assert!(
            d <= TOL,
            "{what}: {k} = {g}, sentence-transformers {w} (diff {d:e})"
        );
        let e = worst.entry(k.clone()).or_insert(0.0);
        *e = e.max(d);
    }
}

fn report(worst: &std::collections::BTreeMap<String, f64>) {
    for (k, d) in worst {
        eprintln!("max |diff| {k:<28} {d:.2e}");
    }
}

#[test]
fn sts_matches_embedding_similarity_evaluator() {
    let exp = expected();
    let mut worst = Default::default();
    for m in MODELS {
        let want = exp["models"][m]["sts"].as_object().unwrap();
        assert_eq!(want.len(), 8);
        let mut outputs = Vec::new();
        for file in ["sts.tsv", "sts.csv", "sts.jsonl"] {
            let got = run_json(&[
                "eval",
                "sts",
                "--model",
                &model(m),
                "--data",
                &data(file),
                "--json",
                "--quiet",
            ]);
            let keys: Vec<&String> = got.keys().collect();
            assert_eq!(keys.len(), 8, "{keys:?}");
            compare(&got, want, &format!("{m} {file}"), &mut worst);
            outputs.push(got);
        }
        // the same pairs in three formats: the same numbers
        assert_eq!(outputs[0], outputs[1]);
        assert_eq!(outputs[0], outputs[2]);
    }
    report(&worst);
}

#[test]
fn pairs_match_binary_classification_evaluator() {
    let exp = expected();
    let mut worst = Default::default();
    for m in MODELS {
        let want = exp["models"][m]["pairs"].as_object().unwrap();
        assert_eq!(want.len(), 32);
        let a = run_json(&[
            "eval",
            "pairs",
            "--model",
            &model(m),
            "--data",
            &data("pairs.csv"),
            "--json",
        ]);
        let b = run_json(&[
            "eval",
            "pairs",
            "--model",
            &model(m),
            "--data",
            &data("pairs.jsonl"),
            "--json",
            "--batch-size",
            "3",
            "--threads",
            "1",
        ]);
        compare(&a, want, &format!("{m} pairs.csv"), &mut worst);
        compare(&b, want, &format!("{m} pairs.jsonl"), &mut worst);
        for fn_ in ["cosine", "dot", "manhattan", "euclidean"] {
            for metric in ["accuracy", "f1", "precision", "recall", "ap", "mcc"] {
                let k = format!("{fn_}_{metric}");
                // counts over 43 pairs: equal, not merely close
                assert_eq!(a[&k], want[&k], "{m} {k}");
                assert_eq!(a[&k], b[&k], "{m} {k}");
            }
        }
    }
    report(&worst);
}

#[test]
fn tables_without_json() {
    let o = run(&[
        "eval",
        "sts",
        "--model",
        &model("st2_v3like"),
        "--data",
        &data("sts.tsv"),
    ]);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("43 pairs, 29 distinct sentences"), "{out}");
    for f in ["cosine", "euclidean", "manhattan", "dot"] {
        assert!(out.lines().any(|l| l.starts_with(f)), "{out}");
    }
    let o = run(&[
        "eval",
        "pairs",
        "--model",
        &model("st2_v3like"),
        "--data",
        &data("pairs.csv"),
    ]);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("accuracy") && out.contains("MCC"), "{out}");
    assert_eq!(out.lines().count(), 6, "{out}");
}

/// Non-zero exit, exactly one line on stderr, starting with "error:", containing every needle.
fn assert_clean_failure(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one stderr line expected: {err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err:?}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr {err:?} should mention {n:?}");
    }
}

fn eval_file(dir: &Path, kind: &str, name: &str, content: &str) -> Output {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    run(&[
        "eval",
        kind,
        "--model",
        &model("st6_proj_cls_norm"),
        "--data",
        p.to_str().unwrap(),
        "--json",
    ])
}

#[test]
fn degenerate_inputs_are_clean_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cases: &[(&str, &str, &str, &[&str])] = &[
        // constant gold scores
        (
            "sts",
            "const.csv",
            "sentence1,sentence2,score\na b,c d,3\ne f,g h,3\ni j,k l,3\n",
            &["correlation is undefined", "every gold score is 3"],
        ),
        // constant similarities: the same pair every time
        (
            "sts",
            "samepair.tsv",
            "sentence1\tsentence2\tscore\nThe sun is warm.\tA dog runs.\t1\nThe sun is warm.\tA dog runs.\t4\n",
            &["correlation is undefined", "cosine similarity", "for every pair"],
        ),
        ("sts", "one.csv", "sentence1,sentence2,score\na,b,1\n", &["at least 2 pairs", "found 1"]),
        ("sts", "header_only.csv", "sentence1,sentence2,score\n", &["found 0"]),
        ("sts", "empty.csv", "", &["empty.csv", "empty"]),
        ("sts", "blank.jsonl", "\n  \n", &["blank.jsonl", "empty"]),
        (
            "sts",
            "missing.csv",
            "text1,sentence2,label\na,b,1\n",
            &["missing columns `sentence1`, `score`", "text1, sentence2, label"],
        ),
        (
            "sts",
            "badscore.tsv",
            "sentence1\tsentence2\tscore\na\tb\t1\nc\td\tfive\n",
            &["badscore.tsv", "line 3", "score `five`"],
        ),
        (
            "sts",
            "nanscore.csv",
            "sentence1,sentence2,score\na,b,1\nc,d,NaN\n",
            &["line 3", "not a finite number"],
        ),
        (
            "sts",
            "fields.tsv",
            "sentence1\tsentence2\tscore\na\tb\t1\nc d 2\n",
            &["line 3 has 1 field", "header has 3"],
        ),
        (
            "sts",
            "quote.csv",
            "sentence1,sentence2,score\na,b,1\n\"c,d,2\n",
            &["line 3", "never closed"],
        ),
        (
            "sts",
            "missing.jsonl",
            "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"score\": 1}\n{\"sentence1\": \"a\", \"score\": 2}\n",
            &["line 2", "missing field `sentence2`"],
        ),
        (
            "sts",
            "badjson.jsonl",
            "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"score\": 1}\n{oops\n",
            &["line 2", "not valid JSON"],
        ),
        (
            "sts",
            "strscore.jsonl",
            "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"score\": \"x\"}\n",
            &["line 1", "score `x`"],
        ),
        ("sts", "data.txt", "sentence1,sentence2,score\n", &["unknown data format", ".txt"]),
        // pairs
        (
            "pairs",
            "oneclass.csv",
            "sentence1,sentence2,label\na,b,1\nc,d,1\n",
            &["every label is 1", "both classes"],
        ),
        (
            "pairs",
            "badlabel.csv",
            "sentence1,sentence2,label\na,b,1\nc,d,2\n",
            &["line 3", "label `2` is not 0 or 1"],
        ),
        (
            "pairs",
            "nolabel.jsonl",
            "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"score\": 1}\n",
            &["line 1", "missing field `label`"],
        ),
        ("pairs", "pairs_empty.tsv", "sentence1\tsentence2\tlabel\n", &["no pairs"]),
    ];
    for (kind, name, content, needles) in cases {
        let o = eval_file(d, kind, name, content);
        assert_clean_failure(&o, needles);
    }
    // a file that does not exist
    let o = run(&[
        "eval",
        "sts",
        "--model",
        &model("st6_proj_cls_norm"),
        "--data",
        "/nonexistent/x.csv",
    ]);
    assert_clean_failure(&o, &["/nonexistent/x.csv"]);
}

#[test]
fn accepted_variants() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // BOM, CRLF, quoted header, extra columns, upper-case header, labels as 0.0/1.0 and JSON
    // booleans, blank lines
    let o = eval_file(
        d,
        "pairs",
        "variants.csv",
        "\u{feff}id,\"Sentence1\",SENTENCE2,label\r\n1,\"A man, a plan\",A dog runs.,1.0\r\n\r\n2,The sun is warm.,\"He said \"\"no\"\"\",0\r\n3,Boats return.,A dog runs.,0\r\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = eval_file(
        d,
        "pairs",
        "bools.jsonl",
        "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": true}\n\n{\"sentence1\": \"c\", \"sentence2\": \"b\", \"label\": false}\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // any score range (negative, large)
    let o = eval_file(
        d,
        "sts",
        "range.tsv",
        "sentence1\tsentence2\tscore\nThe sun is warm.\tA dog runs.\t-100\nA man, a plan\tA dog runs.\t250.5\nBoats return.\tThe sun is warm.\t7\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
