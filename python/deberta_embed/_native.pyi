"""Type stubs of the Rust extension (src/lib.rs); deberta_embed re-exports everything here."""

import os
from typing import Iterable, List, Literal, Optional, Tuple, TypedDict, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

class DebertaEmbedError(ValueError):
    """A model that cannot be loaded or an input that cannot be embedded; the message is the
    library's (it names the file, field or argument at fault)."""

class Tokenized(TypedDict):
    ids: List[int]
    tokens: List[str]
    special: List[bool]
    offsets: List[Tuple[int, int]]
    truncated: bool

SimilarityFn = Literal["cosine", "dot", "euclidean", "manhattan"]

class Embedder:
    """A loaded DeBERTa-v2/v3 sentence-embedding model.

    model: a model directory or a Hugging Face hub id (`org/name`).
    device: "cpu", or "cuda" / "cuda:N" in a build with the `cuda` feature.
    dtype: None or "f32" (exact), "bf16" (bf16 weights and inputs), "int8" (CPU: int8 weights,
        inputs quantized per row), "f16" (GPU only).
    threads: worker threads of the forward (None: one per core).
    batch_size: default sentences per forward batch of `encode`.
    normalize: None follows the model; True / False force L2 normalization on / off.
    max_batch_tokens: tokens per forward batch at most.
    """

    def __init__(
        self,
        model: Union[str, "os.PathLike[str]"],
        device: str = "cpu",
        dtype: Optional[str] = None,
        threads: Optional[int] = None,
        batch_size: int = 32,
        normalize: Optional[bool] = None,
        max_batch_tokens: int = 16384,
    ) -> None: ...
    @overload
    def encode(
        self,
        sentences: str,
        batch_size: Optional[int] = None,
        normalize_embeddings: bool = False,
        show_progress_bar: bool = False,
    ) -> npt.NDArray[np.float32]:
        """One sentence: a float32 array of shape (dim,)."""
    @overload
    def encode(
        self,
        sentences: Iterable[str],
        batch_size: Optional[int] = None,
        normalize_embeddings: bool = False,
        show_progress_bar: bool = False,
    ) -> npt.NDArray[np.float32]:
        """Sentences: a float32 array of shape (n, dim), rows in input order."""
    def similarity(
        self,
        a: npt.ArrayLike,
        b: npt.ArrayLike,
        similarity_fn: SimilarityFn = "cosine",
    ) -> npt.NDArray[np.float32]:
        """Pairwise similarity of embeddings (dim,) or (n, dim) and (m, dim): shape (n, m)."""
    @overload
    def tokenize(self, texts: str) -> Tokenized: ...
    @overload
    def tokenize(self, texts: Iterable[str]) -> List[Tokenized]: ...
    @property
    def dim(self) -> int:
        """Width of the embeddings."""
    @property
    def max_seq_length(self) -> int:
        """Inputs are truncated to this many tokens, special tokens included."""
    @property
    def device(self) -> str:
        """"cpu", "cuda:0", ..."""
    @property
    def dtype(self) -> str:
        """"f32", "bf16", "int8" or "f16"."""
    @property
    def threads(self) -> int:
        """Worker threads of the forward."""
    @property
    def batch_size(self) -> int:
        """Default sentences per forward batch of `encode`."""
    @property
    def normalize(self) -> bool:
        """Whether `encode` L2-normalizes its output by default."""
    @property
    def model(self) -> str:
        """The model as given (directory or hub id)."""
