"""The numerics contract through Python: encode equals sentence-transformers' references on
every fixture model (max |diff| <= 1e-4, cosine >= 0.99999, as tests/reference.rs asks of the
library) and equals the `deberta-embed embed` CLI; token ids equal sentence-transformers'."""

import json
import subprocess

import numpy as np
import pytest

from conftest import cosines, max_abs_diff
from deberta_embed import Embedder

MAX_ABS = 1e-4
MIN_COS = 0.99999


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_encode_matches_sentence_transformers(reference, batch_size):
    r = reference
    model = Embedder(r.model_dir)
    got = model.encode(r.sentences, batch_size=batch_size)
    assert got.dtype == np.float32
    assert got.shape == (len(r.sentences), r.dim)
    assert model.dim == r.dim
    for i in range(len(r.sentences)):
        d = max_abs_diff(got[i], r.embeddings[i])
        assert d <= MAX_ABS, f"{r.name} batch {batch_size}: sentence {i}: max |diff| {d:e}"
        c = cosines(got[i], r.embeddings[i])
        assert c >= MIN_COS, f"{r.name} batch {batch_size}: sentence {i}: cosine {c}"


def test_one_sentence_at_a_time_matches(reference):
    r = reference
    model = Embedder(r.model_dir)
    for i, s in enumerate(r.sentences):
        got = model.encode(s)
        assert got.shape == (r.dim,)
        d = max_abs_diff(got, r.embeddings[i])
        assert d <= MAX_ABS, f"{r.name}: sentence {i} alone: max |diff| {d:e}"


def test_token_ids_and_max_seq_length_match(reference):
    r = reference
    model = Embedder(r.model_dir)
    assert model.max_seq_length == r.meta["max_seq_length"]
    toks = model.tokenize(r.sentences)
    assert [t["ids"] for t in toks] == r.token_ids
    for t, s in zip(toks, r.sentences):
        assert t["ids"] == model.tokenize(s)["ids"]
        assert len(t["tokens"]) == len(t["ids"]) == len(t["special"]) == len(t["offsets"])
        assert t["special"][0] and t["special"][-1]
        assert t["offsets"][0] == (0, 0)
        for (a, b), special in zip(t["offsets"], t["special"]):
            assert 0 <= a <= b <= len(s)


def test_normalize_flag_matches_normalized_reference(reference):
    r = reference
    want = r.embeddings / np.linalg.norm(r.embeddings, axis=1, keepdims=True)
    got = Embedder(r.model_dir).encode(r.sentences, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert max_abs_diff(got, want) <= MAX_ABS
    forced = Embedder(r.model_dir, normalize=True)
    assert forced.normalize
    assert max_abs_diff(forced.encode(r.sentences), want) <= MAX_ABS


def test_encode_matches_cli(reference, cli, tmp_path):
    r = reference
    # JSONL input: one JSON string per line, so tabs and newlines inside sentences survive.
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(s) + "\n" for s in r.sentences), encoding="utf-8")
    out = tmp_path / "out.npy"
    subprocess.run(
        [str(cli), "embed", "--model", str(r.model_dir), "--input", str(inp),
         "--output", str(out), "--format", "npy", "--quiet"],
        check=True,
    )
    want = np.load(out)
    got = Embedder(r.model_dir).encode(r.sentences)
    assert want.shape == got.shape
    d = max_abs_diff(got, want)
    assert d <= MAX_ABS, f"{r.name}: python vs CLI max |diff| {d:e}"
