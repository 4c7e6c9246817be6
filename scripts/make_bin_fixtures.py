#!/usr/bin/env python3
"""Writes the small PyTorch checkpoints that test src/checkpoint/pytorch/ into tests/fixtures/bin/.

For each of float32, float16 and bfloat16:
  weights_<dtype>.bin          torch.save of an OrderedDict state dict with the awkward cases a
                               reader must get right: a 0-d scalar, 1-d and 3-d tensors, a transposed
                               (non-contiguous) view, two slices of one storage at different
                               offsets, an nn.Parameter, and an int64 buffer
                               `embeddings.position_ids` (which the reader skips);
  weights_<dtype>.safetensors  the same float tensors, contiguous, via safetensors.torch.save_file:
                               the reference the Rust test compares against byte for byte.
Plus:
  nested.bin                   {"state_dict": <float32 state dict>, "epoch": 3}
  legacy.bin                   the float32 state dict in the pre-1.6 (non-zip) format

Values come from a fixed seed, and the zip files come out byte-identical on every run; only
legacy.bin differs between runs (the legacy format names storages by their memory addresses).

Run from anywhere, with the fixture venv (see scripts/requirements-fixtures.txt):
    venv/bin/python scripts/make_bin_fixtures.py
"""

from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "bin"

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def state_dict(dtype: torch.dtype) -> "OrderedDict[str, torch.Tensor]":
    """A state dict whose tensors exercise strides, offsets and storage sharing."""
    g = torch.Generator().manual_seed(1234)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    sd = OrderedDict()
    sd["embeddings.word_embeddings.weight"] = randn(10, 8)
    # int64 buffer as in HF DeBERTa: arange expanded to [1, n] (stride 0 on the first dim).
    sd["embeddings.position_ids"] = torch.arange(16).expand((1, -1))
    sd["embeddings.LayerNorm.weight"] = randn(8)
    sd["encoder.rel_embeddings.weight"] = randn(2, 3, 4)
    sd["logit_scale"] = randn(())  # 0-d scalar
    base = randn(5, 6)
    sd["transposed.weight"] = base.t()  # [6, 5], stride (1, 6)
    assert not sd["transposed.weight"].is_contiguous()
    shared = randn(24)
    sd["shared.first"] = shared[2:8]  # offset 2
    sd["shared.second"] = shared[10:22].view(3, 4)  # offset 10, same storage
    sd["shared.strided"] = shared.view(4, 6)[:, 1::2]  # offset 1, stride (6, 2)
    sd["pooler.weight"] = torch.nn.Parameter(randn(3, 2), requires_grad=False)
    return sd


def contiguous_floats(sd):
    """The float tensors as fresh contiguous tensors (safetensors rejects views and sharing)."""
    return {
        name: t.detach().contiguous().clone()
        for name, t in sd.items()
        if t.is_floating_point()
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, dtype in DTYPES.items():
        sd = state_dict(dtype)
        torch.save(sd, OUT / f"weights_{name}.bin")
        save_file(contiguous_floats(sd), str(OUT / f"weights_{name}.safetensors"))
    sd = state_dict(torch.float32)
    torch.save({"state_dict": sd, "epoch": 3}, OUT / "nested.bin")
    torch.save(sd, OUT / "legacy.bin", _use_new_zipfile_serialization=False)
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
