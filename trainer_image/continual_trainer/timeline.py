"""Where a trainer process spends its time before its first optimizer step: named spans, logged once.

Each :func:`mark` starts a span that ends at the next mark; the CLI marks its entry point, the batch session
each of its phases (and the parts of loading), the trainer the start of training and the end of the first
step. At the end of the first step the process logs one line, ``start-up timeline {json}``: the seconds of
each span, and ``entry``, the wall-clock time of the entry point's first line (to measure the interpreter's
own start-up from outside, as ``benchmarks/trainer_overhead.py`` does). Standard library only: the CLI
imports it before anything heavy.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: The prefix of the log line (benchmarks/trainer_overhead.py reads the JSON after it).
PREFIX = "start-up timeline "


@dataclass
class _Timeline:
    marks: list[tuple[str, float]] = field(default_factory=list)
    reported: bool = False


_timeline = _Timeline()


def mark(span: str) -> None:
    """Start the span ``span`` (the previous one ends here). After the first report: nothing."""
    if not _timeline.reported:
        _timeline.marks.append((span, time.time()))


def spans() -> dict[str, float]:
    """Seconds per span so far, in order (a span marked twice counts both times)."""
    marks = [*_timeline.marks, ("", time.time())]
    out: dict[str, float] = {}
    for (name, start), (_, end) in itertools.pairwise(marks):
        out[name] = round(out.get(name, 0.0) + end - start, 4)
    return out


def report() -> None:
    """Log the timeline once (at the end of the first step); later calls do nothing."""
    if _timeline.reported or not _timeline.marks:
        return
    entry = _timeline.marks[0][1]
    document = {"entry": entry, "total": round(time.time() - entry, 4), "spans": spans()}
    _timeline.reported = True
    log.info("%s%s", PREFIX, json.dumps(document))
