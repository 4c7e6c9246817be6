#!/usr/bin/env python3
"""Generate the cross-encoder (sequence-classification) fixtures the Rust tests compare against.

Run from anywhere (paths are relative to this file), with the fixtures venv of make_fixtures.py:

    /path/to/venv/bin/python scripts/make_cross_fixtures.py [--realtok]

Builds tiny random-weight `DebertaV2ForSequenceClassification` checkpoints from fixed seeds (no hub
access, CPU only) and records what sentence-transformers' `CrossEncoder` makes of them:

    tests/fixtures/models/ce_<name>/              the checkpoints, laid out as users have them
    tests/fixtures/reference/ce_<name>.json       pairs, token ids + types, logits, scores, rankings
    tests/fixtures/reference/ce_eval_pairs.json   CrossEncoderClassificationEvaluator on eval/pairs.csv

The tokenizer is the one make_fixtures.py trained (copied from tests/fixtures/models/st6_pool_weightedmean),
with model_max_length set per model so that pairs are truncated (longest-first) at odd and even budgets.

  name                   layout                                  head                         token types
  ce_hf_1label           transformers save_pretrained            1 label, pooler gelu          no (type_vocab_size 0)
                         (no sentence-transformers keys)         activation: default Sigmoid
  ce_st6_3label_types    sentence-transformers 6.3 CrossEncoder  3 labels (id2label names),    yes (2), position_biased_input
                         save (modules.json, activation_fn in    pooler tanh, default Identity
                         config_sentence_transformers.json)
  ce_st6_1label_tanh     sentence-transformers 6.3 save          1 label, pooler gelu_new,     yes (2)
                                                                 activation_fn Tanh (saved)
  ce_legacy_2label       transformers layout + CrossEncoder <4   2 labels, pooler relu,        no; embedding_size 24 != hidden 32
                         key `sbert_ce_default_activation_function` activation Sigmoid (legacy)
  ce_v4_1label_identity  transformers layout + ST 4/5 key        1 label, pooler silu,         yes (2)
                         `sentence_transformers.activation_fn`   activation Identity

With --realtok, also writes tests/fixtures/realtok/pairs.json: the real DeBERTa-v3 tokenizer's ids and
token types for sentence pairs (as CrossEncoder tokenizes them: longest-first truncation at 128).
"""

from __future__ import annotations

import fixturelib

fixturelib.offline_env()

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import sentence_transformers
import torch
import transformers
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

torch.set_num_threads(1)
torch.manual_seed(0)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODELS = FIX / "models"
REF = FIX / "reference"
TOK_SRC = MODELS / "st6_pool_weightedmean"


def base_config(**kw) -> DebertaV2Config:
    """The cross-encoder fixtures' backbone: 2 layers of 32 (2 heads), buckets 16, both
    position terms, LayerNorm on the relative embeddings; `kw` overrides any field."""
    args = dict(
        hidden_size=32,
        num_attention_heads=2,
        max_position_embeddings=64,
        type_vocab_size=0,
        max_relative_positions=-1,
        position_buckets=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        pooler_dropout=0.0,
        pooler_hidden_act="gelu",
    )
    args.update(kw)
    return fixturelib.base_config(640, **args)


def copy_tokenizer(d: Path, max_len: int) -> None:
    shutil.copy(TOK_SRC / "tokenizer.json", d / "tokenizer.json")
    cfg = fixturelib.drop_local_keys(json.loads((TOK_SRC / "tokenizer_config.json").read_text()))
    cfg["model_max_length"] = max_len
    fixturelib.write_json_sorted(cfg, d / "tokenizer_config.json")


def patch_config(d: Path, **extra) -> None:
    p = d / "config.json"
    cfg = json.loads(p.read_text())
    cfg.update(extra)
    fixturelib.write_json_sorted(cfg, p)


def build_hf(d: Path, cfg: DebertaV2Config, seed: int, max_len: int) -> None:
    model = DebertaV2ForSequenceClassification(cfg).eval()
    # large random weights, as make_fixtures.py's, and visible heads
    fixturelib.randomize_(model, seed, head_scale=0.3)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(d), safe_serialization=True)
    copy_tokenizer(d, max_len)


def build_st6(d: Path, cfg: DebertaV2Config, seed: int, max_len: int, activation_fn=None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        build_hf(Path(tmp), cfg, seed, max_len)
        ce = CrossEncoder(tmp, device="cpu", activation_fn=activation_fn)
        if d.exists():
            shutil.rmtree(d)
        ce.save(str(d))
    # ST writes a model card and the tokenizer's own copy of its files; keep what loading needs.
    for junk in ("README.md",):
        (d / junk).unlink(missing_ok=True)
    cfg_tok = d / "tokenizer_config.json"
    fixturelib.write_json_sorted(fixturelib.drop_local_keys(json.loads(cfg_tok.read_text())), cfg_tok)


def sentences() -> list[str]:
    return json.loads((FIX / "sentences.json").read_text(encoding="utf-8"))


def make_pairs(s: list[str]) -> list[list[str]]:
    """Pairs of every kind: both short, one or both over the budget, empty sides, same text."""
    n = len(s)
    pairs = []
    for i in range(n):
        pairs.append([s[i], s[(i * 7 + 3) % n]])
    pairs += [
        [s[5], s[13]],  # both long: both truncated, odd/even split
        [s[13], s[5]],
        [s[5], s[5]],  # equal lengths, both over
        [s[13], ""],
        ["", s[13]],
        ["", ""],
        ["A man is eating food.", "A man is eating a piece of bread."],
        ["A man is eating food.", "The girl is carrying a baby."],
        [s[5][:80], s[13][:60]],
        [s[13][:90], s[5][:90]],
    ]
    return pairs


def tokenize_pairs(ce: CrossEncoder, pairs: list[list[str]]) -> tuple[list[list[int]], list[list[int]]]:
    """Ids and token types exactly as CrossEncoder feeds the model (one pair at a time: no padding)."""
    ids, types = [], []
    for a, b in pairs:
        f = ce.preprocess([[a, b]])
        ids.append(f["input_ids"][0].tolist())
        tt = f.get("token_type_ids")
        types.append(tt[0].tolist() if tt is not None else [0] * len(ids[-1]))
    return ids, types


def f32list(t) -> list:
    return t.detach().to(torch.float32).tolist()


def reference(name: str, d: Path, problems: list[str]) -> None:
    ce = CrossEncoder(str(d), device="cpu", model_kwargs={"dtype": torch.float32})
    s = sentences()
    pairs = make_pairs(s)
    ids, types = tokenize_pairs(ce, pairs)
    num_labels = ce.num_labels
    logits = ce.predict(pairs, batch_size=4, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    scores = ce.predict(pairs, batch_size=4, convert_to_tensor=True)
    softmax = ce.predict(pairs, batch_size=4, apply_softmax=True, convert_to_tensor=True)
    # batch-invariance check of the reference itself: each pair alone
    for i, p in enumerate(pairs):
        alone = ce.predict([p], batch_size=1, activation_fn=torch.nn.Identity(), convert_to_tensor=True)[0]
        diff = (alone - logits[i]).abs().max().item()
        if diff > 2e-6:
            problems.append(f"{name}: pair {i} alone differs from batched by {diff:.2e}")
    out = {
        "model": name,
        "num_labels": num_labels,
        "activation_fn": type(ce.activation_fn).__name__,
        "id2label": {str(k): v for k, v in ce.config.id2label.items()},
        "max_seq_length": int(ce.max_seq_length),
        "type_vocab_size": ce.config.type_vocab_size,
        "pairs": pairs,
        "input_ids": ids,
        "token_type_ids": types,
        "logits": f32list(logits),
        "scores": f32list(scores),
        "softmax_scores": f32list(softmax),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
    }
    if num_labels == 1:
        ranks = []
        docs = s + ["A man is eating food.", "A man is eating a piece of bread."]
        for qi, top_k in [(9, None), (0, 5), (5, 3), (16, None)]:
            q = s[qi] if qi < len(s) else "A man is eating food."
            r = ce.rank(q, docs, top_k=top_k, return_documents=True, batch_size=4)
            raw = ce.rank(q, docs, top_k=top_k, batch_size=4, activation_fn=torch.nn.Identity())
            ranks.append(
                {
                    "query": q,
                    "documents": docs,
                    "top_k": top_k,
                    "result": [{"corpus_id": int(x["corpus_id"]), "score": float(x["score"]), "text": x["text"]} for x in r],
                    "raw_result": [{"corpus_id": int(x["corpus_id"]), "score": float(x["score"])} for x in raw],
                }
            )
        out["rank"] = ranks
    (REF / f"{name}.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def eval_reference(names: list[str]) -> None:
    """CrossEncoderClassificationEvaluator on tests/fixtures/eval/pairs.csv (one-label models)."""
    import csv

    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator

    with open(FIX / "eval" / "pairs.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = [[r["sentence1"], r["sentence2"]] for r in rows]
    labels = [int(r["label"]) for r in rows]
    out = {"data": "tests/fixtures/eval/pairs.csv", "models": {}}
    for name in names:
        ce = CrossEncoder(str(MODELS / name), device="cpu", model_kwargs={"dtype": torch.float32})
        ev = CrossEncoderClassificationEvaluator(pairs, labels, name="pairs", batch_size=4)
        m = ev(ce)
        out["models"][name] = {k.removeprefix("pairs_"): float(v) for k, v in m.items()}
    (REF / "ce_eval_pairs.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


def realtok_pairs(problems: list[str]) -> None:
    """The real DeBERTa-v3 tokenizer on pairs (CrossEncoder's call: longest_first at 128)."""
    d = FIX / "realtok"
    meta = json.loads((d / "reference.json").read_text(encoding="utf-8"))
    sents = meta["sentences"]
    tok = AutoTokenizer.from_pretrained(str(d / "model"))
    max_len = 128
    import random

    rng = random.Random(20)
    longs = [x for x in sents if len(tok(x)["input_ids"]) > 140]
    shorts = [x for x in sents if len(tok(x)["input_ids"]) < 40]
    pairs = []
    for _ in range(150):
        a = rng.choice(shorts if rng.random() < 0.5 else longs)
        b = rng.choice(shorts if rng.random() < 0.5 else longs)
        pairs.append([a, b])
    pairs += [[rng.choice(sents), rng.choice(sents)] for _ in range(150)]
    enc = tok([p[0] for p in pairs], [p[1] for p in pairs], truncation="longest_first", max_length=max_len)
    out = {
        "source": "transformers AutoTokenizer on tests/fixtures/realtok/model, truncation longest_first",
        "max_length": max_len,
        "pairs": pairs,
        "input_ids": enc["input_ids"],
        "token_type_ids": enc["token_type_ids"],
        "versions": {"transformers": transformers.__version__},
    }
    (d / "pairs.json").write_text(json.dumps(out, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--realtok", action="store_true", help="also write tests/fixtures/realtok/pairs.json")
    a = ap.parse_args()
    problems: list[str] = []
    specs = [
        ("ce_hf_1label", "hf", base_config(num_labels=1, pooler_hidden_act="gelu"), 101, 24, None, {}),
        (
            "ce_st6_3label_types",
            "st6",
            base_config(
                num_labels=3,
                id2label={0: "contradiction", 1: "entailment", 2: "neutral"},
                label2id={"contradiction": 0, "entailment": 1, "neutral": 2},
                pooler_hidden_act="tanh",
                type_vocab_size=2,
                position_biased_input=True,
                share_att_key=False,
                pos_att_type=["c2p"],
            ),
            102,
            27,
            None,
            {},
        ),
        (
            "ce_st6_1label_tanh",
            "st6",
            base_config(num_labels=1, pooler_hidden_act="gelu_new", type_vocab_size=2),
            103,
            33,
            torch.nn.Tanh(),
            {},
        ),
        (
            "ce_legacy_2label",
            "hf",
            base_config(num_labels=2, pooler_hidden_act="relu", embedding_size=24, position_biased_input=True),
            104,
            30,
            None,
            {"sbert_ce_default_activation_function": "torch.nn.modules.activation.Sigmoid"},
        ),
        (
            "ce_v4_1label_identity",
            "hf",
            base_config(num_labels=1, pooler_hidden_act="silu", type_vocab_size=2, pos_att_type=["p2c"]),
            105,
            26,
            None,
            {"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity", "version": "4.1.0"}},
        ),
    ]
    for name, kind, cfg, seed, max_len, act, extra in specs:
        d = MODELS / name
        if d.exists():
            shutil.rmtree(d)
        if kind == "hf":
            build_hf(d, cfg, seed, max_len)
        else:
            build_st6(d, cfg, seed, max_len, act)
        if extra:
            patch_config(d, **extra)
        reference(name, d, problems)
        print(f"{name}: done", file=sys.stderr)
    eval_reference(["ce_hf_1label", "ce_st6_1label_tanh", "ce_v4_1label_identity"])
    if a.realtok:
        realtok_pairs(problems)
    print("Problems / differences:", problems or "none")


if __name__ == "__main__":
    main()
