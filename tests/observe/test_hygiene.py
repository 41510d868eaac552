"""Project hygiene that rots silently unless a test watches it: dependencies, lint ignores, packaging, phases."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path
from typing import get_args

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCES = (ROOT / "operator", ROOT / "trainer_image")
#: Declared but not imported by our own code, each for a reason.
NOT_IMPORTED = {
    "boto3": "the S3 data and inbox work (issue 7) imports it",
    "accelerate": "transformers.Trainer needs it at run time without declaring it",
    "safetensors": "checkpoints are safetensors files (written through transformers/peft, read by tests)",
}


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~\[;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def _imported_distributions() -> set[str]:
    modules: set[str] = set()
    for folder in SOURCES:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules.add(node.module.split(".")[0])
    by_module = importlib.metadata.packages_distributions()
    return {dist.lower().replace("_", "-") for m in modules for dist in by_module.get(m, [])}


def test_every_declared_runtime_dependency_is_imported_or_says_why_not():
    declared = [
        *PYPROJECT["project"]["dependencies"],
        *PYPROJECT["project"]["optional-dependencies"]["train"],
    ]
    imported = _imported_distributions()
    unused = {_requirement_name(d) for d in declared} - imported - set(NOT_IMPORTED)
    assert not unused, f"declared in pyproject.toml but never imported: {sorted(unused)}; remove them"


def _ruff_counts(config: Path) -> dict[str, int]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            ".",
            "--config",
            str(config),
            "--statistics",
            "--output-format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    counts: dict[str, int] = {}
    for item in json.loads(proc.stdout or "[]"):
        counts[item["code"]] = counts.get(item["code"], 0) + item["count"]
    return counts


def _ruff_config(tmp_path: Path, ignore: list[str], per_file: dict[str, list[str]]) -> Path:
    ruff = PYPROJECT["tool"]["ruff"]
    lines = [
        f"line-length = {ruff['line-length']}",
        f'target-version = "{ruff["target-version"]}"',
        f"src = {json.dumps(ruff['src'])}",
        "[lint]",
        'select = ["ALL"]',
        f"ignore = {json.dumps(ignore)}",
        "[lint.per-file-ignores]",
        *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in per_file.items()),
    ]
    path = tmp_path / "ruff.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_ruff_ignore_still_has_something_to_ignore(tmp_path: Path):
    """An ignore that matches nothing only hides the next real finding: remove it."""
    lint = PYPROJECT["tool"]["ruff"]["lint"]
    ignore, per_file = lint["ignore"], lint["per-file-ignores"]
    counts = _ruff_counts(_ruff_config(tmp_path, [], per_file))

    def hits(code: str, found: dict[str, int]) -> int:
        return sum(n for c, n in found.items() if c.startswith(code))

    idle = [code for code in ignore if hits(code, counts) == 0]
    assert not idle, f"[tool.ruff.lint] ignore has codes with no finding to ignore: {idle}"
    # per-file ignores (on top of the global ones): dropping a pattern's entry must bring findings back
    counts = _ruff_counts(_ruff_config(tmp_path, ignore, per_file))
    for pattern, codes in per_file.items():
        without = _ruff_counts(
            _ruff_config(tmp_path, ignore, {k: v for k, v in per_file.items() if k != pattern})
        )
        idle = [code for code in codes if hits(code, without) == hits(code, counts)]
        assert not idle, f"per-file-ignores {pattern!r} has codes with no finding there: {idle}"


def test_the_project_metadata_uses_the_spdx_licence_and_setuptools_does_not_warn():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # setuptools' deprecation of the licence table is a warning
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
    for pattern in PYPROJECT["project"]["license-files"]:
        assert list(ROOT.glob(pattern)), f"license-files {pattern!r} matches no file"


@pytest.mark.parametrize("kind", ["batch", "run"])
def test_every_phase_the_api_declares_is_set_somewhere(kind: str):
    """A phase that is never set (like the old batch phase Skipped) makes every client handle a ghost."""
    from continual_operator.api import BatchPhase, RunPhase

    phases = get_args(BatchPhase if kind == "batch" else RunPhase)
    code = "".join(
        path.read_text() for path in (ROOT / "operator" / "continual_operator" / "planning").glob("*.py")
    )
    never = [p for p in phases if not re.search(rf"""phase(=|\s*=\s*|"\s*:\s*)"{p}\"""", code)]
    assert not never, f"{kind} phases declared in the API but never set: {never}"
