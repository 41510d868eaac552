"""Batch names derived from source keys (folder-inbox file names, S3 object keys): valid and injective."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from continual_operator.naming import SOURCE_HASH_LENGTH, plain_source_name, source_batch_name
from continual_trainer.config import is_valid_batch_id

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.mark.parametrize(
    ("key", "slug"),
    [
        ("x-data.2024-01.jsonl", "x-data-2024-01"),
        ("2024/01/part-0001.jsonl", "2024-01-part-0001"),
        ("Batch 001.jsonl", "batch-001"),
        ("My_Batch.txt", "my-batch"),
        ("nested/prefix/", "nested-prefix"),
        ("___", ""),
    ],
)
def test_source_names_are_a_readable_slug_and_a_hash(key: str, slug: str) -> None:
    name = source_batch_name(key)
    assert DNS_LABEL.match(name), name
    assert is_valid_batch_id(name)
    assert name == (f"{slug}-{name[-SOURCE_HASH_LENGTH:]}" if slug else name[-SOURCE_HASH_LENGTH:])
    assert source_batch_name(key) == name  # deterministic


def test_the_keys_that_used_to_collide_get_different_names() -> None:
    a, b = source_batch_name("x-data.2024-01.jsonl"), source_batch_name("x-data.2024-02.jsonl")
    assert a != b
    assert a.startswith("x-data-2024-01-") and b.startswith("x-data-2024-02-")


def _keys() -> list[str]:
    """Keys that differ only where a slug loses information: case, punctuation, extension, length."""
    stems = ["b", "B", "b_", "b-", "b.", "b b", "-b", "b/c", "b-c", "b.c", "b_c", "x" * 70, "x" * 70 + "y"]
    suffixes = ["", ".jsonl", ".JSONL", ".txt", "/", ".tar.gz", "~"]
    return [s + t for s, t in itertools.product(stems, suffixes)] + ["long/" * 30 + str(i) for i in range(50)]


def test_distinct_keys_get_distinct_valid_names() -> None:
    keys = _keys()
    names = [source_batch_name(k) for k in keys]
    assert len(set(names)) == len(set(keys))
    assert all(DNS_LABEL.match(n) and is_valid_batch_id(n) and len(n) <= 63 for n in names)


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        source_batch_name("")


@pytest.mark.parametrize(
    ("file_name", "is_file", "plain"),
    [
        ("batch-001.jsonl", True, "batch-001"),
        ("batch-003.txt", True, "batch-003"),
        ("x-data.2024-01.jsonl", True, "x-data.2024-01"),
        ("b1", False, "b1"),
        ("b1.v2", False, "b1.v2"),
        ("Batch 001.jsonl", True, None),
        ("My_Batch.txt", True, None),
        ("-lead.jsonl", True, None),
        ("a..b.jsonl", True, None),
        ("b" * 64 + ".jsonl", True, None),
    ],
)
def test_plain_names_only_where_the_file_name_already_is_one(
    file_name: str, is_file: bool, plain: str | None
) -> None:
    name = plain_source_name(file_name, is_file=is_file)
    assert name == plain
    if name is not None:
        assert DNS_SUBDOMAIN.match(name) and is_valid_batch_id(name)


def test_a_plain_name_can_equal_a_hashed_one() -> None:
    """A file may be named like another key's hashed name: the folder inbox checks names already taken."""
    hashed = source_batch_name("Batch 001.jsonl")
    assert plain_source_name(hashed + ".jsonl") == hashed


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=120), min_size=2, max_size=20, unique=True))
def test_property_distinct_keys_always_get_distinct_valid_names(keys: list[str]) -> None:
    names = [source_batch_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    for name in names:
        assert DNS_LABEL.match(name) and is_valid_batch_id(name), name


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_property_plain_names_are_valid_and_only_drop_the_extension(file_name: str) -> None:
    plain = plain_source_name(file_name)
    if plain is not None:
        assert DNS_SUBDOMAIN.match(plain) and is_valid_batch_id(plain)
        assert file_name == plain or file_name.startswith(plain + ".")
