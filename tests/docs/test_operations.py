"""docs/operations.md lists every reason the code can write into a status or an Event, and every exit code."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from tests.docs.reasons import reasons

from continual_trainer.exitcodes import ExitCode
from continual_trainer.records import BatchResult

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented() -> set[str]:
    return set(re.findall(r"`([A-Za-z0-9<>]+)`", OPERATIONS.read_text()))


def test_the_collector_finds_reasons_of_every_kind() -> None:
    found = reasons()
    # constants, keyword literals, trainer error classes, condition tuples, Event positional arguments
    for reason in ("SpecChangeRefused", "RetriesExhausted", "InvalidData", "AwaitingAdmission", "Resumed"):
        assert reason in found
    assert {"Normal", "Warning", "True", "False"}.isdisjoint(found)


def test_every_reason_is_documented() -> None:
    missing = sorted(reasons() - documented())
    assert missing == [], f"add these reasons with what to do to docs/operations.md: {missing}"


def test_every_trainer_outcome_is_documented() -> None:
    outcomes = typing.get_args(BatchResult.model_fields["outcome"].annotation)
    assert set(outcomes) - documented() == set()


def test_every_exit_code_is_documented() -> None:
    text = OPERATIONS.read_text()
    for code in ExitCode:
        assert re.search(rf"^\| {code.value} \| `{code.name}` \|", text, re.MULTILINE), code
