#!/usr/bin/env bash
# The CUDA validation run, ON THE GPU MACHINE, from the repository root, with the binaries that
# scripts/build-gpu-carry.sh put in .carry/ (that machine has no Rust). About 6-8 minutes:
#   1. tests/gpu.rs: every kernel vs its CPU reference, fixtures in f32/f16/bf16, batch
#      invariance, synthetic xsmall vs the CPU;
#   2. compute-sanitizer memcheck and racecheck over the kernel tests (GPU_TEST_QUICK=1);
#   3. the CLI: `embed --device cuda --dtype f32|f16|bf16` on every fixture model vs the
#      sentence-transformers reference embeddings (python3 + numpy + safetensors there);
#   4. `bench --synthetic xsmall --device cuda` at the BENCHMARKS.md GPU shapes (graphs on,
#      the default; attention v1 and v2; a few shapes with graphs off);
#   5. the kernel testbed (`bench --ops`, f16 and bf16) and one profiled bench (device time
#      per kernel);
#   5b. end to end: `bench --corpus` on 200k generated sentences (GPU_CHECK_E2E=0 skips it);
#   6. only when .carry/peers/ holds the peer wheels (scripts/fetch-gpu-peers.sh): the peer
#      comparison, scripts/compare_gpu.py (HF eager fp16/bf16, DisentangledFlash, FlashDeBERTa vs
#      `deberta-embed bench`) on a random-weight xsmall checkpoint made there, bounded to
#      COMPARE_GPU_BUDGET_S seconds (default 240) -> $OUT/compare_gpu.{md,json,log}.
#      GPU_CHECK_COMPARE=0 skips it; GPU_CHECK_ONLY=compare runs it alone (steps 1-5 skipped).
# Time caps (seconds, for short device windows): GPU_TESTS_TIMEOUT_S (240), MEMCHECK_TIMEOUT_S
# (150), RACECHECK_TIMEOUT_S (120), COMPARE_GPU_BUDGET_S (240); GPU_CHECK_SANITIZERS lists the
# compute-sanitizer tools to run (default "memcheck racecheck"; empty runs none).
# Logs go to $OUT (or ./gpu-check-out); $OUT/summary.txt is the short table, printed last. The
# device tool brings back 8 files of $OUT at most: scratch files go to a temporary folder.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
S="$OUT/summary.txt"
: > "$S"
say() { echo "$*" >> "$S"; }
C=.carry
[[ -x $C/gpu-tests && -x $C/deberta-embed ]] || { say "FAIL: .carry/ missing: run scripts/build-gpu-carry.sh first"; exit 1; }
ONLY="${GPU_CHECK_ONLY:-}"
SCRATCH="$(mktemp -d)"

say "== gpu-check $(date -u +%FT%TZ) commit $(cat $C/commit.txt 2>/dev/null)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /' >> "$S"

# The test binary finds tests/fixtures through the repo path it was built in.
WANT="$(cat $C/manifest_dir.txt)"
if [[ ! -d "$WANT/tests/fixtures" ]]; then
  mkdir -p "$(dirname "$WANT")" && ln -sfn "$ROOT" "$WANT" && say "linked $WANT -> $ROOT (fixture path)"
fi

if [[ $ONLY != compare ]]; then  # steps 1-5 (not indented; they end at the matching `fi` below)
# 1. the GPU test suite
t0=$SECONDS
timeout "${GPU_TESTS_TIMEOUT_S:-240}" $C/gpu-tests --test-threads=1 --nocapture > "$OUT/gpu-tests.log" 2>&1
rc=$?
say "-- gpu tests: rc=$rc ($((SECONDS - t0)) s)"
grep -E "^test |test result|SKIPPED|GPU_TEST_SEED|max \|diff\||panicked" "$OUT/gpu-tests.log" >> "$S"
# 1b. the end-to-end tests again with the tensor-core attention (v2) selected
t0=$SECONDS
DEBERTA_CUDA_ATTENTION=v2 timeout "${GPU_TESTS_TIMEOUT_S:-240}" $C/gpu-tests --test-threads=1 --nocapture \
  fixtures_end_to_end_every_precision synthetic_xsmall_matches_cpu batch_invariance > "$SCRATCH/gpu-tests-v2.log" 2>&1
rc=$?
say "-- gpu tests, end to end with DEBERTA_CUDA_ATTENTION=v2: rc=$rc ($((SECONDS - t0)) s)"
grep -E "^test |test result|max \|diff\||panicked" "$SCRATCH/gpu-tests-v2.log" >> "$S"

# 2. compute-sanitizer
CS="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)"
if [[ -n "$CS" && -x "$CS" ]]; then
  KERNEL_TESTS="gemm_matches_cpu layernorm_matches_cpu embeddings_match_cpu attention_matches_cpu attention_tc_matches_cpu pooling_and_normalize conv_matches_cpu"
  for tool in ${GPU_CHECK_SANITIZERS-memcheck racecheck}; do
    t0=$SECONDS
    lim=$([[ $tool == memcheck ]] && echo "${MEMCHECK_TIMEOUT_S:-150}" || echo "${RACECHECK_TIMEOUT_S:-120}")
    # shellcheck disable=SC2086
    GPU_TEST_QUICK=1 timeout $lim "$CS" --tool $tool --error-exitcode 99 --print-limit 20 \
      $C/gpu-tests --test-threads=1 $KERNEL_TESTS > "$OUT/sanitizer-$tool.log" 2>&1
    rc=$?
    say "-- compute-sanitizer $tool: rc=$rc ($((SECONDS - t0)) s; 99 = errors found, 124 = timeout)"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|Invalid|Race reported" "$OUT/sanitizer-$tool.log" | head -n 8 >> "$S"
  done
else
  say "-- compute-sanitizer: not found, skipped"
fi

# 3. CLI vs the fixtures
python3 - "$SCRATCH" <<'PY' >> "$S" 2>&1
import json, os, subprocess, sys
import numpy as np
from safetensors.numpy import load_file
out = sys.argv[1]
ref_dir = "tests/fixtures/reference"
names = sorted(f[:-5] for f in os.listdir(ref_dir) if f.endswith(".json") and os.path.exists(os.path.join(ref_dir, f[:-5] + ".safetensors")))
sents = json.load(open("tests/fixtures/sentences.json"))
inp = os.path.join(out, "sentences.jsonl")
with open(inp, "w") as f:
    for s in sents:
        f.write(json.dumps(s) + "\n")
print("-- CLI embed --device cuda vs sentence-transformers fixtures")
print(f"{'model':<32} {'dtype':<5} {'max|diff|':>10} {'min cos':>9}  verdict")
for dtype, max_abs, min_cos in [("f32", 1e-4, 0.99999), ("f16", None, 0.999), ("bf16", None, 0.999)]:
    for n in names:
        meta = json.load(open(os.path.join(ref_dir, n + ".json")))
        ref = load_file(os.path.join(ref_dir, n + ".safetensors"))["embeddings"]
        dst = os.path.join(out, f"{n}.{dtype}.npy")
        r = subprocess.run([".carry/deberta-embed", "embed", "--model", f"tests/fixtures/models/{n}", "--device", "cuda",
                            "--dtype", dtype, "--input", inp, "--format", "npy", "--output", dst, "--quiet"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            print(f"{n:<32} {dtype:<5} {'-':>10} {'-':>9}  FAIL: {r.stderr.strip()[:200]}")
            continue
        got = np.load(dst)
        d = float(np.abs(got - ref).max())
        cos = float(min(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30) for a, b in zip(got.astype(np.float64), ref.astype(np.float64))))
        ok = np.isfinite(got).all() and cos >= min_cos and (max_abs is None or d <= max_abs)
        print(f"{n:<32} {dtype:<5} {d:>10.2e} {cos:>9.6f}  {'ok' if ok else 'FAIL'}")
PY

# 4. bench (the BENCHMARKS.md GPU shapes)
# bench_row LABEL B L ARGS...: one `bench --synthetic xsmall --device cuda` line in the summary
bench_row() {
  local label=$1 b=$2 l=$3
  shift 3
  local line
  line="$(timeout 60 $C/deberta-embed bench --synthetic xsmall --device cuda "$@" \
    --batch-size $b --seq-len $l --warmup 3 --iters 20 --json 2>&1 | tail -n 1)"
  python3 - "$label" "$b" "$l" "$line" <<'PY' >> "$S"
import json, sys
label, b, l, line = sys.argv[1:]
try:
    v = json.loads(line)
    mem = v.get("device_mem_used_mib")
    mem = f"{mem:8.0f} MiB" if mem is not None else ""
    print(f"{label:<9} {b:>5} x {l:<4} {v['median_ms']:9.3f} ms {v['tokens_per_s']:>12,.0f} tok/s"
          f" {v.get('model_tflops', float('nan')):7.1f} TFLOP/s {mem}")
except Exception:
    print(f"{label:<9} {b:>5} x {l:<4} FAIL: {line[:160]}")
PY
}
SHAPES=("1 16" "1 512" "256 32" "64 128" "16 512" "1024 32")
say "-- bench --synthetic xsmall --device cuda (median ms, tokens/s)"
for dt in f16 bf16 f32; do
  for shape in "${SHAPES[@]}"; do
    set -- $shape
    [[ $dt == f32 && $1 -ge 256 ]] && continue
    bench_row "$dt" $1 $2 --dtype $dt
  done
done
say "-- bench, tensor-core attention (--kernel attention=v2)"
for dt in f16 bf16; do
  for shape in "${SHAPES[@]}"; do
    set -- $shape
    bench_row "$dt/v2" $1 $2 --dtype $dt --kernel attention=v2
  done
done
say "-- bench, pipelined tensor-core attention (--kernel attention=v2-async), f16"
for shape in "${SHAPES[@]}"; do
  set -- $shape
  bench_row "f16/v2-async" $1 $2 --dtype f16 --kernel attention=v2-async
done
say "-- bench, graphs off (--kernel graphs=off: every kernel launched from the host)"
for shape in "1 16" "1 512" "256 32"; do
  set -- $shape
  bench_row "f16/eager" $1 $2 --dtype f16 --kernel graphs=off
done
say "-- kernel testbed (bench --ops): each variant checked against the CPU, then timed"
for dt in f16 bf16; do
  timeout 120 $C/deberta-embed bench --ops --device cuda --dtype $dt > "$OUT/ops-$dt.log" 2>&1 \
    || echo "bench --ops --dtype $dt: exit $?" >> "$S"
  grep -v '^{' "$OUT/ops-$dt.log" >> "$S"
done
say "-- kernel profile, f16 16 x 512, attention v2"
DEBERTA_CUDA_ATTENTION=v2 DEBERTA_CUDA_PROFILE=1 timeout 60 $C/deberta-embed bench --synthetic xsmall --device cuda --dtype f16 \
  --batch-size 16 --seq-len 512 --warmup 1 --iters 5 > "$SCRATCH/profile-v2.log" 2>&1
grep -A8 "CUDA kernel profile" "$SCRATCH/profile-v2.log" >> "$S" || tail -n 3 "$SCRATCH/profile-v2.log" >> "$S"
say "-- kernel profile, f16 16 x 512 (DEBERTA_CUDA_PROFILE=1: device time per kernel)"
DEBERTA_CUDA_PROFILE=1 timeout 60 $C/deberta-embed bench --synthetic xsmall --device cuda --dtype f16 \
  --batch-size 16 --seq-len 512 --warmup 1 --iters 5 > "$OUT/profile.log" 2>&1
grep -A24 "CUDA kernel profile" "$OUT/profile.log" >> "$S" || tail -n 3 "$OUT/profile.log" >> "$S"
fi  # steps 1-5

# The random-weight xsmall checkpoint of steps 5b and 6 (280 MB: made here, not carried).
CK="$SCRATCH/xsmall"
CK_RC=skipped
if [[ ${GPU_CHECK_E2E:-1} != 0 || ${GPU_CHECK_COMPARE:-1} != 0 ]]; then
  timeout 90 python3 scripts/make_xsmall_checkpoint.py "$CK" --layout hf > "$OUT/checkpoint.log" 2>&1
  CK_RC=$?
fi

# 5b. end to end from raw text: 200k corpus sentences (5-60 words) through `bench --corpus`,
#     tokenization overlapped with the GPU (GPU_CHECK_E2E=0 skips it). The checkpoint's
#     tokenizer is a 640-piece one (see make_xsmall_checkpoint.py), so sentences cut into more
#     tokens than with the real vocabulary; the tokens/s line says how many.
if [[ ${GPU_CHECK_E2E:-1} != 0 && $ONLY != compare ]]; then
  say "-- end to end: bench --corpus (200k sentences), f16, batches of up to 1024 sentences / 131072 tokens"
  if [[ $CK_RC != 0 ]]; then
    say "FAIL: make_xsmall_checkpoint.py rc=$CK_RC"; tail -n 5 "$OUT/checkpoint.log" >> "$S"
  else
    python3 scripts/make_corpus.py "$SCRATCH/corpus200k.txt" --n 200000
    timeout 120 $C/deberta-embed bench --model "$CK" --corpus "$SCRATCH/corpus200k.txt" --device cuda \
      --dtype f16 --batch-size 1024 --warmup 0 --iters 2 > "$OUT/e2e.log" 2>&1 \
      || echo "bench --corpus: exit $?" >> "$S"
    grep -v '^{' "$OUT/e2e.log" | tail -n 4 >> "$S"
  fi
fi

# 6. the peer comparison (only with the wheels of scripts/fetch-gpu-peers.sh in .carry/peers/)
if [[ ${GPU_CHECK_COMPARE:-1} == 0 ]]; then
  say "-- compare_gpu: skipped (GPU_CHECK_COMPARE=0)"
elif ! compgen -G "$C/peers/*.whl" > /dev/null; then
  say "-- compare_gpu: skipped (no .carry/peers/*.whl: run scripts/fetch-gpu-peers.sh before carrying)"
else
  # The whole step (checkpoint included) stays within BUDGET seconds: the device window is 15
  # minutes in all. compare_gpu.py starts no new shape / round after --deadline-s and rewrites its
  # .md after every shape, so the outer timeout only ever cuts a shape in flight.
  BUDGET="${COMPARE_GPU_BUDGET_S:-240}"
  t0=$SECONDS
  left=$((BUDGET - (SECONDS - t0)))
  deadline=$((left - 40 > 10 ? left - 40 : 10))
  if [[ $CK_RC != 0 ]]; then
    say "-- compare_gpu: FAIL: make_xsmall_checkpoint.py rc=$CK_RC"; tail -n 5 "$OUT/checkpoint.log" >> "$S"
  else
    # iterations: ~0.25 s per measurement, 3 rounds, 6 shapes, 5 runners ~ 2-3 minutes with the
    # Triton compiles; --deadline-s leaves 40 s for the shape in flight
    PYTHONUNBUFFERED=1 timeout -k 10 "$left" python3 scripts/compare_gpu.py --model "$CK" \
      --binary $C/deberta-embed --wheels $C/peers --rounds 3 --budget-s 0.25 --min-iters 5 --max-iters 40 \
      --deadline-s $deadline --out "$OUT/compare_gpu.md" --json-out "$OUT/compare_gpu.json" \
      > "$OUT/compare_gpu.log" 2>&1
    rc=$?
    say "-- compare_gpu (peers): rc=$rc ($((SECONDS - t0)) s of $BUDGET; 124 = cut by the timeout) -> compare_gpu.md"
    if [[ -s $OUT/compare_gpu.md ]]; then cat "$OUT/compare_gpu.md" >> "$S"; else tail -n 20 "$OUT/compare_gpu.log" >> "$S"; fi
  fi
fi
rm -rf "$SCRATCH"
say "== done; logs in $OUT"
cat "$S"
