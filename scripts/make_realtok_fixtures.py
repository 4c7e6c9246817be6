#!/usr/bin/env python3
"""Reference fixtures on the real DeBERTa-v3 tokenizer (128,000-piece spm.model, hub-format
tokenizer.json as transformers 4.x wrote it), produced by the pinned stack of
scripts/requirements-fixtures.txt (sentence-transformers 6.3, transformers 5.25).

    /path/to/venv/bin/python scripts/make_realtok_fixtures.py --realdata DIR --stsb FILE

DIR holds spm.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json and
added_tokens.json of microsoft/deberta-v3-*; FILE is STS-B dev (sentence1<TAB>sentence2<TAB>score).
make_fixtures.py runs this at its end when it finds them (DEBERTA_REALDATA / DEBERTA_STSB).

Written (re-running gives byte-identical files):

    tests/fixtures/realtok/model/           an ST 6 model: those tokenizer files, a tiny random
                                            DeBERTa-v3 backbone with the real 128,100-row vocab
                                            (embedding_size 4, fp16 weights), mean pooling,
                                            max_seq_length 128
    tests/fixtures/realtok/reference.json   sentences; per tokenizer-file variant the token ids
                                            sentence-transformers feeds the model
    tests/fixtures/realtok/reference.safetensors   embeddings of the first N_EMB sentences

Variants (the files of the model folder the test removes or rewrites before loading):
    hub           as committed (tokenizer.json + spm.model + configs)
    json_only     no spm.model
    spm_full      no tokenizer.json: spm.model + tokenizer_config.json + added_tokens.json ...
    spm_minimal   spm.model + tokenizer_config.json {"do_lower_case": false, "vocab_type": "spm"}
                  (microsoft/deberta-v3-*'s own layout)
    spm_bare      spm.model alone (defaults everywhere)
    spm_lower     spm_minimal with do_lower_case true
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets the offline / determinism environment)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.base.modules.transformer import Transformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules.pooling import Pooling  # noqa: E402
from transformers import AutoTokenizer, DebertaV2Model  # noqa: E402

OUT = mf.FIX / "realtok"
TOKENIZER_FILES = ["spm.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]
MAX_SEQ = 128
N_EMB = 1200

# Every character class the DeBERTa-v3 normalization (nmt_nfkc) changes, in context.
HANDWRITTEN = [
    "",
    "Hello world!",
    "I\u00b4m sure it\u00b4s fine.",  # acute accent used as an apostrophe
    "Stallone\u2019s new film \u00e2\u0080\u0099s mojibake",  # curly quote and its mojibake
    "ctrl\x01char\x02and\x7fdel\x1fus",  # control characters
    "x\u00a0y\u00a0\u00a0z",  # no-break spaces
    "\u6771\u4eac\u3000\u5927\u962a",  # ideographic space
    "zero\u200bwidth\u200cjoiner\u200dand\u2060word\ufeffjoiner",
    "\uff26\uff55\uff4c\uff4c \uff57\uff49\uff44\uff54\uff48 \uff11\uff12\uff13\uff01",  # full-width
    "\ufb01ne \ufb02ow \ufb00 \ufb03 \ufb04 \ufb06",  # ligatures
    "x\u00b2 + y\u00b3 = z\u2074, H\u2082O, 10\u207b\u00b3",  # super/subscripts
    "\u2460 \u2461 \u2473 \u24b6 \u24d0 \u3251",  # circled numbers and letters
    "\u2160 \u2161 \u216b \u217b \u2170",  # roman numerals
    "wait\u2026 and \u2025 then \u22ef",  # ellipses
    "25\u2103 is 77\u2109, \u2122 \u2116 5, \u2121, \u33a1, \u338f",  # letterlike / squared units
    "\uff76\uff80\uff76\uff85 \uff8a\uff9f\uff9d \uff7a\uff9e",  # half-width katakana (+ voiced marks)
    "\u00bd \u00bc \u2153 \u215e",  # vulgar fractions
    "Cafe\u0301 nai\u0308ve re\u0301sume\u0301",  # NFD input
    "\u2003em\u2002en\u2009thin\u200ahair\u202fnarrow\u205fmath space",
    "line\u2028sep\u2029para\u0085nel",
    "tab\there\nnew\r\nline  double   triple",
    "   leading and trailing   ",
    "\u3000\u00a0 leading odd spaces",
    "\u00ab quotes \u00bb \u201c double \u201d \u2018 single \u2019 \u201e low \u201f",
    "em\u2014dash en\u2013dash minus\u2212sign hyphen\u2010",
    "\u0391\u03b8\u03ae\u03bd\u03b1 \u041c\u043e\u0441\u043a\u0432\u0430 \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35 \ud55c\uad6d\uc5b4 \u65e5\u672c\u8a9e \u4e2d\u6587",
    "\ufeb3\ufefc\ufee1 \ufdfa",  # Arabic presentation forms
    "\uf900\uf901 \u2f00\u2f01 \u3280 \u32a4",  # CJK compatibility / Kangxi radicals
    "emoji \U0001f600 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1fa\U0001f1f8 \u2764\ufe0f",
    "math \U0001d400\U0001d401 \U0001d5a0 \U0001d7ce\U0001d7cf",  # mathematical alphanumerics
    "private \ue000 use \U000f0000 and \ufffd replacement",
    "[MASK] is special, [UNK] too, [CLS] and [SEP] and [PAD]",
    "\uff3bMASK\uff3d and \uff3bUNK\uff3d full-width brackets",
    "MiXeD CaSe WORDS and numbers 1,234.56 3.14% $12",
    "a",
    "\u2581lead with the meta symbol",
    "Kelvin \u212a, Angstrom \u212b, Ohm \u2126",
    "\u1e9b\u0323 long s dot, \u01c4 \u01c5 \u01c6 digraphs, \u0132 \u0133",
    ("A long passage. " * 40).strip(),
    " ".join(["\uff21\uff22\uff23 \u00e9\u0301 \u2460 \ufb01"] * 40),
    "\u200b" * 30 + "hidden",
    "\x00nul\x00byte",
]

BLOCKS = [
    (0x20, 0x7E, 30),  # ASCII (weight)
    (0x00, 0x1F, 2),
    (0x7F, 0x9F, 2),
    (0xA0, 0xFF, 4),
    (0x100, 0x24F, 3),
    (0x300, 0x36F, 3),
    (0x370, 0x3FF, 2),
    (0x400, 0x4FF, 2),
    (0x590, 0x5FF, 1),
    (0x600, 0x6FF, 2),
    (0x900, 0x97F, 1),
    (0xE00, 0xE7F, 1),
    (0x1100, 0x11FF, 1),
    (0x1E00, 0x1EFF, 2),
    (0x2000, 0x206F, 4),
    (0x2070, 0x209F, 2),
    (0x20A0, 0x20CF, 1),
    (0x2100, 0x218F, 4),
    (0x2190, 0x22FF, 1),
    (0x2460, 0x24FF, 3),
    (0x2E80, 0x2FDF, 1),
    (0x3000, 0x30FF, 3),
    (0x3130, 0x318F, 1),
    (0x3200, 0x33FF, 3),
    (0x4E00, 0x4FFF, 3),
    (0xAC00, 0xAD00, 2),
    (0xF900, 0xFAFF, 1),
    (0xFB00, 0xFB4F, 2),
    (0xFB50, 0xFDFF, 1),
    (0xFE00, 0xFE6F, 2),
    (0xFE70, 0xFEFF, 1),
    (0xFF00, 0xFFEF, 5),
    (0x1D400, 0x1D7FF, 2),
    (0x1F300, 0x1F64F, 3),
    (0x1F1E6, 0x1F1FF, 1),
]


def fuzz_sentences(words: list[str], n: int) -> list[str]:
    rng = random.Random(20261206)
    total = sum(w for _, _, w in BLOCKS)
    out = []
    for i in range(n):
        parts = []
        length = rng.choice([rng.randint(1, 12), rng.randint(5, 40), rng.randint(30, 90)])
        if i % 97 == 0:
            length = rng.randint(300, 900)  # beyond max_seq_length
        for _ in range(length):
            r = rng.random()
            if r < 0.35:
                parts.append(rng.choice(words))
            elif r < 0.5:
                parts.append(" ")
            else:
                x = rng.uniform(0, total)
                for lo, hi, w in BLOCKS:
                    if x < w:
                        break
                    x -= w
                cp = rng.randint(lo, hi)
                if 0xD800 <= cp <= 0xDFFF:
                    cp = 0x20
                parts.append(chr(cp))
        out.append("".join(parts))
    return out


def read_stsb(path: Path) -> list[str]:
    seen, out = set(), []
    lines = path.read_text(encoding="utf-8").split("\n")
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) < 3:
            continue
        for s in cols[:2]:
            if s not in seen:
                seen.add(s)
                out.append(s)
    return out


VARIANTS = {
    "hub": {"remove": [], "write": {}},
    "json_only": {"remove": ["spm.model"], "write": {}},
    "spm_full": {"remove": ["tokenizer.json"], "write": {}},
    "spm_minimal": {
        "remove": ["tokenizer.json", "special_tokens_map.json", "added_tokens.json"],
        "write": {"tokenizer_config.json": {"do_lower_case": False, "vocab_type": "spm"}},
    },
    "spm_bare": {
        "remove": ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"],
        "write": {},
    },
    "spm_lower": {
        "remove": ["tokenizer.json", "special_tokens_map.json", "added_tokens.json"],
        "write": {"tokenizer_config.json": {"do_lower_case": True, "vocab_type": "spm"}},
    },
}


def make_model(out: Path, realdata: Path, work: Path) -> None:
    cfg = mf.base_config(
        128100,
        hidden_size=32,
        embedding_size=4,
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
    mf.randomize_(model, 707)
    model = model.to(torch.float16)
    tok = AutoTokenizer.from_pretrained(str(realdata))
    tmp = work / "realtok_backbone"
    tmp.mkdir()
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    t = Transformer(str(tmp), max_seq_length=MAX_SEQ, model_kwargs={"dtype": torch.float16})
    st = SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), pooling_mode="mean")], device="cpu")
    st.save(str(out), create_model_card=False)
    # the tokenizer files as users have them: the hub's files byte for byte, not what
    # transformers 5.25 writes back from them
    for f in out.rglob("*"):
        if f.is_file() and f.name in TOKENIZER_FILES + ["chat_template.jinja"]:
            f.unlink()
    for f in TOKENIZER_FILES:
        shutil.copyfile(realdata / f, out / f)
    for f in out.rglob("*"):
        os.chmod(f, 0o755 if f.is_dir() else 0o644)
    # ST 6 keeps max_seq_length in tokenizer_config.json's model_max_length, which the hub file
    # replaced: say it where every sentence-transformers version reads it
    sb = out / "sentence_bert_config.json"
    sbc = json.loads(sb.read_text())
    sbc["max_seq_length"] = MAX_SEQ
    sb.write_text(json.dumps(sbc, indent=4) + "\n")
    cfgj = json.loads((out / "config.json").read_text())
    assert cfgj["vocab_size"] == 128100 and cfgj["embedding_size"] == 4, cfgj


def variant_dir(src: Path, work: Path, name: str) -> Path:
    d = work / f"variant_{name}"
    shutil.copytree(src, d)
    v = VARIANTS[name]
    for f in v["remove"]:
        (d / f).unlink()
    for f, content in v["write"].items():
        (d / f).write_text(json.dumps(content) + "\n")
    return d


def st_ids(st: SentenceTransformer, sentences: list[str]) -> list[list[int]]:
    out = []
    for i in range(0, len(sentences), 64):
        feats = st.preprocess(sentences[i : i + 64])
        for row, mask in zip(feats["input_ids"], feats["attention_mask"]):
            out.append([int(x) for x in row[mask.bool()]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--realdata", type=Path, required=True)
    ap.add_argument("--stsb", type=Path, required=True)
    a = ap.parse_args()
    if OUT.exists():
        shutil.rmtree(OUT)
    out = OUT / "model"
    stsb = read_stsb(a.stsb)
    words = sorted({w for s in stsb for w in s.split()})
    sentences = HANDWRITTEN + stsb + fuzz_sentences(words, 1500)
    print(f"realtok: {len(HANDWRITTEN)} handwritten + {len(stsb)} STS-B dev + 1500 random sentences")
    work = Path(tempfile.mkdtemp(prefix="deberta_realtok_"))
    try:
        make_model(out, a.realdata, work)
        variants = {}
        for name in VARIANTS:
            d = variant_dir(out, work, name)
            st = mf.load_st(d)
            assert int(st.max_seq_length) == MAX_SEQ, st.max_seq_length
            variants[name] = st_ids(st, sentences)
            n_unk = sum(3 in ids[1:-1] for ids in variants[name])
            diff = sum(a != b for a, b in zip(variants[name], variants["hub"]))
            print(f"  {name}: sentences with [UNK]: {n_unk}; differing from hub: {diff}")
            if name == "hub":
                emb = st.encode(sentences[:N_EMB], batch_size=32, convert_to_numpy=True, show_progress_bar=False)
                n_trunc = sum(len(ids) == MAX_SEQ for ids in variants[name])
                print(f"  truncated at {MAX_SEQ}: {n_trunc}")
                assert n_trunc >= 10, n_trunc
            del st
        emb_path = OUT / "reference.safetensors"
        save_file({"embeddings": torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))}, str(emb_path))
        os.chmod(emb_path, 0o644)
        meta = {
            "model": "realtok",
            "max_seq_length": MAX_SEQ,
            "embedded_sentences": N_EMB,
            "versions": mf.VERSIONS,
            "variants": {k: v for k, v in VARIANTS.items()},
            "sentences": sentences,
        }
        lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in meta.items()]
        hub = variants["hub"]
        lines.append(' "ids_hub": [\n  ' + ",\n  ".join(json.dumps(x) for x in hub) + "\n ]")
        for name, ids in variants.items():
            if name != "hub":
                # only the sentences whose ids differ from the hub variant's
                diff = {str(i): x for i, x in enumerate(ids) if x != hub[i]}
                body = ",\n  ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in diff.items())
                lines.append(f" {json.dumps('ids_' + name + '_where_not_hub')}: {{" + (f"\n  {body}\n " if body else "") + "}")
        with open(OUT / "reference.json", "w", encoding="utf-8") as f:
            f.write("{\n" + ",\n".join(lines) + "\n}\n")
        # sanity: the normalization table is what makes these sentences differ from plain NFC
        nfc_only = sum(unicodedata.normalize("NFKC", s) != s for s in sentences)
        print(f"  sentences NFKC changes: {nfc_only}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
