#!/usr/bin/env python3
"""Embed a corpus with Spark: mapInPandas, one Embedder per task (partition).

    python examples/spark.py --model MODEL --input corpus.txt --output out_dir \
        [--master local[2]] [--partitions 2] [--threads 1]

Without --master: `local[2]`, bound to 127.0.0.1. Under spark-submit on a cluster, pass the
cluster's master (or leave it to spark-submit) and a --partitions of a few per executor core:
each task loads the model once and embeds its partition in Arrow batches. Every executor needs
the deberta_embed package and the model (a path present on every node, or a hub id). Set
--threads to the cores per task (spark.task.cpus), 1 by default.

Input: one sentence per line. Output: Parquet files in --output with columns id (line number),
text, embedding (array<float>). Prints one JSON line with rows, seconds and rows_per_s of the
job (model loads included, the session's start-up not).
"""

import argparse
import json
import os
import sys
import time

from pyspark.sql import SparkSession

from encode_file import read_lines

SCHEMA = "id long, text string, embedding array<float>"


def embed_partitions(model, threads=1, batch_size=32):
    """A mapInPandas function: pandas batches (id, text) in, with an embedding column out."""

    def run(batches):
        import pandas as pd

        from deberta_embed import Embedder

        embedder = Embedder(model, threads=threads, batch_size=batch_size)
        for pdf in batches:
            emb = embedder.encode(pdf["text"].tolist())
            yield pd.DataFrame({"id": pdf["id"], "text": pdf["text"], "embedding": list(emb)})

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model directory or hub id")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="forward threads per task")
    a = ap.parse_args()
    texts = read_lines(a.input)
    model = a.model if not os.path.isdir(a.model) else os.path.abspath(a.model)
    builder = SparkSession.builder.appName("deberta-embed").master(a.master)
    if a.master.startswith("local"):
        # this interpreter for the Python workers, everything on loopback
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (builder.config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.ui.enabled", "false"))
    spark = builder.getOrCreate()
    t0 = time.perf_counter()
    df = spark.createDataFrame(list(enumerate(texts)), "id long, text string")
    out = df.repartition(a.partitions).mapInPandas(embed_partitions(model, a.threads), SCHEMA)
    out.write.mode("overwrite").parquet(a.output)
    dt = time.perf_counter() - t0
    print(json.dumps({"recipe": f"spark {a.master}, {a.partitions} partitions x {a.threads} threads",
                      "rows": len(texts), "seconds": round(dt, 3),
                      "rows_per_s": round(len(texts) / dt, 1)}))
    spark.stop()


if __name__ == "__main__":
    main()
