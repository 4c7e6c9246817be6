//! The metrics of sentence-transformers' evaluators, each computed as the library it comes from
//! computes it: Pearson and Spearman correlation (scipy), and the binary-classification metrics
//! (the evaluator's own threshold search, sklearn's average precision and MCC).

use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::super::tests::{close, f64s, fixture};
    use super::*;

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
}
