#!/usr/bin/env bash
# Build the Python package (python/, PyO3 + maturin) and install it into a fresh virtual
# environment with what its tests need; prints the environment's interpreter on success:
#
#   py=$(bash scripts/install-python-package.sh) && "$py" -m pytest python/tests
#
# SCALE_OUT=1 also installs Ray, Spark and Dask (examples/requirements.txt) for the recipes'
# tests. VENV: where (default: target/py-venv; recreated each time). The Rust build goes to
# CARGO_TARGET_DIR (default: target/, shared with `cargo build --release`, so the library and
# its dependencies are not compiled twice). Needs python3 (>= 3.9) with venv, cargo, and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-target/py-venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
python3 -m venv --clear "$VENV" >&2
"$VENV/bin/pip" install -q -r python/requirements-test.txt >&2
if [ "${SCALE_OUT:-0}" = 1 ]; then
    "$VENV/bin/pip" install -q -r examples/requirements.txt >&2
fi
# The README's command: pip builds the wheel with maturin (fetched into an isolated build
# environment) and installs it.
"$VENV/bin/pip" install ./python >&2
"$VENV/bin/python" -c "import sys; print(sys.executable)"
