#!/usr/bin/env python3
"""Write a random-weight checkpoint with the exact shape of microsoft/deberta-v3-xsmall.

Benchmarks (scripts/compare_cpu.py, `deberta-embed bench --model`) need a real-sized model on
disk but no hub access. This builds one locally from a seed:

    venv/bin/python scripts/make_xsmall_checkpoint.py /tmp/xsmall [--seed 0] [--layout st|hf|ce]

  --layout st (default)  a sentence-transformers 6 model dir (Transformer + mean Pooling),
                         as `SentenceTransformer.save` writes it, with model.safetensors
  --layout hf            a plain transformers dir (DebertaV2Model.save_pretrained + tokenizer);
                         sentence-transformers and deberta-embed both mean-pool it implicitly
  --layout ce            a one-label cross-encoder (reranker): DebertaV2ForSequenceClassification
                         (pooler gelu + classifier) saved by sentence-transformers' CrossEncoder

Config: vocab 128100, hidden 384, 12 layers x 6 heads, intermediate 1536, max_position 512,
relative attention with 256 log buckets, norm_rel_ebd layer_norm, share_att_key, p2c+c2p,
no absolute positions, no token types, eps 1e-7, gelu -- i.e. deberta-v3-xsmall (70.8M params,
of which 49.2M are the word embeddings).

Weights are drawn like a trained model's scale (linears std 0.05, embeddings std 0.5, LayerNorm
gains ~1, small biases) so activations and attention are not degenerate; timings do not depend
on the values, but the correctness checks in compare_cpu.py are only meaningful this way.

The tokenizer is the 640-piece one of tests/fixtures/models/st6_pool_max (tokenizer.json +
tokenizer_config.json copied). Its ids are < 640, the embedding matrix keeps xsmall's 128100
rows; benchmarks feed token ids directly anyway.

Same seed -> same weights (the safetensors file is byte-identical across runs).
"""

from __future__ import annotations

from fixturelib import offline_env

offline_env()

import argparse
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import torch
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_SRC = REPO / "tests" / "fixtures" / "models" / "st6_pool_max"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def xsmall_config(**extra) -> DebertaV2Config:
    return DebertaV2Config(
        **extra,
        vocab_size=128100,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=0,
        initializer_range=0.02,
        layer_norm_eps=1e-7,
        relative_attention=True,
        max_relative_positions=-1,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        pad_token_id=0,
    )


def randomize_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "LayerNorm.weight" in name:
                v = 1.0 + 0.05 * r
            elif name.endswith(".bias"):
                v = 0.02 * r
            elif "embeddings" in name:  # word_embeddings, rel_embeddings
                v = 0.5 * r
            else:  # linear weights
                v = 0.05 * r
            p.copy_(v.to(p.dtype))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", choices=["st", "hf", "ce"], default="st")
    ap.add_argument("--force", action="store_true", help="overwrite OUTDIR if it exists")
    a = ap.parse_args()

    out: Path = a.outdir
    if out.exists():
        if not a.force and any(out.iterdir()):
            sys.exit(f"{out} exists and is not empty (use --force to overwrite)")
        shutil.rmtree(out)
    for f in TOKENIZER_FILES:
        if not (TOKENIZER_SRC / f).is_file():
            sys.exit(f"missing {TOKENIZER_SRC / f}")

    torch.manual_seed(a.seed)
    if a.layout == "ce":
        model = DebertaV2ForSequenceClassification(xsmall_config(num_labels=1)).eval()
    else:
        model = DebertaV2Model(xsmall_config()).eval()
    randomize_(model, a.seed)
    n_params = sum(p.numel() for p in model.parameters())

    def save_hf(d: Path) -> None:
        d.mkdir(parents=True)
        model.save_pretrained(str(d), safe_serialization=True)
        for f in TOKENIZER_FILES:
            shutil.copy(TOKENIZER_SRC / f, d / f)

    if a.layout == "hf":
        save_hf(out)
    elif a.layout == "ce":
        from sentence_transformers import CrossEncoder

        with tempfile.TemporaryDirectory() as tmp:
            backbone = Path(tmp) / "backbone"
            save_hf(backbone)
            CrossEncoder(str(backbone), device="cpu").save(str(out))
            (out / "README.md").unlink(missing_ok=True)
    else:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules.transformer import Transformer
        from sentence_transformers.sentence_transformer.modules.pooling import Pooling

        with tempfile.TemporaryDirectory() as tmp:
            backbone = Path(tmp) / "backbone"
            save_hf(backbone)
            t = Transformer(str(backbone), model_kwargs={"dtype": torch.float32})
            st = SentenceTransformer(
                modules=[t, Pooling(t.get_embedding_dimension(), pooling_mode="mean")], device="cpu"
            )
            st.save(str(out), create_model_card=False)

    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({a.layout} layout, seed {a.seed}): {n_params / 1e6:.1f}M params, {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
