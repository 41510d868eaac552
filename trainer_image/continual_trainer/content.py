"""From a batch file's bytes to text we may train on: gzip, binary detection, the UTF-8 BOM, control junk.

This is the format layer's gate, applied to every :class:`~continual_trainer.data.SourceFile` whatever
source produced it (the volume, an object store), so that bytes the user did not write as text never become
a sample:

* ``*.gz`` files (``.jsonl.gz``, ``.txt.gz``, ...) are decompressed in memory, up to
  :data:`MAX_DECOMPRESSED_BYTES`; their format is taken from the name without ``.gz``. Gzip data under a name
  without ``.gz`` is refused with the rename that makes it readable (guessing would make ``format: auto``
  depend on content as well as on the name).
* Binary content is refused naming the file and saying "remove the binary file": a known magic number
  (images, PDF, archives, compressed data, executables), a NUL byte, or a high share of control characters.
* A UTF-8 byte order mark at the start of a file is dropped (editors on Windows write one).
* A control character left inside a sample (an ANSI escape, a stray ``\\x01``, a JSON ``"\\u0000"``) is bad
  data naming ``file:line`` and the column; tab, newline, carriage return and form feed are text.

Magic numbers are a short table rather than a library: the ones that matter here are the formats people
drop into an inbox by mistake, and general-purpose detectors also match plain text that merely starts with
a signature's letters (``ID3``, ``BM``), which would refuse good data.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from continual_trainer.exitcodes import BadDataError

#: A compressed file is decompressed in memory; beyond this it is refused (split it into several files).
MAX_DECOMPRESSED_BYTES = 1 << 30

#: Above this share of control bytes (besides tab, newline, carriage return, form feed) a file is binary.
CONTROL_SHARE_LIMIT = 0.05

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"

#: (what it is, its first bytes). Every signature holds a byte that UTF-8 text cannot start with, or is
#: long and specific enough that no text starts with it.
MAGIC_NUMBERS: tuple[tuple[str, bytes], ...] = (
    ("gzip-compressed data", GZIP_MAGIC),
    ("a JPEG image", b"\xff\xd8\xff"),
    ("a PNG image", b"\x89PNG\r\n\x1a\n"),
    ("a GIF image", b"GIF87a"),
    ("a GIF image", b"GIF89a"),
    ("a PDF document", b"%PDF-"),
    ("a ZIP archive (or .docx/.xlsx/.jar)", b"PK\x03\x04"),
    ("an empty ZIP archive", b"PK\x05\x06"),
    ("bzip2-compressed data", b"BZh91AY&SY"),
    ("xz-compressed data", b"\xfd7zXZ\x00"),
    ("zstd-compressed data", b"\x28\xb5\x2f\xfd"),
    ("a 7-Zip archive", b"7z\xbc\xaf\x27\x1c"),
    ("an ELF executable", b"\x7fELF"),
    ("a NumPy array", b"\x93NUMPY"),
    ("a Python pickle (or a PyTorch file)", b"\x80\x04\x95"),
    ("a SQLite database", b"SQLite format 3\x00"),
    ("a TIFF image", b"II*\x00"),
    ("a TIFF image", b"MM\x00*"),
    ("a WebAssembly module", b"\x00asm"),
)

#: C0 controls but tab, LF, CR and FF; DEL. As bytes (for the share) and as characters (for samples,
#: with the C1 controls and lone surrogates, which a JSON ``\\u`` escape can produce).
_CONTROL_BYTES = bytes([*range(0x09), 0x0B, *range(0x0E, 0x20), 0x7F])
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff]")

REMOVE_BINARY = (
    "remove the binary file from the batch (batches are UTF-8 text: .jsonl or .txt, optionally "
    "gzip-compressed as .jsonl.gz or .txt.gz)"
)


@dataclass(frozen=True)
class TextFile:
    """A file's content ready to split into lines: its name, the name its format is read from, its bytes."""

    name: str
    format_name: str  # ``name`` without a ``.gz`` suffix
    data: bytes


def open_text(name: str, data: bytes) -> TextFile:
    """Decompress, check for binary content and drop a BOM; raise :class:`BadDataError` naming the file."""
    format_name = name
    if name.lower().endswith(".gz"):
        format_name = name[: -len(".gz")]
        data = _gunzip(name, data)
    elif data.startswith(GZIP_MAGIC):
        raise BadDataError(
            f"{name}: gzip-compressed data (it starts with the gzip magic bytes 1f 8b) under a name without "
            f".gz: rename it to {name}.gz to have it decompressed, or decompress it"
        )
    check_not_binary(name, data)
    return TextFile(name, format_name, data.removeprefix(UTF8_BOM))


def check_not_binary(name: str, data: bytes) -> None:
    """Refuse a known magic number, a NUL byte or a high share of control bytes."""
    for what, magic in MAGIC_NUMBERS:
        if data.startswith(magic):
            raise BadDataError(f"{name}: binary content ({what}), not text: {REMOVE_BINARY}")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise BadDataError(f"{name}: binary content (a NUL byte at byte {nul}), not text: {REMOVE_BINARY}")
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    if controls and controls > CONTROL_SHARE_LIMIT * len(data):
        raise BadDataError(
            f"{name}: binary content ({controls} of {len(data)} bytes are control characters), not text: "
            f"{REMOVE_BINARY}"
        )


def check_text(origin: str, text: str, what: str = "the line") -> None:
    """Refuse a control character inside a sample's text, naming where it is."""
    found = _CONTROL_CHARS.search(text)
    if found is not None:
        char = found.group()
        raise BadDataError(
            f"{origin}: {what} holds the control character U+{ord(char):04X} at column {found.start() + 1}: "
            "samples are text; remove it (tab, newline and carriage return are fine)"
        )


def _gunzip(name: str, data: bytes) -> bytes:
    """Every gzip member of ``data``, at most :data:`MAX_DECOMPRESSED_BYTES` in all."""
    out = bytearray()
    rest = data
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, MAX_DECOMPRESSED_BYTES + 1 - len(out))
        except zlib.error as exc:
            raise BadDataError(
                f"{name}: not valid gzip data ({exc}): re-compress it with gzip, or drop the .gz suffix if "
                "the file is not compressed"
            ) from exc
        if len(out) > MAX_DECOMPRESSED_BYTES:
            raise BadDataError(
                f"{name}: decompresses to more than {MAX_DECOMPRESSED_BYTES >> 20} MiB, the limit for one "
                "compressed file: split it into several files"
            )
        if not inflater.eof:
            raise BadDataError(
                f"{name}: truncated gzip data (the stream ends early): copy the file again, completely"
            )
        rest = inflater.unused_data
    return bytes(out)
