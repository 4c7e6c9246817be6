//! `deberta-embed rerank` and `predict`: a cross-encoder (sequence-classification checkpoint)
//! scoring a query against documents, or pairs from a file, as sentence-transformers'
//! `CrossEncoder.rank` and `.predict` do.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use deberta_embed::{CrossEncoder, EmbedderOptions};
use serde_json::Value;

#[derive(clap::Args)]
pub struct RerankArgs {
    #[command(flatten)]
    common: super::CommonModel,
    /// The query every document is scored against.
    #[arg(long)]
    query: String,
    /// Documents: .txt (one per line), .jsonl (a JSON string or an object with a "text" field
    /// per line), or - for text lines on stdin.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Keep only the best N documents.
    #[arg(long, value_name = "N")]
    top_k: Option<usize>,
    /// Scores are the raw logits instead of the model's activation (sigmoid by default).
    #[arg(long)]
    raw_scores: bool,
    /// Add each document's text to its line.
    #[arg(long)]
    return_text: bool,
    /// Pairs per forward batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

#[derive(clap::Args)]
pub struct PredictArgs {
    #[command(flatten)]
    common: super::CommonModel,
    /// Pairs: .tsv (two tab-separated columns per line, no header, no quoting) or .jsonl (per
    /// line a JSON array of two strings, or an object with "text" and "text_pair"); - reads
    /// TSV from stdin.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Raw logits instead of the model's activation.
    #[arg(long, conflicts_with = "softmax")]
    raw_scores: bool,
    /// Soft-max the (activated) scores over the labels, as `predict(apply_softmax=True)`.
    #[arg(long)]
    softmax: bool,
    /// Pairs per forward batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

fn load(common: &super::CommonModel, batch_size: usize) -> Result<CrossEncoder> {
    let device = super::parse_device(&common.device)?;
    let opts = EmbedderOptions {
        threads: common.threads,
        batch_size,
        normalize: None,
        precision: super::parse_precision(common.dtype.as_deref(), device)?,
        max_batch_tokens: EmbedderOptions::default().max_batch_tokens,
    };
    let dir = super::model_dir(&common.model, &common.revision, false)?;
    Ok(CrossEncoder::load_with(dir, device, opts)?)
}

/// A line of `rerank`'s output.
#[derive(serde::Serialize)]
struct RankLine<'a> {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

/// One JSON line per document, best first: `{"index", "score"}` (+ `"text"`).
pub fn rerank(a: RerankArgs) -> Result<()> {
    let docs = super::input::read_inputs(&a.input)?;
    let ce = load(&a.common, a.batch_size)?;
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let ranked = ce.rank_with(&a.query, &refs, a.top_k, a.raw_scores)?;
    let mut w = BufWriter::new(std::io::stdout().lock());
    for r in ranked {
        let line = RankLine {
            index: r.index,
            score: r.score,
            text: a.return_text.then(|| docs[r.index].as_str()),
        };
        writeln!(w, "{}", serde_json::to_string(&line)?)?;
    }
    w.flush()?;
    Ok(())
}

/// One JSON line per pair, in input order: a number for a one-label model, else an array.
pub fn predict(a: PredictArgs) -> Result<()> {
    let pairs = read_pairs(&a.input)?;
    let ce = load(&a.common, a.batch_size)?;
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(x, y)| (x.as_str(), y.as_str()))
        .collect();
    let mut w = BufWriter::new(std::io::stdout().lock());
    // in chunks, so that output starts early and memory stays bounded by the chunk
    for chunk in refs.chunks(4096) {
        let scores = if a.raw_scores {
            ce.predict_raw(chunk)?
        } else if a.softmax {
            ce.predict_softmax(chunk)?
        } else {
            ce.predict(chunk)?
        };
        for row in scores.iter() {
            // (f32 serialized as f32: the shortest decimal that reads back to the same value)
            if row.len() == 1 {
                writeln!(w, "{}", serde_json::to_string(&row[0])?)?;
            } else {
                writeln!(w, "{}", serde_json::to_string(row)?)?;
            }
        }
    }
    w.flush()?;
    Ok(())
}

/// Text pairs of a .tsv or .jsonl file (or TSV on stdin), with errors naming the line.
pub fn read_pairs(path: &Path) -> Result<Vec<(String, String)>> {
    let (reader, name): (Box<dyn BufRead>, String) = if path == Path::new("-") {
        (Box::new(std::io::stdin().lock()), "stdin".into())
    } else {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        (
            Box::new(std::io::BufReader::new(f)),
            path.display().to_string(),
        )
    };
    let jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json"));
    let mut out = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let bytes = line.with_context(|| format!("reading {name}"))?;
        let mut text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{name}: line {n} is not valid UTF-8"))?;
        if text.ends_with('\r') {
            text.pop();
        }
        if jsonl {
            if text.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{name}: line {n}: not valid JSON: {e}"))?;
            let pair = match &v {
                Value::Array(a) if a.len() == 2 => a[0].as_str().zip(a[1].as_str()),
                Value::Object(o) => o
                    .get("text")
                    .and_then(Value::as_str)
                    .zip(o.get("text_pair").and_then(Value::as_str)),
                _ => None,
            };
            match pair {
                Some((x, y)) => out.push((x.to_string(), y.to_string())),
                None => bail!(
                    "{name}: line {n}: expected [\"text\", \"text pair\"] or {{\"text\": ..., \"text_pair\": ...}}"
                ),
            }
        } else {
            let cols: Vec<&str> = text.split('\t').collect();
            if cols.len() != 2 {
                bail!(
                    "{name}: line {n} has {} tab-separated columns; a pair is two",
                    cols.len()
                );
            }
            out.push((cols[0].to_string(), cols[1].to_string()));
        }
    }
    Ok(out)
}
