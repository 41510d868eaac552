"""Deterministic, valid names for everything the operator creates."""

from __future__ import annotations

import re

import pytest

from continual_operator.naming import batch_id, claim_name, job_name, label_value, trainer_account_name
from continual_trainer.config import is_valid_batch_id

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@pytest.mark.parametrize(
    ("run", "batch", "attempt", "expected"),
    [
        ("demo", "b1", 1, "demo-b1-a1"),
        ("demo", "batch-2025-03-01", 12, "demo-batch-2025-03-01-a12"),
    ],
)
def test_short_job_names_are_readable(run: str, batch: str, attempt: int, expected: str) -> None:
    assert job_name(run, batch, attempt) == expected


@pytest.mark.parametrize(
    ("run", "batch"),
    [("r" * 60, "batch-1"), ("run", "b" * 253), ("run.with.dots", "batch.v1"), ("a", "x" * 58)],
)
def test_long_or_dotted_job_names_are_hashed_dns_labels(run: str, batch: str) -> None:
    name = job_name(run, batch, 7)
    assert DNS_LABEL.match(name), name
    assert name.endswith("-a7")
    assert job_name(run, batch, 7) == name  # deterministic


def test_hashed_names_do_not_collide() -> None:
    long = "x" * 80
    assert job_name(long + "a", "b", 1) != job_name(long + "b", "b", 1)
    assert job_name("run", "a.b", 1) != job_name("run", "a-b", 1)


def test_other_names() -> None:
    assert trainer_account_name("demo") == "demo-trainer"
    assert claim_name("demo") == "demo-data"
    assert len(claim_name("d" * 253)) <= 253


@pytest.mark.parametrize("value", ["demo", "a.b-c", "x" * 200, "dots.at.end." + "y" * 60])
def test_label_values(value: str) -> None:
    label = label_value(value)
    assert LABEL_VALUE.match(label), label
    assert label == value or len(value) > 63


@pytest.mark.parametrize("name", ["b1", "batch.2025-03-01", "b" * 63, "b" * 64, "c" * 253])
def test_batch_ids_are_valid_for_the_trainer(name: str) -> None:
    bid = batch_id(name)
    assert is_valid_batch_id(bid)
    assert bid == name or len(name) > 63
