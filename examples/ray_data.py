#!/usr/bin/env python3
"""Embed a corpus with Ray Data: one Embedder per actor, batches of rows through map_batches.

    python examples/ray_data.py --model MODEL --input corpus.txt --output out_dir \
        [--actors 2] [--threads 1] [--batch-size 256] [--address auto]

Without --address, a local Ray instance on 127.0.0.1 with one CPU per actor. With --address
(`auto` on a node of a cluster started by `ray start`, or `ray://head:10001`), the same pipeline
spreads the actors over the cluster's machines. Every node needs the deberta_embed package and
the model: a path that exists on every node, or a hub id (each node fetches it into its own
Hugging Face cache once).

Input: one sentence per line (read by the driver here; for corpora larger than the driver's
memory, start from `ray.data.read_text` / `read_parquet` on shared storage instead). Output:
Parquet files in --output with columns id (line number), text, embedding (list of float32).
Prints one JSON line with rows, seconds and rows_per_s of the pipeline (actors' model loads
included, Ray's own start-up not).
"""

import argparse
import json
import os
import time

import pyarrow as pa
import ray

from deberta_embed import Embedder
from encode_file import read_lines


class EmbedderActor:
    """A Ray Data actor: loads the model once, then embeds every batch it is handed."""

    def __init__(self, model, threads=1, batch_size=32):
        self.embedder = Embedder(model, threads=threads, batch_size=batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        emb = self.embedder.encode(texts)
        embedding = pa.FixedSizeListArray.from_arrays(emb.ravel(), self.embedder.dim)
        return batch.append_column("embedding", embedding)


def embed(ds, model, actors=2, threads=1, batch_size=256):
    """`ds` (columns id, text) with an embedding column, computed by `actors` actors."""
    return ds.map_batches(
        EmbedderActor,
        fn_constructor_kwargs={"model": model, "threads": threads},
        concurrency=actors,
        num_cpus=threads,
        batch_size=batch_size,
        batch_format="pyarrow",
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model directory or hub id")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--actors", type=int, default=2, help="model replicas (one per actor)")
    ap.add_argument("--threads", type=int, default=1, help="forward threads per actor")
    ap.add_argument("--batch-size", type=int, default=256, help="rows per map_batches call")
    ap.add_argument("--address", default=None, help="an existing Ray cluster (default: local)")
    a = ap.parse_args()
    texts = read_lines(a.input)
    model = a.model if not os.path.isdir(a.model) else os.path.abspath(a.model)
    if a.address:
        ray.init(address=a.address)
    else:
        ray.init(num_cpus=a.actors * a.threads, include_dashboard=False,
                 _node_ip_address="127.0.0.1")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    t0 = time.perf_counter()
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    embed(ds, model, a.actors, a.threads, a.batch_size).write_parquet(a.output)
    dt = time.perf_counter() - t0
    print(json.dumps({"recipe": f"ray data, {a.actors} actors x {a.threads} threads",
                      "rows": len(texts), "seconds": round(dt, 3),
                      "rows_per_s": round(len(texts) / dt, 1)}))
    ray.shutdown()


if __name__ == "__main__":
    main()
