//! The real DeBERTa-v3 tokenizer (128,000-piece spm.model and the hub's tokenizer.json) against
//! sentence-transformers 6.3 / transformers 5.25 (tests/fixtures/realtok, written by
//! scripts/make_realtok_fixtures.py): token ids on ~4,450 sentences (every character class the
//! nmt_nfkc normalization changes, STS-B dev, random text across Unicode blocks, inputs cut at
//! max_seq_length) for each tokenizer-file layout, and embeddings through the library, the CLI
//! and the server.

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/test_server.rs"]
mod test_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, max_abs_diff};
use deberta_embed::server::ServerOptions;
use deberta_embed::tokenize::TextTokenizer;
use deberta_embed::{Device, Embedder, EmbedderOptions, Precision};
use safetensors::SafeTensors;
use serde_json::{json, Value};
use test_server::TestServer;

/// The numerics contract against sentence-transformers.
const VS_REFERENCE: f32 = 1e-4;

struct RealTok {
    meta: Value,
    sentences: Vec<String>,
    hub_ids: Vec<Vec<u32>>,
}

fn dir() -> PathBuf {
    fixtures().join("realtok")
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

impl RealTok {
    fn load() -> Self {
        let text = std::fs::read_to_string(dir().join("reference.json")).expect("reference.json");
        let meta: Value = serde_json::from_str(&text).expect("reference json");
        let sentences: Vec<String> = meta["sentences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        let hub_ids: Vec<Vec<u32>> = meta["ids_hub"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids_of)
            .collect();
        assert_eq!(sentences.len(), hub_ids.len());
        assert!(sentences.len() > 4000, "{}", sentences.len());
        RealTok {
            meta,
            sentences,
            hub_ids,
        }
    }

    fn texts(&self) -> Vec<&str> {
        self.sentences.iter().map(String::as_str).collect()
    }

    fn variants(&self) -> Vec<String> {
        self.meta["variants"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// The ids sentence-transformers produced with `variant`'s files.
    fn expected(&self, variant: &str) -> Vec<Vec<u32>> {
        let mut ids = self.hub_ids.clone();
        if variant != "hub" {
            let diff = self.meta[format!("ids_{variant}_where_not_hub")]
                .as_object()
                .unwrap_or_else(|| panic!("no ids for variant {variant}"));
            for (i, v) in diff {
                ids[i.parse::<usize>().unwrap()] = ids_of(v);
            }
        }
        ids
    }

    /// The model folder with `variant`'s files removed or rewritten, in a temporary dir.
    fn variant_dir(&self, variant: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(&dir().join("model"), tmp.path());
        let v = &self.meta["variants"][variant];
        for f in v["remove"].as_array().unwrap() {
            std::fs::remove_file(tmp.path().join(f.as_str().unwrap())).unwrap();
        }
        for (f, content) in v["write"].as_object().unwrap() {
            std::fs::write(tmp.path().join(f), format!("{content}\n")).unwrap();
        }
        tmp
    }

    fn embeddings(&self) -> (usize, usize, Vec<f32>) {
        let bytes = std::fs::read(dir().join("reference.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("embeddings").unwrap();
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (t.shape()[0], t.shape()[1], v)
    }
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

/// Every sentence's ids equal; on failure, the first few differences with their text.
fn assert_ids(what: &str, got: &[Vec<u32>], want: &[Vec<u32>], sentences: &[String]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if bad.is_empty() {
        return;
    }
    let shown: Vec<String> = bad
        .iter()
        .take(5)
        .map(|&i| {
            format!(
                "#{i} {:?}\n   got  {:?}\n   want {:?}",
                sentences[i], got[i], want[i]
            )
        })
        .collect();
    panic!(
        "{what}: {} of {} sentences differ, e.g.\n{}",
        bad.len(),
        got.len(),
        shown.join("\n")
    );
}

#[test]
fn token_ids_equal_sentence_transformers_for_every_file_layout() {
    let r = RealTok::load();
    let texts = r.texts();
    let variants = r.variants();
    assert!(variants.len() >= 5, "{variants:?}");
    for v in &variants {
        let d = r.variant_dir(v);
        let tok = TextTokenizer::load(d.path()).unwrap_or_else(|e| panic!("{v}: {e}"));
        let got = tok.encode_batch(&texts).unwrap();
        assert_ids(v, &got, &r.expected(v), &r.sentences);
    }
}

#[test]
fn the_references_cover_what_they_claim() {
    // a test that can only pass if the fixture exercises the cases it is there for
    let r = RealTok::load();
    let msl = r.meta["max_seq_length"].as_u64().unwrap() as usize;
    let cut = r.hub_ids.iter().filter(|ids| ids.len() == msl).count();
    assert!(cut >= 10, "only {cut} sentences reach max_seq_length");
    // the normalization table at work: full-width letters and ligatures become plain words
    let find = |needle: &str| r.sentences.iter().position(|s| s.contains(needle)).unwrap();
    let full_width = &r.hub_ids[find("\u{ff26}\u{ff55}\u{ff4c}\u{ff4c}")];
    assert!(
        !full_width.contains(&3),
        "full-width text tokenized to [UNK]: {full_width:?}"
    );
    let lig = &r.hub_ids[find("\u{fb01}ne")];
    assert!(!lig.contains(&3), "ligature tokenized to [UNK]: {lig:?}");
    // the layouts really differ somewhere (lower-casing on most sentences; the [UNK] flag)
    assert!(
        r.meta["ids_spm_lower_where_not_hub"]
            .as_object()
            .unwrap()
            .len()
            > 1000
    );
    assert!(!r.meta["ids_spm_minimal_where_not_hub"]
        .as_object()
        .unwrap()
        .is_empty());
}

#[test]
fn detailed_tokens_agree_with_the_ids_and_the_text() {
    let r = RealTok::load();
    let tok = TextTokenizer::load(&dir().join("model")).unwrap();
    let texts = r.texts();
    let all = tok.tokenize(&texts, true).unwrap();
    let msl = tok.max_seq_length();
    for (i, t) in all.iter().enumerate() {
        assert_eq!(t.ids, r.hub_ids[i], "#{i}");
        let n = t.ids.len();
        assert_eq!(
            (t.tokens.len(), t.special.len(), t.offsets.len()),
            (n, n, n)
        );
        assert_eq!(t.tokens[0], "[CLS]");
        assert_eq!(t.tokens[n - 1], "[SEP]");
        assert!(t.special[0] && t.special[n - 1], "#{i}");
        for (k, piece) in t.tokens.iter().enumerate() {
            // an unknown piece keeps its own text
            if t.ids[k] != 3 {
                assert_eq!(
                    tok.inner().token_to_id(piece),
                    Some(t.ids[k]),
                    "#{i} {piece}"
                );
            }
        }
        let chars = texts[i].chars().count();
        for &(a, b) in &t.offsets {
            assert!(
                a <= b && b <= chars,
                "#{i}: offsets {a}..{b} of {chars} chars"
            );
        }
        if t.truncated {
            assert_eq!(n, msl, "#{i}: cut, yet shorter than max_seq_length");
        }
    }
    // untruncated: a superset that starts with the same content tokens
    let long: Vec<usize> = (0..texts.len()).filter(|&i| all[i].truncated).collect();
    assert!(long.len() >= 10);
    let whole = tok
        .tokenize(&long.iter().map(|&i| texts[i]).collect::<Vec<_>>(), false)
        .unwrap();
    for (k, &i) in long.iter().enumerate() {
        let cut = &all[i].ids;
        let w = &whole[k].ids;
        assert!(w.len() > cut.len(), "#{i}");
        assert_eq!(&w[..cut.len() - 1], &cut[..cut.len() - 1], "#{i}");
        assert_eq!(w.last(), Some(&2));
    }
}

#[test]
fn embeddings_equal_sentence_transformers_through_the_library() {
    let r = RealTok::load();
    let (n, dim, want) = r.embeddings();
    let texts = &r.texts()[..n];
    for v in ["hub", "spm_full"] {
        let d = r.variant_dir(v);
        let opts = EmbedderOptions {
            threads: Some(2),
            ..Default::default()
        };
        let e = Embedder::load_with(d.path(), Device::Cpu, opts).unwrap();
        assert_eq!(e.dim(), dim);
        let got = e.encode(texts).unwrap();
        let diff = max_abs_diff(got.as_slice(), &want);
        eprintln!("{v}: {n} embeddings, max |diff| vs sentence-transformers {diff:.2e}");
        assert!(diff <= VS_REFERENCE, "{v}: max |diff| {diff:e}");
        let toks = e.tokenize(&texts[..50]).unwrap();
        for (i, t) in toks.iter().enumerate() {
            assert_eq!(t.ids, r.hub_ids[i], "{v} #{i}");
        }
    }
}

/// The opt-in low precisions on the real-tokenizer checkpoint (real text, STS-B sentences):
/// cosine >= 0.999 to the fp32 sentence-transformers embeddings, sentence by sentence.
#[test]
fn low_precision_embeddings_stay_within_cosine_0_999() {
    let r = RealTok::load();
    let (n, dim, want) = r.embeddings();
    let texts = &r.texts()[..n];
    let d = r.variant_dir("hub");
    for precision in [Precision::BF16, Precision::INT8] {
        let opts = EmbedderOptions {
            threads: Some(2),
            precision,
            ..Default::default()
        };
        let e = Embedder::load_with(d.path(), Device::Cpu, opts).unwrap();
        let got = e.encode(texts).unwrap();
        let mut worst = 1.0f64;
        for i in 0..n {
            let c = common::cosine(got.row(i), &want[i * dim..(i + 1) * dim]);
            assert!(c >= 0.999, "{precision}: sentence {i} cosine {c}");
            worst = worst.min(c);
        }
        eprintln!("{precision}: {n} sentences, min cosine vs sentence-transformers {worst:.6}");
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deberta-embed"))
}

/// `deberta-embed tokenize --model MODEL --input INPUT`: the ids of each output line (whose
/// `tokens` must match them in number).
fn cli_tokenize(model: &Path, input: &Path) -> Vec<Vec<u32>> {
    let out = bin()
        .args(["tokenize", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let ids = ids_of(&v["ids"]);
            assert_eq!(v["tokens"].as_array().unwrap().len(), ids.len());
            ids
        })
        .collect()
}

#[test]
fn cli_tokenize_and_embed_equal_the_references() {
    let r = RealTok::load();
    let (n, dim, want) = r.embeddings();
    let tmp = tempfile::tempdir().unwrap();
    // JSON lines keep newlines and carriage returns inside a sentence
    let input = tmp.path().join("in.jsonl");
    let lines: Vec<String> = r.sentences.iter().map(|s| json!(s).to_string()).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let model = dir().join("model");

    let got = cli_tokenize(&model, &input);
    assert_ids("cli tokenize", &got, &r.hub_ids, &r.sentences);

    let emb_in = tmp.path().join("emb.jsonl");
    std::fs::write(&emb_in, lines[..n].join("\n") + "\n").unwrap();
    let out = bin()
        .args(["embed", "--threads", "2", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&emb_in)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<f32> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: Vec<f32> = serde_json::from_str(l).unwrap();
            assert_eq!(v.len(), dim);
            v
        })
        .collect();
    let diff = max_abs_diff(&rows, &want);
    assert!(diff <= VS_REFERENCE, "cli embed: max |diff| {diff:e}");
}

#[test]
fn cli_tokenize_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    // neither tokenizer file
    let d = tmp.path().join("m");
    copy_dir(&dir().join("model"), &d);
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    std::fs::remove_file(d.join("spm.model")).unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "hello\n").unwrap();
    let out = bin()
        .args(["tokenize", "--model"])
        .arg(&d)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("tokenizer.json") && err.contains("spm.model"),
        "{err}"
    );
    // a corrupt spm.model
    std::fs::write(d.join("spm.model"), b"\x0a\xff\xff\xff\xff\x0f junk").unwrap();
    let out = bin()
        .args(["tokenize", "--model"])
        .arg(&d)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("spm.model"), "{err}");
}

#[test]
fn server_tokenize_and_embed_equal_the_references() {
    let r = RealTok::load();
    let (n, dim, want) = r.embeddings();
    let opts = EmbedderOptions {
        threads: Some(2),
        ..Default::default()
    };
    let e = Embedder::load_with(dir().join("model"), Device::Cpu, opts).unwrap();
    let msl = e.max_seq_length();
    let srv = TestServer::start(e, ServerOptions::default());

    let mut got_ids = Vec::new();
    for chunk in r.sentences.chunks(500) {
        let resp = http::post_json(srv.addr, "/tokenize", &json!({ "inputs": chunk }));
        assert_eq!(resp.status, 200, "{}", resp.text());
        let body = resp.json();
        let lists = body.as_array().unwrap();
        assert_eq!(lists.len(), chunk.len());
        for (list, text) in lists.iter().zip(chunk) {
            let toks = list.as_array().unwrap();
            let chars: Vec<char> = text.chars().collect();
            let mut ids = Vec::new();
            for t in toks {
                ids.push(t["id"].as_u64().unwrap() as u32);
                if t["special"].as_bool().unwrap() {
                    assert!(t["start"].is_null() && t["stop"].is_null(), "{t}");
                } else {
                    let (a, b) = (
                        t["start"].as_u64().unwrap() as usize,
                        t["stop"].as_u64().unwrap() as usize,
                    );
                    let piece: String = chars[a..b].iter().collect();
                    assert_eq!(t["text"].as_str().unwrap(), piece, "{text:?}");
                }
            }
            got_ids.push(ids);
        }
    }
    assert_ids("POST /tokenize", &got_ids, &r.hub_ids, &r.sentences);

    // a single string, without special tokens, and untruncated
    let long = r
        .hub_ids
        .iter()
        .position(|ids| ids.len() == msl)
        .expect("a truncated sentence");
    let resp = http::post_json(
        srv.addr,
        "/tokenize",
        &json!({"inputs": r.sentences[long], "add_special_tokens": false}),
    );
    let toks = resp.json();
    let toks = toks[0].as_array().unwrap();
    assert_eq!(toks.len(), msl - 2);
    assert!(toks.iter().all(|t| !t["special"].as_bool().unwrap()));
    let resp = http::post_json(
        srv.addr,
        "/tokenize",
        &json!({"inputs": [r.sentences[long]], "truncate": false}),
    );
    assert!(resp.json()[0].as_array().unwrap().len() > msl);
    let resp = http::post_json(srv.addr, "/tokenize", &json!({"inputs": 7}));
    assert_eq!(resp.status, 422, "{}", resp.text());
    assert!(resp.json()["error"].as_str().is_some());

    // embeddings through the OpenAI route
    let mut rows = Vec::new();
    for chunk in r.sentences[..n].chunks(400) {
        let resp = http::post_json(srv.addr, "/v1/embeddings", &json!({ "input": chunk }));
        assert_eq!(resp.status, 200, "{}", resp.text());
        for d in resp.json()["data"].as_array().unwrap() {
            let row: Vec<f32> = serde_json::from_value(d["embedding"].clone()).unwrap();
            assert_eq!(row.len(), dim);
            rows.extend(row);
        }
    }
    let diff = max_abs_diff(&rows, &want);
    assert!(diff <= VS_REFERENCE, "server: max |diff| {diff:e}");
    srv.shutdown().expect("clean shutdown");
}

#[test]
fn truncation_matches_the_reference_at_every_length() {
    // the same long sentence cut at each max_seq_length equals its reference prefix + [SEP]
    let r = RealTok::load();
    let long = r.hub_ids.iter().position(|ids| ids.len() == 128).unwrap();
    let tok = TextTokenizer::load(&dir().join("model")).unwrap();
    let whole = tok
        .tokenize(&[&r.sentences[long]], false)
        .unwrap()
        .remove(0)
        .ids;
    let mut by_len = BTreeMap::new();
    for msl in [2usize, 3, 17, 64, 127, 128] {
        let d = r.variant_dir("hub");
        let sb = d.path().join("sentence_bert_config.json");
        let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&sb).unwrap()).unwrap();
        cfg["max_seq_length"] = json!(msl);
        std::fs::write(&sb, cfg.to_string()).unwrap();
        let t = TextTokenizer::load(d.path()).unwrap();
        let ids = t.encode_batch(&[&r.sentences[long]]).unwrap().remove(0);
        let mut want: Vec<u32> = whole[..msl - 1].to_vec();
        want.push(2);
        assert_eq!(ids, want, "max_seq_length {msl}");
        by_len.insert(msl, ids.len());
    }
    assert_eq!(by_len[&128], r.hub_ids[long].len());
}

/// A tokenizer of the real vocabulary truncating at `msl`.
fn tokenizer_with_msl(r: &RealTok, msl: usize) -> (tempfile::TempDir, TextTokenizer) {
    let d = r.variant_dir("hub");
    let sb = d.path().join("sentence_bert_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&sb).unwrap()).unwrap();
    cfg["max_seq_length"] = json!(msl);
    std::fs::write(&sb, cfg.to_string()).unwrap();
    let t = TextTokenizer::load(d.path()).unwrap();
    (d, t)
}

/// Long inputs of every shape the prefix logic distinguishes: word-separated text, runs
/// without any space (CJK, full-width, emoji), separators that are not word breaks everywhere
/// (form feed, NBSP, ideographic space, space + combining mark), whitespace tails and floods
/// of characters the normalizer drops.
fn long_inputs(r: &RealTok) -> Vec<String> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let pick = |i: usize| r.sentences[i % r.sentences.len()].as_str();
    let mut out = Vec::new();
    let mut english = String::new();
    while english.len() < 60_000 {
        english.push_str(pick(43 + next(2900)));
        english.push(' ');
    }
    out.push(english);
    let cjk: Vec<char> =
        "日本語のテキストですこれはテスト中文文本東京大阪京都山川人大小上下한국어안녕하세요"
            .chars()
            .collect();
    out.push((0..20_000).map(|_| cjk[next(cjk.len())]).collect());
    out.push("ＡＢＣＤＥＦｇｈｉｊ１２３".repeat(3000));
    out.push("\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\u{1F44D}\u{1F3FD}".repeat(2000));
    let seps = [
        " ", "\u{c}", "\u{a0}", "\u{3000}", "\r\n", " \u{301}", "\t", "  ", "", "\u{200b}",
    ];
    let mut mixed = String::new();
    while mixed.len() < 80_000 {
        mixed.push_str(pick(next(r.sentences.len())));
        mixed.push_str(seps[next(seps.len())]);
    }
    out.push(mixed);
    out.push(format!("x{}y z", " ".repeat(100_000)));
    out.push(format!(
        "{}{}",
        "\u{200b}".repeat(4000),
        pick(100).repeat(50)
    ));
    out.push(format!("{}{}", pick(7), " \n\t\r".repeat(30_000)));
    let mut words = String::new();
    while words.len() < 40_000 {
        let w: String = (0..1 + next(40)).map(|_| cjk[next(cjk.len())]).collect();
        words.push_str(&w);
        words.push(if next(3) == 0 { '\u{3000}' } else { ' ' });
    }
    out.push(words);
    out
}

#[test]
fn early_truncation_equals_tokenize_then_truncate() {
    // Truncation tokenizes only a prefix of a long input; the ids must be those of tokenizing
    // the whole text and cutting.
    let r = RealTok::load();
    let long = long_inputs(&r);
    let refs: Vec<&str> = long.iter().map(String::as_str).collect();
    for msl in [2usize, 3, 8, 33, 128, 512] {
        let (_d, tok) = tokenizer_with_msl(&r, msl);
        let got = tok.encode_batch(&refs).unwrap();
        let whole = tok.tokenize(&refs, false).unwrap();
        for (i, (g, w)) in got.iter().zip(&whole).enumerate() {
            let mut want: Vec<u32> = w.ids[..w.ids.len().min(msl) - 1].to_vec();
            want.push(2);
            if w.ids.len() <= msl {
                want = w.ids.clone();
            }
            assert_eq!(g, &want, "msl {msl}, input {i} ({} bytes)", refs[i].len());
        }
        // the detailed path truncates the same way
        let detailed = tok.tokenize(&refs, true).unwrap();
        for (i, d) in detailed.iter().enumerate() {
            assert_eq!(d.ids, got[i], "msl {msl}, input {i}, detailed");
            // the pieces' character offsets into the original text, too
            let n = d.ids.len() - 1;
            assert_eq!(
                d.offsets[1..n],
                whole[i].offsets[1..n],
                "msl {msl}, input {i}, offsets"
            );
            assert_eq!(
                d.truncated,
                whole[i].ids.len() > msl,
                "msl {msl}, input {i}"
            );
        }
    }
}

#[test]
fn cli_streaming_bounds_lines_without_changing_ids() {
    // `tokenize` / `embed` read input line by line, shorten whitespace runs and skip what lies
    // past the tokenizer's scan limit; the ids must be those of the whole line. Long lines
    // (beyond the limit, with and without spaces, whitespace floods) among the reference
    // sentences, more lines than one chunk, as text and as JSON lines.
    let r = RealTok::load();
    let mut long = long_inputs(&r);
    long.push("語".repeat(300_000));
    long.push(format!("{} tail", " \t".repeat(400_000)));
    long.push(format!("{}{}", pick_words(&r, 50_000), "\r".repeat(10)));
    for msl in [8usize, 512] {
        let (d, tok) = tokenizer_with_msl(&r, msl);
        let mut texts: Vec<String> = Vec::new();
        for (i, s) in r.sentences.iter().enumerate() {
            texts.push(s.clone());
            if i % 500 == 0 {
                texts.push(long[i / 500 % long.len()].clone());
            }
        }
        texts.extend(long.iter().cloned());
        let tmp = tempfile::tempdir().unwrap();
        // text lines cannot hold a newline: those become spaces (and a lone \r is kept)
        let lines: Vec<String> = texts.iter().map(|t| t.replace('\n', " ")).collect();
        let txt = tmp.path().join("in.txt");
        std::fs::write(&txt, lines.join("\n") + "\n").unwrap();
        let jsonl = tmp.path().join("in.jsonl");
        let js: Vec<String> = texts.iter().map(|t| json!(t).to_string()).collect();
        std::fs::write(&jsonl, js.join("\n")).unwrap();
        for (input, sents) in [(&txt, &lines), (&jsonl, &texts)] {
            let refs: Vec<&str> = sents.iter().map(String::as_str).collect();
            let want: Vec<Vec<u32>> = tok
                .tokenize(&refs, true)
                .unwrap()
                .into_iter()
                .map(|t| t.ids)
                .collect();
            let got = cli_tokenize(d.path(), input);
            assert_eq!(got.len(), want.len(), "{}", input.display());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "msl {msl}, {} line {}", input.display(), i + 1);
            }
        }
    }
}

/// Reference sentences joined by single spaces up to `bytes`.
fn pick_words(r: &RealTok, bytes: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(&r.sentences[i % r.sentences.len()]);
        s.push(' ');
        i += 7;
    }
    s
}
