#!/usr/bin/env python3
"""Embed a corpus with Dask: map_partitions on a distributed cluster, one Embedder per worker.

    python examples/dask_cluster.py --model MODEL --input corpus.txt --output out_dir \
        [--workers 2] [--threads 1] [--partitions 8] [--scheduler tcp://host:8786]

Without --scheduler, a LocalCluster of --workers processes on 127.0.0.1. With --scheduler,
the workers of that cluster (`dask scheduler` + `dask worker` on each machine). Each worker
process loads the model once, on its first partition, and keeps it for the rest. Every worker
needs the deberta_embed package and the model (a path present on every node, or a hub id).

Input: one sentence per line. Output: Parquet files in --output with columns id (line number),
text, embedding (list of float32). Prints one JSON line with rows, seconds and rows_per_s of the
computation (model loads included, the cluster's start-up not).
"""

import argparse
import json
import os
import time

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
from distributed import Client, LocalCluster, get_worker

from encode_file import read_lines

SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string()), ("embedding", pa.list_(pa.float32()))])


def embedder_of_worker(model, threads, batch_size):
    """The model of this worker process, loaded by the first partition that asks."""
    from deberta_embed import Embedder

    worker = get_worker()
    key = (model, threads, batch_size)
    cache = worker.__dict__.setdefault("deberta_embed_models", {})
    if key not in cache:
        cache[key] = Embedder(model, threads=threads, batch_size=batch_size)
    return cache[key]


def embed_partition(pdf, model, threads=1, batch_size=32):
    """A map_partitions function: a pandas DataFrame (id, text) with an embedding column."""
    emb = embedder_of_worker(model, threads, batch_size).encode(pdf["text"].tolist())
    return pdf.assign(embedding=list(emb))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model directory or hub id")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--workers", type=int, default=2, help="local worker processes")
    ap.add_argument("--threads", type=int, default=1, help="forward threads per worker")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--scheduler", default=None, help="an existing cluster (default: local)")
    a = ap.parse_args()
    texts = read_lines(a.input)
    model = a.model if not os.path.isdir(a.model) else os.path.abspath(a.model)
    if a.scheduler:
        client = Client(a.scheduler)
    else:
        cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, host="127.0.0.1",
                               dashboard_address=None, processes=True)
        client = Client(cluster)
    t0 = time.perf_counter()
    pdf = pd.DataFrame({"id": np.arange(len(texts), dtype=np.int64), "text": texts})
    df = dd.from_pandas(pdf, npartitions=a.partitions)
    meta = pdf.iloc[:0].assign(embedding=pd.Series([], dtype=object))
    out = df.map_partitions(embed_partition, model, a.threads, meta=meta)
    out.to_parquet(a.output, write_index=False, schema=SCHEMA)
    dt = time.perf_counter() - t0
    print(json.dumps({"recipe": f"dask, {a.workers} workers x {a.threads} threads",
                      "rows": len(texts), "seconds": round(dt, 3),
                      "rows_per_s": round(len(texts) / dt, 1)}))
    client.close()


if __name__ == "__main__":
    main()
