#!/usr/bin/env python3
"""Embed a text file in one process: the baseline the scale-out recipes are measured against.

    python examples/encode_file.py --model MODEL --input corpus.txt --output out.parquet

Input: one sentence per line (UTF-8). Output: Parquet with columns id (line number), text and
embedding (list of float32). Prints one JSON line with rows, seconds and rows_per_s (model load
included, as in the recipes).
"""

import argparse
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq

from deberta_embed import Embedder


def read_lines(path):
    """The lines of a UTF-8 file, without their line ends (LF or CRLF)."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = [line.removesuffix("\r") for line in f.read().split("\n")]
    if lines[-1] == "":
        lines.pop()  # the end of the last line, or an empty file
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model directory or hub id")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--threads", type=int, default=None, help="default: one per core")
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    texts = read_lines(a.input)
    t0 = time.perf_counter()
    model = Embedder(a.model, threads=a.threads, batch_size=a.batch_size)
    emb = model.encode(texts)
    table = pa.table(
        {
            "id": pa.array(range(len(texts)), pa.int64()),
            "text": texts,
            "embedding": pa.FixedSizeListArray.from_arrays(emb.ravel(), model.dim),
        }
    )
    pq.write_table(table, a.output)
    dt = time.perf_counter() - t0
    print(json.dumps({"recipe": "single process", "rows": len(texts), "seconds": round(dt, 3),
                      "rows_per_s": round(len(texts) / dt, 1)}))


if __name__ == "__main__":
    main()
