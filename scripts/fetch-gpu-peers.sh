#!/usr/bin/env bash
# Download, on a development machine, the GPU peers that scripts/compare_gpu.py times next to
# deberta-embed, as wheels, into the git-ignored folder .carry/peers/ (the GPU machine has no
# network; the device tool carries .carry/). Pinned versions and hashes, no dependencies:
#
#   disentangled-flash 1.1.1   py3-none-any, ~117 KiB (Triton kernels as Python source + a tuning
#                              profile for H200 / torch 2.14 / Triton 3.8)
#   flashdeberta 0.0.8         py3-none-any, ~42 KiB (Triton kernels as Python source)
#
# Their requirements, which the GPU machine must already have (its image does: torch 2.11,
# transformers 5.17, triton 3.6 — the torch wheel brings triton — einops):
#   disentangled-flash: torch>=2.7 (Triton optional at import, needed for its CUDA path);
#                       transformers>=4.57 only for the [hf] extra (compare_gpu.py has it anyway)
#   flashdeberta:       torch>=2.1, transformers>=4.30, triton>=3.0, einops>=0.7 (imported by its
#                       padding.py at import time: without einops the import fails)
# compare_gpu.py installs them with `pip install --no-deps --no-index --target <tmp>`, so nothing on
# the GPU machine is modified. Re-running re-uses wheels already there (hash-checked).
#   PYTHON=python3 (default) picks the interpreter whose pip downloads.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
DEST=.carry/peers
mkdir -p "$DEST"

REQ="$(mktemp)"
trap 'rm -f "$REQ"' EXIT
cat > "$REQ" <<'EOF'
disentangled-flash==1.1.1 --hash=sha256:76266e3a5985f06fa94942988dd5fd145d58f3fe6086fd20d6070714c61f6965
flashdeberta==0.0.8 --hash=sha256:3b86fb75bc7bfe0feda13d9b981f3bcc06bc4fbf0f292fdd70b8c20bbe9b3c16
EOF

# --require-hashes: a re-published or tampered file stops here
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --require-hashes \
  -r "$REQ" -d "$DEST"

# one version of each (pip --target refuses two of the same name)
for name in disentangled_flash flashdeberta; do
  n=$(ls "$DEST"/${name}-*.whl 2>/dev/null | wc -l)
  (( n == 1 )) || { echo "error: $n wheels of $name in $DEST (want exactly 1)" >&2; exit 1; }
done
ls -l "$DEST"
echo "peers ready in $DEST ($(du -sk "$DEST" | cut -f1) KiB)"
