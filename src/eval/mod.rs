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

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::{Embedder, EncodeOptions, Error, Result, Similarity};

// ------------------------------------------------------------------------------------------
// Metric errors
// ------------------------------------------------------------------------------------------

/// Why a metric is undefined for its inputs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// The two inputs do not have the same length.
    #[error("the inputs have different lengths ({0} and {1})")]
    LengthMismatch(usize, usize),
    /// Too few values for the metric.
    #[error("need at least {need} values, got {got}")]
    TooFew { need: usize, got: usize },
    /// A NaN or infinite value.
    #[error("input {0} holds a NaN or infinite value")]
    NonFinite(Input),
    /// Every value of an input is the same: a correlation is undefined.
    #[error("correlation is undefined: every value of input {0} is the same")]
    Constant(Input),
    /// Binary labels of a single class.
    #[error("every label is {}: both classes are needed", u8::from(*.0))]
    SingleClass(bool),
}

/// Which argument of a two-argument metric ([`MetricError`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The first argument (`x`, or the scores of a binary metric).
    X,
    /// The second argument (`y`, or the labels).
    Y,
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Input::X => "x",
            Input::Y => "y",
        })
    }
}

fn check_pair(x: &[f64], y: &[f64]) -> std::result::Result<(), MetricError> {
    if x.len() != y.len() {
        return Err(MetricError::LengthMismatch(x.len(), y.len()));
    }
    if x.len() < 2 {
        return Err(MetricError::TooFew {
            need: 2,
            got: x.len(),
        });
    }
    if !x.iter().all(|v| v.is_finite()) {
        return Err(MetricError::NonFinite(Input::X));
    }
    if !y.iter().all(|v| v.is_finite()) {
        return Err(MetricError::NonFinite(Input::Y));
    }
    if x.iter().all(|&v| v == x[0]) {
        return Err(MetricError::Constant(Input::X));
    }
    if y.iter().all(|&v| v == y[0]) {
        return Err(MetricError::Constant(Input::Y));
    }
    Ok(())
}

/// The sum as `numpy.sum` computes it for float64 (pairwise summation, blocks of 128 with eight
/// accumulators), so that sums of many terms agree to the bit.
pub fn numpy_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, x| s + x)
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        let mut i = 8;
        while i < whole {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for x in &a[whole..] {
            res += x;
        }
        res
    } else {
        let half = n / 2;
        let half = half - half % 8;
        numpy_sum(&a[..half]) + numpy_sum(&a[half..])
    }
}

fn mean(x: &[f64]) -> f64 {
    numpy_sum(x) / x.len() as f64
}

// ------------------------------------------------------------------------------------------
// Correlations
// ------------------------------------------------------------------------------------------

/// Pearson's correlation coefficient, as `scipy.stats.pearsonr(x, y).statistic` computes it:
/// centred inputs scaled by their largest magnitude before the norm, the result clipped to
/// [-1, 1], and exactly ±1 for two points.
///
/// Errors (where scipy warns and returns NaN): different lengths, fewer than two values, a
/// non-finite value, or a constant input.
pub fn pearson(x: &[f64], y: &[f64]) -> std::result::Result<f64, MetricError> {
    check_pair(x, y)?;
    let centred = |v: &[f64]| -> Vec<f64> {
        let m = mean(v);
        let c: Vec<f64> = v.iter().map(|a| a - m).collect();
        let max = c.iter().fold(0.0f64, |acc, a| acc.max(a.abs()));
        let norm = max * c.iter().map(|a| (a / max) * (a / max)).sum::<f64>().sqrt();
        c.iter().map(|a| a / norm).collect()
    };
    let (xs, ys) = (centred(x), centred(y));
    let r = xs
        .iter()
        .zip(&ys)
        .map(|(a, b)| a * b)
        .sum::<f64>()
        .clamp(-1.0, 1.0);
    Ok(if x.len() == 2 { r.round() } else { r })
}

/// Ranks 1..=n with ties given the average of the ranks they span, as
/// `scipy.stats.rankdata(x)` (method `"average"`) computes them.
///
/// NaN sorts last (ranks are meaningless with NaN; [`spearman`] refuses it).
pub fn rank_average(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && x[order[end]] == x[order[start]] {
            end += 1;
        }
        // positions start+1 ..= end (1-based) share their average
        let r = 0.5 * ((start + 1 + end) as f64);
        for &i in &order[start..end] {
            ranks[i] = r;
        }
        start = end;
    }
    ranks
}

/// Spearman's rank correlation, as `scipy.stats.spearmanr(x, y).statistic` computes it: the
/// Pearson correlation (`numpy.corrcoef`) of the average ranks ([`rank_average`]), so ties get
/// the mean of the ranks they span.
///
/// Errors as [`pearson`].
pub fn spearman(x: &[f64], y: &[f64]) -> std::result::Result<f64, MetricError> {
    check_pair(x, y)?;
    let (rx, ry) = (rank_average(x), rank_average(y));
    let (mx, my) = (mean(&rx), mean(&ry));
    let n1 = (rx.len() - 1) as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        let (da, db) = (a - mx, b - my);
        sxy += da * db;
        sxx += da * da;
        syy += db * db;
    }
    // numpy.corrcoef: cov / stddev_x / stddev_y, clipped
    let r = (sxy / n1) / (sxx / n1).sqrt() / (syy / n1).sqrt();
    Ok(r.clamp(-1.0, 1.0))
}

// ------------------------------------------------------------------------------------------
// Binary classification
// ------------------------------------------------------------------------------------------

/// The next float32 after `x` towards +inf (`up`) or -inf, as `numpy.nextafter` in float32.
fn next_f32(x: f32, up: bool) -> f32 {
    if x.is_nan() || (up && x == f32::INFINITY) || (!up && x == f32::NEG_INFINITY) {
        return x;
    }
    if x == 0.0 {
        let tiny = f32::from_bits(1);
        return if up { tiny } else { -tiny };
    }
    let bits = x.to_bits();
    // away from zero: +1 on the magnitude; towards zero: -1
    let away = (x > 0.0) == up;
    f32::from_bits(if away { bits + 1 } else { bits - 1 })
}

/// `(score, label)` sorted from most to least similar (stable, as Python's `sorted`).
fn sorted_rows(scores: &[f32], labels: &[bool], greater_is_better: bool) -> Vec<(f32, bool)> {
    let mut rows: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    if greater_is_better {
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    } else {
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    rows
}

/// The threshold between the score group ending at `i` and the next one: their float32
/// midpoint, or the score itself after the last group or when the midpoint rounds onto the
/// next score.
fn group_threshold(rows: &[(f32, bool)], i: usize) -> f32 {
    match rows.get(i + 1) {
        None => rows[i].0,
        Some(&(next, _)) => {
            let mid = (rows[i].0 + next) / 2.0;
            if mid == next {
                rows[i].0
            } else {
                mid
            }
        }
    }
}

/// Best accuracy over all thresholds and the threshold that reaches it, as
/// `BinaryClassificationEvaluator.find_best_acc_and_threshold` computes them.
///
/// A pair is predicted similar when its score is `>= threshold` (`greater_is_better`, for
/// similarities) or `<= threshold` (for distances). The search starts from "every pair
/// dissimilar" (accuracy = share of negatives, threshold = the float32 just beyond the most
/// similar score), then walks the score groups from most to least similar and keeps a strictly
/// better accuracy only. Empty input gives `(0.0, -1.0)`, as the evaluator does.
///
/// Panics if `scores` and `labels` differ in length.
pub fn best_accuracy(scores: &[f32], labels: &[bool], greater_is_better: bool) -> (f64, f32) {
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
    let rows = sorted_rows(scores, labels, greater_is_better);
    if rows.is_empty() {
        return (0.0, -1.0);
    }
    let n = rows.len() as f64;
    let mut remaining_negatives = labels.iter().filter(|&&l| !l).count();
    let mut positives_so_far = 0usize;
    let mut max_acc = remaining_negatives as f64 / n;
    let mut best = next_f32(rows[0].0, greater_is_better);
    for (i, &(score, label)) in rows.iter().enumerate() {
        if label {
            positives_so_far += 1;
        } else {
            remaining_negatives -= 1;
        }
        if rows.get(i + 1).is_some_and(|r| r.0 == score) {
            continue;
        }
        let acc = (positives_so_far + remaining_negatives) as f64 / n;
        if acc > max_acc {
            max_acc = acc;
            best = group_threshold(&rows, i);
        }
    }
    (max_acc, best)
}

/// Best F1 with the precision, recall and threshold that reach it ([`best_f1`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BestF1 {
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    /// float32, as the evaluator computes it (0 when no threshold gives a positive F1).
    pub threshold: f32,
}

/// Best F1 over all thresholds, as `BinaryClassificationEvaluator.find_best_f1_and_threshold`
/// computes it: walk the score groups from most to least similar, predict everything so far
/// similar, keep a strictly better F1 (with its precision, recall and the threshold between this
/// group and the next, as in [`best_accuracy`]).
///
/// Panics if `scores` and `labels` differ in length.
pub fn best_f1(scores: &[f32], labels: &[bool], greater_is_better: bool) -> BestF1 {
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
    let rows = sorted_rows(scores, labels, greater_is_better);
    let total_positives = labels.iter().filter(|&&l| l).count();
    let mut out = BestF1 {
        f1: 0.0,
        precision: 0.0,
        recall: 0.0,
        threshold: 0.0,
    };
    let (mut extracted, mut correct) = (0usize, 0usize);
    for (i, &(score, label)) in rows.iter().enumerate() {
        extracted += 1;
        if label {
            correct += 1;
        }
        if rows.get(i + 1).is_some_and(|r| r.0 == score) {
            continue;
        }
        if correct > 0 {
            let precision = correct as f64 / extracted as f64;
            let recall = correct as f64 / total_positives as f64;
            let f1 = 2.0 * precision * recall / (precision + recall);
            if f1 > out.f1 {
                out = BestF1 {
                    f1,
                    precision,
                    recall,
                    threshold: group_threshold(&rows, i),
                };
            }
        }
    }
    out
}

/// Average precision, as `sklearn.metrics.average_precision_score(labels, scores)` computes it
/// (higher score = more likely positive): `sum_k (R_k - R_{k-1}) * P_k` over the distinct score
/// values from highest to lowest, where a group of tied scores counts as one threshold. With no
/// positive label, sklearn's convention gives 0.
///
/// Panics if `scores` and `labels` differ in length.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> f64 {
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
    let rows = sorted_rows(scores, labels, true);
    let total_positives = labels.iter().filter(|&&l| l).count();
    if rows.is_empty() || total_positives == 0 {
        return 0.0;
    }
    // (precision, recall) at the end of each score group, highest scores first
    let mut curve = Vec::new();
    let mut tps = 0usize;
    for (i, &(score, label)) in rows.iter().enumerate() {
        tps += usize::from(label);
        if rows.get(i + 1).is_some_and(|r| r.0 == score) {
            continue;
        }
        let fps = i + 1 - tps;
        curve.push((
            tps as f64 / (tps + fps) as f64,
            tps as f64 / total_positives as f64,
        ));
    }
    // sklearn: max(0, -np.sum(np.diff(recall) * precision[:-1])) over the curve reversed
    // (lowest threshold first)
    let terms: Vec<f64> = (0..curve.len())
        .rev()
        .map(|k| {
            let prev_recall = if k == 0 { 0.0 } else { curve[k - 1].1 };
            (prev_recall - curve[k].1) * curve[k].0
        })
        .collect();
    (-numpy_sum(&terms)).max(0.0)
}

/// Matthews correlation coefficient of binary predictions, as
/// `sklearn.metrics.matthews_corrcoef(labels, predicted)` computes it (0 where it is undefined).
///
/// Panics if the two differ in length.
pub fn matthews_corrcoef(labels: &[bool], predicted: &[bool]) -> f64 {
    assert_eq!(
        labels.len(),
        predicted.len(),
        "labels and predictions differ in length"
    );
    // confusion matrix c[true][pred]
    let mut c = [[0f64; 2]; 2];
    for (&t, &p) in labels.iter().zip(predicted) {
        c[usize::from(t)][usize::from(p)] += 1.0;
    }
    let t_sum = [c[0][0] + c[0][1], c[1][0] + c[1][1]];
    let p_sum = [c[0][0] + c[1][0], c[0][1] + c[1][1]];
    let n_correct = c[0][0] + c[1][1];
    let n = p_sum[0] + p_sum[1];
    let dot = |a: [f64; 2], b: [f64; 2]| a[0] * b[0] + a[1] * b[1];
    let cov_ytyp = n_correct * n - dot(t_sum, p_sum);
    let cov_ypyp = n * n - dot(p_sum, p_sum);
    let cov_ytyt = n * n - dot(t_sum, t_sum);
    let denom = cov_ypyp * cov_ytyt;
    if denom == 0.0 {
        0.0
    } else {
        cov_ytyp / denom.sqrt()
    }
}

/// Everything `BinaryClassificationEvaluator` reports for one similarity function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BinaryMetrics {
    pub accuracy: f64,
    pub accuracy_threshold: f32,
    pub f1: f64,
    pub f1_threshold: f32,
    /// Precision at the best F1.
    pub precision: f64,
    /// Recall at the best F1.
    pub recall: f64,
    /// Average precision ([`average_precision`] of the scores, negated for distances).
    pub ap: f64,
    /// MCC of the predictions at the F1 threshold.
    pub mcc: f64,
}

impl BinaryMetrics {
    /// `(name, value)` in the evaluator's order: accuracy, accuracy_threshold, f1,
    /// f1_threshold, precision, recall, ap, mcc.
    pub fn entries(&self) -> [(&'static str, f64); 8] {
        [
            ("accuracy", self.accuracy),
            ("accuracy_threshold", self.accuracy_threshold as f64),
            ("f1", self.f1),
            ("f1_threshold", self.f1_threshold as f64),
            ("precision", self.precision),
            ("recall", self.recall),
            ("ap", self.ap),
            ("mcc", self.mcc),
        ]
    }
}

/// All binary metrics of `scores` (similarities if `greater_is_better`, else distances)
/// against `labels` (true = similar), as `BinaryClassificationEvaluator.compute_metrics` does.
///
/// Errors: different lengths, no scores, a non-finite score, or labels of one class only (where
/// the evaluator would report a meaningless 0 or NaN).
pub fn binary_classification(
    scores: &[f32],
    labels: &[bool],
    greater_is_better: bool,
) -> std::result::Result<BinaryMetrics, MetricError> {
    if scores.len() != labels.len() {
        return Err(MetricError::LengthMismatch(scores.len(), labels.len()));
    }
    if scores.is_empty() {
        return Err(MetricError::TooFew { need: 1, got: 0 });
    }
    if !scores.iter().all(|s| s.is_finite()) {
        return Err(MetricError::NonFinite(Input::X));
    }
    if labels.iter().all(|&l| l == labels[0]) {
        return Err(MetricError::SingleClass(labels[0]));
    }
    let (accuracy, accuracy_threshold) = best_accuracy(scores, labels, greater_is_better);
    let f1 = best_f1(scores, labels, greater_is_better);
    let ap = if greater_is_better {
        average_precision(scores, labels)
    } else {
        let neg: Vec<f32> = scores.iter().map(|s| -s).collect();
        average_precision(&neg, labels)
    };
    let predicted: Vec<bool> = scores
        .iter()
        .map(|&s| {
            if greater_is_better {
                s >= f1.threshold
            } else {
                s <= f1.threshold
            }
        })
        .collect();
    Ok(BinaryMetrics {
        accuracy,
        accuracy_threshold,
        f1: f1.f1,
        f1_threshold: f1.threshold,
        precision: f1.precision,
        recall: f1.recall,
        ap,
        mcc: matthews_corrcoef(labels, &predicted),
    })
}

// ------------------------------------------------------------------------------------------
// Data files
// ------------------------------------------------------------------------------------------

/// A sentence pair with a gold similarity score (any range).
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredPair {
    pub sentence1: String,
    pub sentence2: String,
    pub score: f64,
}

/// A sentence pair labelled similar (`true`, label 1) or not (`false`, label 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledPair {
    pub sentence1: String,
    pub sentence2: String,
    pub label: bool,
}

/// One cell of a data file.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Text(String),
    Number(f64),
    Bool(bool),
}

impl Cell {
    /// The cell as shown in an error message (long text shortened).
    fn shown(&self) -> String {
        match self {
            Cell::Text(s) => shorten(s),
            Cell::Number(x) => x.to_string(),
            Cell::Bool(b) => b.to_string(),
        }
    }
}

/// A data row: its line number (1-based, where the record starts) and the requested columns.
struct Record {
    line: usize,
    cells: Vec<Cell>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Tsv,
    Csv,
    Jsonl,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "tsv" | "tab" => Ok(Format::Tsv),
        "csv" => Ok(Format::Csv),
        "jsonl" | "ndjson" => Ok(Format::Jsonl),
        _ => Err(Error::Input(format!(
            "{}: unknown data format `.{ext}`: expected .tsv, .csv or .jsonl (decompress .gz files first)",
            path.display()
        ))),
    }
}

/// Split CSV text into records (RFC 4180, as Python's `csv` module reads the excel dialect):
/// fields quoted with `"` may hold the delimiter, `""` and line breaks; a quote inside an
/// unquoted field is literal. Returns `(line where the record starts, fields)`; empty lines are
/// skipped.
fn parse_csv(text: &str, delim: char) -> std::result::Result<Vec<(usize, Vec<String>)>, String> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut record_line = 1usize;
    let mut in_quotes = false;
    let mut quote_line = 0usize;
    let mut at_field_start = true;
    let mut after_quote = false; // just closed a quoted field
    let mut chars = text.chars().peekable();
    fn end_record(
        fields: &mut Vec<String>,
        field: &mut String,
        records: &mut Vec<(usize, Vec<String>)>,
        at: usize,
    ) {
        fields.push(std::mem::take(field));
        let f = std::mem::take(fields);
        // an empty line is no record (Python's csv.DictReader skips it too)
        if !(f.len() == 1 && f[0].is_empty()) {
            records.push((at, f));
        }
    }
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    after_quote = true;
                }
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                in_quotes = true;
                quote_line = line;
                at_field_start = false;
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                end_record(&mut fields, &mut field, &mut records, record_line);
                line += 1;
                record_line = line;
                at_field_start = true;
                after_quote = false;
            }
            c if c == delim => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
                after_quote = false;
            }
            _ => {
                // text after a closing quote is kept, as Python's csv does
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if in_quotes {
        return Err(format!(
            "line {quote_line}: a quoted field is never closed (unbalanced `\"`)"
        ));
    }
    if !(fields.is_empty() && field.is_empty()) || after_quote {
        end_record(&mut fields, &mut field, &mut records, record_line);
    }
    Ok(records)
}

/// Split TSV text into records: one per line, fields split on tabs, no quoting (a `"` is
/// literal, as STS-B's `.tsv` is read with `csv.QUOTE_NONE`). Empty lines are skipped.
fn parse_tsv(text: &str) -> Vec<(usize, Vec<String>)> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    body.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| (i, l.split('\t').map(str::to_string).collect()))
        .collect()
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + upto.iter().filter(|&&b| b == b'\n').count();
        Error::Input(format!(
            "{}: line {line} is not valid UTF-8",
            path.display()
        ))
    })?;
    if text.starts_with('\u{feff}') {
        text.remove(0);
    }
    Ok(text)
}

/// Read the named columns of a data file, in that order.
fn read_records(path: &Path, columns: &[&str]) -> Result<Vec<Record>> {
    let name = path.display().to_string();
    let format = format_of(path)?;
    let text = read_text(path)?;
    if text.trim().is_empty() {
        return Err(Error::Input(format!("{name}: the file is empty")));
    }
    if format == Format::Jsonl {
        return read_jsonl(&name, &text, columns);
    }
    let rows = match format {
        Format::Tsv => parse_tsv(&text),
        _ => parse_csv(&text, ',').map_err(|e| Error::Input(format!("{name}: {e}")))?,
    };
    let mut rows = rows.into_iter();
    let Some((_, header)) = rows.next() else {
        return Err(Error::Input(format!("{name}: the file is empty")));
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    let mut idx = Vec::new();
    let mut missing = Vec::new();
    for c in columns {
        match header.iter().position(|h| h.eq_ignore_ascii_case(c)) {
            Some(i) => idx.push(i),
            None => missing.push(format!("`{c}`")),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Input(format!(
            "{name}: missing column{} {} (the header line has: {})",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            header.join(", ")
        )));
    }
    let mut out = Vec::new();
    for (line, fields) in rows {
        // a whitespace-only line (one field) is as good as empty
        if fields.len() == 1 && fields[0].trim().is_empty() {
            continue;
        }
        if fields.len() != header.len() {
            return Err(Error::Input(format!(
                "{name}: line {line} has {} field{}, the header has {}",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" },
                header.len()
            )));
        }
        let cells = idx.iter().map(|&i| Cell::Text(fields[i].clone())).collect();
        out.push(Record { line, cells });
    }
    Ok(out)
}

fn read_jsonl(name: &str, text: &str, columns: &[&str]) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Input(format!("{name}: line {line_no} is not valid JSON ({e})")))?;
        let serde_json::Value::Object(obj) = v else {
            return Err(Error::Input(format!(
                "{name}: line {line_no} is not a JSON object"
            )));
        };
        let mut cells = Vec::new();
        let mut missing = Vec::new();
        for c in columns {
            match obj.get(*c) {
                Some(serde_json::Value::String(s)) => cells.push(Cell::Text(s.clone())),
                Some(serde_json::Value::Number(n)) => {
                    cells.push(Cell::Number(n.as_f64().unwrap_or(f64::NAN)))
                }
                Some(serde_json::Value::Bool(b)) => cells.push(Cell::Bool(*b)),
                Some(other) => {
                    return Err(Error::Input(format!(
                    "{name}: line {line_no}: field `{c}` must be a string or a number, not {other}"
                )))
                }
                None => missing.push(format!("`{c}`")),
            }
        }
        if !missing.is_empty() {
            return Err(Error::Input(format!(
                "{name}: line {line_no}: missing field{} {}",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", ")
            )));
        }
        out.push(Record {
            line: line_no,
            cells,
        });
    }
    Ok(out)
}

fn text_cell(name: &str, r: &Record, i: usize, column: &str) -> Result<String> {
    match &r.cells[i] {
        Cell::Text(s) => Ok(s.clone()),
        _ => Err(Error::Input(format!(
            "{name}: line {}: `{column}` must be a string",
            r.line
        ))),
    }
}

fn shorten(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

/// Read STS pairs: columns `sentence1`, `sentence2`, `score` (a finite number, any range).
///
/// Errors name the file and, for a bad row, its line: missing columns, a row with the wrong
/// number of fields, an unparsable score, an empty file.
pub fn read_sts(path: impl AsRef<Path>) -> Result<Vec<ScoredPair>> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let records = read_records(path, &["sentence1", "sentence2", "score"])?;
    records
        .iter()
        .map(|r| {
            let score = match &r.cells[2] {
                Cell::Number(x) => Some(*x),
                Cell::Text(s) => s.trim().parse::<f64>().ok(),
                Cell::Bool(_) => None,
            }
            .filter(|x| x.is_finite())
            .ok_or_else(|| {
                let shown = r.cells[2].shown();
                Error::Input(format!(
                    "{name}: line {}: score `{shown}` is not a finite number",
                    r.line
                ))
            })?;
            Ok(ScoredPair {
                sentence1: text_cell(&name, r, 0, "sentence1")?,
                sentence2: text_cell(&name, r, 1, "sentence2")?,
                score,
            })
        })
        .collect()
}

/// Read labelled pairs: columns `sentence1`, `sentence2`, `label` (0 or 1; `0.0`/`1.0` and, in
/// JSON lines, `false`/`true` are accepted too).
///
/// Errors as [`read_sts`], and a label other than 0 or 1.
pub fn read_pairs(path: impl AsRef<Path>) -> Result<Vec<LabeledPair>> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let records = read_records(path, &["sentence1", "sentence2", "label"])?;
    records
        .iter()
        .map(|r| {
            let label = match &r.cells[2] {
                Cell::Bool(b) => Some(*b),
                Cell::Number(x) => (*x == 0.0 || *x == 1.0).then_some(*x == 1.0),
                Cell::Text(s) => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| *x == 0.0 || *x == 1.0)
                    .map(|x| x == 1.0),
            }
            .ok_or_else(|| {
                let shown = r.cells[2].shown();
                Error::Input(format!(
                    "{name}: line {}: label `{shown}` is not 0 or 1",
                    r.line
                ))
            })?;
            Ok(LabeledPair {
                sentence1: text_cell(&name, r, 0, "sentence1")?,
                sentence2: text_cell(&name, r, 1, "sentence2")?,
                label,
            })
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Evaluation
// ------------------------------------------------------------------------------------------

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

    fn fixture(name: &str) -> Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/eval")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    fn f64s(v: &Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }

    fn close(a: f64, b: f64, tol: f64, what: &str) {
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
    fn correlations_match_scipy() {
        let m = fixture("metrics.json");
        let cases = m["correlation"].as_array().unwrap();
        assert!(cases.len() >= 8);
        for c in cases {
            let name = c["name"].as_str().unwrap();
            let (x, y) = (f64s(&c["x"]), f64s(&c["y"]));
            let p = pearson(&x, &y).unwrap();
            let s = spearman(&x, &y).unwrap();
            close(
                p,
                c["pearson"].as_f64().unwrap(),
                1e-12,
                &format!("{name} pearson"),
            );
            close(
                s,
                c["spearman"].as_f64().unwrap(),
                1e-12,
                &format!("{name} spearman"),
            );
            assert_eq!(rank_average(&x), f64s(&c["rank_x"]), "{name} ranks of x");
            assert_eq!(rank_average(&y), f64s(&c["rank_y"]), "{name} ranks of y");
        }
    }

    #[test]
    fn binary_metrics_match_sentence_transformers_and_sklearn() {
        let m = fixture("metrics.json");
        let cases = m["binary"].as_array().unwrap();
        assert!(cases.len() >= 13);
        for c in cases {
            let name = c["name"].as_str().unwrap();
            let scores: Vec<f32> = f64s(&c["scores"]).iter().map(|&x| x as f32).collect();
            let labels: Vec<bool> = c["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_i64().unwrap() == 1)
                .collect();
            let gib = c["greater_is_better"].as_bool().unwrap();
            let got = binary_classification(&scores, &labels, gib).unwrap();
            for (k, v) in got.entries() {
                let want = c[k].as_f64().unwrap();
                if k.ends_with("threshold") {
                    // float32 values computed in float32: bit-exact (compared as f32, since
                    // serde_json's default float parsing may be off by an f64 ulp)
                    assert_eq!(v as f32, want as f32, "{name} {k}");
                } else {
                    close(v, want, 1e-12, &format!("{name} {k}"));
                }
            }
        }
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

    #[test]
    fn degenerate_inputs_are_errors() {
        assert_eq!(
            pearson(&[1.0, 2.0], &[1.0]),
            Err(MetricError::LengthMismatch(2, 1))
        );
        assert_eq!(
            pearson(&[1.0], &[1.0]),
            Err(MetricError::TooFew { need: 2, got: 1 })
        );
        assert_eq!(
            pearson(&[3.0, 3.0, 3.0], &[1.0, 2.0, 3.0]),
            Err(MetricError::Constant(Input::X))
        );
        assert_eq!(
            spearman(&[1.0, 2.0, 3.0], &[0.5, 0.5, 0.5]),
            Err(MetricError::Constant(Input::Y))
        );
        assert_eq!(
            pearson(&[1.0, f64::NAN], &[1.0, 2.0]),
            Err(MetricError::NonFinite(Input::X))
        );
        assert_eq!(
            binary_classification(&[0.1, 0.2], &[true, true], true),
            Err(MetricError::SingleClass(true))
        );
        assert_eq!(
            binary_classification(&[], &[], true),
            Err(MetricError::TooFew { need: 1, got: 0 })
        );
        assert_eq!(best_accuracy(&[], &[], true), (0.0, -1.0));
    }

    #[test]
    fn numpy_sum_is_pairwise() {
        // values from numpy 2.4: np.sum(np.full(300, 0.1)) (a plain loop gives
        // 30.000000000000156), and a sum whose result depends on the blocking
        assert_eq!(numpy_sum(&[0.1; 300]), 29.999999999999996);
        let a = [1e16, 1.0, -1e16, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 1e-3];
        assert_eq!(numpy_sum(&a), 27.001);
        assert_eq!(numpy_sum(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(numpy_sum(&[]), 0.0);
    }

    #[test]
    fn next_f32_steps_one_ulp() {
        assert_eq!(next_f32(1.0, true), 1.0 + f32::EPSILON);
        assert_eq!(next_f32(1.0, false), 1.0 - f32::EPSILON / 2.0);
        assert_eq!(next_f32(-1.0, true), -1.0 + f32::EPSILON / 2.0);
        assert_eq!(next_f32(0.0, true), f32::from_bits(1));
        assert_eq!(next_f32(0.0, false), -f32::from_bits(1));
        assert_eq!(next_f32(f32::MAX, true), f32::INFINITY);
    }

    #[test]
    fn csv_quoting() {
        let text =
            "a,b,c\r\n\"x, y\",\"say \"\"hi\"\"\",3\n\n\"two\nlines\",q\"uote,\r\nlast,,\"\"";
        let rows = parse_csv(text, ',').unwrap();
        assert_eq!(
            rows,
            vec![
                (1, vec!["a".into(), "b".into(), "c".into()]),
                (2, vec!["x, y".into(), "say \"hi\"".into(), "3".into()]),
                (4, vec!["two\nlines".into(), "q\"uote".into(), "".into()]),
                (6, vec!["last".into(), "".into(), "".into()]),
            ]
        );
        assert!(parse_csv("a,b\n\"open,1\n", ',')
            .unwrap_err()
            .contains("line 2"));
    }

    #[test]
    fn tsv_has_no_quoting() {
        let rows = parse_tsv("s1\ts2\tscore\r\n\"a\"\tb, c\t1\n\n");
        assert_eq!(
            rows[1],
            (2, vec!["\"a\"".into(), "b, c".into(), "1".into()])
        );
        assert_eq!(rows.len(), 2);
    }
}
