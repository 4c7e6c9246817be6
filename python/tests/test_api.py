"""Shapes, arguments and properties, as SentenceTransformer.encode's numpy output has them."""

import numpy as np
import pytest

import deberta_embed
from conftest import MODELS, Reference, max_abs_diff
from deberta_embed import DebertaEmbedError, Embedder


@pytest.fixture(scope="module")
def model(st2):
    return Embedder(st2.model_dir)


def test_shapes_follow_sentence_transformers(model, st2):
    one = model.encode("A man is eating food.")
    assert one.shape == (st2.dim,) and one.dtype == np.float32
    two = model.encode(["A man is eating food.", "Someone eats."])
    assert two.shape == (2, st2.dim) and two.dtype == np.float32
    assert two.flags["C_CONTIGUOUS"]
    empty = model.encode([])
    assert empty.shape == (0, st2.dim) and empty.dtype == np.float32
    single_list = model.encode(["A man is eating food."])
    assert single_list.shape == (1, st2.dim)
    np.testing.assert_array_equal(single_list[0], one)


def test_any_iterable_of_str(model, st2):
    want = model.encode(st2.sentences)
    np.testing.assert_array_equal(model.encode(tuple(st2.sentences)), want)
    np.testing.assert_array_equal(model.encode(s for s in st2.sentences), want)
    # numpy arrays of str, as Ray Data and pandas hand them over
    np.testing.assert_array_equal(model.encode(np.array(st2.sentences, dtype=object)), want)
    np.testing.assert_array_equal(model.encode(np.array(st2.sentences)), want)


def test_rows_in_input_order(model, st2):
    # sentences of very different lengths, in an order that batching by length would change
    texts = st2.sentences[::-1] + st2.sentences
    got = model.encode(texts, batch_size=3)
    n = len(st2.sentences)
    assert max_abs_diff(got[:n], st2.embeddings[::-1]) <= 1e-4
    assert max_abs_diff(got[n:], st2.embeddings) <= 1e-4


def test_batch_size_does_not_change_results(model, st2):
    base = model.encode(st2.sentences)
    for bs in [1, 2, 5, 16, 17, 1000]:
        got = model.encode(st2.sentences, batch_size=bs)
        assert max_abs_diff(got, base) <= 1e-5, bs
    small = Embedder(st2.model_dir, batch_size=2)
    assert small.batch_size == 2
    assert max_abs_diff(small.encode(st2.sentences), base) <= 1e-5


def test_normalize_off_on_a_model_with_normalize_module():
    r = Reference("st6_proj_cls_norm")
    assert r.meta["normalize"] is True
    default = Embedder(r.model_dir)
    assert default.normalize
    raw = Embedder(r.model_dir, normalize=False)
    assert not raw.normalize
    got = raw.encode(r.sentences)
    norms = np.linalg.norm(got, axis=1)
    assert np.all(np.abs(norms - 1.0) > 1e-3), norms  # really not normalized
    assert max_abs_diff(got / norms[:, None], r.embeddings) <= 1e-4
    # normalize_embeddings=True still normalizes, False keeps the Embedder's choice
    assert max_abs_diff(raw.encode(r.sentences, normalize_embeddings=True), r.embeddings) <= 1e-4
    assert max_abs_diff(default.encode(r.sentences, normalize_embeddings=False), r.embeddings) <= 1e-4


def test_similarity(model, st2):
    emb = model.encode(st2.sentences[:6])
    other = model.encode(st2.sentences[6:])
    e64, o64 = emb.astype(np.float64), other.astype(np.float64)
    cos = (e64 @ o64.T) / np.outer(np.linalg.norm(e64, axis=1), np.linalg.norm(o64, axis=1))
    got = model.similarity(emb, other)
    assert got.shape == (6, len(st2.sentences) - 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, cos, atol=1e-6)
    np.testing.assert_allclose(model.similarity(emb, other, similarity_fn="dot"), e64 @ o64.T, rtol=1e-5)
    diff = e64[:, None, :] - o64[None, :, :]
    np.testing.assert_allclose(
        model.similarity(emb, other, "euclidean"), -np.sqrt((diff**2).sum(-1)), rtol=1e-5
    )
    np.testing.assert_allclose(
        model.similarity(emb, other, "manhattan"), -np.abs(diff).sum(-1), rtol=1e-5
    )
    # 1-D inputs count as one row; lists and float64 arrays are accepted
    assert model.similarity(emb[0], other).shape == (1, other.shape[0])
    np.testing.assert_allclose(
        model.similarity(emb[0].tolist(), e64[:2]), model.similarity(emb[:1], emb[:2]), atol=1e-6
    )
    np.testing.assert_allclose(np.diag(model.similarity(emb, emb)), 1.0, atol=1e-6)
    assert model.similarity(emb[:0], other).shape == (0, other.shape[0])


def test_tokenize(model, st2):
    t = model.tokenize("Hello world")
    assert set(t) == {"ids", "tokens", "special", "offsets", "truncated"}
    assert t["tokens"][0] == "[CLS]" and t["tokens"][-1] == "[SEP]"
    assert t["special"] == [True] + [False] * (len(t["ids"]) - 2) + [True]
    assert not t["truncated"]
    many = model.tokenize(st2.sentences)
    assert isinstance(many, list) and len(many) == len(st2.sentences)
    # the two long sentences (5 and 13, 167 and 280 tokens) among others are cut at 24
    assert many[5]["truncated"] and many[13]["truncated"]
    for i, tk in enumerate(many):
        assert tk["ids"] == st2.token_ids[i]
        if tk["truncated"]:
            assert len(tk["ids"]) == model.max_seq_length, i
        else:
            assert len(tk["ids"]) <= model.max_seq_length, i
    assert model.tokenize([]) == []


def test_properties_and_repr(st2):
    m = Embedder(str(st2.model_dir), threads=1, batch_size=7, dtype="f32")
    assert m.dim == 32 and m.max_seq_length == 24
    assert m.device == "cpu" and m.dtype == "f32" and m.threads == 1 and m.batch_size == 7
    assert m.normalize is False
    assert m.model == str(st2.model_dir)
    r = repr(m)
    assert r.startswith("Embedder(") and "dim=32" in r and "max_seq_length=24" in r
    for dtype in ("bf16", "int8"):
        low = Embedder(st2.model_dir, dtype=dtype)
        assert low.dtype == dtype
        got = low.encode(st2.sentences)
        cos = np.sum(got * st2.embeddings, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(st2.embeddings, axis=1))
        assert cos.min() >= 0.999, dtype  # the library's bf16 / int8 contract


def test_path_objects_and_module_surface(st2):
    m = Embedder(st2.model_dir)  # a pathlib.Path
    assert m.dim == st2.dim
    assert isinstance(deberta_embed.__version__, str) and deberta_embed.__version__
    assert issubclass(DebertaEmbedError, ValueError)
    assert Embedder.encode.__doc__ and "numpy" in Embedder.encode.__doc__
    assert Embedder.__doc__ and "hub id" in Embedder.__doc__


def test_progress_bar_goes_to_stderr(model, st2, capfd):
    got = model.encode(st2.sentences, batch_size=4, show_progress_bar=True)
    captured = capfd.readouterr()
    assert captured.out == ""
    # 17 sentences in batches of 4: 5 batches
    assert "5/5" in captured.err
    assert max_abs_diff(got, st2.embeddings) <= 1e-4
    model.encode(st2.sentences)
    assert capfd.readouterr().err == ""


def test_hub_id_from_the_cache(st2, tmp_path, monkeypatch):
    """A hub id resolves through the Hugging Face cache (offline: no request is made)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--testorg--tiny"
    shutil.copytree(st2.model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    m = Embedder("testorg/tiny")
    assert m.model == "testorg/tiny"
    assert max_abs_diff(m.encode(st2.sentences), st2.embeddings) <= 1e-4
    with pytest.raises(DebertaEmbedError, match="HF_HUB_OFFLINE"):
        Embedder("testorg/absent")
