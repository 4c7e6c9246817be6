#!/usr/bin/env bash
# Build, on a development machine (no GPU needed), everything scripts/gpu-check.sh runs on the
# GPU machine (which has no Rust), and put it in the git-ignored folder .carry/:
#   .carry/deberta-embed        the CLI, release, with --features cuda
#   .carry/gpu-tests            the tests/gpu.rs test binary, release
#   .carry/manifest_dir.txt     the repo path compiled into the test binary (fixture lookup)
#   .carry/cuda-resource-report.txt   ptxas' registers / shared memory / spills per kernel
#   .carry/peers/*.whl          the GPU peers for scripts/compare_gpu.py (scripts/fetch-gpu-peers.sh,
#                               ~160 KiB; kept across rebuilds, fetched when missing, optional)
# Then, with a GPU:  run(command="bash scripts/gpu-check.sh", carry=[".carry"])
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/install-cuda-toolchain.sh >/dev/null
export NVCC="${NVCC:-$ROOT/.cuda-toolchain/site/nvidia/cu13/bin/nvcc}"

cargo build --release --features cuda --bin deberta-embed
# the test executable's path comes from cargo's JSON messages
TEST_BIN="$(cargo test --release --features cuda --test gpu --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu" and m.get("executable"):
        print(m["executable"])' | tail -n 1)"
[[ -x "$TEST_BIN" ]] || { echo "error: gpu test binary not found" >&2; exit 1; }

# everything but the peer wheels (pinned and hash-checked: no reason to fetch them again)
mkdir -p .carry
find .carry -mindepth 1 -maxdepth 1 ! -name peers -exec rm -rf {} +
cp target/release/deberta-embed .carry/deberta-embed
cp "$TEST_BIN" .carry/gpu-tests
# debug info would triple the size (the device tool carries 64 MiB at most); symbols stay
strip --strip-debug .carry/deberta-embed .carry/gpu-tests
echo "$ROOT" > .carry/manifest_dir.txt
cp target/cuda-resource-report.txt .carry/ 2>/dev/null || true
git rev-parse HEAD > .carry/commit.txt 2>/dev/null || true
if ! compgen -G ".carry/peers/*.whl" > /dev/null; then
  # optional: without them gpu-check.sh skips its peer comparison (step 6)
  scripts/fetch-gpu-peers.sh || echo "warning: peer wheels not fetched (no PyPI?): gpu-check.sh will skip compare_gpu" >&2
fi
du -sh .carry/*
total=$(du -sk .carry | cut -f1)
(( total < 60000 )) || { echo "error: .carry is ${total} KiB, over the 64 MiB the device tool carries" >&2; exit 1; }
echo "carry ready: run scripts/gpu-check.sh on the GPU machine with carry=[\".carry\"]"
