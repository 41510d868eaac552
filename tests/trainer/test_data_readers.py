"""The format layer: binary content, gzip, the UTF-8 BOM and control characters, for files of any source."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

import pytest

from continual_trainer import content
from continual_trainer.data import SourceFile, load_batch
from continual_trainer.exitcodes import BadDataError


@dataclass
class Files:
    """A BatchSource that is not the volume (as an object-store source is): the checks must apply to it."""

    items: list[SourceFile]

    def describe(self) -> str:
        return "memory"

    def files(self) -> list[SourceFile]:
        return self.items


def load(*files: tuple[str, bytes], fmt: str = "auto") -> list[tuple[str, str | None]]:
    batch = load_batch(Files([SourceFile(n, d) for n, d in files]), fmt)  # type: ignore[arg-type]
    return [(s.origin, s.text or s.completion) for s in batch.samples]


def refused(*files: tuple[str, bytes], fmt: str = "auto") -> str:
    with pytest.raises(BadDataError) as info:
        load(*files, fmt=fmt)
    return info.value.message


BINARY = [
    ("nul.txt", b"\x00" * 3000, "a NUL byte at byte 0"),
    ("late-nul.jsonl", b'{"text": "fine"}\n' * 20 + b"\x00", "a NUL byte at byte 340"),
    ("photo.txt", b"\xff\xd8\xff\xe0\x00\x10JFIF", "a JPEG image"),
    ("image.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00", "a PNG image"),
    ("paper.txt", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "a PDF document"),
    ("notes.txt", b"PK\x03\x04\x14\x00", "a ZIP archive"),
    ("weights.txt", b"\x80\x04\x95\x10\x00", "a Python pickle"),
    ("tool", b"\x7fELF\x02\x01\x01", "an ELF executable"),
    ("controls.txt", bytes(range(1, 9)) * 20 + b"text", "160 of 164 bytes are control characters"),
]


@pytest.mark.parametrize(("name", "data", "what"), BINARY, ids=[b[0] for b in BINARY])
def test_binary_content_is_bad_data_naming_the_file(name, data, what):
    message = refused(("good.txt", b"a sample\n"), (name, data))
    assert message.startswith(f"{name}: binary content ({what}")
    assert "remove the binary file" in message


def test_a_binary_file_is_refused_even_with_an_explicit_format():
    assert "binary content" in refused(("x.bin", b"\x00\x01\x02"), fmt="text")


def test_gzip_files_are_read_by_their_inner_suffix():
    jsonl = b'{"text": "compressed json"}\n{"prompt": "q", "completion": "a"}\n'
    text = b"compressed text\n"
    assert load(("a.jsonl.gz", gzip.compress(jsonl)), ("b.txt.gz", gzip.compress(text))) == [
        ("a.jsonl.gz:1", "compressed json"),
        ("a.jsonl.gz:2", "a"),
        ("b.txt.gz:1", "compressed text"),
    ]
    # several members (cat a.gz b.gz > c.gz) are one stream, as gzip -d reads it
    assert load(("c.txt.gz", gzip.compress(b"one\n") + gzip.compress(b"two\n"))) == [
        ("c.txt.gz:1", "one"),
        ("c.txt.gz:2", "two"),
    ]


def test_gzip_under_a_name_without_gz_says_how_to_rename_it():
    message = refused(("data.jsonl", gzip.compress(b'{"text": "x"}\n')))
    assert message.startswith("data.jsonl: gzip-compressed data")
    assert "rename it to data.jsonl.gz" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"plain text, not gzip\n", "data.txt.gz: not valid gzip data"),
        (gzip.compress(b"a long enough line\n" * 50)[:-30], "data.txt.gz: truncated gzip data"),
        (gzip.compress(b"\x00" * 100), "data.txt.gz: binary content (a NUL byte"),
        (gzip.compress(gzip.compress(b"twice\n")), "data.txt.gz: binary content (gzip-compressed data)"),
    ],
    ids=["not-gzip", "truncated", "binary-inside", "compressed-twice"],
)
def test_broken_or_binary_gzip_is_named(data, expected):
    assert refused(("data.txt.gz", data)).startswith(expected)


def test_a_gzip_bomb_is_refused_at_the_size_cap(monkeypatch):
    monkeypatch.setattr(content, "MAX_DECOMPRESSED_BYTES", 1 << 20)
    bomb = gzip.compress(b"a" * (4 << 20))  # 4 MiB of text in a few KB
    assert len(bomb) < 10_000
    message = refused(("bomb.txt.gz", bomb))
    assert message.startswith("bomb.txt.gz: decompresses to more than 1 MiB")
    assert "split it into several files" in message


def test_a_utf8_bom_is_stripped_in_jsonl_and_text():
    bom = b"\xef\xbb\xbf"
    assert load(("a.jsonl", bom + b'{"text": "first"}\n'), ("b.txt", bom + b"second\n")) == [
        ("a.jsonl:1", "first"),
        ("b.txt:1", "second"),
    ]
    assert load(("c.txt.gz", gzip.compress(bom + b"third\n"))) == [("c.txt.gz:1", "third")]


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        (
            "log.txt",
            b"a log line that is fine\n\x1b[31mred\x1b[0m, then a long explanation\n",
            "log.txt:2: the line holds the control character U+001B at column 1",
        ),
        (
            "a.jsonl",
            json.dumps({"text": "nul\u0000here"}).encode(),
            "a.jsonl:1: field 'text' holds the control character U+0000 at column 4",
        ),
        (
            "b.jsonl",
            json.dumps({"prompt": "p\u0085", "completion": "c"}).encode(),
            "field 'prompt' holds the control character U+0085",
        ),
        ("c.jsonl", b'{"text": "lone \\ud800 surrogate"}', "field 'text' holds the control character U+D800"),
    ],
    ids=["ansi-escape", "json-nul", "c1-control", "lone-surrogate"],
)
def test_a_control_character_in_a_sample_is_named_with_line_and_column(name, data, expected):
    message = refused((name, data))
    assert expected in message
    assert "remove it" in message


def test_whitespace_controls_are_text():
    assert load(("t.txt", b"tab\there\r\nform\x0cfeed\n"), ("j.jsonl", b'{"text": "two\\nlines"}\n')) == [
        ("t.txt:1", "tab\there"),
        ("t.txt:2", "form\x0cfeed"),
        ("j.jsonl:1", "two\nlines"),
    ]


def test_latin1_text_is_still_a_reencoding_hint():
    message = refused(("latin1.txt", "caf\u00e9\n".encode("latin-1")))
    assert message.startswith("latin1.txt:1: not valid UTF-8 (byte 3): re-encode the file as UTF-8")
