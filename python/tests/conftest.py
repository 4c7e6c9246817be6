"""Shared helpers: the committed fixture models and their sentence-transformers references
(tests/fixtures, written by scripts/make_fixtures.py), and the `deberta-embed` CLI."""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MODELS = FIXTURES / "models"
REFERENCE = FIXTURES / "reference"

# Every model with a sentence-transformers reference, as tests/common/mod.rs lists them.
MODEL_NAMES = sorted(
    p.stem for p in REFERENCE.glob("*.json") if p.with_suffix(".safetensors").is_file()
)
assert len(MODEL_NAMES) >= 8, f"expected the fixture models, found {MODEL_NAMES}"


def read_safetensors(path):
    """{name: float32 array} of a safetensors file (8-byte header length, JSON header, data)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (path, name, info["dtype"])
        start, stop = info["data_offsets"]
        out[name] = np.frombuffer(data[start:stop], dtype="<f4").reshape(info["shape"])
    return out


class Reference:
    """One model's reference: sentences, token ids and sentence-transformers' embeddings."""

    def __init__(self, name):
        self.name = name
        self.model_dir = MODELS / name
        self.meta = json.loads((REFERENCE / f"{name}.json").read_text())
        self.sentences = self.meta["sentences"]
        self.token_ids = self.meta["token_ids"]
        self.dim = self.meta["dim"]
        self.embeddings = read_safetensors(REFERENCE / f"{name}.safetensors")["embeddings"]


@pytest.fixture(scope="session", params=MODEL_NAMES)
def reference(request):
    return Reference(request.param)


@pytest.fixture(scope="session")
def st2():
    """The deberta-v3-xsmall-like fixture model (mean pooling, no Normalize, max 24 tokens)."""
    return Reference("st2_v3like")


@pytest.fixture(scope="session")
def cli():
    """Path of the `deberta-embed` binary: $DEBERTA_EMBED_BIN, else built by cargo (a no-op
    when `cargo test --release` or `cargo build --release` already did)."""
    env = os.environ.get("DEBERTA_EMBED_BIN")
    if env:
        return Path(env)
    subprocess.run(
        ["cargo", "build", "--release", "--bin", "deberta-embed"],
        cwd=REPO,
        check=True,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "release" / "deberta-embed"


def max_abs_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))


def cosines(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
