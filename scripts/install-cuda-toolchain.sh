#!/usr/bin/env bash
# Install nvcc 13.0 (compiler only, no driver, no GPU needed) from PyPI wheels into the
# git-ignored folder .cuda-toolchain/ of this repository, so that `cargo build --features cuda`
# can compile kernels/*.cu on a machine without the CUDA toolkit.
#
# Idempotent: when the pinned versions are already there, it only re-checks and prints where
# nvcc is. Needs python3 with pip (PyPI reachable) and a host C++ compiler (g++ <= 14).
#
#   scripts/install-cuda-toolchain.sh          # install (or check) and print NVCC=...
#   scripts/install-cuda-toolchain.sh --print  # just print the nvcc path (exit 1 if absent)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.cuda-toolchain"
SITE="$DEST/site"
# Pinned: the 13.0 line matches the GPU machine's CUDA 13.0 driver (580). Runtime 13.0.96 and
# cccl 13.0.85 are the last 13.0.x of those two packages.
PKGS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
)
STAMP="$DEST/installed.txt"
NVCC="$SITE/nvidia/cu13/bin/nvcc"
WANT="$(printf '%s\n' "${PKGS[@]}")"

if [[ "${1:-}" == "--print" ]]; then
  [[ -x "$NVCC" ]] && { echo "$NVCC"; exit 0; }
  exit 1
fi

if [[ -x "$NVCC" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "cuda toolchain already installed"
else
  echo "installing ${PKGS[*]} into $SITE"
  rm -rf "$SITE"
  mkdir -p "$SITE"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
    --target "$SITE" "${PKGS[@]}"
  printf '%s\n' "${PKGS[@]}" > "$STAMP"
fi

CU="$SITE/nvidia/cu13"
[[ -x "$NVCC" ]] || { echo "error: $NVCC missing after install" >&2; exit 1; }
# The wheels ship binaries without the executable bit on some pip versions.
chmod +x "$CU"/bin/* "$CU"/nvvm/bin/* 2>/dev/null || true

# nvcc looks for nvvm/ and include/ next to bin/; the wheels lay them out that way already, but
# the cccl headers (cub/thrust/cuda::std) live under include/cccl on some versions: nothing here
# uses them, so they are optional.
# Smoke test: compile a trivial kernel for sm_80 and sm_90 with the host compiler found here.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/smoke.cu" <<'CU'
#include <cuda_fp16.h>
extern "C" __global__ void smoke(float* y, const __half* x) { y[threadIdx.x] = __half2float(x[threadIdx.x]); }
CU
if ! "$NVCC" -O3 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
     --fatbin -o "$TMP/smoke.fatbin" "$TMP/smoke.cu" >"$TMP/log" 2>&1; then
  cat "$TMP/log" >&2
  echo "error: nvcc cannot compile a trivial kernel (host compiler: $(command -v g++ || echo none))" >&2
  exit 1
fi
"$NVCC" --version | tail -n 2
echo "NVCC=$NVCC"
