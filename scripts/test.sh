#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run runs): set-up, lint, types, layering, tests.
#
# End-to-end tests need a control plane (etcd, kube-apiserver, kube-controller-manager) in
# $KUBEBUILDER_ASSETS. When it is unset and we are root with apt, .ci/kube-assets.sh builds one from
# Debian's sources (cached after the first time); otherwise those tests are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ -z "${KUBEBUILDER_ASSETS:-}" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  KUBEBUILDER_ASSETS=$(bash .ci/kube-assets.sh | tail -n 1)
  export KUBEBUILDER_ASSETS
fi

echo "== ruff";          ruff check . && ruff format --check .
echo "== mypy";          mypy
echo "== import-linter"; lint-imports
echo "== crds";          python -m continual_operator.crdgen --check && python -m continual_operator.apidocs --check
echo "== pytest";        python -m pytest -ra "$@"
