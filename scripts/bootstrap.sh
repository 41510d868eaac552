#!/usr/bin/env bash
# Create .venv and install the project with the trainer and development extras.
# torch is installed first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build where
# only the CPU is needed; the project's range (torch>=2.4,<2.14) is then already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "$TORCH_SPEC"
python -m pip install -q -e ".[train,dev]"
echo "bootstrap: .venv ready ($(python -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")'))"
