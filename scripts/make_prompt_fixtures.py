#!/usr/bin/env python3
"""Prompt fixtures: two model folders with prompts in config_sentence_transformers.json and the
embeddings sentence-transformers 6.3 computes with them (tests/fixtures/prompts/).

Both reuse the random backbone and tokenizer of tests/fixtures/models/st6_pool_weightedmean
(written by scripts/make_fixtures.py, which runs this script at its end):

* prompts_default: mean pooling + Normalize, max_seq_length 20, prompts query / passage / an
  empty one, default_prompt_name "query" (so a plain encode() prepends "query: ").
* prompts_exclude: all six pooling modes concatenated with include_prompt false (prompt tokens,
  [CLS] included, left out of pooling), max_seq_length 24, no default prompt, and one prompt
  longer than max_seq_length.

For every case (prompt_name / prompt as given to SentenceTransformer.encode) the reference
holds the token ids sentence-transformers fed the model (prompt prepended, then truncated),
the prompt_length it measured, and the embeddings. Same pinned stack as make_fixtures.py
(scripts/requirements-fixtures.txt); CPU, one thread, deterministic.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import (
    BinaryClassificationEvaluator,
    EmbeddingSimilarityEvaluator,
)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
SRC = FIX / "models" / "st6_pool_weightedmean"
OUT = FIX / "prompts"

MODES = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
LONG_PROMPT = "Represent this long instruction " + "word " * 30 + ": "

MODELS = {
    "prompts_default": {
        "pooling": {"embedding_dimension": 32, "pooling_mode": "mean", "include_prompt": True},
        "normalize": True,
        "max_seq_length": 20,
        "prompts": {"query": "query: ", "passage": "passage: ", "plain": ""},
        "default_prompt_name": "query",
        "eval_cases": [{}, {"prompt_name": "passage"}, {"prompt": ""}],
        "cases": [
            {},  # default prompt
            {"prompt_name": "passage"},
            {"prompt_name": "plain"},  # an empty prompt: no prompt at all
            {"prompt": ""},  # turns the default prompt off
            {"prompt": "Instruct: find the answer\nQuery: "},
            {"prompt_name": "passage", "prompt": "custom: "},  # prompt wins
            {"prompt": "   "},  # whitespace only
        ],
    },
    "prompts_exclude": {
        "pooling": {"embedding_dimension": 32, "pooling_mode": MODES, "include_prompt": False},
        "normalize": False,
        "max_seq_length": 24,
        "prompts": {"query": "Represent the query for retrieval: ", "long": LONG_PROMPT, "q": "q"},
        "default_prompt_name": None,
        "eval_cases": [{"prompt_name": "q"}, {"prompt": "q: "}],
        "cases": [
            {},  # no prompt: every token pooled
            {"prompt_name": "query"},
            {"prompt_name": "long"},  # the prompt fills max_seq_length: only [SEP] is pooled
            {"prompt_name": "q"},  # a prompt that may merge with the text's first word
            {"prompt": "Ünïcödé prompt — 🍕: "},
        ],
    },
}


def write_model(name: str, spec: dict) -> Path:
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(SRC / f, d / f)
    sbert = json.loads((SRC / "sentence_bert_config.json").read_text())
    sbert["max_seq_length"] = spec["max_seq_length"]
    (d / "sentence_bert_config.json").write_text(json.dumps(sbert, indent=4))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
    ]
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps(spec["pooling"], indent=4))
    if spec["normalize"]:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.base.modules.normalize.Normalize"})
        (d / "2_Normalize").mkdir()
        (d / "2_Normalize" / "config.json").write_text("{}")
    (d / "modules.json").write_text(json.dumps(modules, indent=2))
    st_cfg = json.loads((SRC / "config_sentence_transformers.json").read_text())
    st_cfg["prompts"] = spec["prompts"]
    st_cfg["default_prompt_name"] = spec["default_prompt_name"]
    (d / "config_sentence_transformers.json").write_text(json.dumps(st_cfg, indent=2))
    return d


STS_FNS = ["cosine", "euclidean", "manhattan", "dot"]
PAIR_FNS = ["cosine", "dot", "manhattan", "euclidean"]
PAIR_METRICS = ["accuracy", "accuracy_threshold", "f1", "f1_threshold", "precision", "recall", "ap", "mcc"]


def run_evaluators(model, cases: list) -> list:
    """sentence-transformers' own evaluators on tests/fixtures/eval/*.jsonl. They encode with the
    model's default prompt; a case's prompt_name / prompt is made that default for the run."""
    def rows(name):
        return [json.loads(l) for l in (FIX / "eval" / name).read_text().splitlines() if l.strip()]
    sts, pairs = rows("sts.jsonl"), rows("pairs.jsonl")
    out = []
    saved = (dict(model.prompts), model.default_prompt_name)
    for case in cases:
        if "prompt" in case:
            model.prompts["__eval__"] = case["prompt"]
            model.default_prompt_name = "__eval__"
        elif "prompt_name" in case:
            model.default_prompt_name = case["prompt_name"]
        ev = EmbeddingSimilarityEvaluator(
            [r["sentence1"] for r in sts], [r["sentence2"] for r in sts], [r["score"] for r in sts],
            similarity_fn_names=STS_FNS, write_csv=False)
        res = ev(model)
        sts_out = {f"{m}_{fn}": float(res[f"{m}_{fn}"]) for fn in STS_FNS for m in ("pearson", "spearman")}
        ev = BinaryClassificationEvaluator(
            [r["sentence1"] for r in pairs], [r["sentence2"] for r in pairs], [r["label"] for r in pairs],
            similarity_fn_names=PAIR_FNS, write_csv=False)
        res = ev(model)
        pair_out = {f"{fn}_{m}": float(res[f"{fn}_{m}"]) for fn in PAIR_FNS for m in PAIR_METRICS}
        out.append({**case, "sts": sts_out, "pairs": pair_out})
        model.prompts, model.default_prompt_name = dict(saved[0]), saved[1]
    return out


def main() -> None:
    torch.set_num_threads(1)
    sentences = json.loads((FIX / "sentences.json").read_text())
    problems = []
    for name, spec in MODELS.items():
        d = write_model(name, spec)
        model = SentenceTransformer(str(d), device="cpu", model_kwargs={"dtype": torch.float32})
        assert model.max_seq_length == spec["max_seq_length"], model.max_seq_length
        cases, tensors = [], {}
        for i, case in enumerate(spec["cases"]):
            emb = model.encode(sentences, batch_size=4, convert_to_numpy=True, **case)
            prompt = model._resolve_prompt(case.get("prompt"), case.get("prompt_name"))
            feats = model.preprocess(sentences, prompt=prompt)
            ids = [
                [int(t) for t, m in zip(row, mask) if m]
                for row, mask in zip(feats["input_ids"].tolist(), feats["attention_mask"].tolist())
            ]
            # the same sentences one at a time: the batch must not matter
            alone = np.stack([model.encode([s], convert_to_numpy=True, **case)[0] for s in sentences])
            diff = float(np.abs(alone - emb).max())
            if diff > 2e-6:
                problems.append(f"{name} case {i}: alone vs batched {diff:.2e}")
            cases.append({
                **case,
                "resolved_prompt": prompt,
                "prompt_length": feats.get("prompt_length"),
                "token_ids": ids,
            })
            tensors[f"case{i}"] = emb.astype(np.float32)
        try:
            model.encode(["x"], prompt_name="no-such-prompt")
            problems.append(f"{name}: an unknown prompt_name was accepted")
        except ValueError as e:
            unknown_error = str(e)
        meta = {
            "model": name,
            "sentences": sentences,
            "dim": int(tensors["case0"].shape[1]),
            "max_seq_length": spec["max_seq_length"],
            "include_prompt": spec["pooling"]["include_prompt"],
            "prompts": spec["prompts"],
            "default_prompt_name": spec["default_prompt_name"],
            "cases": cases,
            "unknown_prompt_name_error": unknown_error,
            "eval": run_evaluators(model, spec["eval_cases"]),
            "versions": {
                "sentence_transformers": __import__("sentence_transformers").__version__,
                "transformers": __import__("transformers").__version__,
                "torch": torch.__version__.split("+")[0],
            },
        }
        (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        save_file(tensors, str(OUT / f"{name}.safetensors"))
        print(f"{name}: {len(cases)} cases, dim {meta['dim']}")
    print("Problems / differences:", problems or "none")


if __name__ == "__main__":
    main()
