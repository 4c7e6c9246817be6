#!/usr/bin/env bash
# A virtual environment with Python's huggingface_hub (pinned) for tests/hub.rs's cache-sharing
# test, which otherwise skips, saying so. Prints the interpreter's path on success:
#
#   export DEBERTA_EMBED_PYTHON=$(bash scripts/install-test-python.sh)
#
# VENV: where to create it (default: target/hf-venv). Needs python3 with venv and PyPI access.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-target/hf-venv}
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install -q huggingface_hub==2.4.0 >&2
echo "$PWD/$VENV/bin/python"
