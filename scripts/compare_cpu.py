#!/usr/bin/env python3
"""Time PyTorch, ONNX Runtime, OpenVINO and `deberta-embed bench` on the same checkpoint, shapes and threads.

    venv/bin/pip install -r scripts/requirements-compare.txt
    venv/bin/python scripts/make_xsmall_checkpoint.py /tmp/xsmall
    cargo build --release
    venv/bin/python scripts/compare_cpu.py --model /tmp/xsmall --threads 2 \
        [--shapes 1x16,32x128,256x32] [--rounds 3] [--bin target/release/deberta-embed] [--json-out FILE] \
        [--runtimes pytorch,ort,ort-int8,openvino-f32,openvino-bf16,deberta-embed,deberta-embed-bf16,deberta-embed-int8]

  ONNX Runtime int8  the same export through onnxruntime.quantization.quantize_dynamic
                 (QInt8 weights, activations quantized at run time; cached as <DIR>.backbone.int8.onnx).
  OpenVINO       the same export through OpenVINO's ONNX reader, CPU plugin, INFERENCE_NUM_THREADS T,
                 NUM_STREAMS 1, PERFORMANCE_HINT LATENCY, INFERENCE_PRECISION_HINT f32 or bf16 (bf16 runs
                 on AMX / avx512_bf16 where the CPU has them; the compiled model's precision is checked).
  Each peer's pooled output is checked against PyTorch fp32 per shape before timing: cosine >= 0.9999
  (fp32), >= 0.999 (bf16), >= 0.99 (int8), else its column is dropped with a message.

Workload (the one `deberta-embed bench` times): B sequences of exactly L tokens, [CLS]=1, random
ids, [SEP]=2, attention mask all ones; forward of the backbone + mean pooling, fp32, CPU.

  PyTorch        transformers AutoModel, eval, torch.inference_mode, torch.set_num_threads(T),
                 OMP/MKL_NUM_THREADS=T, backbone + mean pooling as sentence-transformers does it.
  ONNX Runtime   the backbone exported with torch.onnx.export(dynamo=True) (dynamic batch and
                 sequence axes; the legacy TorchScript exporter gives wrong outputs for DeBERTa-v2
                 on current transformers), CPU EP, intra_op T, inter_op 1, ORT_ENABLE_ALL,
                 sequential; mean pooling in numpy, inside the timed region. The .onnx is cached
                 next to the model dir (<DIR>.backbone.onnx) and re-exported only when it is
                 missing or older than the checkpoint.
  deberta-embed  `BIN bench --model DIR --batch-size B --seq-len L --threads T --json --iters N
                 --warmup 2` as a subprocess; its own median is used (model loading and warm-up
                 are outside its timed region).

Correctness before timing:
  * `BIN embed` vs sentence-transformers' encode on a few sentences (max |diff|, cosine);
  * per shape, ORT's pooled output vs PyTorch's on the benchmark inputs; if cosine < 0.9999 the
    ORT column is dropped with a message (its timings would be meaningless).

Timing: per shape, each runtime is calibrated once (iterations per measurement chosen to take
about --budget-s seconds, at least --min-iters); then for each of --rounds rounds the three
runtimes are measured one after the other in a rotating order, each measurement being the
median over its iterations. Reported: per runtime the median over rounds; ratios (tokens/s ours
/ theirs) are the median of the per-round ratios, i.e. of measurements taken seconds apart.
The 2-core machine is shared: the load average before and after is printed and recorded.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, CpuShare, git_revision, log, machine_info, ort_session, timed
from benchlib import export_onnx as export_dynamic
from fixturelib import offline_env
RUNTIMES = ("pytorch", "ort", "ort-int8", "openvino-f32", "openvino-bf16", "deberta-embed", "deberta-embed-bf16",
            "deberta-embed-int8")
LABEL = {"pytorch": "PyTorch", "ort": "ONNX Runtime", "ort-int8": "ONNX Runtime int8 (dynamic)",
         "openvino-f32": "OpenVINO f32", "openvino-bf16": "OpenVINO bf16",
         "deberta-embed": "deberta-embed", "deberta-embed-bf16": "deberta-embed bf16",
         "deberta-embed-int8": "deberta-embed int8"}
OURS = ("deberta-embed", "deberta-embed-bf16", "deberta-embed-int8")
# deberta-embed's --dtype per column
OUR_DTYPE = {"deberta-embed": "f32", "deberta-embed-bf16": "bf16", "deberta-embed-int8": "int8"}
COS_MIN = 0.9999
COS_MIN_BF16 = 0.999  # the bf16 and int8 paths' contract (README, Numerics guarantee)
COS_MIN_INT8 = 0.99  # a peer's int8 column is timed only when it is at least this close
# Each peer's accuracy floor against PyTorch fp32 (checked on every shape before timing).
PEER_COS_MIN = {"ort": COS_MIN, "openvino-f32": COS_MIN, "openvino-bf16": COS_MIN_BF16, "ort-int8": COS_MIN_INT8}
SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "Someone is playing a guitar on the street while people walk by.",
    "x",
]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=False, help="model dir (sentence-transformers or transformers layout)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="1x16,32x128,256x32", help="comma-separated BxL")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", type=Path, default=REPO / "target" / "release" / "deberta-embed")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--budget-s", type=float, default=1.0, help="target seconds per measurement (default 1.0)")
    ap.add_argument("--min-iters", type=int, default=3, help="iterations per measurement, at least (default 3)")
    ap.add_argument("--max-iters", type=int, default=200, help="iterations per measurement, at most (default 200)")
    ap.add_argument("--onnx", type=Path, help="cached export path (default: <model dir>.backbone.onnx)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    ap.add_argument("--runtimes", default="pytorch,ort,deberta-embed",
                    help="comma-separated columns: " + ",".join(RUNTIMES) + " (default pytorch,ort,deberta-embed; "
                         "ort-int8 is the exported backbone through onnxruntime's quantize_dynamic, cached next to "
                         "it; openvino-* read the same .onnx; deberta-embed-bf16 is `bench --dtype bf16`)")
    ap.add_argument("--dtype", default=None, choices=["f32", "bf16", "int8"],
                    help="shorthand: bf16 (int8) replaces the deberta-embed column with deberta-embed-bf16 (-int8)")
    ap.add_argument("--skip", default="", help="comma-separated runtimes to leave out of --runtimes")
    ap.add_argument("--quiet-threshold", type=float, default=0.10,
                    help="a measurement is 'quiet' when other processes took at most this share of the CPUs (default 0.10)")
    ap.add_argument("--report", type=Path, help="re-print the tables of a saved --json-out file and exit")
    # internal: export the backbone in a clean child process
    ap.add_argument("--_export", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._export is None and a.report is None and a.model is None:
        ap.error("--model is required")
    return a


ARGS = parse_args()
# Thread pools must be pinned before torch / numpy are imported.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
offline_env()

import warnings

warnings.filterwarnings("ignore")

import numpy as np
import torch


class Backbone(torch.nn.Module):
    """input_ids, attention_mask -> last_hidden_state (what gets exported / timed)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def load_backbone(model_dir: Path) -> Backbone:
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    for n, p in m.named_parameters():
        assert p.dtype == torch.float32, (n, p.dtype)
    return Backbone(m).eval()


def export_onnx(model_dir: Path, out: Path) -> None:
    """Runs in a child process (torch.export leaves global state behind; keep the timed process clean)."""
    torch.set_num_threads(ARGS.threads)
    export_dynamic(load_backbone(model_dir), out, "last_hidden_state")


if ARGS._export is not None:
    export_onnx(Path(ARGS._export[0]), Path(ARGS._export[1]))
    sys.exit(0)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def versions() -> dict:
    import transformers

    v = {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
    for mod in ("onnxruntime", "onnx", "onnxscript", "sentence_transformers", "openvino"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    rev = git_revision()
    if rev:
        v["deberta-embed (repo HEAD)"] = rev
    return v


def make_ids(b: int, l: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 640, size=(b, l), dtype=np.int64)
    ids[:, 0] = 1
    ids[:, -1] = 2
    return ids


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float(cos.min()), "ref_max_abs": float(np.abs(b).max())}


def iters_for(ms: float) -> int:
    return int(min(ARGS.max_iters, max(ARGS.min_iters, round(ARGS.budget_s * 1e3 / max(ms, 1e-3)))))


# ------------------------------------------------------------------------------------------------
# runtimes
# ------------------------------------------------------------------------------------------------


class TorchRunner:
    def __init__(self, model_dir: Path):
        self.w = load_backbone(model_dir)

    def prepare(self, ids: np.ndarray):
        self.ids = torch.from_numpy(ids)
        self.mask = torch.ones_like(self.ids)

    def run(self) -> torch.Tensor:
        with torch.inference_mode():
            h = self.w(self.ids, self.mask)
            m = self.mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # sentence-transformers' mean pooling


class OrtRunner:
    def __init__(self, onnx_path: Path, threads: int):
        self.sess = ort_session(onnx_path, threads)

    def prepare(self, ids: np.ndarray):
        self.feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def run(self) -> np.ndarray:
        h = self.sess.run(["last_hidden_state"], self.feed)[0]
        m = self.feed["attention_mask"][:, :, None].astype(h.dtype)
        return (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)


class OpenVinoRunner:
    """The exported backbone through OpenVINO's ONNX reader, CPU plugin, one stream, T threads,
    inference precision f32 or bf16 (bf16 runs on AMX / avx512_bf16 where the CPU has them)."""

    def __init__(self, onnx_path: Path, threads: int, precision: str):
        import openvino as ov

        core = ov.Core()
        cfg = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,
        }
        self.model = core.compile_model(core.read_model(str(onnx_path)), "CPU", cfg)
        self.req = self.model.create_infer_request()
        got = str(self.model.get_property("INFERENCE_PRECISION_HINT"))
        if {"f32": "float32", "bf16": "bfloat16"}[precision] not in got:
            raise RuntimeError(f"OpenVINO ran at {got}, not {precision}")

    def prepare(self, ids: np.ndarray):
        self.feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def run(self) -> np.ndarray:
        h = self.req.infer(self.feed)[self.model.output(0)]
        m = self.feed["attention_mask"][:, :, None].astype(h.dtype)
        return (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def ensure_int8(onnx_path: Path) -> Path:
    """onnxruntime.quantization.quantize_dynamic on the exported backbone (int8 weights, activations
    quantized per call), cached next to it."""
    out = onnx_path.with_name(onnx_path.name.replace(".onnx", "") + ".int8.onnx")
    if out.exists() and out.stat().st_mtime >= onnx_path.stat().st_mtime:
        log(f"ONNX int8: using cached {out}")
        return out
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = out.with_name(out.name + ".tmp")
    quantize_dynamic(str(onnx_path), str(tmp), weight_type=QuantType.QInt8)
    tmp.replace(out)
    log(f"ONNX int8: quantize_dynamic -> {out} ({out.stat().st_size / 1e6:.0f} MB)")
    return out


def rust_bench(b: int, l: int, iters: int, warmup: int, dtype: str) -> dict:
    cmd = [
        str(ARGS.bin), "bench", "--model", str(ARGS.model), "--batch-size", str(b), "--seq-len", str(l),
        "--threads", str(ARGS.threads), "--json", "--iters", str(iters), "--warmup", str(warmup),
        "--dtype", dtype,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in p.stdout.splitlines() if x.strip()]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def ensure_onnx(model_dir: Path) -> Path:
    out = ARGS.onnx or model_dir.parent / (model_dir.name + ".backbone.onnx")
    weights = [f for f in (model_dir / "model.safetensors", model_dir / "pytorch_model.bin") if f.exists()]
    stale = out.exists() and weights and out.stat().st_mtime < max(f.stat().st_mtime for f in weights)
    if out.exists() and not stale:
        log(f"ONNX: using cached export {out}")
        return out
    log(f"ONNX: exporting the backbone with torch.onnx.export(dynamo=True) -> {out} (about a minute)")
    t = time.time()
    p = subprocess.run(
        [sys.executable, __file__, "--threads", str(ARGS.threads), "--_export", str(model_dir), str(out)],
        capture_output=True, text=True,
    )
    if p.returncode != 0 or not out.exists():
        raise RuntimeError(f"ONNX export failed (exit {p.returncode}):\n{(p.stderr or p.stdout)[-3000:]}")
    log(f"ONNX: exported in {time.time() - t:.0f} s ({out.stat().st_size / 1e6:.0f} MB)")
    return out


def check_embed_vs_st(model_dir: Path, dtype: str) -> dict:
    """`deberta-embed embed` vs sentence-transformers' encode on a few sentences."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": torch.float32})
    ref = st.encode(SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES))
    del st
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "sentences.jsonl"
        inp.write_text("".join(json.dumps(s) + "\n" for s in SENTENCES), encoding="utf-8")
        cmd = [str(ARGS.bin), "embed", "--model", str(model_dir), "--input", str(inp), "--threads", str(ARGS.threads),
               "--dtype", dtype]
        p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
    ours = np.array([json.loads(x) for x in p.stdout.splitlines() if x.strip()], dtype=np.float32)
    if ours.shape != ref.shape:
        raise RuntimeError(f"deberta-embed embed gave shape {ours.shape}, sentence-transformers {ref.shape}")
    return compare(ours, ref)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def main() -> None:
    if ARGS.report:
        result = json.loads(ARGS.report.read_text(encoding="utf-8"))
        for sr in result["shapes"].values():
            summarize(sr)
        print_table(result)
        return
    ARGS.model = model_dir = ARGS.model.resolve()
    shapes = []
    for s in ARGS.shapes.split(","):
        b, _, l = s.strip().lower().partition("x")
        shapes.append((int(b), int(l)))
    skip = {s.strip() for s in ARGS.skip.split(",") if s.strip()}
    wanted = [s.strip() for s in ARGS.runtimes.split(",") if s.strip()]
    if ARGS.dtype in ("bf16", "int8"):
        wanted = [f"deberta-embed-{ARGS.dtype}" if r == "deberta-embed" else r for r in wanted]
    if (skip | set(wanted)) - set(RUNTIMES):
        sys.exit(f"unknown runtime(s) {sorted((skip | set(wanted)) - set(RUNTIMES))}; known: {', '.join(RUNTIMES)}")
    active = [r for r in RUNTIMES if r in wanted and r not in skip]
    if any(r in OURS for r in active):
        if not ARGS.bin.exists():
            sys.exit(f"{ARGS.bin} not found (cargo build --release, or pass --bin)")
        # Run a private copy: a concurrent `cargo build` must not swap the binary mid-run.
        snap_dir = Path(tempfile.mkdtemp(prefix="compare_cpu_bin."))
        atexit.register(shutil.rmtree, snap_dir, True)
        snap = snap_dir / "deberta-embed"
        shutil.copy2(ARGS.bin, snap)
        bin_info = {"path": str(ARGS.bin.resolve()), "sha256": hashlib.sha256(snap.read_bytes()).hexdigest()[:16],
                    "mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.stat().st_mtime))}
        ARGS.bin = snap

    torch.set_num_threads(ARGS.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    command = shlex.join([sys.executable, *sys.argv])
    result = {
        "command": command,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ARGS).items() if k != "_export"},
        "machine": machine_info(),
        "versions": versions(),
        "threads": ARGS.threads,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
        "deberta_embed_binary": bin_info if any(r in OURS for r in active) else None,
        "shapes": {},
        "notes": [],
    }
    m = result["machine"]
    log(f"command : {command}")
    log(f"machine : {m.get('Model name', '?')}, {m.get('CPU(s)', m['cpus_visible'])} CPUs visible, "
        f"{ARGS.threads} threads used (torch {torch.get_num_threads()}), load avg {result['loadavg_start'][0]:.2f}")
    log("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()))
    if result["deberta_embed_binary"]:
        bi = result["deberta_embed_binary"]
        log(f"binary  : {bi['path']} (built {bi['mtime']}, sha256 {bi['sha256']}), run from a private copy")
    if result["loadavg_start"][0] > 0.5:
        log(f"WARNING : load average {result['loadavg_start'][0]:.2f} at start: other processes share the CPUs "
            f"(PyTorch's OpenMP barriers suffer most from that; compare ratios, not absolute numbers)")

    # --- correctness: deberta-embed vs sentence-transformers ----------------------------------
    for rt in [r for r in active if r in OURS]:
        dtype = OUR_DTYPE[rt]
        key = "check_embed_vs_sentence_transformers" + ("" if dtype == "f32" else f"_{dtype}")
        try:
            c = check_embed_vs_st(model_dir, dtype)
            result[key] = c
            # (int8 promises what bf16 does: cosine >= 0.999 to fp32)
            ok = c["min_cosine"] >= (COS_MIN if dtype == "f32" else COS_MIN_BF16)
            log(f"check   : deberta-embed embed --dtype {dtype} vs sentence-transformers on {len(SENTENCES)} sentences: "
                f"max |diff| {c['max_abs_diff']:.2e}, min cosine {c['min_cosine']:.7f}" + ("" if ok else "  <-- MISMATCH"))
        except Exception as e:  # keep timing the others
            result[key] = {"error": str(e)}
            log(f"check   : deberta-embed embed --dtype {dtype} vs sentence-transformers FAILED: {e}")

    runners = {}
    peers = [r for r in active if r not in OURS and r != "pytorch"]
    if "pytorch" in active or peers:
        runners["pytorch"] = TorchRunner(model_dir)  # also the reference for the peers' checks
    for rt in peers:
        try:
            onnx = ensure_onnx(model_dir)
            if rt == "ort":
                runners[rt] = OrtRunner(onnx, ARGS.threads)
            elif rt == "ort-int8":
                runners[rt] = OrtRunner(ensure_int8(onnx), ARGS.threads)
            else:
                runners[rt] = OpenVinoRunner(onnx, ARGS.threads, rt.split("-")[1])
        except Exception as e:
            msg = f"{LABEL[rt]} column dropped: {e}"
            log(msg)
            result["notes"].append(msg)
            active.remove(rt)

    t_start = time.time()
    for b, l in shapes:
        key = f"{b}x{l}"
        tokens = b * l
        ids = make_ids(b, l, ARGS.seed)
        sr = {"batch_size": b, "seq_len": l, "tokens": tokens, "iters": {}, "rounds": {r: [] for r in active},
              "loadavg": {r: [] for r in active}, "cpu_to_others": {r: [] for r in active}}
        result["shapes"][key] = sr
        log(f"\n== {key} ({tokens} tokens)")

        # --- calibration (+ warm-up, + ORT vs PyTorch check) ------------------------------------
        pooled = {}
        for rt in list(active):
            if rt in OURS:
                try:
                    j = rust_bench(b, l, 1, 1, OUR_DTYPE[rt])
                    sr["iters"][rt] = iters_for(j["median_ms"])
                    log(f"calibrate {rt:13s}: {j['median_ms']:9.2f} ms/iter -> {sr['iters'][rt]} iters per measurement")
                except Exception as e:
                    log(f"{rt} column dropped for {key}: {e}")
                    result["notes"].append(f"{key}: {rt} failed: {e}")
                    sr["rounds"].pop(rt, None)
                continue
            r = runners[rt]
            r.prepare(ids)
            out = r.run()  # warm-up (allocations, ORT's first-run graph work)
            pooled[rt] = out.numpy() if isinstance(out, torch.Tensor) else out
            ms = min(timed(r.run, 1 if rt == "pytorch" and tokens >= 2048 else 2))
            sr["iters"][rt] = iters_for(ms)
            log(f"calibrate {rt:13s}: {ms:9.2f} ms/iter -> {sr['iters'][rt]} iters per measurement")
        if any(rt in pooled for rt in PEER_COS_MIN) and "pytorch" not in pooled:
            # PyTorch is the peers' reference even when its column is skipped
            runners["pytorch"].prepare(ids)
            pooled["pytorch"] = runners["pytorch"].run().numpy()
        for rt in [r for r in PEER_COS_MIN if r in pooled]:
            c = compare(pooled[rt], pooled["pytorch"])
            sr[f"check_{rt}_vs_pytorch"] = c
            log(f"check   : {LABEL[rt]} vs PyTorch pooled output: max |diff| {c['max_abs_diff']:.2e}, "
                f"min cosine {c['min_cosine']:.7f}")
            if not c["min_cosine"] >= PEER_COS_MIN[rt]:
                msg = (f"{LABEL[rt]} column ABORTED: its pooled output disagrees with PyTorch's at {key} "
                       f"(min cosine {c['min_cosine']:.6f} < {PEER_COS_MIN[rt]}, max |diff| {c['max_abs_diff']:.3g}); "
                       f"a wrong export? delete the cached .onnx and rerun")
                log(msg)
                result["notes"].append(msg)
                active.remove(rt)
                sr["rounds"].pop(rt, None)
        present = [rt for rt in active if rt in sr["rounds"]]

        # --- alternating rounds ------------------------------------------------------------------
        for rnd in range(ARGS.rounds):
            order = present[rnd % len(present):] + present[: rnd % len(present)]
            for rt in order:
                n = sr["iters"][rt]
                with CpuShare() as share:
                    if rt in OURS:
                        try:
                            ms = rust_bench(b, l, n, 2, OUR_DTYPE[rt])["median_ms"]
                        except Exception as e:
                            log(f"round {rnd + 1} {rt}: {e}")
                            ms = None
                    else:
                        ms = statistics.median(timed(runners[rt].run, n))
                sr["rounds"][rt].append(ms)
                sr["cpu_to_others"][rt].append(share.other)
                if ms is None:
                    continue
                load = os.getloadavg()[0]
                sr["loadavg"][rt].append(load)
                log(f"round {rnd + 1}/{ARGS.rounds} {rt:13s}: {ms:9.2f} ms  ({tokens / ms * 1e3:8.0f} tok/s, "
                    f"{n} iters, load avg {load:.2f}, CPU to other processes {share.other:4.0%})")

        summarize(sr)

    result["elapsed_s"] = time.time() - t_start
    result["loadavg_end"] = os.getloadavg()
    print_table(result)
    if ARGS.json_out:
        ARGS.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        log(f"\nwrote {ARGS.json_out}")


def summarize(sr: dict) -> None:
    """Medians over rounds and same-round ratios; also over the quiet rounds only."""
    tokens = sr["tokens"]
    shares = sr.get("cpu_to_others", {})
    q = ARGS.quiet_threshold

    def quiet(rt, i):
        v = shares.get(rt)
        return v is not None and i < len(v) and v[i] is not None and v[i] <= q

    for tag, keep in (("", lambda rt, i: True), ("quiet_", quiet)):
        if tag and not shares:
            continue
        med, tps, ratio = {}, {}, {}
        for rt, v in sr["rounds"].items():
            v = [x for i, x in enumerate(v) if x is not None and keep(rt, i)]
            if v:
                med[rt] = statistics.median(v)
                tps[rt] = tokens / med[rt] * 1e3
        for us in OURS:
            ours = sr["rounds"].get(us)
            for other in [r for r in RUNTIMES if r not in OURS]:
                theirs = sr["rounds"].get(other)
                if ours and theirs:
                    # tokens/s ours / theirs = ms theirs / ms ours, per round
                    per = [t / o for i, (o, t) in enumerate(zip(ours, theirs))
                           if o and t and keep(us, i) and keep(other, i)]
                    if per:
                        key = f"vs_{other}" if us == "deberta-embed" else f"{us}_vs_{other}"
                        ratio[key] = {"median": statistics.median(per), "per_round": per}
        sr[tag + "median_ms"], sr[tag + "tokens_per_s"], sr[tag + "ratio"] = med, tps, ratio


def print_table(result: dict) -> None:
    def cell(sr, rt, tag=""):
        if rt not in sr.get(tag + "median_ms", {}):
            return "—"
        return f"{sr[tag + 'median_ms'][rt]:.2f} ms, {sr[tag + 'tokens_per_s'][rt]:,.0f} tok/s"

    def ratio(sr, k, tag=""):
        r = sr.get(tag + "ratio", {}).get(k)
        if not r:
            return "—"
        k = len(r["per_round"])
        n = f", {k} round{'s' if k != 1 else ''}" if tag else ""
        return f"{r['median']:.2f}x ({min(r['per_round']):.2f}-{max(r['per_round']):.2f}{n})"

    def ratio_key(us, other):
        return f"vs_{other}" if us == "deberta-embed" else f"{us}_vs_{other}"

    m, v = result["machine"], result["versions"]
    cols = [rt for rt in RUNTIMES if any(rt in sr["rounds"] for sr in result["shapes"].values())]
    pairs = [(us, other) for us in cols if us in OURS for other in cols if other not in OURS]
    log("\n## CPU comparison (backbone + mean pooling; medians over rounds)\n")
    log(f"machine: {m.get('Model name', '?')}, {m.get('CPU(s)', m['cpus_visible'])} CPUs "
        f"(avx512f {m.get('avx512f')}, avx512_bf16 {m.get('avx512_bf16')}, amx_tile {m.get('amx_tile')}), "
        f"threads used: {result['threads']} (every runtime); "
        f"load avg start {result['loadavg_start'][0]:.2f}, end {result['loadavg_end'][0]:.2f}")
    bi = result.get("deberta_embed_binary") or {}
    log(f"versions: torch {v['torch']}, onnxruntime {v.get('onnxruntime')}, openvino {v.get('openvino')}, "
        f"transformers {v['transformers']}, deberta-embed {v.get('deberta-embed (repo HEAD)', '?')} "
        f"(binary built {bi.get('mtime', '?')}, sha256 {bi.get('sha256', '?')})")
    log(f"command: {result['command']}\n")

    def tables(tag=""):
        log("| B x L | " + " | ".join(LABEL[c] for c in cols) + " |")
        log("|---|" + "---|" * len(cols))
        for key, sr in result["shapes"].items():
            log(f"| {key} | " + " | ".join(cell(sr, c, tag) for c in cols) + " |")
        if pairs:
            log("\n| B x L | " + " | ".join(f"{LABEL[us]} / {LABEL[o]}" for us, o in pairs) + " |")
            log("|---|" + "---|" * len(pairs))
            for key, sr in result["shapes"].items():
                log(f"| {key} | " + " | ".join(ratio(sr, ratio_key(us, o), tag) for us, o in pairs) + " |")

    tables()
    log("\nratios: tokens/s, median of same-round ratios (range over rounds in parentheses); > 1 means deberta-embed is faster")
    shares = [x for sr in result["shapes"].values() for v in sr.get("cpu_to_others", {}).values() for x in v if x is not None]
    if shares:
        log(f"CPU time taken by other processes during the measurements: mean {statistics.mean(shares):.0%}, "
            f"max {max(shares):.0%} of the machine")
    if shares and max(shares) > ARGS.quiet_threshold:
        log(f"\nquiet measurements only (other processes took <= {ARGS.quiet_threshold:.0%} of the CPUs; "
            f"ratios over rounds where both sides were quiet):\n")
        tables("quiet_")
        log("")
    for k, c in result.items():
        if k.startswith("check_embed_vs_sentence_transformers"):
            dt = k.rpartition("_")[2] if k.endswith(("bf16", "int8")) else "f32"
            if "error" in c:
                log(f"check deberta-embed --dtype {dt} vs sentence-transformers: FAILED ({c['error']})")
            else:
                log(f"check deberta-embed --dtype {dt} vs sentence-transformers: max |diff| {c['max_abs_diff']:.2e}, "
                    f"min cosine {c['min_cosine']:.7f}")
    for key, sr in result["shapes"].items():
        for rt in PEER_COS_MIN:
            c = sr.get(f"check_{rt}_vs_pytorch") or (sr.get("check_ort_vs_pytorch") if rt == "ort" else None)
            if c:
                log(f"check {LABEL[rt]} vs PyTorch at {key}: max |diff| {c['max_abs_diff']:.2e}, "
                    f"min cosine {c['min_cosine']:.7f}")
    if max(result["loadavg_start"][0], result["loadavg_end"][0]) > 0.5:
        log(f"WARNING: the machine was busy (load avg {result['loadavg_start'][0]:.2f} -> {result['loadavg_end'][0]:.2f}; "
            f"per-measurement values in the JSON / log): absolute numbers are pessimistic, PyTorch's most of all")
    for n in result["notes"]:
        log(f"note: {n}")
    log(f"elapsed (timing part): {result['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
