#!/usr/bin/env python3
"""Generate the reference fixtures the Rust tests compare against.

Run from anywhere (paths are relative to this file):

    python3 -m venv /path/to/venv
    /path/to/venv/bin/pip install -r scripts/requirements-fixtures.txt
    /path/to/venv/bin/python scripts/make_fixtures.py

Everything is built locally from fixed seeds (no hub access, CPU only), and re-running gives
byte-identical files. What is written (see tests/fixtures/README.md for the formats):

    tests/fixtures/sentences.json            the test sentences
    tests/fixtures/relpos.json               bucketed relative positions, as transformers computes them
    tests/fixtures/models/<name>/            tiny random-weight checkpoints, laid out as users have them
    tests/fixtures/reference/<name>.json     token ids (as sentence-transformers tokenizes), metadata
    tests/fixtures/reference/<name>.safetensors   embeddings + per-layer hidden states (float32)
    tests/fixtures/reference/tokenizer_edge_cases.json   tokenizer.json vs transformers 5.25 on edge inputs

Which model covers what (keep in sync with tests/fixtures/README.md):

  name                 layout / weights                               config rows                                  pooling
  st2_v3like           ST 2.2.2 by hand, pytorch_model.bin fp32       v3-xsmall-like: buckets 16, max_rel -1 (->64),  mean
                       (+ legacy int64 embeddings.position_ids),      norm_rel_ebd layer_norm, share_att_key,
                       4.x-style tokenizer.json (legacy Metaspace)    pos_att_type "p2c|c2p" STRING, max_seq 24
  st6_proj_cls_norm    ST 6 native save, model.safetensors            embedding_size 24 != hidden 32 (embed_proj),   cls + Normalize
                                                                      position_biased_input, type_vocab_size 2,
                                                                      share_att_key false (pos_key_proj), ["c2p"],
                                                                      buckets -1, max_rel -1 (->128), norm none
  hf_seqcls_prefix     plain transformers, model.safetensors with     ["p2c"], buckets 0, max_rel 12, 3 heads x 12,  mean (implicit)
                       `deberta.` prefix + pooler/classifier heads    share_att_key false (pos_query_proj),
                                                                      max_seq from tokenizer_config (20)
  st3_conv_multipool   ST 3.0.1 by hand, pytorch_model.bin fp16,      conv_kernel_size 3, conv_act gelu,            max + mean_sqrt_len
                       4.x-style tokenizer.json, do_lower_case true   conv_groups 2, ["c2p","p2c"], buckets 8,       (concatenated)
                                                                      max_rel 32, share_att_key, max_seq 32
  st6_pool_<mode>      ST 6.2 native, model.safetensors, one shared   xsmall defaults: buckets 256, max_rel -1       weightedmean, lasttoken,
                       backbone, no Normalize                         (->512), max_pos 512, max_seq 512              mean_sqrt_len_tokens, max
  hf_bf16_bin          plain transformers, pytorch_model.bin bf16,    buckets 32, max_rel 128, max_pos 128,          mean (implicit)
                       no prefix (saved from DebertaV2Model)          ["c2p","p2c"]; max_seq from max_pos (128)
"""

from __future__ import annotations

import os

from fixturelib import base_config, offline_env, randomize_

offline_env()

import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import numpy as np
import sentencepiece as spm
import sentence_transformers
import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.normalize import Normalize
from sentence_transformers.base.modules.transformer import Transformer
from sentence_transformers.sentence_transformer.modules.pooling import Pooling
from transformers import (
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DebertaV2Model,
    DebertaV2Tokenizer,
)
from transformers.convert_slow_tokenizer import DebertaV2Converter
from transformers.models.deberta_v2 import modeling_deberta_v2 as hf_deberta

transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODELS = FIX / "models"
REF = FIX / "reference"

VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "sentence_transformers": sentence_transformers.__version__,
    "tokenizers": tokenizers.__version__,
}
N_HIDDEN_SENTENCES = 8  # hidden states are stored for the first 8 sentences only
PROBLEMS: list[str] = []  # collected and printed at the end


def problem(msg: str) -> None:
    print("PROBLEM:", msg)
    PROBLEMS.append(msg)


# --------------------------------------------------------------------------------------------
# JSON helpers (stable, compact lists, one top-level key per line)
# --------------------------------------------------------------------------------------------


def write_json_pretty(obj, path: Path) -> None:
    """The way tools write config files (indent 2, key order as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_json_compact(obj: dict, path: Path) -> None:
    """One top-level key per line, values compact; lists of lists one inner list per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, v in obj.items():
        if isinstance(v, list) and v and all(isinstance(x, (list, dict)) for x in v):
            inner = ",\n  ".join(json.dumps(x, ensure_ascii=False) for x in v)
            lines.append(f" {json.dumps(k)}: [\n  {inner}\n ]")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


# --------------------------------------------------------------------------------------------
# 1. sentences
# --------------------------------------------------------------------------------------------

WORDS = """the of and to a in is it you that he was for on are with as I his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an each she which
do their time if will way about many then them write would like so these her long make thing see him two has
look more day could go come did number sound no most people my over know water than call first who may down
side been now find any new work part take get place made live where after back little only round man year came
show every good me give our under name very through just form sentence great think say help low line differ
turn cause much mean before move right boy old too same tell does set three want air well also play small end
put home read hand port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth father head
stand own page should country found answer school grow study still learn plant cover food sun four between
state keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late
run while press close night real life few north open seem together next white children begin got walk example
ease paper group always music those both mark often letter until mile river car feet care second book carry
took science eat room friend began idea fish mountain stop once base hear horse cut sure watch color face wood
main enough plain girl usual young ready above ever red list though feel talk bird soon body dog family direct
pose leave song measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space heard best hour better true
during hundred five remember step early hold west ground interest reach fast verb sing listen six table travel
less morning ten simple several vowel toward war lay against pattern slow center love person money serve
appear road map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark
machine note wait plan figure star box noun field rest correct able pound done beauty drive stood contain
front teach week final gave green oh quick develop ocean warm free minute strong special mind behind clear tail
produce fact street inch multiply nothing course stay wheel full force blue object decide surface deep moon
island foot system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran
check game shape equate miss brought heat snow tire bring yes distant fill east paint language among embedding
sentence transformer attention relative position bucket encoder decoder kernel matrix vector tensor""".split()

ACCENTED = "café naïve résumé über straße jalapeño façade coöperate Zürich São Paulo déjà vu crème brûlée Ångström".split()
CJK_CHARS = "日本語のテキストですこれはテスト中文文本東京大阪京都山川人大小上下"
HANGUL = ["한국어", "안녕하세요", "텍스트"]
EMOJI = ["🍕", "😀", "👍", "🎉"]  # 🚀 deliberately absent: it must come out as [UNK]
PUNCT = [",", ".", "!", "?", ";", ":", "(", ")", "-", "'s", "%", "$", "#", "&", "/", "\"", "..."]


def make_corpus() -> list[str]:
    rng = random.Random(20240611)
    lines = []
    for _ in range(4000):
        toks = []
        for _ in range(rng.randint(3, 16)):
            r = rng.random()
            if r < 0.72:
                w = rng.choice(WORDS)
            elif r < 0.79:
                w = rng.choice(ACCENTED)
            elif r < 0.84:
                w = "".join(rng.choice(CJK_CHARS) for _ in range(rng.randint(1, 5)))
            elif r < 0.855:
                w = rng.choice(HANGUL)
            elif r < 0.875:
                w = rng.choice(EMOJI)
            elif r < 0.93:
                w = str(rng.choice([rng.randint(0, 9), rng.randint(10, 99), rng.randint(100, 2030)]))
            else:
                w = rng.choice(PUNCT)
            c = rng.random()
            if c < 0.08:
                w = w.capitalize()
            elif c < 0.1:
                w = w.upper()
            toks.append(w)
        lines.append(" ".join(toks))
    return lines


LONG_1 = (
    "Once upon a time a young girl walked along the river with her father and their old dog, "
    "and while the sun was still low over the mountain they talked about the stars, the moon, "
    "the sea and every animal they could name, counting birds on each tree near the farm until "
    "the cold wind from the north told them it was time to go back home for food and a long rest "
    "before the next day of work in the fields began again."
)
LONG_2 = (
    "In the second chapter of the story the whole family travels south to a large city by the ocean, "
    "where the children learn to read music, draw maps of each street, and listen to the king's "
    "band play in the square; they count 1,234 ships in the port, measure the heat of the island "
    "sand at noon, write letters to friends in the north about the strange food, the tall white "
    "houses and the deep blue water, and at night they watch the boats come back with fish while "
    "their mother tells them why the wind changes, how a machine can fly, and what a vowel is, "
    "until every question has an answer and the last light goes out over the quiet town, "
    "Zürich-style café tables stand empty, and 42 dogs sleep near the door of the old school house."
)

SENTENCES = [
    "",  # 0 empty
    "Hello world!",  # 1
    "Café naïve résumé",  # 2 accents (NFC input)
    "日本語のテキストです",  # 3 CJK
    "I love 🍕 and 🚀!",  # 4 emoji (🚀 is [UNK])
    LONG_1,  # 5 longer than every max_seq_length except 512
    "   ",  # 6 whitespace only
    "The Quick BROWN Fox jumped over 3 LAZY dogs in 2024 (twice).",  # 7 mixed case, numbers
    "\t\n",  # 8 tab + newline only
    "Line one\twith a tab\nand a newline\r\nand  more   spaces.",  # 9 internal whitespace
    "  leading and trailing spaces  ",  # 10
    "Prices: $12.50, 3.14%, #42 & 1,000,000 items... ok?!",  # 11 numbers / punctuation
    "a",  # 12 single character
    LONG_2,  # 13 longer than every max_seq_length except 512
    "Straße in Zürich, déjà vu in São Paulo.",  # 14
    "中文 mixed with English and 한국어 text",  # 15
    "what is [MASK] here",  # 16 special token spelled out in the text
]

# Inputs where a tokenizer.json's own normalizer (4.x: Strip + Precompiled charsmap + Replace;
# 5.0-5.24: no charsmap) and transformers 5.25's DebertaV2Tokenizer (which rebuilds the
# normalizer around the file's charsmap, if any) may disagree.
EDGE_CASES = [
    "x\u00a0y",  # no-break space
    "Ｆｕｌｌ ｗｉｄｔｈ",  # full-width
    "\ufb01ne",  # fi ligature
    "wait\u2026",  # ellipsis
    "\u2460 \u00bd",  # circled one, vulgar fraction
    "Cafe\u0301",  # NFD input
    "東京\u3000大阪",  # ideographic space
    "zero\u200bwidth",  # zero-width space
    "soft\u00adhyphen",  # soft hyphen
    "a\x0bb\x0cc",  # vertical tab, form feed
    "\u2003em space",  # em space
    " \tstart",
    "end \t\n",
    "x  \n  y",
]


# --------------------------------------------------------------------------------------------
# 2. tokenizer
# --------------------------------------------------------------------------------------------


def train_spm(workdir: Path) -> Path:
    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join(make_corpus()) + "\n", encoding="utf-8")
    # relative paths: the trainer spec stored inside spm.model records them (determinism)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        _train_spm_here()
    finally:
        os.chdir(cwd)
    return workdir / "spm.model"


def _train_spm_here() -> None:
    spm.SentencePieceTrainer.train(
        input="corpus.txt",
        model_prefix="spm",
        vocab_size=640,
        model_type="unigram",
        pad_id=0,
        pad_piece="[PAD]",
        bos_id=1,
        bos_piece="[CLS]",
        eos_id=2,
        eos_piece="[SEP]",
        unk_id=3,
        unk_piece="[UNK]",
        user_defined_symbols=["[MASK]"],
        character_coverage=1.0,
        num_threads=1,
        max_sentencepiece_length=8,
        shuffle_input_sentence=False,
        minloglevel=2,
    )


class _SlowTokenizerShim:
    """What transformers 4.x's DebertaV2Converter reads off the slow DebertaV2Tokenizer."""

    def __init__(self, spm_path: Path):
        self.vocab_file = str(spm_path)
        self.split_by_punct = False
        self.do_lower_case = False
        self.add_prefix_space = True
        self._sp = spm.SentencePieceProcessor(model_file=str(spm_path))

    def convert_tokens_to_ids(self, token):
        return self._sp.piece_to_id(token)


def v4_tokenizer_json(spm_path: Path, legacy_metaspace: bool) -> str:
    """tokenizer.json as transformers 4.x wrote it for DeBERTa-v3 (DebertaV2Converter):
    normalizer Strip + Precompiled(charsmap) + Replace(" {2,}", " "), Metaspace, [CLS] $A [SEP].
    legacy_metaspace: the tokenizers<0.14 Metaspace serialization {"add_prefix_space": true}."""
    tk = DebertaV2Converter(_SlowTokenizerShim(spm_path)).converted()
    d = json.loads(tk.to_str())
    # 4.x marked all five specials as special added tokens
    for t in d["added_tokens"]:
        t["special"] = True
    if legacy_metaspace:

        def fix(p):
            if p.get("type") == "Metaspace":
                return {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}
            if p.get("type") == "Sequence":
                p["pretokenizers"] = [fix(x) for x in p["pretokenizers"]]
            return p

        d["pre_tokenizer"] = fix(d["pre_tokenizer"])
        d["decoder"] = fix(d["decoder"])
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def v4_tokenizer_config(model_max_length=1000000000000000019884624838656) -> dict:
    # What transformers 4.3x wrote for microsoft/deberta-v3-* (huge model_max_length = int(1e30))
    return {
        "bos_token": "[CLS]",
        "clean_up_tokenization_spaces": True,
        "cls_token": "[CLS]",
        "do_lower_case": False,
        "eos_token": "[SEP]",
        "mask_token": "[MASK]",
        "model_max_length": model_max_length,
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "sp_model_kwargs": {},
        "split_by_punct": False,
        "tokenizer_class": "DebertaV2Tokenizer",
        "unk_token": "[UNK]",
        "vocab_type": "spm",
    }


V4_SPECIAL_TOKENS_MAP = {
    "bos_token": "[CLS]",
    "cls_token": "[CLS]",
    "eos_token": "[SEP]",
    "mask_token": "[MASK]",
    "pad_token": "[PAD]",
    "sep_token": "[SEP]",
    "unk_token": "[UNK]",
}


def load_v5_tokenizer(spm_path: Path, workdir: Path) -> DebertaV2Tokenizer:
    d = workdir / "tok_from_spm"
    d.mkdir(exist_ok=True)
    shutil.copy(spm_path, d / "spm.model")
    tok = DebertaV2Tokenizer.from_pretrained(str(d))
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3), tok
    assert tok.mask_token_id == 4
    return tok


# --------------------------------------------------------------------------------------------
# 3. models
# --------------------------------------------------------------------------------------------


def save_v4_tokenizer_files(d: Path, spm_path: Path, legacy_metaspace: bool, with_spm: bool) -> None:
    (d / "tokenizer.json").write_text(v4_tokenizer_json(spm_path, legacy_metaspace), encoding="utf-8")
    write_json_pretty(v4_tokenizer_config(), d / "tokenizer_config.json")
    write_json_pretty(V4_SPECIAL_TOKENS_MAP, d / "special_tokens_map.json")
    if with_spm:  # real DeBERTa-v3 checkpoints ship it; 250 KB, so only once
        shutil.copy(spm_path, d / "spm.model")


def legacy_config_json(cfg: DebertaV2Config, architectures, transformers_version, dtype="float32", **override) -> dict:
    """config.json in the 4.x style (key order sorted, torch_dtype, no 5.x-only keys)."""
    d = {
        "architectures": architectures,
        "attention_probs_dropout_prob": cfg.attention_probs_dropout_prob,
        "hidden_act": cfg.hidden_act,
        "hidden_dropout_prob": cfg.hidden_dropout_prob,
        "hidden_size": cfg.hidden_size,
        "initializer_range": cfg.initializer_range,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "max_relative_positions": cfg.max_relative_positions,
        "model_type": "deberta-v2",
        "norm_rel_ebd": cfg.norm_rel_ebd,
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "pad_token_id": 0,
        "pooler_dropout": 0,
        "pooler_hidden_act": "gelu",
        "pooler_hidden_size": cfg.hidden_size,
        "pos_att_type": cfg.pos_att_type,
        "position_biased_input": cfg.position_biased_input,
        "position_buckets": cfg.position_buckets,
        "relative_attention": cfg.relative_attention,
        "share_att_key": cfg.share_att_key,
        "torch_dtype": dtype,
        "transformers_version": transformers_version,
        "type_vocab_size": cfg.type_vocab_size,
        "vocab_size": cfg.vocab_size,
    }
    for k in ("conv_kernel_size", "conv_act", "conv_groups", "embedding_size"):
        if hasattr(cfg, k):
            d[k] = getattr(cfg, k)
    d.update(override)
    return dict(sorted(d.items()))


def make_st2_v3like(out: Path, V: int, spm_path: Path) -> None:
    cfg = base_config(
        V,
        hidden_size=32,
        num_attention_heads=2,
        max_position_embeddings=64,
        max_relative_positions=-1,
        position_buckets=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type="p2c|c2p",
        type_vocab_size=0,
        position_biased_input=False,
    )
    model = DebertaV2Model(cfg).eval()
    randomize_(model, 101)
    out.mkdir(parents=True)
    write_json_pretty(
        legacy_config_json(cfg, ["DebertaV2Model"], "4.30.2", pos_att_type="p2c|c2p"), out / "config.json"
    )
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    # transformers < 4.31 saved this buffer (int64) into every checkpoint; readers must skip it
    sd["embeddings.position_ids"] = torch.arange(cfg.max_position_embeddings, dtype=torch.int64).unsqueeze(0)
    torch.save(sd, out / "pytorch_model.bin")
    save_v4_tokenizer_files(out, spm_path, legacy_metaspace=True, with_spm=True)
    write_json_pretty(
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ],
        out / "modules.json",
    )
    write_json_pretty(
        {
            "word_embedding_dimension": 32,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
        out / "1_Pooling" / "config.json",
    )
    write_json_pretty({"max_seq_length": 24, "do_lower_case": False}, out / "sentence_bert_config.json")
    write_json_pretty(
        {"__version__": {"sentence_transformers": "2.2.2", "transformers": "4.30.2", "pytorch": "2.0.1+cu117"}},
        out / "config_sentence_transformers.json",
    )


def make_st3_conv_multipool(out: Path, V: int, spm_path: Path) -> None:
    cfg = base_config(
        V,
        hidden_size=40,
        num_attention_heads=4,
        max_position_embeddings=64,
        max_relative_positions=32,
        position_buckets=8,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["c2p", "p2c"],
        type_vocab_size=0,
        position_biased_input=False,
        conv_kernel_size=3,
        conv_act="gelu",
        conv_groups=2,
    )
    model = DebertaV2Model(cfg).eval()
    assert model.encoder.conv is not None and model.encoder.conv.conv.groups == 2
    randomize_(model, 404)
    out.mkdir(parents=True)
    write_json_pretty(
        legacy_config_json(cfg, ["DebertaV2Model"], "4.41.2", dtype="float16"), out / "config.json"
    )
    sd = {k: v.half() for k, v in model.state_dict().items()}
    torch.save(sd, out / "pytorch_model.bin")
    save_v4_tokenizer_files(out, spm_path, legacy_metaspace=False, with_spm=False)
    write_json_pretty(
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ],
        out / "modules.json",
    )
    write_json_pretty(
        {
            "word_embedding_dimension": 40,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": True,
            "pooling_mode_mean_sqrt_len_tokens": True,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
        out / "1_Pooling" / "config.json",
    )
    # do_lower_case true: sentence-transformers lowercases the input (6.x: a Lowercase normalizer)
    write_json_pretty({"max_seq_length": 32, "do_lower_case": True}, out / "sentence_bert_config.json")
    write_json_pretty(
        {
            "__version__": {"sentence_transformers": "3.0.1", "transformers": "4.41.2", "pytorch": "2.3.0+cu121"},
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": None,
        },
        out / "config_sentence_transformers.json",
    )


def save_hf_dir(model, tok, d: Path, safe=True) -> None:
    d.mkdir(parents=True)
    model.save_pretrained(str(d), safe_serialization=safe)
    tok.save_pretrained(str(d))


def st6_save(modules, out: Path) -> None:
    st = SentenceTransformer(modules=modules, device="cpu")
    st.save(str(out), create_model_card=False)


def make_st6_proj_cls_norm(out: Path, V: int, tok, work: Path) -> None:
    cfg = base_config(
        V,
        hidden_size=32,
        embedding_size=24,
        num_attention_heads=4,
        max_position_embeddings=128,
        max_relative_positions=-1,
        position_buckets=-1,
        norm_rel_ebd="none",
        share_att_key=False,
        pos_att_type=["c2p"],
        type_vocab_size=2,
        position_biased_input=True,
    )
    model = DebertaV2Model(cfg).eval()
    assert model.embeddings.embed_proj is not None
    assert hasattr(model.encoder.layer[0].attention.self, "pos_key_proj")
    randomize_(model, 202)
    tmp = work / "b_backbone"
    save_hf_dir(model, tok, tmp)
    t = Transformer(str(tmp), max_seq_length=40, model_kwargs={"dtype": torch.float32})
    st6_save([t, Pooling(t.get_embedding_dimension(), pooling_mode="cls"), Normalize()], out)
    as_early_v5_tokenizer_json(out / "tokenizer.json")


def as_early_v5_tokenizer_json(path: Path) -> None:
    """The normalizer transformers 5.0-5.24 wrote into tokenizer.json for DeBERTa-v2/v3: no
    precompiled charsmap, whitespace collapse + NFC + right strip (5.25 writes the charsmap again).
    Models saved in that window keep it, and transformers 5.25 then tokenizes without nmt_nfkc."""
    d = json.loads(path.read_text(encoding="utf-8"))
    assert any(n["type"] == "Precompiled" for n in d["normalizer"]["normalizers"]), d["normalizer"]
    d["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Replace", "pattern": {"Regex": "\\s{2,}|[\\n\\r\\t]"}, "content": " "},
            {"type": "NFC"},
            {"type": "Strip", "strip_left": False, "strip_right": True},
        ],
    }
    path.write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def make_hf_seqcls_prefix(out: Path, V: int, tok) -> None:
    cfg = base_config(
        V,
        hidden_size=36,
        num_attention_heads=3,
        max_position_embeddings=64,
        max_relative_positions=12,
        position_buckets=0,
        norm_rel_ebd="layer_norm",
        share_att_key=False,
        pos_att_type=["p2c"],
        type_vocab_size=0,
        position_biased_input=False,
        num_labels=2,
    )
    model = DebertaV2ForSequenceClassification(cfg).eval()
    assert hasattr(model.deberta.encoder.layer[0].attention.self, "pos_query_proj")
    randomize_(model, 303)
    tok = DebertaV2Tokenizer.from_pretrained(tok.name_or_path, model_max_length=20)
    assert tok.model_max_length == 20
    save_hf_dir(model, tok, out)


def make_st6_pool_backbone(work: Path, V: int, tok) -> Path:
    cfg = base_config(
        V,
        hidden_size=32,
        num_attention_heads=2,
        max_position_embeddings=512,
        max_relative_positions=-1,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        type_vocab_size=0,
        position_biased_input=False,
    )
    model = DebertaV2Model(cfg).eval()
    randomize_(model, 505)
    tmp = work / "e_backbone"
    save_hf_dir(model, tok, tmp)
    return tmp


def make_st6_pool(out: Path, backbone: Path, mode: str) -> None:
    t = Transformer(str(backbone), model_kwargs={"dtype": torch.float32})
    st6_save([t, Pooling(t.get_embedding_dimension(), pooling_mode=mode)], out)


def make_hf_bf16_bin(out: Path, V: int, tok) -> None:
    cfg = base_config(
        V,
        hidden_size=48,
        num_attention_heads=4,
        max_position_embeddings=128,
        max_relative_positions=128,
        position_buckets=32,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["c2p", "p2c"],
        type_vocab_size=0,
        position_biased_input=False,
    )
    model = DebertaV2Model(cfg).eval()
    randomize_(model, 606)
    model = model.to(torch.bfloat16)
    out.mkdir(parents=True)
    model.config.dtype = torch.bfloat16
    model.config.architectures = ["DebertaV2Model"]
    model.config.save_pretrained(str(out))
    # a .bin as torch.save writes it (transformers 5 no longer writes .bin itself)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "pytorch_model.bin")
    tok.save_pretrained(str(out))


# --------------------------------------------------------------------------------------------
# 4. references
# --------------------------------------------------------------------------------------------


def load_st(d: Path) -> SentenceTransformer:
    st = SentenceTransformer(str(d), device="cpu", model_kwargs={"dtype": torch.float32})
    st.eval()
    for n, p in st.named_parameters():
        assert p.dtype == torch.float32, (d, n, p.dtype)
    return st


def st_token_ids(st: SentenceTransformer, s: str) -> list[int]:
    f = st.preprocess([s])
    ids = f["input_ids"][0]
    assert bool(f["attention_mask"][0].all()), "single-sentence batch must not be padded"
    return [int(x) for x in ids]


def pooling_modes(st) -> list[str]:
    for m in st:
        if isinstance(m, Pooling):
            return [m.pooling_mode] if isinstance(m.pooling_mode, str) else list(m.pooling_mode)
    raise AssertionError("no pooling module")


def has_normalize(st) -> bool:
    return any(isinstance(m, Normalize) for m in st)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def bucket_design(r: np.ndarray, pb: int, max_rel: int) -> np.ndarray:
    """bucket(r) exactly as transformers computes it (float32 arithmetic)."""
    if pb <= 0:
        return r.astype(np.int64)
    mid = pb // 2
    sign = np.sign(r)
    a = np.where(np.abs(r) < mid, mid - 1, np.abs(r)).astype(np.int64)
    ratio = a.astype(np.float32) / np.float32(mid)
    lp = np.ceil(np.log(ratio) / np.log(np.float32((max_rel - 1) / mid)) * np.float32(mid - 1)) + mid
    return np.where(a <= mid, r, (lp * sign)).astype(np.int64)


def design_forward(sd: dict, cfg, ids: list[int]) -> list[torch.Tensor]:
    """Independent float64 forward written from the model math; returns all hidden states."""
    W = {k: v.double() for k, v in sd.items()}
    eps = cfg.layer_norm_eps
    L = len(ids)
    H = cfg.hidden_size
    nH = cfg.num_attention_heads
    d = H // nH
    x = W["embeddings.word_embeddings.weight"][torch.tensor(ids)]
    if getattr(cfg, "position_biased_input", True):
        x = x + W["embeddings.position_embeddings.weight"][:L]
    if cfg.type_vocab_size > 0:
        x = x + W["embeddings.token_type_embeddings.weight"][0]
    if "embeddings.embed_proj.weight" in W:
        x = x @ W["embeddings.embed_proj.weight"].T
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)
    hs = [x]
    pat = cfg.pos_att_type or []
    f = 1 + ("c2p" in pat) + ("p2c" in pat)
    pb = getattr(cfg, "position_buckets", -1)
    mr = getattr(cfg, "max_relative_positions", -1)
    if mr < 1:
        mr = cfg.max_position_embeddings
    S = pb if pb > 0 else mr
    R = W["encoder.rel_embeddings.weight"]
    if "layer_norm" in getattr(cfg, "norm_rel_ebd", "none"):
        R = layer_norm(R, W["encoder.LayerNorm.weight"], W["encoder.LayerNorm.bias"], eps)
    i = np.arange(L)[:, None]
    j = np.arange(L)[None, :]
    c2p_idx = torch.from_numpy(np.clip(bucket_design(i - j, pb, mr) + S, 0, 2 * S - 1))
    p2c_idx = torch.from_numpy(np.clip(-bucket_design(j - i, pb, mr) + S, 0, 2 * S - 1))
    share = getattr(cfg, "share_att_key", False)
    for l in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{l}."
        a = p + "attention.self."

        def lin(t, name):
            return t @ W[name + ".weight"].T + W[name + ".bias"]

        Q = lin(x, a + "query_proj").view(L, nH, d).transpose(0, 1)
        K = lin(x, a + "key_proj").view(L, nH, d).transpose(0, 1)
        V = lin(x, a + "value_proj").view(L, nH, d).transpose(0, 1)
        s = Q @ K.transpose(-1, -2)
        if "c2p" in pat:
            PK = lin(R, a + ("key_proj" if share else "pos_key_proj")).view(2 * S, nH, d).transpose(0, 1)
            c2p = Q @ PK.transpose(-1, -2)  # [nH, L, 2S]
            s = s + torch.gather(c2p, -1, c2p_idx.unsqueeze(0).expand(nH, L, L))
        if "p2c" in pat:
            PQ = lin(R, a + ("query_proj" if share else "pos_query_proj")).view(2 * S, nH, d).transpose(0, 1)
            p2c = K @ PQ.transpose(-1, -2)  # [nH, L(j), 2S]
            # term(i,j) = K_j . PQ[p2c_idx(i,j)]
            s = s + torch.gather(p2c, -1, p2c_idx.T.unsqueeze(0).expand(nH, L, L)).transpose(-1, -2)
        s = s / math.sqrt(d * f)
        prob = torch.softmax(s, -1)
        ctx = (prob @ V).transpose(0, 1).reshape(L, H)
        att = layer_norm(
            lin(ctx, a.replace(".self.", ".output.") + "dense") + x,
            W[p + "attention.output.LayerNorm.weight"],
            W[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        inter = lin(att, p + "intermediate.dense")
        inter = 0.5 * inter * (1 + torch.erf(inter / math.sqrt(2)))
        y = layer_norm(
            lin(inter, p + "output.dense") + att, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], eps
        )
        if l == 0 and getattr(cfg, "conv_kernel_size", 0) > 0:
            k = cfg.conv_kernel_size
            g = getattr(cfg, "conv_groups", 1)
            c = torch.nn.functional.conv1d(
                hs[0].T.unsqueeze(0), W["encoder.conv.conv.weight"], W["encoder.conv.conv.bias"], padding=(k - 1) // 2, groups=g
            )[0].T
            act = getattr(cfg, "conv_act", "tanh")
            c = torch.tanh(c) if act == "tanh" else 0.5 * c * (1 + torch.erf(c / math.sqrt(2)))
            y = layer_norm(y + c, W["encoder.conv.LayerNorm.weight"], W["encoder.conv.LayerNorm.bias"], eps)
        x = y
        hs.append(x)
    return hs


def design_pool(x: torch.Tensor, modes: list[str], normalize: bool) -> torch.Tensor:
    n = x.shape[0]
    out = []
    order = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
    for m in modes:
        if m == "cls":
            out.append(x[0])
        elif m == "max":
            out.append(x.max(0).values)
        elif m == "mean":
            out.append(x.sum(0) / n)
        elif m == "mean_sqrt_len_tokens":
            out.append(x.sum(0) / math.sqrt(n))
        elif m == "weightedmean":
            w = torch.arange(1, n + 1, dtype=x.dtype)[:, None]
            out.append((x * w).sum(0) / w.sum())
        elif m == "lasttoken":
            out.append(x[-1])
    assert [m for m in order if m in modes] == modes or len(modes) == 1
    e = torch.cat(out)
    if normalize:
        e = e / e.norm().clamp_min(1e-12)
    return e


def check_loaded_weights(name: str, d: Path, backbone) -> None:
    """What sentence-transformers loaded must be exactly the file's tensors (prefix stripped, upcast)."""
    if (d / "model.safetensors").exists():
        from safetensors.torch import load_file

        filed = load_file(str(d / "model.safetensors"))
    else:
        filed = torch.load(str(d / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    filed = {k[len("deberta."):] if k.startswith("deberta.") else k: v for k, v in filed.items()}
    sd = backbone.state_dict()
    for k, v in sd.items():
        assert k in filed, (name, k)
        assert v.dtype == torch.float32, (name, k, v.dtype)
        assert torch.equal(v, filed[k].to(torch.float32)), (name, k)
    extra = sorted(set(filed) - set(sd))
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in filed.values()})
    print(f"  {name}: {len(sd)} backbone tensors == file ({', '.join(dtypes)}); ignored file tensors: {extra}")


def make_reference(name: str, d: Path, sentences: list[str], with_hidden: bool, max_seq_expected: int) -> dict:
    st = load_st(d)
    tr = st[0]
    backbone = tr.auto_model
    cfg = backbone.config
    check_loaded_weights(name, d, backbone)
    msl = int(st.max_seq_length)
    if msl != max_seq_expected:
        problem(f"{name}: max_seq_length {msl} != expected {max_seq_expected}")
    token_ids = [st_token_ids(st, s) for s in sentences]
    for s, ids in zip(sentences, token_ids):
        assert len(ids) <= msl and ids[0] == 1 and ids[-1] == 2, (name, s, ids)
    n_trunc = sum(len(ids) == msl for ids in token_ids)
    emb = st.encode(sentences, batch_size=4, convert_to_numpy=True, show_progress_bar=False)
    emb = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    # each alone vs batched
    alone = torch.from_numpy(
        np.stack([st.encode([s], batch_size=1, convert_to_numpy=True, show_progress_bar=False)[0] for s in sentences])
    )
    diff = (alone - emb).abs().max().item()
    print(f"  {name}: batched vs alone max|diff| = {diff:.2e}; truncated sentences: {n_trunc}")
    if diff > 1e-5:
        problem(f"{name}: batched vs alone embeddings differ by {diff:.2e}")
    modes = pooling_modes(st)
    norm = has_normalize(st)
    sd = {k: v.detach() for k, v in backbone.state_dict().items()}
    tensors = {"embeddings": emb.contiguous()}
    worst_hidden = 0.0
    worst_pool = 0.0
    for si, (s, ids) in enumerate(zip(sentences, token_ids)):
        with torch.no_grad():
            out = backbone(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                output_hidden_states=True,
            )
        hs = [h[0].float() for h in out.hidden_states]
        assert len(hs) == cfg.num_hidden_layers + 1
        mine = design_forward(sd, cfg, ids)
        for l, (a, b) in enumerate(zip(hs, mine)):
            worst_hidden = max(worst_hidden, (a.double() - b).abs().max().item())
        pooled = design_pool(mine[-1], modes, norm)
        worst_pool = max(worst_pool, (pooled - emb[si].double()).abs().max().item())
        if si == 5:
            h = torch.nn.functional.normalize(hs[-1], dim=-1)
            c = h @ h.T
            n = c.shape[0]
            off = (c.sum() - c.diagonal().sum()) / (n * n - n)
            print(f"  {name}: mean cosine between distinct token rows of the last layer (sentence 5): {off:.3f}")
            if off > 0.9:
                problem(f"{name}: token rows nearly identical (mean cosine {off:.3f})")
        if with_hidden and si < N_HIDDEN_SENTENCES:
            for l, h in enumerate(hs):
                tensors[f"hidden.{l}.{si}"] = h.contiguous()
    print(f"  {name}: float64 forward vs transformers max|diff| = {worst_hidden:.2e}, pooled vs encode = {worst_pool:.2e}")
    if worst_hidden > 1e-4:
        problem(f"{name}: float64 forward differs from transformers by {worst_hidden:.2e}")
    if worst_pool > 1e-4:
        problem(f"{name}: float64 pooling differs from sentence-transformers by {worst_pool:.2e}")
    REF.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(REF / f"{name}.safetensors"))
    meta = {
        "model": name,
        "sentences": sentences,
        "token_ids": token_ids,
        "dim": int(emb.shape[1]),
        "max_seq_length": msl,
        "pooling": modes,
        "normalize": norm,
        "do_lower_case": bool(getattr(tr, "do_lower_case", False)),
        "hidden_size": int(cfg.hidden_size),
        "num_layers": int(cfg.num_hidden_layers),
        "hidden": with_hidden,
        "hidden_sentences": N_HIDDEN_SENTENCES if with_hidden else 0,
        "versions": VERSIONS,
    }
    write_json_compact(meta, REF / f"{name}.json")
    return {"st": st, "token_ids": token_ids, "msl": msl}


def check_tokenizer_json(name: str, d: Path, st, sentences: list[str], token_ids, msl: int) -> None:
    """python `tokenizers` on the file vs what sentence-transformers produced."""
    tk = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    lower = bool(getattr(st[0], "do_lower_case", False))
    if lower:
        # what ST 6 does for do_lower_case: prepend a Lowercase normalizer (added tokens such as
        # "[MASK]" are matched before normalization, so they survive; str.lower() would not)
        tk.normalizer = tokenizers.normalizers.Sequence([tokenizers.normalizers.Lowercase(), tk.normalizer])
        plain = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        plain.enable_truncation(max_length=msl)
        pre_lowered = [i for i, (s, ids) in enumerate(zip(sentences, token_ids)) if plain.encode(s.lower()).ids != ids]
        if pre_lowered:
            print(f"  {name}: note: str.lower() before tokenizing (ST 2.x style) differs on sentences {pre_lowered}")
    bad_plain, bad_trunc = [], []
    for i, (s, ids) in enumerate(zip(sentences, token_ids)):
        text = s
        tk.no_truncation()
        full = tk.encode(text).ids
        if len(ids) < msl and full != ids:
            bad_plain.append(i)
        tk.enable_truncation(max_length=msl)
        tr = tk.encode(text).ids
        if tr != ids:
            bad_trunc.append(i)
    if bad_plain or bad_trunc:
        problem(
            f"{name}: tokenizers.Tokenizer.from_file(tokenizer.json) != sentence-transformers ids on sentences "
            f"{sorted(set(bad_plain + bad_trunc))} (lowercased input: {lower})"
        )
    else:
        print(f"  {name}: tokenizer.json ids == sentence-transformers ids on all sentences (trunc {msl} and none)")


def tokenizer_edge_cases(dirs: dict[str, Path]) -> None:
    """Where tokenizer.json as it is (Rust `tokenizers`) and transformers 5.25 (what ST 6.3 uses) disagree."""
    out = {"sentences": EDGE_CASES, "tokenizers": []}
    for label, d in dirs.items():
        hf = transformers.AutoTokenizer.from_pretrained(str(d))
        tk = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        hf_ids = [hf(s)["input_ids"] for s in EDGE_CASES]
        file_ids = [tk.encode(s).ids for s in EDGE_CASES]
        differ = [i for i in range(len(EDGE_CASES)) if hf_ids[i] != file_ids[i]]
        print(f"  edge cases, {label}: transformers vs tokenizer.json differ on {differ}")
        # what sentence-transformers itself feeds the model (adds its do_lower_case handling and
        # max_seq_length truncation on top of the transformers tokenizer)
        st = SentenceTransformer(str(d), device="cpu", model_kwargs={"dtype": torch.float32})
        st_ids = []
        for s in EDGE_CASES:
            feats = st.tokenize([s])
            st_ids.append([int(x) for x in feats["input_ids"][0][feats["attention_mask"][0].bool()]])
        out["tokenizers"].append(
            {
                "model": label,
                "transformers_ids": hf_ids,
                "tokenizer_json_ids": file_ids,
                "differ": differ,
                "sentence_transformers_ids": st_ids,
            }
        )
    path = REF / "tokenizer_edge_cases.json"
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(f' "sentences": {json.dumps(EDGE_CASES)},\n')
        f.write(f' "versions": {json.dumps(VERSIONS)},\n')
        f.write(' "tokenizers": [\n')
        parts = []
        for t in out["tokenizers"]:
            inner = ",\n".join(f'   {json.dumps(k)}: {json.dumps(v)}' for k, v in t.items())
            parts.append("  {\n" + inner + "\n  }")
        f.write(",\n".join(parts) + "\n ]\n}\n")


# --------------------------------------------------------------------------------------------
# 5. relative positions
# --------------------------------------------------------------------------------------------

RELPOS_CASES = [
    (1, 256, 512),
    (7, 256, 512),
    (24, 16, 64),  # st2_v3like
    (40, 16, 64),
    (64, 16, 64),
    (32, 8, 32),  # st3_conv_multipool
    (100, 8, 32),
    (33, 0, 12),  # hf_seqcls_prefix (no bucketing)
    (40, -1, 128),  # st6_proj_cls_norm (no bucketing)
    (300, 256, 512),
    (512, 256, 512),
    (70, 32, 128),
    (128, 32, 128),  # hf_bf16_bin
    (200, 64, 128),
    (1024, 256, 512),
]


def make_relpos() -> None:
    entries = []
    for L, pb, mr in RELPOS_CASES:
        q = torch.zeros(1, L, 4)
        full = hf_deberta.build_relative_position(q, q, bucket_size=pb, max_position=mr)[0].numpy()
        r = np.arange(-(L - 1), L)
        # bucket(r): read off row L-1 (r = L-1-j, j = 0..L-1) and row 0 (r = -j)
        bucket = np.empty(2 * L - 1, dtype=np.int64)
        bucket[: L] = full[0, ::-1]  # r = -(L-1)..0
        bucket[L - 1 :] = full[:, 0]  # r = 0..L-1
        ii, jj = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
        assert np.array_equal(full, bucket[(ii - jj) + (L - 1)]), (L, pb, mr)
        # also: the float32 formula, and oddness (so p2c_idx == c2p_idx)
        assert np.array_equal(bucket_design(r, pb, mr), bucket), (L, pb, mr)
        assert np.array_equal(bucket, -bucket[::-1]), (L, pb, mr)
        # float32 vs exact arithmetic: report where they would differ
        if pb > 0:
            mid = pb // 2
            a = np.where(np.abs(r) < mid, mid - 1, np.abs(r))
            exact = np.array(
                [math.ceil(math.log(x / mid) / math.log((mr - 1) / mid) * (mid - 1)) + mid for x in a]
            )
            exact = np.where(a <= mid, r, exact * np.sign(r))
            nd = int((exact != bucket).sum())
            if nd:
                print(f"  relpos L={L} pb={pb} mr={mr}: float64 formula differs from float32 at {nd} offsets")
        entries.append(
            {"L": L, "position_buckets": pb, "max_relative_positions": mr, "r_min": -(L - 1), "bucket": bucket.tolist()}
        )
    with open(FIX / "relpos.json", "w", encoding="utf-8") as f:
        f.write('{\n "source": "transformers.models.deberta_v2.modeling_deberta_v2.build_relative_position '
                f'(transformers {transformers.__version__}); rel(i,j) = bucket[(i - j) - r_min]",\n')
        f.write(' "cases": [\n')
        f.write(",\n".join("  " + json.dumps(e) for e in entries))
        f.write("\n ]\n}\n")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def main() -> None:
    print("versions:", VERSIONS)
    for p in (MODELS, REF):
        if p.exists():
            shutil.rmtree(p)
    for p in (FIX / "relpos.json", FIX / "sentences.json"):
        if p.exists():
            p.unlink()
    FIX.mkdir(parents=True, exist_ok=True)
    MODELS.mkdir(parents=True)
    REF.mkdir(parents=True)

    write_json_pretty(SENTENCES, FIX / "sentences.json")
    print("relpos ...")
    make_relpos()

    work = Path(tempfile.mkdtemp(prefix="deberta_fixtures_"))
    try:
        print("tokenizer ...")
        spm_path = train_spm(work)
        tok = load_v5_tokenizer(spm_path, work)
        V = len(tok)
        print(f"  vocab size {V}")

        print("models ...")
        make_st2_v3like(MODELS / "st2_v3like", V, spm_path)
        make_st6_proj_cls_norm(MODELS / "st6_proj_cls_norm", V, tok, work)
        make_hf_seqcls_prefix(MODELS / "hf_seqcls_prefix", V, tok)
        make_st3_conv_multipool(MODELS / "st3_conv_multipool", V, spm_path)
        backbone = make_st6_pool_backbone(work, V, tok)
        pool_modes = ["weightedmean", "lasttoken", "mean_sqrt_len_tokens", "max"]
        for mode in pool_modes:
            make_st6_pool(MODELS / f"st6_pool_{mode}", backbone, mode)
        make_hf_bf16_bin(MODELS / "hf_bf16_bin", V, tok)

        print("references ...")
        plan = [
            ("st2_v3like", True, 24),
            ("st6_proj_cls_norm", True, 40),
            ("hf_seqcls_prefix", True, 20),
            ("st3_conv_multipool", True, 32),
            ("st6_pool_weightedmean", True, 512),
            ("st6_pool_lasttoken", False, 512),
            ("st6_pool_mean_sqrt_len_tokens", False, 512),
            ("st6_pool_max", False, 512),
            ("hf_bf16_bin", True, 128),
        ]
        covered = set()
        for name, hidden, msl in plan:
            r = make_reference(name, MODELS / name, SENTENCES, hidden, msl)
            check_tokenizer_json(name, MODELS / name, r["st"], SENTENCES, r["token_ids"], r["msl"])
            covered.update(pooling_modes(r["st"]))
            n_trunc = sum(len(ids) == r["msl"] for ids in r["token_ids"])
            if r["msl"] < 512 and n_trunc < 2:
                problem(f"{name}: only {n_trunc} sentences reach max_seq_length {r['msl']}")
        assert covered == set(Pooling.POOLING_MODES), covered

        tokenizer_edge_cases(
            {
                "st2_v3like (4.x tokenizer.json, legacy Metaspace)": MODELS / "st2_v3like",
                "st3_conv_multipool (4.x tokenizer.json)": MODELS / "st3_conv_multipool",
                "st6_proj_cls_norm (5.0-5.24 tokenizer.json, no charsmap)": MODELS / "st6_proj_cls_norm",
                "st6_pool_max (5.25 tokenizer.json)": MODELS / "st6_pool_max",
            }
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # tests/fixtures/realtok holds the real 2.4 MB spm.model and 8.7 MB tokenizer.json on purpose
    own = [p for p in FIX.rglob("*") if p.is_file() and p.relative_to(FIX).parts[0] not in ("bin", "realtok")]
    total = sum(p.stat().st_size for p in own)
    print(f"fixture size (without tests/fixtures/bin and realtok): {total / 1e6:.2f} MB")
    big = [p for p in own if p.stat().st_size > 1_000_000]
    if big:
        problem(f"files over 1 MB: {big}")

    if PROBLEMS:
        print("\nProblems / differences:")
        for p in PROBLEMS:
            print(" -", p)

    other = ROOT / "scripts" / "make_bin_fixtures.py"
    if other.exists():
        print(f"running {other.relative_to(ROOT)} ...")
        subprocess.run([sys.executable, str(other)], check=True)

    # prompts: models built on st6_pool_weightedmean's backbone, so after it
    prompts = ROOT / "scripts" / "make_prompt_fixtures.py"
    print(f"running {prompts.relative_to(ROOT)} ...")
    subprocess.run([sys.executable, str(prompts)], check=True)

    # the real DeBERTa-v3 tokenizer and STS-B dev are not in this repository's scripts: say where
    realdata, stsb = os.environ.get("DEBERTA_REALDATA"), os.environ.get("DEBERTA_STSB")
    if realdata and stsb:
        print("running scripts/make_realtok_fixtures.py ...")
        script = ROOT / "scripts" / "make_realtok_fixtures.py"
        subprocess.run([sys.executable, str(script), "--realdata", realdata, "--stsb", stsb], check=True)
    else:
        print("tests/fixtures/realtok left as it is (set DEBERTA_REALDATA and DEBERTA_STSB to rebuild it)")


if __name__ == "__main__":
    main()
