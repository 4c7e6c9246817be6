#!/usr/bin/env python3
"""Write the fixtures of `deberta-embed eval` (tests/fixtures/eval/) with sentence-transformers'
own evaluators, scipy and scikit-learn as the reference.

Run from anywhere (paths are relative to this file), in the venv of scripts/make_fixtures.py
(pinned stack in scripts/requirements-fixtures.txt, scipy and scikit-learn included):

    /path/to/venv/bin/python scripts/make_eval_fixtures.py

What is written (re-running gives byte-identical files):

    tests/fixtures/eval/sts.tsv        STS pairs, tab-separated, no quoting (as STS-B's .tsv is read)
    tests/fixtures/eval/sts.csv        the same pairs as RFC 4180 CSV, other column order + an id column
    tests/fixtures/eval/sts.jsonl      the same pairs, one JSON object per line
    tests/fixtures/eval/pairs.csv      binary pairs (label 0/1)
    tests/fixtures/eval/pairs.jsonl    the same pairs as JSON lines
    tests/fixtures/eval/expected.json  per model: EmbeddingSimilarityEvaluator and
                                       BinaryClassificationEvaluator results, and the float32
                                       similarity scores the evaluators computed per pair
    tests/fixtures/eval/metrics.json   pure-metric cases: arrays -> scipy pearsonr / spearmanr /
                                       rankdata, and float32 score arrays -> the binary evaluator's
                                       find_best_acc_and_threshold / find_best_f1_and_threshold,
                                       sklearn average_precision_score and matthews_corrcoef

The datasets hold ties in the gold scores, repeated pairs (ties in every similarity), a pair in
both orders, a sentence paired with itself, sentences repeated across rows (deduplication), and
commas and double quotes (CSV quoting). The script checks that distinct similarity values of
different pairs are at least MIN_REL_GAP apart (relative), so that the Rust engine, which
agrees with sentence-transformers to ~1e-5, cannot reorder them: otherwise accuracy/F1/Spearman
could legitimately jump and the comparison would test luck rather than the metric code.
"""

from __future__ import annotations

from fixturelib import offline_env

offline_env()

import csv
import io
import json
import random
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import numpy as np
import scipy
import sentence_transformers
import sklearn
import torch
from scipy.stats import pearsonr, rankdata, spearmanr
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import (
    BinaryClassificationEvaluator,
    EmbeddingSimilarityEvaluator,
)
from sentence_transformers.util import (
    pairwise_cos_sim,
    pairwise_dot_score,
    pairwise_euclidean_sim,
    pairwise_manhattan_sim,
)
from sklearn.metrics import average_precision_score, matthews_corrcoef

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "eval"
MODELS = ["st6_proj_cls_norm", "st2_v3like"]
STS_FNS = ["cosine", "euclidean", "manhattan", "dot"]
PAIR_FNS = ["cosine", "dot", "manhattan", "euclidean"]
PAIR_METRICS = ["accuracy", "accuracy_threshold", "f1", "f1_threshold", "precision", "recall", "ap", "mcc"]
MIN_REL_GAP = 2e-4

# Built from the fixture tokenizer's training words (scripts/make_fixtures.py), so that they
# tokenize into real pieces rather than [UNK].
POOL = [
    "A man is playing the guitar.",
    "A man plays a guitar on the street.",
    "The children read a book about the sea.",
    "Two dogs run across the green field.",
    "A dog is running through the field.",
    "The old house stood near the river.",
    "She wrote a long letter to her mother.",
    "He wrote a short letter to his father.",
    "The ship came back to the port at night.",
    "Boats return to the port, one by one.",
    'They said "hello" to every friend in the town.',
    "The sun is warm, the wind is cold.",
    "A cold wind came from the north.",
    "My family likes to eat fish and food from the farm.",
    "The king had a large gold box.",
    "A young girl draws a map of the city.",
    "The city map was drawn by a girl.",
    "Music was heard in the square all morning.",
    "A bird sings in the tree near the school.",
    "Birds sing on the trees; the school is quiet.",
    "He can't find the answer to the question.",
    "What is the answer, and why?",
    "Five men stood in front of the door.",
    "The machine can fly over the mountain.",
    "Planes fly high above the ocean.",
    "Snow fell on the island during the war.",
    "Café tables stand empty in Zürich.",
    "The test had ten simple questions.",
    "We study science at school every week.",
    "A horse pulls the car down the road.",
]


def sim_scores(model, s1, s2):
    """The float32 similarities exactly as the evaluators compute them."""
    sents = list(dict.fromkeys([*s1, *s2]))
    emb = model.encode(sents, convert_to_numpy=True, batch_size=8)
    d = {s: e for s, e in zip(sents, emb)}
    e1 = np.stack([d[s] for s in s1])
    e2 = np.stack([d[s] for s in s2])
    return {
        "cosine": pairwise_cos_sim(e1, e2).numpy(),
        "dot": pairwise_dot_score(e1, e2).numpy(),
        "euclidean": pairwise_euclidean_sim(e1, e2).numpy(),
        "manhattan": pairwise_manhattan_sim(e1, e2).numpy(),
    }


def min_rel_gap(s1, s2, scores):
    """Smallest relative gap between similarity values of pairs that are not the same pair."""
    worst = float("inf")
    keys = [tuple(sorted((a, b))) for a, b in zip(s1, s2)]
    for fn, v in scores.items():
        v = v.astype(np.float64)
        scale = max(np.abs(v).max(), 1e-12)
        for i in range(len(v)):
            for j in range(i + 1, len(v)):
                if keys[i] == keys[j]:
                    continue
                worst = min(worst, abs(v[i] - v[j]) / scale)
    return worst


def make_rows(rng, n, kind):
    rows = []
    for _ in range(n):
        a, b = rng.sample(POOL, 2)
        if kind == "sts":
            y = round(rng.randint(0, 25) / 5, 1)  # 0.0 .. 5.0 in steps of 0.2: many ties
        else:
            y = rng.randint(0, 1)
        rows.append((a, b, y))
    # a repeated pair, the same pair in the other order, a sentence with itself
    rows.append(rows[0])
    rows.append((rows[1][1], rows[1][0], rows[1][2] if kind == "sts" else 1 - rows[1][2]))
    rows.append((POOL[0], POOL[0], 5.0 if kind == "sts" else 1))
    rng.shuffle(rows)
    return rows


def informative_labels(rng, rows, sims):
    """Labels that follow the models' mean cosine rank, with a fifth of them flipped, so that
    accuracy, F1 and AP land away from their trivial values (random labels on random-weight
    models make "everything similar" the best F1 and "nothing similar" the best accuracy)."""
    n = len(rows)
    rank = sum(rankdata(s["cosine"]) for s in sims)
    order = sorted(range(n), key=lambda i: rank[i])
    label = [0] * n
    for i in order[n // 2 :]:
        label[i] = 1
    first = {}
    for i, (a, b, _) in enumerate(rows):
        key = (a, b)
        if key in first:  # a repeated pair keeps its label
            label[i] = label[first[key]]
            continue
        first[key] = i
        if rng.random() < 0.2:
            label[i] = 1 - label[i]
    # the pair written in both orders (equal similarities) gets both classes: a tie across classes
    for i, (a, b, _) in enumerate(rows):
        j = next((j for j, r in enumerate(rows) if (r[0], r[1]) == (b, a) and a != b), None)
        if j is not None and j > i:
            label[j] = 1 - label[i]
    return [(a, b, label[i]) for i, (a, b, _) in enumerate(rows)]


def choose_rows(models, kind, n, seed0):
    """First seed whose rows keep distinct similarities well apart on every model."""
    for seed in range(seed0, seed0 + 500):
        rng = random.Random(seed)
        rows = make_rows(rng, n, kind)
        s1 = [r[0] for r in rows]
        s2 = [r[1] for r in rows]
        sims = [sim_scores(m, s1, s2) for m in models.values()]
        gaps = [min_rel_gap(s1, s2, s) for s in sims]
        if min(gaps) >= MIN_REL_GAP:
            print(f"{kind}: seed {seed}, {len(rows)} rows, min relative gap {min(gaps):.2e}")
            if kind == "pairs":
                rows = informative_labels(rng, rows, sims)
            return rows
    sys.exit(f"{kind}: no seed with a relative similarity gap >= {MIN_REL_GAP}")


def fnum(x) -> str:
    return repr(float(x))


def write_sts(rows):
    with open(OUT / "sts.tsv", "w", encoding="utf-8", newline="") as f:
        f.write("sentence1\tsentence2\tscore\n")
        for a, b, y in rows:
            assert "\t" not in a + b and "\n" not in a + b
            f.write(f"{a}\t{b}\t{fnum(y)}\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")  # RFC 4180 line ends
    w.writerow(["id", "score", "sentence1", "sentence2"])
    for i, (a, b, y) in enumerate(rows):
        w.writerow([i, fnum(y), a, b])
    (OUT / "sts.csv").write_bytes(buf.getvalue().encode("utf-8"))
    with open(OUT / "sts.jsonl", "w", encoding="utf-8") as f:
        for a, b, y in rows:
            f.write(json.dumps({"sentence1": a, "sentence2": b, "score": y}, ensure_ascii=False) + "\n")


def write_pairs(rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["sentence1", "sentence2", "label"])
    for a, b, y in rows:
        w.writerow([a, b, y])
    (OUT / "pairs.csv").write_bytes(buf.getvalue().encode("utf-8"))
    with open(OUT / "pairs.jsonl", "w", encoding="utf-8") as f:
        for a, b, y in rows:
            f.write(json.dumps({"sentence1": a, "sentence2": b, "label": y}, ensure_ascii=False) + "\n")


def read_back_sts():
    """Read the three files as sentence-transformers' examples do (STS-B: csv with QUOTE_NONE)."""
    out = []
    with open(OUT / "sts.tsv", encoding="utf-8", newline="") as f:
        r = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        out.append([(d["sentence1"], d["sentence2"], float(d["score"])) for d in r])
    with open(OUT / "sts.csv", encoding="utf-8", newline="") as f:
        out.append([(d["sentence1"], d["sentence2"], float(d["score"])) for d in csv.DictReader(f)])
    with open(OUT / "sts.jsonl", encoding="utf-8") as f:
        out.append([(d["sentence1"], d["sentence2"], float(d["score"])) for d in map(json.loads, f)])
    assert out[0] == out[1] == out[2], "the three STS files must hold the same pairs"
    return out[0]


def read_back_pairs():
    with open(OUT / "pairs.csv", encoding="utf-8", newline="") as f:
        a = [(d["sentence1"], d["sentence2"], int(d["label"])) for d in csv.DictReader(f)]
    with open(OUT / "pairs.jsonl", encoding="utf-8") as f:
        b = [(d["sentence1"], d["sentence2"], int(d["label"])) for d in map(json.loads, f)]
    assert a == b
    return a


def f32_list(v):
    return [float(x) for x in np.asarray(v, dtype=np.float32)]


def binary_case(name, scores, labels, gib):
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    E = BinaryClassificationEvaluator
    acc, acc_t = E.find_best_acc_and_threshold(scores, labels, gib)
    f1, p, r, f1_t = E.find_best_f1_and_threshold(scores, labels, gib)
    ap = average_precision_score(labels, scores * (1 if gib else -1))
    pred = (scores >= f1_t) if gib else (scores <= f1_t)
    mcc = matthews_corrcoef(labels, pred)
    return {
        "name": name,
        "scores": f32_list(scores),
        "labels": [int(x) for x in labels],
        "greater_is_better": gib,
        "accuracy": float(acc),
        "accuracy_threshold": float(np.float32(acc_t)),
        "f1": float(f1),
        "f1_threshold": float(np.float32(f1_t)),
        "precision": float(p),
        "recall": float(r),
        "ap": float(ap),
        "mcc": float(mcc),
    }


def corr_case(name, x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return {
        "name": name,
        "x": [float(v) for v in x],
        "y": [float(v) for v in y],
        "pearson": float(pearsonr(x, y)[0]),
        "spearman": float(spearmanr(x, y)[0]),
        "rank_x": [float(v) for v in rankdata(x)],
        "rank_y": [float(v) for v in rankdata(y)],
    }


def metric_cases(st_scores):
    rng = np.random.default_rng(7)
    corr = []
    x = rng.standard_normal(50)
    corr.append(corr_case("normal_50", x, 0.6 * x + 0.8 * rng.standard_normal(50)))
    g = rng.integers(0, 6, 40).astype(np.float64)
    corr.append(corr_case("integer_ties", g, np.round(g + rng.standard_normal(40), 1)))
    x = np.linspace(0.1, 4.0, 25)
    corr.append(corr_case("monotone_nonlinear", x, np.exp(x)))
    x = rng.standard_normal(30)
    corr.append(corr_case("negative", x, -2 * x + 0.3 * rng.standard_normal(30)))
    corr.append(corr_case("n2", [1.0, 3.0], [0.25, -0.5]))
    corr.append(corr_case("all_tied_but_one", [2.0, 2.0, 2.0, 2.0, 5.0], [1.0, 3.0, 2.0, 2.0, 4.0]))
    x = rng.standard_normal(20)
    corr.append(corr_case("offset_1000", 1000.0 + x, 0.5 * x + rng.standard_normal(20)))
    gold = np.round(rng.uniform(0, 5, 60) * 5) / 5
    sims = (gold / 5 + 0.3 * rng.standard_normal(60)).astype(np.float32)
    corr.append(corr_case("stsb_like_f32_sims", gold, sims))

    binary = []
    s = rng.uniform(-1, 1, 40).astype(np.float32)
    lab = (s + 0.6 * rng.standard_normal(40) > 0).astype(int)
    binary.append(binary_case("random_sim", s, lab, True))
    binary.append(binary_case("random_dist", -s + 2, lab, False))
    s = np.round(rng.uniform(0, 1, 50) * 8).astype(np.float32) / 8
    lab = (s + 0.4 * rng.standard_normal(50) > 0.5).astype(int)
    binary.append(binary_case("heavy_ties_sim", s, lab, True))
    binary.append(binary_case("heavy_ties_dist", s, lab, False))
    # every pair dissimilar is best: the threshold is nextafter(top score)
    binary.append(binary_case("all_negative_best", [0.9, 0.8, 0.7, 0.2], [0, 0, 0, 1], True))
    binary.append(binary_case("all_negative_best_dist", [0.9, 0.8, 0.7, 0.2], [0, 0, 0, 1], False))
    # adjacent float32 values: the midpoint rounds onto the next score, so the score itself is used
    one = np.float32(1.0)
    below = np.nextafter(one, np.float32(0))
    binary.append(binary_case("adjacent_f32", [one, below, below, 0.5], [1, 0, 0, 0], True))
    binary.append(binary_case("adjacent_f32_dist", [below, one, one, 2.0], [1, 0, 0, 0], False))
    # best at the last score group (threshold = the last score), ties across classes
    binary.append(binary_case("best_at_end", [0.9, 0.5, 0.5, 0.1], [1, 1, 0, 1], True))
    binary.append(binary_case("tie_across_classes", [0.7, 0.7, 0.7, 0.3, 0.3], [1, 0, 1, 0, 1], True))
    binary.append(binary_case("perfect", [0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], True))
    binary.append(binary_case("inverted", [0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], True))
    binary.append(binary_case("single_positive", [0.3, 0.2, 0.9, 0.4], [0, 0, 0, 1], True))
    # the evaluators' own scores on the fixture pairs, per model and function
    for model, by_fn in st_scores.items():
        lab = by_fn["labels"]
        for fn in PAIR_FNS:
            gib = fn in ("cosine", "dot")
            v = np.asarray(by_fn[fn], dtype=np.float32)
            binary.append(binary_case(f"pairs_{model}_{fn}", v if gib else -v, lab, gib))
    return {"correlation": corr, "binary": binary}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    models = {
        name: SentenceTransformer(str(FIX / "models" / name), device="cpu", model_kwargs={"dtype": torch.float32})
        for name in MODELS
    }
    write_sts(choose_rows(models, "sts", 40, 1000))
    write_pairs(choose_rows(models, "pairs", 40, 2000))
    sts = read_back_sts()
    pairs = read_back_pairs()

    expected = {
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "scipy": scipy.__version__,
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "models": {},
    }
    st_scores = {}
    for name, model in models.items():
        s1, s2, y = [r[0] for r in sts], [r[1] for r in sts], [r[2] for r in sts]
        ev = EmbeddingSimilarityEvaluator(s1, s2, y, similarity_fn_names=STS_FNS, write_csv=False)
        res = ev(model)
        sts_out = {f"{m}_{fn}": float(res[f"{m}_{fn}"]) for fn in STS_FNS for m in ("pearson", "spearman")}
        sts_scores = {fn: f32_list(v) for fn, v in sim_scores(model, s1, s2).items()}

        p1, p2, lab = [r[0] for r in pairs], [r[1] for r in pairs], [r[2] for r in pairs]
        ev = BinaryClassificationEvaluator(p1, p2, lab, similarity_fn_names=PAIR_FNS, write_csv=False)
        res = ev(model)
        pair_out = {f"{fn}_{m}": float(res[f"{fn}_{m}"]) for fn in PAIR_FNS for m in PAIR_METRICS}
        pair_scores = {fn: f32_list(v) for fn, v in sim_scores(model, p1, p2).items()}
        st_scores[name] = {**pair_scores, "labels": lab}

        expected["models"][name] = {
            "sts": sts_out,
            "pairs": pair_out,
            "sts_scores": sts_scores,
            "pairs_scores": pair_scores,
        }
        print(name, json.dumps(sts_out))
        print(name, json.dumps(pair_out))

    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")
    (OUT / "metrics.json").write_text(json.dumps(metric_cases(st_scores), indent=1) + "\n", encoding="utf-8")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
