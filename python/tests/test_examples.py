"""The scale-out recipes in examples/, each run end to end on this machine (everything bound to
127.0.0.1): every output row equals a direct `encode` of its text.

Needs examples/requirements.txt (`SCALE_OUT=1 bash scripts/install-python-package.sh`); a
framework that is not installed skips its test, saying so, unless DEBERTA_EMBED_SCALE_OUT=require
(as CI sets), which makes it fail."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, Reference
from deberta_embed import Embedder

EXAMPLES = REPO / "examples"


def need(module):
    if importlib.util.find_spec(module) is None:
        if os.environ.get("DEBERTA_EMBED_SCALE_OUT") == "require":
            pytest.fail(f"{module} is not installed (examples/requirements.txt)")
        pytest.skip(f"{module} is not installed: SCALE_OUT=1 bash scripts/install-python-package.sh")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """600 sentences of many lengths (the fixture sentences without line breaks inside, and
    numbered variants), one per line."""
    r = Reference("st6_pool_mean_sqrt_len_tokens")
    base = [s for s in r.sentences if "\n" not in s and "\r" not in s]
    texts = [f"{i}: {base[i % len(base)]}" for i in range(600)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return r.model_dir, path, texts


def run_recipe(script, args, tmp_path):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args, "--output", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, f"{script} failed:\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}"
    stats = json.loads(p.stdout.strip().splitlines()[-1])
    print(script, stats)
    return out, stats


def check_output(out, model_dir, texts, stats):
    import pyarrow.parquet as pq

    table = pq.read_table(out).sort_by("id")
    ids = table.column("id").to_pylist()
    assert ids == list(range(len(texts))), "every line exactly once"
    assert table.column("text").to_pylist() == texts
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    want = Embedder(model_dir).encode(texts)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert stats["rows"] == len(texts) and stats["rows_per_s"] > 0


def run_and_check(corpus, tmp_path, framework, script, *args):
    """Run one recipe over the corpus (skipped, or failed under DEBERTA_EMBED_SCALE_OUT=require,
    when its framework is missing) and check every row of its output."""
    need(framework)
    model, path, texts = corpus
    out, stats = run_recipe(script, ["--model", str(model), "--input", str(path), *args], tmp_path)
    check_output(out, model, texts, stats)


def test_single_process_baseline(corpus, tmp_path):
    run_and_check(corpus, tmp_path, "pyarrow", "encode_file.py")


def test_ray_data(corpus, tmp_path):
    run_and_check(corpus, tmp_path, "ray", "ray_data.py", "--actors", "2", "--batch-size", "64")


def test_spark(corpus, tmp_path):
    run_and_check(corpus, tmp_path, "pyspark", "spark.py", "--master", "local[2]", "--partitions", "3")


def test_dask(corpus, tmp_path):
    run_and_check(corpus, tmp_path, "distributed", "dask_cluster.py", "--workers", "2", "--partitions", "5")
