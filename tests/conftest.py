"""Shared fixtures: a tiny model built locally (no hub), offline Hugging Face, an S3 endpoint (moto)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.s3server import S3Server, running_s3_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama + a locally trained tokenizer, saved with save_pretrained."""
    from continual_trainer.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="session")
def _s3_server_session() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_server(_s3_server_session: S3Server) -> S3Server:
    """A moto S3 endpoint on 127.0.0.1 (real HTTP), emptied before each test. See tests/s3server.py."""
    _s3_server_session.reset()
    return _s3_server_session
