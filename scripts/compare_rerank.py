#!/usr/bin/env python3
"""Time reranking (one query x 100 documents of ~64 tokens) with sentence-transformers' CrossEncoder,
ONNX Runtime and `deberta-embed bench --rerank`, on the same cross-encoder checkpoint, text and threads.

    venv/bin/pip install -r scripts/requirements-compare.txt
    venv/bin/python scripts/make_xsmall_checkpoint.py /tmp/xsmall-ce --layout ce
    cargo build --release
    venv/bin/python scripts/compare_rerank.py --model /tmp/xsmall-ce --threads 2 \
        [--rounds 3] [--bin target/release/deberta-embed] [--json-out FILE]

Workload: a query of ~12 tokens and 100 documents of 64 tokens each (text made of words from the
fixture sentences, cut so that the model's tokenizer gives 64 pieces), written to one file (first
line the query). Each runtime ranks the documents for the query, end to end: tokenization of the
100 pairs ([CLS] q [SEP] d [SEP], longest-first truncation), forward, head, activation, sort.

  sentence-transformers  CrossEncoder(model).rank(query, docs) (batch_size 32, its default),
                         torch.set_num_threads(T), OMP/MKL_NUM_THREADS=T, inference mode, fp32.
  ONNX Runtime           the whole DebertaV2ForSequenceClassification exported with
                         torch.onnx.export(dynamo=True) (dynamic batch and sequence axes), CPU EP,
                         intra_op T, inter_op 1, ORT_ENABLE_ALL; the tokenizer (transformers, fast)
                         pads each batch of 32 pairs, sigmoid and argsort in numpy: all timed. The
                         .onnx is cached next to the model dir (<DIR>.seqcls.onnx).
  deberta-embed          `BIN bench --model DIR --rerank --rerank-input FILE --threads T --json
                         --iters N` (its own median; model loading and warm-up outside).

Correctness first: deberta-embed's `rerank` and ONNX Runtime against sentence-transformers'
scores on the workload (max |diff| of the sigmoid scores, same order).

Timing: each runtime is calibrated once (iterations for about --budget-s seconds, at least
--min-iters); then for each of --rounds rounds the three are measured one after the other in
rotating order (median over the iterations of a measurement). Reported: per runtime the median
over rounds, and the median of the per-round ratios. The load average before and after is
printed (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, cpu_model, git_revision, log, ort_session, timed
from benchlib import export_onnx as export_dynamic


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="cross-encoder dir (one label)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--doc-tokens", type=int, default=64)
    ap.add_argument("--bin", type=Path, default=REPO / "target" / "release" / "deberta-embed")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--budget-s", type=float, default=3.0)
    ap.add_argument("--min-iters", type=int, default=3)
    ap.add_argument("--_export", nargs=2, help=argparse.SUPPRESS)
    return ap.parse_args()


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)


def export_onnx(model_dir: Path, out: Path) -> None:
    """In a child process (torch.export leaves global state behind)."""
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    export_dynamic(Wrap(m).eval(), out, "logits")


if ARGS._export is not None:
    export_onnx(Path(ARGS._export[0]), Path(ARGS._export[1]))
    sys.exit(0)


def make_workload(tok, n_docs: int, doc_tokens: int) -> tuple[str, list[str]]:
    words = " ".join(json.loads((REPO / "tests/fixtures/sentences.json").read_text(encoding="utf-8"))).split()
    words += "the model ranks every document for the query by its relevance score".split()
    rng = random.Random(0)

    def text_of(n: int) -> str:
        out: list[str] = []
        while len(tok(" ".join(out), add_special_tokens=False)["input_ids"]) < n:
            out.append(rng.choice(words))
        # drop words until it fits, then the pieces are exactly n or a little fewer
        while len(tok(" ".join(out), add_special_tokens=False)["input_ids"]) > n:
            out.pop()
        return " ".join(out)

    query = text_of(12)
    docs = [text_of(doc_tokens) for _ in range(n_docs)]
    return query, docs


def main() -> None:
    import onnxruntime as ort
    import sentence_transformers
    import transformers
    from sentence_transformers import CrossEncoder

    load_before = os.getloadavg()
    ce = CrossEncoder(str(ARGS.model), device="cpu", model_kwargs={"dtype": torch.float32})
    assert ce.num_labels == 1, "a one-label cross-encoder is needed"
    tok = ce.tokenizer
    query, docs = make_workload(tok, ARGS.docs, ARGS.doc_tokens)
    pair_lens = [len(x) for x in tok([query] * len(docs), docs, truncation=True)["input_ids"]]
    log(f"workload: 1 query x {len(docs)} documents, pairs of {min(pair_lens)}-{max(pair_lens)} tokens "
        f"({sum(pair_lens)} in all)")
    work = Path(tempfile.mkdtemp(prefix="rerank-"))
    wfile = work / "rerank.jsonl"
    wfile.write_text("".join(json.dumps(x) + "\n" for x in [query, *docs]), encoding="utf-8")
    dfile = work / "docs.jsonl"
    dfile.write_text("".join(json.dumps(x) + "\n" for x in docs), encoding="utf-8")

    # --- correctness
    st_rank = ce.rank(query, docs)
    st_scores = np.array([r["score"] for r in sorted(st_rank, key=lambda r: r["corpus_id"])])
    cmd = [str(ARGS.bin), "rerank", "--model", str(ARGS.model), "--query", query, "--input", str(dfile)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    ours = [json.loads(x) for x in p.stdout.splitlines()]
    our_scores = np.array([r["score"] for r in sorted(ours, key=lambda r: r["index"])])
    order_equal = [r["index"] for r in ours] == [r["corpus_id"] for r in st_rank]
    diff_ours = float(np.abs(our_scores - st_scores).max())
    log(f"deberta-embed rerank vs sentence-transformers: max |score diff| {diff_ours:.2e}, same order: {order_equal}")

    onnx_path = ARGS.model.parent / (ARGS.model.name + ".seqcls.onnx")
    if not onnx_path.exists():
        log(f"ONNX: exporting with torch.onnx.export(dynamo=True) -> {onnx_path}")
        subprocess.run([sys.executable, __file__, "--model", str(ARGS.model), "--threads", str(ARGS.threads),
                        "--_export", str(ARGS.model), str(onnx_path)], check=True, capture_output=True)
    sess = ort_session(onnx_path, ARGS.threads)
    max_len = int(ce.max_seq_length)

    def ort_rank():
        scores = []
        for i in range(0, len(docs), 32):
            d = docs[i:i + 32]
            f = tok([query] * len(d), d, padding=True, truncation="longest_first", max_length=max_len,
                    return_tensors="np")
            logits = sess.run(["logits"], {"input_ids": f["input_ids"].astype(np.int64),
                                           "attention_mask": f["attention_mask"].astype(np.int64)})[0]
            scores.append(1.0 / (1.0 + np.exp(-logits[:, 0])))
        s = np.concatenate(scores)
        return np.argsort(-s, kind="stable"), s

    ort_order, ort_scores = ort_rank()
    diff_ort = float(np.abs(ort_scores - st_scores).max())
    log(f"ONNX Runtime vs sentence-transformers: max |score diff| {diff_ort:.2e}")

    def st_run():
        with torch.inference_mode():
            ce.rank(query, docs)

    def rust_run(iters: int) -> float:
        cmd = [str(ARGS.bin), "bench", "--model", str(ARGS.model), "--rerank", "--rerank-input", str(wfile),
               "--threads", str(ARGS.threads), "--json", "--iters", str(iters), "--warmup", "2"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)}: {p.stderr[-500:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])["median_ms"]

    # calibrate
    st_run()
    ort_rank()
    iters = {}
    for name, fn in (("sentence-transformers", st_run), ("ONNX Runtime", ort_rank)):
        t = statistics.median(timed(fn, 2))
        iters[name] = max(ARGS.min_iters, round(ARGS.budget_s * 1e3 / max(t, 1e-3)))
    t = rust_run(2)
    iters["deberta-embed"] = max(ARGS.min_iters, round(ARGS.budget_s * 1e3 / max(t, 1e-3)))
    rounds = {k: [] for k in iters}
    names = list(iters)
    for r in range(ARGS.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            if name == "deberta-embed":
                ms = rust_run(iters[name])
            else:
                ms = statistics.median(timed(st_run if name == "sentence-transformers" else ort_rank, iters[name]))
            rounds[name].append(ms)
            log(f"round {r + 1}: {name:<22} {ms:9.1f} ms per rank call")
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in rounds.items()}
    ratio = {k: statistics.median([a / b for a, b in zip(rounds[k], rounds["deberta-embed"])])
             for k in rounds if k != "deberta-embed"}
    rev = git_revision(mark_dirty=False)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": rev,
        "cpu": cpu_model(),
        "threads": ARGS.threads,
        "workload": {"docs": len(docs), "doc_tokens": ARGS.doc_tokens, "pair_tokens": sum(pair_lens)},
        "median_ms": med,
        "speedup_of_deberta_embed": ratio,
        "rounds_ms": rounds,
        "check": {"ours_max_abs_diff": diff_ours, "ours_same_order": order_equal, "ort_max_abs_diff": diff_ort},
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__, "onnxruntime": ort.__version__},
    }
    log("")
    log(f"| runtime | ms per rank call (1 x {len(docs)}) | pairs/s | deberta-embed speedup |")
    log("|---|---|---|---|")
    for k in names:
        sp = "1.00" if k == "deberta-embed" else f"{ratio[k]:.2f}"
        log(f"| {k} | {med[k]:.1f} | {len(docs) / (med[k] / 1e3):.0f} | {sp} |")
    log(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if ARGS.json_out:
        ARGS.json_out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
