"""docs/api.md is generated from the API models and committed; it lists every field of both kinds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from continual_operator.api import RESOURCES, RUN_INFO, apidocs

ROOT = Path(__file__).resolve().parents[2]
API_MD = ROOT / "docs" / "api.md"


def test_committed_reference_matches_the_models() -> None:
    assert API_MD.read_text() == apidocs.render(), (
        "docs/api.md is stale: run `python -m continual_operator.apidocs` and commit docs/api.md"
    )


def test_check_fails_on_a_stale_file_and_names_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "api.md"
    assert apidocs.main(["--out", str(out), "--check"]) == 1
    assert "python -m continual_operator.apidocs" in capsys.readouterr().err
    assert apidocs.main(["--out", str(out)]) == 0
    assert apidocs.main(["--out", str(out), "--check"]) == 0
    out.write_text(out.read_text().replace("LoRA", "Lora"))
    assert apidocs.main(["--out", str(out), "--check"]) == 1


@pytest.mark.parametrize("info", RESOURCES, ids=lambda i: i.kind)
def test_every_field_has_a_row_with_a_description(info: object) -> None:
    rows = list(apidocs.rows(info))  # type: ignore[arg-type]
    assert len({r.path for r in rows}) == len(rows)
    assert [r.path for r in rows if not r.description] == []


def test_rows_carry_type_default_and_immutability() -> None:
    rows = {r.path: r for r in apidocs.rows(RUN_INFO)}
    assert rows["spec.lora.r"].immutable and rows["spec.storage.subPath"].immutable
    assert not rows["spec.training"].immutable
    assert rows["spec.suspend"].type == "boolean" and rows["spec.suspend"].default == "`false`"
    assert rows["spec.failurePolicy.onPermanentFailure"].type == "enum: Halt \\| SkipBatch"
    assert rows["spec.scheduling.tolerations"].type == "[]object"
    assert "spec.scheduling.tolerations[].key" in rows
    assert "status.conditions[].reason" in rows


def test_every_table_row_has_five_cells() -> None:
    """An unescaped '|' in a description, enum or pattern would split a cell and break the table."""
    rows = [line for line in apidocs.render().splitlines() if line.startswith("| `")]
    assert rows
    assert [r for r in rows if len(re.findall(r"(?<!\\)\|", r)) != 6] == []
