"""Property-based tests of the data readers (hypothesis).

Arbitrary bytes under arbitrary names, and arbitrary file trees on a volume (names, nesting, empty files,
symlinks inside, outside, dangling, looping), must never crash with anything but a clean refusal
(:class:`TrainerError`: bad data, a path outside the data root), and must never train bytes the user did
not write as text: every sample is a substring of a file's decoded text (or, for JSON lines, exactly the
field the line holds), holds no control junk, and nothing from outside the volume gets in.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from continual_trainer.data import LoadedBatch, LocalSource, Sample, SourceFile, load_batch
from continual_trainer.exitcodes import TrainerError

JUNK = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
OUTSIDE_MARK = "OUTSIDE-THE-VOLUME"
PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = st.sampled_from(["a", "b.txt", "c.jsonl", "d.json", "e.txt.gz", "f.jsonl.gz", "g.gz", "h.bin"])
TEXT = st.text(st.characters(codec="utf-8"), max_size=200)
JSONL = st.lists(
    st.one_of(
        st.fixed_dictionaries({"text": TEXT}),
        st.fixed_dictionaries({"prompt": TEXT, "completion": TEXT}),
        st.dictionaries(st.sampled_from(["text", "prompt", "body"]), st.one_of(TEXT, st.integers())),
    ),
    max_size=5,
).map(lambda rows: "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())
CONTENT = st.one_of(
    st.binary(max_size=400),
    TEXT.map(str.encode),
    JSONL,
    st.sampled_from([b"", b"\xef\xbb\xbf", b"\xef\xbb\xbfbom line\n", b"\x00" * 50, b"\xff\xd8\xff\xe0"]),
)
MAYBE_GZIPPED = st.tuples(CONTENT, st.booleans()).map(lambda c: gzip.compress(c[0]) if c[1] else c[0])


@dataclass
class Files:
    """A source that is not the volume: the format layer's checks hold for any source."""

    items: list[SourceFile]

    def describe(self) -> str:
        return "memory"

    def files(self) -> list[SourceFile]:
        return self.items


def decoded(name: str, data: bytes) -> str:
    """What the user wrote as text in a file that was accepted."""
    raw = gzip.decompress(data) if name.endswith(".gz") else data
    return raw.decode("utf-8").removeprefix("\ufeff")


def check_samples(batch: LoadedBatch, texts: dict[str, str]) -> None:
    """Every sample comes from the text of the file it names and holds no control junk."""
    for sample in batch.samples:
        name, line = sample.origin.rsplit(":", 1)
        source_line = texts[name].split("\n")[int(line) - 1].rstrip("\r")
        for part in (sample.text, sample.prompt, sample.completion):
            if part is not None:
                assert not JUNK.search(part), sample
                assert OUTSIDE_MARK not in part
        if Path(name.removesuffix(".gz")).suffix in {".jsonl", ".json"}:
            assert json.loads(source_line) == _fields(sample), sample  # a JSON line: exactly its fields
        else:
            assert sample.text == source_line, sample  # plain text: the line itself


def _fields(sample: Sample) -> dict[str, str]:
    if sample.text is not None:
        return {"text": sample.text}
    assert sample.prompt is not None
    assert sample.completion is not None
    return {"prompt": sample.prompt, "completion": sample.completion}


def load_or_refuse(source: object) -> LoadedBatch | None:
    try:
        return load_batch(source)  # type: ignore[arg-type]
    except TrainerError:
        return None


@PROPERTY
@given(st.lists(st.tuples(NAMES, MAYBE_GZIPPED), min_size=1, max_size=4, unique_by=lambda f: f[0]))
def test_arbitrary_bytes_are_read_as_text_or_refused_cleanly(files):
    batch = load_or_refuse(Files([SourceFile(name, data) for name, data in files]))
    if batch is not None:
        check_samples(batch, {name: decoded(name, data) for name, data in files})
        assert batch.samples


# -- file trees --------------------------------------------------------------------------------------
SEGMENT = st.text(st.sampled_from("ab.-_ é数"), min_size=1, max_size=6).filter(lambda s: s not in {".", ".."})
SUFFIX = st.sampled_from(["", ".txt", ".txt", ".jsonl", ".txt.gz"])
ENTRY = st.tuples(
    st.lists(SEGMENT, min_size=1, max_size=3),
    SUFFIX,
    st.one_of(
        # mostly clean text, so that trees get past the format checks and the sandbox is what decides
        st.tuples(st.just("file"), st.text("ab \n", max_size=40).map(str.encode)),
        st.tuples(st.just("file"), MAYBE_GZIPPED),
        st.tuples(st.just("dir"), st.none()),
        st.tuples(
            st.just("link"),
            st.sampled_from(
                [
                    "sibling",
                    "parent",
                    "root",
                    "outside-file",
                    "outside-dir",
                    "dangling-in",
                    "dangling-out",
                    "volume-file",
                ]
            ),
        ),
    ),
)


@dataclass
class Tree:
    volume: Path
    batch: Path
    outside_links: list[Path]  # non-hidden symlinks whose target is outside the volume


def build(base: Path, entries: list[tuple[list[str], str, tuple[str, object]]]) -> Tree:
    outside = base / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text(f"{OUTSIDE_MARK} file\n")
    (outside / "dir" / "x.txt").write_text(f"{OUTSIDE_MARK} folder\n")
    volume = base / "volume"
    batch = volume / "batch"
    batch.mkdir(parents=True)
    (volume / "elsewhere.txt").write_text("a file elsewhere on the volume\n")
    made: list[Path] = []
    targets = {
        "root": batch,
        "outside-file": outside / "secret.txt",
        "outside-dir": outside / "dir",
        "dangling-in": volume / "missing.txt",
        "dangling-out": outside / "missing.txt",
        "volume-file": volume / "elsewhere.txt",
    }
    escaping = {"outside-file", "outside-dir", "dangling-out"}
    links: list[Path] = []
    for parts, suffix, (kind, payload) in entries:
        path = batch.joinpath(*parts[:-1], parts[-1] + suffix)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "file":
                assert isinstance(payload, bytes)
                path.write_bytes(payload)
            elif kind == "dir":
                path.mkdir()
            else:
                target = {"sibling": made[-1] if made else batch, "parent": path.parent}.get(
                    str(payload), targets.get(str(payload))
                )
                path.symlink_to(target)
                if payload in escaping and not any(p.startswith(".") for p in path.relative_to(batch).parts):
                    links.append(path)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue  # the strategy named a path twice, or under a file: not a tree we can make
        made.append(path)
    return Tree(volume, batch, links)


def walk_names(tree: Tree, batch: LoadedBatch) -> dict[str, str]:
    """The texts under the names samples use (paths through symlinked folders included)."""
    names = {s.origin.rsplit(":", 1)[0] for s in batch.samples}
    return {n: decoded(n, (tree.batch / n).read_bytes()) for n in names}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ENTRY, max_size=8))
def test_arbitrary_file_trees_are_read_inside_the_volume_or_refused_cleanly(entries):
    with tempfile.TemporaryDirectory() as tmp:
        tree = build(Path(tmp), entries)
        batch = load_or_refuse(LocalSource(tree.batch, tree.volume))
        if batch is None:
            return
        assert not tree.outside_links, f"read although {tree.outside_links[0]} leads outside the volume"
        check_samples(batch, walk_names(tree, batch))
        for sample in batch.samples:
            assert (
                (tree.batch / sample.origin.rsplit(":", 1)[0]).resolve().is_relative_to(tree.volume.resolve())
            )
