"""Helpers shared by the scripts that build models and fixtures with transformers
(make_fixtures.py, make_cross_fixtures.py, make_xsmall_checkpoint.py, make_eval_fixtures.py) and
by the comparison scripts: the offline, deterministic environment, the small DeBERTa-v2 config
the fixtures start from, large random weights, and the JSON form of config files.

Standard library only at import time (offline_env must run before transformers is imported);
torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def offline_env() -> None:
    """No hub, no dataset downloads, no GPU, no progress bars, quiet transformers, no
    tokenizer threads: what every script here runs with. Call before importing transformers."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def base_config(vocab_size: int, **kw):
    """A 2-layer DebertaV2Config with relative attention, exact GELU and eps 1e-7; `kw` sets or
    overrides any field."""
    from transformers import DebertaV2Config

    args = dict(
        vocab_size=vocab_size,
        num_hidden_layers=2,
        intermediate_size=64,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        layer_norm_eps=1e-7,
        relative_attention=True,
        pad_token_id=0,
        initializer_range=0.02,
    )
    args.update(kw)
    return DebertaV2Config(**args)


def randomize_(model, seed: int, head_scale: float | None = None) -> None:
    """Large random weights so that positions / layers / heads really differ (std-0.02 init hides
    bugs): LayerNorm gains 1 + 0.1 N, biases 0.1 N, relative embeddings N, other weights 0.2 N,
    drawn in parameter order from one generator seeded `seed`. `head_scale`: the scale of the
    pooler and classifier weights (0.2 like the others when None)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "LayerNorm.weight" in name:
                v = 1.0 + 0.1 * r
            elif name.endswith(".bias"):
                v = 0.1 * r
            elif "rel_embeddings" in name:
                v = 1.0 * r  # visible position terms even without norm_rel_ebd
            elif head_scale is not None and (name.startswith("classifier") or name.startswith("pooler")):
                v = head_scale * r
            else:
                v = 0.2 * r
            p.copy_(v.to(p.dtype))


def write_json_sorted(obj, path: Path) -> None:
    """A config file as transformers writes its own: indent 2, keys sorted, final newline."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def drop_local_keys(tokenizer_config: dict) -> dict:
    """Remove the keys transformers adds when it saves a tokenizer it loaded from a local
    directory (they describe this machine, not the tokenizer)."""
    for k in ("is_local", "local_files_only"):
        tokenizer_config.pop(k, None)
    return tokenizer_config
