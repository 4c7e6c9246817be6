"""Bad inputs raise Python exceptions carrying the library's message; the Embedder keeps
working after each."""

import shutil

import numpy as np
import pytest

from conftest import max_abs_diff
from deberta_embed import DebertaEmbedError, Embedder


@pytest.fixture(scope="module")
def model(st2):
    return Embedder(st2.model_dir)


@pytest.mark.parametrize(
    "bad, what",
    [
        (["ok", 3], r"sentences\[1\] is int, expected str"),
        ([None], r"sentences\[0\] is NoneType"),
        (["ok", b"bytes"], r"sentences\[1\] is bytes"),
        ([["nested"]], r"sentences\[0\] is list"),
        (b"bytes", "got bytes"),
        (42, "got int"),
        (None, "got NoneType"),
    ],
)
def test_non_str_inputs_raise_type_error(model, bad, what):
    with pytest.raises(TypeError, match=what):
        model.encode(bad)
    with pytest.raises(TypeError, match=what):
        model.tokenize(bad)


def test_unencodable_str_raises(model):
    with pytest.raises(UnicodeEncodeError):
        model.encode(["fine", "lone surrogate \ud800"])


def test_missing_model_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(DebertaEmbedError) as e:
        Embedder(missing)
    assert isinstance(e.value, ValueError)
    assert "model" in str(e.value)


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "readme.txt").write_text("not a model")
    with pytest.raises(DebertaEmbedError, match="config.json"):
        Embedder(tmp_path)


def test_corrupt_weights(st2, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(st2.model_dir, d)
    w = d / "pytorch_model.bin"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(DebertaEmbedError, match="pytorch_model.bin"):
        Embedder(d)


@pytest.mark.parametrize(
    "kwargs, what",
    [
        ({"dtype": "f64"}, "unknown dtype `f64`"),
        ({"dtype": "f16"}, "not available on the CPU"),
        ({"device": "tpu"}, "unknown device `tpu`"),
        ({"device": "cuda:x"}, "expected cuda:N"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"batch_size": -5}, "batch_size must be at least 1"),
        ({"threads": 0}, "threads must be at least 1"),
        ({"threads": 10**6}, "4 per core"),
        ({"max_batch_tokens": 0}, "max_batch_tokens must be at least 1"),
    ],
)
def test_bad_options_raise(st2, kwargs, what):
    with pytest.raises(DebertaEmbedError, match=what):
        Embedder(st2.model_dir, **kwargs)


def test_cuda_without_the_feature_or_a_gpu(st2):
    # The default build has no CUDA support; a `cuda` build on a machine without a GPU fails
    # on the device instead. Either way: an error, not a crash.
    with pytest.raises(DebertaEmbedError, match="(?i)cuda|device"):
        Embedder(st2.model_dir, device="cuda")


def test_bad_option_types(st2):
    with pytest.raises(TypeError):
        Embedder(st2.model_dir, batch_size="32")
    with pytest.raises(TypeError):
        Embedder(st2.model_dir, threads=1.5)
    with pytest.raises(TypeError):
        Embedder(123)


@pytest.mark.parametrize("bs", [0, -1])
def test_bad_batch_size_in_encode(model, bs):
    with pytest.raises(DebertaEmbedError, match="batch_size must be at least 1"):
        model.encode(["a"], batch_size=bs)


def test_bad_similarity_arguments(model):
    emb = model.encode(["a", "b"])
    with pytest.raises(DebertaEmbedError, match="unknown similarity function `cosin`"):
        model.similarity(emb, emb, "cosin")
    with pytest.raises(DebertaEmbedError, match="width 32, b of width 3"):
        model.similarity(emb, np.ones((2, 3), np.float32))
    with pytest.raises(DebertaEmbedError, match="1 or 2 dimensions"):
        model.similarity(emb[None], emb)
    with pytest.raises(TypeError, match="not an array of numbers"):
        model.similarity(["a", "b"], emb)


def test_still_works_after_errors(model, st2):
    for bad in (["x", 1], None):
        with pytest.raises(TypeError):
            model.encode(bad)
    with pytest.raises(DebertaEmbedError):
        model.encode(["x"], batch_size=0)
    assert max_abs_diff(model.encode(st2.sentences), st2.embeddings) <= 1e-4
