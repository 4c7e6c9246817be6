//! The command-line contract: embed / similarity / info / bench outputs, and every bad-input
//! case ending in a non-zero exit with one clear line on stderr (no panic, no backtrace).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{cosine, fixtures, max_abs_diff, Reference};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_deberta-embed"));
    c.env("RUST_BACKTRACE", "1"); // must still print no backtrace
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run deberta-embed")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Non-zero exit, exactly one line on stderr, starting with "error:", containing `needle`.
fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert_eq!(
        err.lines().count(),
        1,
        "expected one stderr line, got: {err:?}"
    );
    assert!(err.starts_with("error: "), "{err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err:?}"
    );
    assert!(
        err.contains(needle),
        "stderr {err:?} should mention {needle:?}"
    );
}

fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

fn parse_jsonl(stdout: &[u8]) -> Vec<Vec<f32>> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Vec<f32>>(l).unwrap())
        .collect()
}

#[test]
fn embed_jsonl_reproduces_the_reference() {
    for name in [
        "st2_v3like",
        "st6_proj_cls_norm",
        "hf_seqcls_prefix",
        "st3_conv_multipool",
    ] {
        let r = Reference::load(name);
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        let mut f = std::fs::File::create(&input).unwrap();
        for (i, s) in r.sentences.iter().enumerate() {
            // alternate the two accepted line forms
            let line = if i % 2 == 0 {
                serde_json::to_string(s).unwrap()
            } else {
                serde_json::json!({ "text": s, "id": i }).to_string()
            };
            writeln!(f, "{line}").unwrap();
        }
        drop(f);
        let o = run(&[
            "embed",
            "--model",
            model(name).to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--batch-size",
            "5",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let rows = parse_jsonl(&o.stdout);
        let want = r.embeddings();
        assert_eq!(rows.len(), r.sentences.len());
        for (i, row) in rows.iter().enumerate() {
            let w = &want[i * r.dim..(i + 1) * r.dim];
            assert!(max_abs_diff(row, w) <= 1e-4, "{name} sentence {i}");
            assert!(cosine(row, w) >= 0.99999, "{name} sentence {i}");
        }
    }
}

/// `--dtype bf16` and `--dtype int8` on the CPU through the CLI: within the low-precision
/// contract (cosine >= 0.999) of the fp32 references; `bench` names the int8 kernel; on a GPU
/// device int8 is refused in one line (without the cuda feature the device is refused first).
#[test]
fn embed_low_precision_dtypes_keep_their_contract() {
    let r = Reference::load("st6_proj_cls_norm");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: String = r
        .sentences
        .iter()
        .map(|s| serde_json::to_string(s).unwrap() + "\n")
        .collect();
    std::fs::write(&input, lines).unwrap();
    let m = model("st6_proj_cls_norm");
    let want = r.embeddings();
    for dtype in ["bf16", "int8", "INT8"] {
        let o = run(&[
            "embed",
            "--model",
            m.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--dtype",
            dtype,
        ]);
        assert!(o.status.success(), "{dtype}: {}", stderr(&o));
        let rows = parse_jsonl(&o.stdout);
        assert_eq!(rows.len(), r.sentences.len());
        for (i, row) in rows.iter().enumerate() {
            let c = cosine(row, &want[i * r.dim..(i + 1) * r.dim]);
            assert!(c >= 0.999, "{dtype} sentence {i}: cosine {c}");
        }
    }
    let o = run(&[
        "bench",
        "--model",
        m.to_str().unwrap(),
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--iters",
        "1",
        "--dtype",
        "int8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("cpu kernels:") && l.contains("int8")),
        "{out}"
    );
    let o = run(&[
        "embed",
        "--model",
        m.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--device",
        "cuda",
        "--dtype",
        "int8",
    ]);
    assert_clean_failure(
        &o,
        if cfg!(feature = "cuda") {
            "int8"
        } else {
            "CUDA"
        },
    );
    let o = run(&[
        "embed",
        "--model",
        m.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--dtype",
        "int4",
    ]);
    assert_clean_failure(&o, "int8");
}

#[test]
fn embed_txt_stdin_and_npy_agree() {
    let r = Reference::load("st2_v3like");
    // sentences without line breaks can go through a .txt file
    let lines: Vec<(usize, &String)> = r
        .sentences
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.contains(['\n', '\r']))
        .collect();
    let text: String = lines.iter().map(|(_, s)| format!("{s}\n")).collect();
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("in.txt");
    std::fs::write(&txt, &text).unwrap();
    let m = model("st2_v3like");
    let m = m.to_str().unwrap();

    let o = run(&["embed", "--model", m, "--input", txt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let from_txt = parse_jsonl(&o.stdout);
    assert_eq!(from_txt.len(), lines.len());
    let want = r.embeddings();
    for (row, (i, _)) in from_txt.iter().zip(&lines) {
        assert!(max_abs_diff(row, &want[i * r.dim..(i + 1) * r.dim]) <= 1e-4);
    }

    let mut child = bin()
        .args(["embed", "--model", m, "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(parse_jsonl(&o.stdout), from_txt);

    let txt_s = txt.to_str().unwrap();
    // a token budget smaller than any sentence: one sentence per forward, the same rows
    let budget = |b: &str| {
        run(&[
            "embed",
            "--model",
            m,
            "--input",
            txt_s,
            "--max-batch-tokens",
            b,
        ])
    };
    let o = budget("1");
    assert!(o.status.success(), "{}", stderr(&o));
    let tight = parse_jsonl(&o.stdout);
    assert_eq!(tight.len(), from_txt.len());
    for (a, b) in tight.iter().zip(&from_txt) {
        assert!(max_abs_diff(a, b) <= 1e-5, "batch invariance");
    }
    assert_clean_failure(&budget("0"), "max_batch_tokens must be at least 1");

    let npy = dir.path().join("out.npy");
    let o = run(&[
        "embed",
        "--model",
        m,
        "--input",
        txt.to_str().unwrap(),
        "--format",
        "npy",
        "--output",
        npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(
        header.contains(&format!("'shape': ({}, {})", lines.len(), r.dim)),
        "{header}"
    );
    assert_eq!((10 + hlen) % 64, 0, "npy header must be 64-byte aligned");
    let vals: Vec<f32> = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(vals, from_txt.concat());
}

#[test]
fn empty_input_gives_empty_output() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let m = model("st2_v3like");
    let o = run(&[
        "embed",
        "--model",
        m.to_str().unwrap(),
        "--input",
        empty.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let npy = dir.path().join("e.npy");
    let o = run(&[
        "embed",
        "--model",
        m.to_str().unwrap(),
        "--input",
        empty.to_str().unwrap(),
        "--format",
        "npy",
        "--output",
        npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&npy).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(std::str::from_utf8(&bytes[10..10 + hlen])
        .unwrap()
        .contains("'shape': (0, 32)"));
    assert_eq!(bytes.len(), 10 + hlen);
}

#[test]
fn similarity_info_and_bench() {
    let m = model("st6_proj_cls_norm");
    let m = m.to_str().unwrap();
    let o = run(&["similarity", "--model", m, "a dog", "a cat"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 2);
    assert!(
        out.lines()
            .next()
            .unwrap()
            .trim_start()
            .starts_with("1.0000"),
        "{out}"
    );
    for f in ["dot", "euclidean", "manhattan"] {
        let o = run(&["similarity", "--model", m, "--fn", f, "x", "y"]);
        assert!(o.status.success(), "{f}: {}", stderr(&o));
    }

    let o = run(&["info", "--model", m, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["dim"], 32);
    assert_eq!(v["pooling"], serde_json::json!(["cls"]));
    assert_eq!(v["normalize"], true);
    assert_eq!(v["config"]["embedding_size"], 24);
    assert!(v["parameters"].as_u64().unwrap() > 10_000);

    let o = run(&[
        "bench",
        "--model",
        m,
        "--batch-size",
        "3",
        "--seq-len",
        "9",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    for k in [
        "batch_size",
        "seq_len",
        "device",
        "median_ms",
        "tokens_per_s",
    ] {
        assert!(!last[k].is_null(), "missing {k} in {last}");
    }
    assert_eq!(last["batch_size"], 3);
    assert_eq!(last["seq_len"], 9);
    assert_eq!(last["device"], "cpu");
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let good_in = dir.path().join("in.txt");
    std::fs::write(&good_in, "hello\n").unwrap();
    let good_in = good_in.to_str().unwrap().to_string();
    let embed = |model_dir: &Path| {
        run(&[
            "embed",
            "--model",
            model_dir.to_str().unwrap(),
            "--input",
            &good_in,
        ])
    };

    // missing model dir
    assert_clean_failure(&embed(&dir.path().join("nope")), "does not exist");

    // a broken copy of a fixture model, one defect at a time
    let fresh = |tag: &str, base: &str| -> PathBuf {
        let d = dir.path().join(tag);
        copy_dir(&model(base), &d);
        d
    };

    let d = fresh("no_tok", "st6_proj_cls_norm");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    assert_clean_failure(&embed(&d), "tokenizer.json");

    let d = fresh("bad_tok", "st6_proj_cls_norm");
    std::fs::write(d.join("tokenizer.json"), "{ not json").unwrap();
    assert_clean_failure(&embed(&d), "tokenizer");

    let d = fresh("trunc_st", "st6_proj_cls_norm");
    let w = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    assert_clean_failure(&embed(&d), "model.safetensors");

    let d = fresh("garbage_st", "st6_proj_cls_norm");
    std::fs::write(
        d.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!garbage!",
    )
    .unwrap();
    assert_clean_failure(&embed(&d), "model.safetensors");

    let d = fresh("trunc_bin", "st2_v3like");
    let w = std::fs::read(d.join("pytorch_model.bin")).unwrap();
    std::fs::write(d.join("pytorch_model.bin"), &w[..w.len() / 3]).unwrap();
    assert_clean_failure(&embed(&d), "pytorch_model.bin");

    let d = fresh("no_weights", "st2_v3like");
    std::fs::remove_file(d.join("pytorch_model.bin")).unwrap();
    assert_clean_failure(&embed(&d), "no model.safetensors or pytorch_model.bin");

    // a missing tensor: claim one more layer than the file holds
    let d = fresh("missing_tensor", "st6_proj_cls_norm");
    edit_config(&d, |c| c["num_hidden_layers"] = 3.into());
    assert_clean_failure(
        &embed(&d),
        "encoder.layer.2.attention.self.query_proj.weight` is missing",
    );

    // a mis-shaped tensor: both shapes named
    let d = fresh("bad_shape", "st6_proj_cls_norm");
    edit_config(&d, |c| c["intermediate_size"] = 65.into());
    assert_clean_failure(&embed(&d), "has shape [64, 32], expected [65, 32]");

    let d = fresh("garbage_cfg", "st6_proj_cls_norm");
    std::fs::write(d.join("config.json"), "garbage").unwrap();
    assert_clean_failure(&embed(&d), "config.json: not valid JSON");

    let d = fresh("heads_cfg", "st6_proj_cls_norm");
    edit_config(&d, |c| c["num_attention_heads"] = 5.into());
    assert_clean_failure(&embed(&d), "num_attention_heads");

    let d = fresh("pos_att_cfg", "st6_proj_cls_norm");
    edit_config(&d, |c| {
        c["pos_att_type"] = serde_json::json!(["c2p", "p2p"])
    });
    assert_clean_failure(&embed(&d), "pos_att_type");

    let d = fresh("type_cfg", "st6_proj_cls_norm");
    edit_config(&d, |c| c["hidden_size"] = "big".into());
    assert_clean_failure(&embed(&d), "hidden_size");

    let d = fresh("model_type", "st6_proj_cls_norm");
    edit_config(&d, |c| c["model_type"] = "bert".into());
    assert_clean_failure(&embed(&d), "model_type");

    let d = fresh("bad_pool", "st6_proj_cls_norm");
    std::fs::write(
        d.join("1_Pooling/config.json"),
        r#"{"pooling_mode": "median"}"#,
    )
    .unwrap();
    assert_clean_failure(&embed(&d), "median");

    // input problems
    let m = model("st2_v3like");
    let m = m.to_str().unwrap();
    assert_clean_failure(
        &run(&["embed", "--model", m, "--input", "/no/such/file.txt"]),
        "/no/such/file.txt",
    );
    let bad_utf8 = dir.path().join("bad.txt");
    std::fs::write(&bad_utf8, b"fine\nbad \xff\xfe byte\n").unwrap();
    assert_clean_failure(
        &run(&["embed", "--model", m, "--input", bad_utf8.to_str().unwrap()]),
        "line 2 is not valid UTF-8",
    );
    let bad_jsonl = dir.path().join("bad.jsonl");
    std::fs::write(&bad_jsonl, "\"ok\"\n{\"txt\": 1}\n").unwrap();
    assert_clean_failure(
        &run(&[
            "embed",
            "--model",
            m,
            "--input",
            bad_jsonl.to_str().unwrap(),
        ]),
        "line 2",
    );
    assert_clean_failure(
        &run(&[
            "embed", "--model", m, "--input", &good_in, "--device", "tpu",
        ]),
        "unknown device",
    );
    assert_clean_failure(
        &run(&[
            "bench",
            "--model",
            m,
            "--seq-len",
            "1000",
            "--batch-size",
            "1",
        ]),
        "max_seq_length",
    );
    assert_clean_failure(
        &run(&[
            "embed",
            "--model",
            m,
            "--input",
            &good_in,
            "--output",
            "/no/such/dir/out.jsonl",
        ]),
        "/no/such/dir/out.jsonl",
    );
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

/// Model directories built to hurt: sizes far beyond what the weights hold, paths out of the
/// directory, tensors named twice, nonsense limits. Each must end in one line, never an abort
/// (a config-sized allocation once did: `num_hidden_layers = 1e8` asked for 48 GB).
#[test]
fn hostile_model_dirs_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "hello\n").unwrap();
    let input = input.to_str().unwrap().to_string();
    let embed = |d: &Path| run(&["embed", "--model", d.to_str().unwrap(), "--input", &input]);
    let fresh = |tag: &str| -> PathBuf {
        let d = dir.path().join(tag);
        copy_dir(&model("st6_proj_cls_norm"), &d);
        d
    };

    for (i, layers) in [100_000_000u64, 2_147_483_647].into_iter().enumerate() {
        let d = fresh(&format!("layers{i}"));
        edit_config(&d, |c| c["num_hidden_layers"] = layers.into());
        assert_clean_failure(
            &embed(&d),
            &format!("num_hidden_layers = {layers}, but tensor `encoder.layer."),
        );
    }

    for (i, path) in ["../x", "/etc", "1_Pooling/../../x"]
        .into_iter()
        .enumerate()
    {
        let d = fresh(&format!("modpath{i}"));
        let p = d.join("modules.json");
        let mut m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        m[1]["path"] = path.into();
        std::fs::write(&p, m.to_string()).unwrap();
        assert_clean_failure(&embed(&d), "must lie inside the model directory");
    }

    for (i, v) in [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!("abc"),
    ]
    .into_iter()
    .enumerate()
    {
        let d = fresh(&format!("maxlen{i}"));
        let p = d.join("tokenizer_config.json");
        let mut t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        t["model_max_length"] = v;
        std::fs::write(&p, t.to_string()).unwrap();
        assert_clean_failure(&embed(&d), "`model_max_length` must be a number >= 2");
    }

    // a safetensors header naming one tensor twice (the second entry would silently win)
    let d = fresh("dup_tensor");
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let name = "embeddings.word_embeddings.weight";
    let dup = format!(
        "{{\"{name}\":{},{}",
        header[name],
        std::str::from_utf8(&bytes[9..8 + n]).unwrap()
    );
    let mut out = (dup.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(dup.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
    assert_clean_failure(&embed(&d), &format!("names tensor `{name}` twice"));

    // tokenizer.json contents the tokenizers crate panics on instead of returning an error
    let real = fixtures().join("realtok").join("model");
    let tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(real.join("tokenizer.json")).unwrap())
            .unwrap();
    let cases = [
        (
            "normalizer",
            serde_json::json!({"type": "Precompiled", "precompiled_charsmap": "AAAA"}),
        ),
        (
            "post_processor",
            serde_json::json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[NOPE]", "type_id": 0}}],
                "pair": [], "special_tokens": {}}),
        ),
    ];
    for (i, (field, value)) in cases.into_iter().enumerate() {
        let d = dir.path().join(format!("tok{i}"));
        copy_dir(&real, &d);
        let mut t = tj.clone();
        t[field] = value;
        std::fs::write(d.join("tokenizer.json"), t.to_string()).unwrap();
        assert_clean_failure(&embed(&d), "unusable tokenizer");
        let o = run(&[
            "tokenize",
            "--model",
            d.to_str().unwrap(),
            "--input",
            &input,
        ]);
        assert_clean_failure(&o, "unusable tokenizer");
    }
}

/// `--threads` far above the cores is lowered to 4 per core with a one-line notice (10,000
/// threads once aborted the process, and 100,000 swamped the machine); 0 is refused.
#[test]
fn threads_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "hello\nworld\n").unwrap();
    let m = model("st2_v3like");
    let base = [
        "embed",
        "--model",
        m.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ];
    let plain = run(&base);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let o = run(&[&base[..], &["--threads", "100000"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains("--threads 100000 lowered to"), "{err:?}");
    assert_eq!(o.stdout, plain.stdout, "same rows with the capped pool");
    assert!(!run(&[&base[..], &["--threads", "0"]].concat())
        .status
        .success());
}
