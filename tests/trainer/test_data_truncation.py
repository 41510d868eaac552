"""Truncation to maxSeqLength: a long sample is cut before tokenizing, keeps exactly the same tokens, and
is counted (log + batch result) instead of dropped without a word."""

from __future__ import annotations

import json
import logging
import random
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.trainer.helpers import make_config

from continual_trainer import model as modeling
from continual_trainer.cli import execute
from continual_trainer.config import BaseModelSpec
from continual_trainer.data import Sample
from continual_trainer.exitcodes import ExitCode

MAX_LEN = 24


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    return modeling.load_tokenizer(BaseModelSpec(path=str(tiny_model)))


def whole(tokenizer, text: str, special: bool = True) -> list[int]:
    """The tokens of the whole text: what the pre-cut must agree with."""
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def texts() -> dict[str, str]:
    rng = random.Random(0)
    words = ["the", "model", "learns", "continual", "batches", "résumé", "数据", "🙂", "x1"]
    return {
        "words": " ".join(rng.choice(words) for _ in range(6000)),
        "one-letter": "a" * 40_000,
        "no-whitespace": "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(40_000)),
        "digits": "".join(rng.choice(string.digits) for _ in range(40_000)),
        "multibyte": "".join(rng.choice("数据模型学习🙂é") for _ in range(20_000)),
        "punctuation-runs": ("!?" * 7 + "word") * 3000,
        "newlines-and-tabs": "\t\n ".join(["line"] * 8000),
    }


@pytest.mark.parametrize("name", list(texts()))
def test_the_pre_cut_keeps_exactly_the_tokens_of_the_whole_text(tokenizer, name):
    text = texts()[name]
    encoded = modeling.encode_batch([Sample("a.txt:1", text=text)], tokenizer, MAX_LEN)
    assert encoded.samples[0].input_ids == whole(tokenizer, text)[:MAX_LEN]
    assert encoded.samples[0].labels == encoded.samples[0].input_ids
    summary = encoded.truncation
    assert summary is not None
    assert summary.samples == 1
    assert summary.characters_not_tokenized > len(text) // 2  # the text was cut, not tokenized whole
    assert summary.tokens_dropped > 0


def test_prompt_and_completion_are_cut_the_same_way(tokenizer):
    prompt, completion = "why? why?", "because " * 20_000
    sample = Sample("qa.jsonl:1", prompt=prompt, completion=completion)
    encoded = modeling.encode_batch([sample], tokenizer, MAX_LEN).samples[0]
    full_prompt = whole(tokenizer, prompt)
    expected = (full_prompt + whole(tokenizer, completion, special=False))[:MAX_LEN]
    assert encoded.input_ids == expected
    assert encoded.labels[: len(full_prompt)] == [modeling.IGNORE_INDEX] * len(full_prompt)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(alphabet=st.sampled_from("ab c\n数🙂!1é"), min_size=0, max_size=3000),
    st.integers(min_value=8, max_value=40),
)
def test_any_text_keeps_the_same_first_tokens(tokenizer, text, max_len):
    encoded = modeling.encode_batch([Sample("t:1", text=text + "z")], tokenizer, max_len).samples[0]
    assert encoded.input_ids == [*whole(tokenizer, text + "z"), tokenizer.eos_token_id][:max_len]


def test_a_22_mb_line_is_never_tokenized_whole(tokenizer, monkeypatch):
    seen: list[int] = []
    real = modeling._Cutter._tokenize

    def spy(self, text, special):
        seen.append(len(text))
        return real(self, text, special)

    monkeypatch.setattr(modeling._Cutter, "_tokenize", spy)
    line = "word" * 5_500_000  # 22 MB, no whitespace: a single pre-token for a byte-level BPE
    encoded = modeling.encode_batch([Sample("big.txt:1", text=line)], tokenizer, 512)
    assert len(encoded.samples[0].input_ids) == 512
    assert max(seen) < 100_000  # bounded by maxSeqLength, not by the line
    assert encoded.truncation is not None
    assert encoded.truncation.characters_not_tokenized > 21_900_000


def test_truncation_is_counted_in_the_log(tokenizer, caplog):
    samples = [
        Sample("a.txt:1", text="short"),
        Sample("a.txt:2", text="word " * 100),
        Sample("a.txt:3", text="word " * 100_000),
    ]
    with caplog.at_level(logging.WARNING, logger="continual_trainer.model"):
        summary = modeling.encode_batch(samples, tokenizer, MAX_LEN).truncation
    assert summary is not None
    assert (summary.samples, summary.first) == (2, "a.txt:2")
    assert summary.characters_not_tokenized > 400_000
    message = caplog.records[-1].getMessage()
    assert message.startswith(
        "2 of 3 samples are longer than training.maxSeqLength=24 tokens and were truncated (the first: a.txt:2)"
    )
    assert f"{summary.tokens_dropped} tokens dropped" in message
    assert "raise maxSeqLength" in message
    assert modeling.encode_batch(samples[:1], tokenizer, MAX_LEN).truncation is None


def test_the_batch_result_carries_the_truncation(tiny_model, tmp_path):
    data = tmp_path / "long.jsonl"
    lines = [{"text": f"sample {i} " * 3} for i in range(3)] + [{"text": "long " * 50_000}]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, result = execute(
        make_config(tmp_path / "run", tiny_model, "b1", data, training={"epochsPerBatch": 1})
    )
    assert code == ExitCode.SUCCESS, result
    assert result.truncated is not None
    assert (result.truncated.samples, result.truncated.first) == (1, "long.jsonl:4")
    assert result.truncated.characters_not_tokenized > 200_000
    recorded = json.loads((tmp_path / "run" / "ledger" / "batches" / "b1.json").read_text())
    assert recorded["result"]["truncated"]["samples"] == 1
