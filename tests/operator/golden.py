"""Golden files of the resource builders: where they are, how they are read and written.

Regenerate them after a deliberate change with ``UPDATE_EXPECTED=1 pytest tests/operator``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

EXPECTED = Path(__file__).parent / "expected"
#: The Kubernetes version produced objects are validated against (kubernetes-validate --strict).
KUBERNETES_VERSION = "1.30"


class BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the trainer config) as readable ``|`` blocks."""


BlockDumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def load(name: str) -> Any:
    """A golden file of ``expected/``."""
    return yaml.safe_load((EXPECTED / name).read_text())
