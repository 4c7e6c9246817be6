//! `deberta-embed eval sts|pairs`: sentence-transformers' EmbeddingSimilarityEvaluator and
//! BinaryClassificationEvaluator on a data file (the metrics live in `deberta_embed::eval`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use deberta_embed::eval::{self, PairsReport, StsReport};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    cmd: EvalCommand,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Pearson and Spearman correlation between gold scores and the cosine, euclidean,
    /// manhattan and dot similarities (as sentence-transformers' EmbeddingSimilarityEvaluator).
    /// FILE columns: sentence1, sentence2, score (any range).
    Sts(EvalDataArgs),
    /// Best accuracy / F1 (with thresholds), precision, recall, average precision and MCC of
    /// labelled pairs for cosine, dot, manhattan and euclidean (as sentence-transformers'
    /// BinaryClassificationEvaluator). FILE columns: sentence1, sentence2, label (0/1). For a
    /// one-label cross-encoder, its scores instead (as CrossEncoderClassificationEvaluator).
    Pairs(EvalDataArgs),
}

#[derive(clap::Args)]
struct EvalDataArgs {
    #[command(flatten)]
    common: super::CommonModel,
    /// Data file: .tsv (tab-separated, no quoting), .csv (RFC 4180 quoting) or .jsonl (one
    /// object per line), with a header naming the columns.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Print one JSON object with sentence-transformers' metric keys instead of a table.
    #[arg(long)]
    json: bool,
    /// Sentences per forward batch (each distinct sentence is embedded once).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[command(flatten)]
    prompt: super::PromptArgs,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    match a.cmd {
        EvalCommand::Sts(d) => sts(d),
        EvalCommand::Pairs(d) => pairs(d),
    }
}

/// A progress bar on stderr, hidden with --quiet or when stderr is not a terminal.
fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} sentences  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Sentences per encode call: enough for full batches, few enough for a lively bar.
fn chunk(batch_size: usize) -> usize {
    batch_size.saturating_mul(4).max(64)
}

fn sts(a: EvalDataArgs) -> Result<()> {
    // data errors first, before the model is loaded
    let data = eval::read_sts(&a.data)?;
    eval::check_sts(&data).map_err(|e| anyhow::anyhow!("{}: {e}", a.data.display()))?;
    let embedder = super::load(&a.common, a.batch_size, None, a.quiet)?;
    let bar = progress_bar(a.quiet);
    let opts = a.prompt.options();
    let report = eval::evaluate_sts_with(
        &embedder,
        &data,
        chunk(a.batch_size),
        &opts,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    if a.json {
        print_json(&report.metrics())
    } else {
        print_sts(&a, &report)
    }
}

fn pairs(a: EvalDataArgs) -> Result<()> {
    let data = eval::read_pairs(&a.data)?;
    eval::check_pairs(&data).map_err(|e| anyhow::anyhow!("{}: {e}", a.data.display()))?;
    let dir = super::model_dir(&a.common.model, &a.common.revision, a.quiet)?;
    if deberta_embed::cross::model_kind(&dir)? == deberta_embed::ModelKind::CrossEncoder {
        let ce = load_cross(&a)?;
        // A one-label cross-encoder is evaluated by its scores; a classifier with several labels
        // by the embeddings of its backbone, as sentence-transformers' BinaryClassificationEvaluator
        // would with the checkpoint loaded as a SentenceTransformer.
        if ce.num_labels() == 1 {
            return pairs_cross(&a, &ce, &data);
        }
    }
    let embedder = super::load(&a.common, a.batch_size, None, a.quiet)?;
    let bar = progress_bar(a.quiet);
    let opts = a.prompt.options();
    let report = eval::evaluate_pairs_with(
        &embedder,
        &data,
        chunk(a.batch_size),
        &opts,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    if a.json {
        print_json(&report.metrics())
    } else {
        print_pairs(&a, &report)
    }
}

/// `--model` as a cross-encoder.
fn load_cross(a: &EvalDataArgs) -> Result<deberta_embed::CrossEncoder> {
    let device = super::parse_device(&a.common.device)?;
    let opts = deberta_embed::EmbedderOptions {
        threads: a.common.threads,
        batch_size: a.batch_size,
        normalize: None,
        precision: super::parse_precision(a.common.dtype.as_deref(), device)?,
        max_batch_tokens: deberta_embed::EmbedderOptions::default().max_batch_tokens,
    };
    let dir = super::model_dir(&a.common.model, &a.common.revision, a.quiet)?;
    Ok(deberta_embed::CrossEncoder::load_with(dir, device, opts)?)
}

/// A one-label cross-encoder's scores as the pair classifier (CrossEncoderClassificationEvaluator).
fn pairs_cross(
    a: &EvalDataArgs,
    ce: &deberta_embed::CrossEncoder,
    data: &[eval::LabeledPair],
) -> Result<()> {
    let bar = progress_bar(a.quiet);
    let report = eval::evaluate_pairs_cross(ce, data, chunk(a.batch_size), &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if a.json {
        return print_json(&report.metrics());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} on {}: {} pairs, cross-encoder scores (higher = similar)",
        a.common.model.display(),
        a.data.display(),
        report.pairs
    )?;
    for (k, v) in report.metrics() {
        writeln!(out, "{k:<20} {v:>9.4}")?;
    }
    Ok(())
}

/// One JSON object, keys in the evaluator's order, numbers as the shortest round-trip decimal.
fn print_json(metrics: &[(String, f64)]) -> Result<()> {
    let body: Vec<String> = metrics
        .iter()
        .map(|(k, v)| {
            format!(
                "{}: {}",
                serde_json::Value::from(k.as_str()),
                serde_json::Value::from(*v)
            )
        })
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{{{}}}", body.join(", "))?;
    Ok(())
}

fn print_sts(a: &EvalDataArgs, r: &StsReport) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} on {}: {} pairs, {} distinct sentences",
        a.common.model.display(),
        a.data.display(),
        r.pairs,
        r.unique_sentences
    )?;
    writeln!(out, "{:<10} {:>9} {:>9}", "", "Pearson", "Spearman")?;
    for (f, c) in &r.results {
        writeln!(
            out,
            "{:<10} {:>9.4} {:>9.4}",
            eval::similarity_name(*f),
            c.pearson,
            c.spearman
        )?;
    }
    Ok(())
}

fn print_pairs(a: &EvalDataArgs, r: &PairsReport) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} on {}: {} pairs, {} distinct sentences (manhattan and euclidean thresholds are distances)",
        a.common.model.display(),
        a.data.display(),
        r.pairs,
        r.unique_sentences
    )?;
    writeln!(
        out,
        "{:<10} {:>8} {:>10} {:>8} {:>10} {:>9} {:>8} {:>8} {:>8}",
        "", "accuracy", "threshold", "F1", "threshold", "precision", "recall", "AP", "MCC"
    )?;
    for (f, m) in &r.results {
        writeln!(
            out,
            "{:<10} {:>8.4} {:>10.4} {:>8.4} {:>10.4} {:>9.4} {:>8.4} {:>8.4} {:>8.4}",
            eval::similarity_name(*f),
            m.accuracy,
            m.accuracy_threshold,
            m.f1,
            m.f1_threshold,
            m.precision,
            m.recall,
            m.ap,
            m.mcc
        )?;
    }
    Ok(())
}
