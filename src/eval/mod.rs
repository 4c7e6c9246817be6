//! Evaluation of embeddings on labelled sentence pairs, computed exactly as
//! sentence-transformers 6.2's evaluators compute it:
//!
//! * STS (`EmbeddingSimilarityEvaluator`): Pearson and Spearman correlation between gold scores
//!   and the cosine, euclidean, manhattan and dot similarities of each pair ([`evaluate_sts`];
//!   the metrics alone: [`pearson`], [`spearman`], [`rank_average`]).
//! * Pair classification (`BinaryClassificationEvaluator`): best accuracy and its threshold,
//!   best F1 with its threshold, precision and recall, average precision and MCC
//!   ([`evaluate_pairs`]; the metrics alone: [`binary_classification`], [`best_accuracy`],
//!   [`best_f1`], [`average_precision`], [`matthews_corrcoef`]).
//!
//! Conventions, as in sentence-transformers:
//!
//! * Similarities are float32 (torch computes them in float32; here each one is accumulated in
//!   f64 and rounded to f32, which agrees to an ulp or so). Correlations are computed in f64 on
//!   the f32 values, as scipy promotes them.
//! * For STS, euclidean and manhattan are *negative* distances (larger = more similar).
//! * For pair classification, euclidean and manhattan are positive *distances* with "smaller is
//!   more similar", so their thresholds are distances; cosine and dot use "greater is more
//!   similar". Thresholds are float32 values computed in float32 arithmetic (midpoints of
//!   neighbouring score groups), exactly as the evaluator computes them.
//!
//! Data files ([`read_sts`], [`read_pairs`]): `.tsv` (tab-separated, no quoting, as STS-B's
//! `.tsv` is read), `.csv` (RFC 4180: quoted fields, `""` escapes, line breaks inside quotes),
//! or `.jsonl` (one object per line). Columns are found by header name: `sentence1`,
//! `sentence2`, and `score` (STS, any range) or `label` (pairs, 0 or 1); other columns are
//! ignored.
//!
//! The metrics are in `metrics.rs`, the data files in `data.rs`; this file embeds the pairs and
//! runs the evaluators.

mod data;
mod metrics;

use std::collections::HashMap;

pub use self::data::{read_pairs, read_sts, LabeledPair, ScoredPair};
pub use self::metrics::{
    average_precision, best_accuracy, best_f1, binary_classification, matthews_corrcoef, numpy_sum,
    pearson, rank_average, spearman, BestF1, BinaryMetrics, Input, MetricError,
};
use crate::{Embedder, EncodeOptions, Error, Result, Similarity};

/// sentence-transformers' name of a similarity function (`cosine`, `dot`, `euclidean`,
/// `manhattan`), as used in the metric keys.
pub fn similarity_name(f: Similarity) -> &'static str {
    match f {
        Similarity::Cosine => "cosine",
        Similarity::Dot => "dot",
        Similarity::Euclidean => "euclidean",
        Similarity::Manhattan => "manhattan",
    }
}

/// The functions `EmbeddingSimilarityEvaluator` reports, in its order.
pub const STS_FUNCTIONS: [Similarity; 4] = [
    Similarity::Cosine,
    Similarity::Euclidean,
    Similarity::Manhattan,
    Similarity::Dot,
];

/// The functions `BinaryClassificationEvaluator` reports, in its order.
pub const PAIR_FUNCTIONS: [Similarity; 4] = [
    Similarity::Cosine,
    Similarity::Dot,
    Similarity::Manhattan,
    Similarity::Euclidean,
];

/// Embeddings of the distinct sentences of some pairs, each embedded once.
pub struct PairEmbeddings {
    rows: Vec<f32>,
    dim: usize,
    first: Vec<usize>,
    second: Vec<usize>,
    unique: usize,
}

impl PairEmbeddings {
    /// Embed every distinct sentence of `pairs` once, `chunk` sentences per call (longest
    /// first, so chunks are evenly sized), calling `progress(done, total)` after each chunk.
    pub fn new<'a>(
        embedder: &Embedder,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        chunk: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        Self::new_with(embedder, pairs, chunk, &EncodeOptions::default(), progress)
    }

    /// [`PairEmbeddings::new`] with the prompt `opts` chooses (sentence-transformers'
    /// evaluators take `prompt_name` / `prompt` too and, without either, apply the model's
    /// default prompt, as [`Embedder::encode`] does).
    pub fn new_with<'a>(
        embedder: &Embedder,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        chunk: usize,
        opts: &EncodeOptions<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let prompt = embedder.resolve_prompt(opts)?;
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut texts: Vec<&str> = Vec::new();
        let mut id = |s: &'a str| {
            *index.entry(s).or_insert_with(|| {
                texts.push(s);
                texts.len() - 1
            })
        };
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for (a, b) in pairs {
            first.push(id(a));
            second.push(id(b));
        }
        let ids = match &prompt {
            None => embedder.token_ids(&texts)?,
            Some(p) => {
                let prompted: Vec<String> = texts.iter().map(|t| p.apply(t)).collect();
                let refs: Vec<&str> = prompted.iter().map(String::as_str).collect();
                embedder.token_ids(&refs)?
            }
        };
        let skip = embedder.pooling_skip(prompt.as_ref());
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let dim = embedder.dim();
        let mut rows = vec![0f32; texts.len() * dim];
        let total = texts.len();
        let mut done = 0;
        progress(0, total);
        for part in order.chunks(chunk.max(1)) {
            let batch: Vec<Vec<u32>> = part.iter().map(|&i| ids[i].clone()).collect();
            let emb = embedder.encode_ids_skipping(&batch, &vec![skip; batch.len()])?;
            for (row, &i) in emb.iter().zip(part) {
                rows[i * dim..(i + 1) * dim].copy_from_slice(row);
            }
            done += part.len();
            progress(done, total);
        }
        Ok(PairEmbeddings {
            rows,
            dim,
            first,
            second,
            unique: total,
        })
    }

    /// Number of distinct sentences embedded.
    pub fn unique_sentences(&self) -> usize {
        self.unique
    }

    /// `f` of every pair, in input order (float32, negative distances for euclidean and
    /// manhattan, as [`Similarity::pair`]).
    pub fn similarities(&self, f: Similarity) -> Vec<f32> {
        let row = |i: usize| &self.rows[i * self.dim..(i + 1) * self.dim];
        self.first
            .iter()
            .zip(&self.second)
            .map(|(&a, &b)| f.pair(row(a), row(b)))
            .collect()
    }
}

/// Pearson and Spearman correlation of one similarity function with the gold scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Correlations {
    pub pearson: f64,
    pub spearman: f64,
}

/// Results of [`evaluate_sts`].
#[derive(Clone, Debug, PartialEq)]
pub struct StsReport {
    /// Per function, in [`STS_FUNCTIONS`] order.
    pub results: Vec<(Similarity, Correlations)>,
    pub pairs: usize,
    pub unique_sentences: usize,
}

impl StsReport {
    /// `(key, value)` with sentence-transformers' keys (`pearson_cosine`, `spearman_cosine`,
    /// `pearson_euclidean`, ...), in its order.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (f, c) in &self.results {
            out.push((format!("pearson_{}", similarity_name(*f)), c.pearson));
            out.push((format!("spearman_{}", similarity_name(*f)), c.spearman));
        }
        out
    }
}

/// Results of [`evaluate_pairs`].
#[derive(Clone, Debug, PartialEq)]
pub struct PairsReport {
    /// Per function, in [`PAIR_FUNCTIONS`] order.
    pub results: Vec<(Similarity, BinaryMetrics)>,
    pub pairs: usize,
    pub unique_sentences: usize,
}

impl PairsReport {
    /// `(key, value)` with sentence-transformers' keys (`cosine_accuracy`,
    /// `cosine_accuracy_threshold`, ..., `euclidean_mcc`), in its order.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (f, m) in &self.results {
            for (k, v) in m.entries() {
                out.push((format!("{}_{k}", similarity_name(*f)), v));
            }
        }
        out
    }
}

/// Results of [`evaluate_pairs_cross`]: sentence-transformers' `CrossEncoderClassificationEvaluator`
/// for a one-label cross-encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossPairsReport {
    /// Accuracy, F1 (with thresholds on the scores), precision, recall and average precision of
    /// the scores (`mcc` is not part of that evaluator's report).
    pub metrics: BinaryMetrics,
    pub pairs: usize,
}

impl CrossPairsReport {
    /// `(key, value)` with the evaluator's keys: `accuracy`, `accuracy_threshold`, `f1`,
    /// `f1_threshold`, `precision`, `recall`, `average_precision`.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        self.metrics
            .entries()
            .into_iter()
            .filter(|(k, _)| *k != "mcc")
            .map(|(k, v)| {
                let k = if k == "ap" { "average_precision" } else { k };
                (k.to_string(), v)
            })
            .collect()
    }
}

/// `CrossEncoderClassificationEvaluator` on labelled pairs for a one-label cross-encoder: each
/// pair scored as `CrossEncoder.predict` scores it (the model's activation), higher meaning
/// similar, then the best accuracy and F1 thresholds and the average precision of those
/// scores. `chunk` pairs per call, `progress(done, total)` after each.
///
/// Errors: no pairs, a single class, or a model with more than one label.
pub fn evaluate_pairs_cross(
    ce: &crate::CrossEncoder,
    pairs: &[LabeledPair],
    chunk: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CrossPairsReport> {
    check_pairs(pairs)?;
    if ce.num_labels() != 1 {
        return Err(Error::Input(format!(
            "pair classification needs a cross-encoder with one label; this one has {}",
            ce.num_labels()
        )));
    }
    let all: Vec<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.sentence1.as_str(), p.sentence2.as_str()))
        .collect();
    let mut scores = Vec::with_capacity(all.len());
    for c in all.chunks(chunk.max(1)) {
        scores.extend_from_slice(ce.predict(c)?.as_slice());
        progress(scores.len(), all.len());
    }
    let labels: Vec<bool> = pairs.iter().map(|p| p.label).collect();
    let metrics = binary_classification(&scores, &labels, true)
        .map_err(|e| Error::Input(format!("cross-encoder scores: {e}")))?;
    Ok(CrossPairsReport {
        metrics,
        pairs: pairs.len(),
    })
}

/// Check STS pairs before any embedding: at least two pairs, gold scores not all equal.
pub fn check_sts(pairs: &[ScoredPair]) -> Result<()> {
    if pairs.len() < 2 {
        return Err(Error::Input(format!(
            "correlation needs at least 2 pairs, found {}",
            pairs.len()
        )));
    }
    if pairs.iter().all(|p| p.score == pairs[0].score) {
        return Err(Error::Input(format!(
            "correlation is undefined: every gold score is {} ({} pairs)",
            pairs[0].score,
            pairs.len()
        )));
    }
    Ok(())
}

/// Check labelled pairs before any embedding: at least one pair, both classes present.
pub fn check_pairs(pairs: &[LabeledPair]) -> Result<()> {
    if pairs.is_empty() {
        return Err(Error::Input("no pairs to evaluate".into()));
    }
    if pairs.iter().all(|p| p.label == pairs[0].label) {
        return Err(Error::Input(format!(
            "every label is {} ({} pairs): binary classification needs both classes",
            u8::from(pairs[0].label),
            pairs.len()
        )));
    }
    Ok(())
}

/// `EmbeddingSimilarityEvaluator` with all four similarity functions: embed each distinct
/// sentence once (`chunk` per call, `progress(done, total)` after each), then correlate.
///
/// Errors: fewer than 2 pairs, constant gold scores, or a similarity that is the same for every
/// pair (correlation undefined), besides embedding errors.
pub fn evaluate_sts(
    embedder: &Embedder,
    pairs: &[ScoredPair],
    chunk: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StsReport> {
    evaluate_sts_with(embedder, pairs, chunk, &EncodeOptions::default(), progress)
}

/// [`evaluate_sts`] with the prompt `opts` chooses for every sentence.
pub fn evaluate_sts_with(
    embedder: &Embedder,
    pairs: &[ScoredPair],
    chunk: usize,
    opts: &EncodeOptions<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StsReport> {
    check_sts(pairs)?;
    let emb = PairEmbeddings::new_with(
        embedder,
        pairs
            .iter()
            .map(|p| (p.sentence1.as_str(), p.sentence2.as_str())),
        chunk,
        opts,
        progress,
    )?;
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    let mut results = Vec::new();
    for f in STS_FUNCTIONS {
        let sims: Vec<f64> = emb.similarities(f).iter().map(|&s| s as f64).collect();
        let err = |e: MetricError| match e {
            MetricError::Constant(Input::Y) => Error::Input(format!(
                "correlation is undefined: the {} similarity is {} for every pair",
                similarity_name(f),
                sims[0]
            )),
            e => Error::Input(format!("{} similarity: {e}", similarity_name(f))),
        };
        results.push((
            f,
            Correlations {
                pearson: pearson(&gold, &sims).map_err(err)?,
                spearman: spearman(&gold, &sims).map_err(err)?,
            },
        ));
    }
    Ok(StsReport {
        results,
        pairs: pairs.len(),
        unique_sentences: emb.unique_sentences(),
    })
}

/// `BinaryClassificationEvaluator` with all four similarity functions: embed each distinct
/// sentence once (`chunk` per call, `progress(done, total)` after each), then classify.
/// Euclidean and manhattan are scored as distances (thresholds are distances).
///
/// Errors: no pairs or a single class, besides embedding errors.
pub fn evaluate_pairs(
    embedder: &Embedder,
    pairs: &[LabeledPair],
    chunk: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PairsReport> {
    evaluate_pairs_with(embedder, pairs, chunk, &EncodeOptions::default(), progress)
}

/// [`evaluate_pairs`] with the prompt `opts` chooses for every sentence.
pub fn evaluate_pairs_with(
    embedder: &Embedder,
    pairs: &[LabeledPair],
    chunk: usize,
    opts: &EncodeOptions<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PairsReport> {
    check_pairs(pairs)?;
    let emb = PairEmbeddings::new_with(
        embedder,
        pairs
            .iter()
            .map(|p| (p.sentence1.as_str(), p.sentence2.as_str())),
        chunk,
        opts,
        progress,
    )?;
    let labels: Vec<bool> = pairs.iter().map(|p| p.label).collect();
    let mut results = Vec::new();
    for f in PAIR_FUNCTIONS {
        let mut scores = emb.similarities(f);
        let greater_is_better = matches!(f, Similarity::Cosine | Similarity::Dot);
        if !greater_is_better {
            // negative distances back to distances, as the evaluator does
            scores.iter_mut().for_each(|s| *s = -*s);
        }
        let m = binary_classification(&scores, &labels, greater_is_better)
            .map_err(|e| Error::Input(format!("{} similarity: {e}", similarity_name(f))))?;
        results.push((f, m));
    }
    Ok(PairsReport {
        results,
        pairs: pairs.len(),
        unique_sentences: emb.unique_sentences(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::path::Path;

    pub(super) fn fixture(name: &str) -> Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/eval")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    pub(super) fn f64s(v: &Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }

    pub(super) fn close(a: f64, b: f64, tol: f64, what: &str) {
        if std::env::var_os("EVAL_SHOW_DIFFS").is_some() {
            eprintln!("{what}: diff {:e}", (a - b).abs());
        }
        assert!(
            (a - b).abs() <= tol,
            "{what}: got {a:e}, expected {b:e} (diff {:e})",
            (a - b).abs()
        );
    }

    #[test]
    fn the_evaluators_own_scores_give_their_results() {
        // ST's float32 pair similarities through our metric code -> ST's reported values
        let e = fixture("expected.json");
        for (model, v) in e["models"].as_object().unwrap() {
            let gold: Vec<f64> = {
                // the STS gold scores are in the .jsonl file
                read_sts(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/sts.jsonl"),
                )
                .unwrap()
                .iter()
                .map(|p| p.score)
                .collect()
            };
            for f in STS_FUNCTIONS {
                let n = similarity_name(f);
                let sims = f64s(&v["sts_scores"][n]);
                let p = pearson(&gold, &sims).unwrap();
                let s = spearman(&gold, &sims).unwrap();
                close(
                    p,
                    v["sts"][format!("pearson_{n}")].as_f64().unwrap(),
                    1e-12,
                    model,
                );
                close(
                    s,
                    v["sts"][format!("spearman_{n}")].as_f64().unwrap(),
                    1e-12,
                    model,
                );
            }
        }
    }
}
