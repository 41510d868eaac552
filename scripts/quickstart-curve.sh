#!/usr/bin/env bash
# Regenerate docs/quickstart-curve.png (the README's picture): the quickstart in a fresh folder, then its
# report. Deterministic on CPU (the training is exact), so a rerun changes the picture only when the
# training or the drawing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
continual-training demo --volume "$work/volume"
continual-training report --volume "$work/volume" --out "$work/report"
cp "$work/report/demo-curve.png" docs/quickstart-curve.png
echo "wrote docs/quickstart-curve.png ($(stat -c %s docs/quickstart-curve.png) bytes)"
