"""DeBERTa-v2/v3 sentence embeddings from a Rust engine, numerically identical to
sentence-transformers.

    >>> from deberta_embed import Embedder
    >>> model = Embedder("path/to/model")            # or a hub id, "org/name"
    >>> emb = model.encode(["A man is eating food.", "Someone eats."])
    >>> emb.shape                                     # (2, model.dim), float32
    >>> model.similarity(emb, emb)                    # (2, 2) cosine

`Embedder.encode` takes the arguments and returns the shapes of
`SentenceTransformer.encode` (numpy output); errors from the library are raised as
`DebertaEmbedError`, a `ValueError`.
"""

from ._native import DebertaEmbedError, Embedder, __version__

__all__ = ["DebertaEmbedError", "Embedder", "__version__"]
