"""An opt-in memory profile of the operator process: where its memory goes, written to a file as it runs.

Off by default. ``CONTINUAL_OPERATOR_MEMORY_PROFILE=/path/profile.txt`` turns it on
(``CONTINUAL_OPERATOR_MEMORY_PROFILE_SECONDS``, default 30, sets how often the file is rewritten; it is
written once more when the operator stops). Each report holds the process's RSS and peak RSS (VmHWM)
from the kernel, its thread count, what :mod:`tracemalloc` traces now and at its peak, the allocations
still alive grouped by traceback (the largest first). ``CONTINUAL_OPERATOR_MEMORY_PROFILE_FRAMES``
(default 12) sets the frames kept per traced allocation; 0 traces nothing, and the report holds a census
of the live objects by type instead (how many asyncio tasks, dicts, ... and their own size), at no cost
between reports.

tracemalloc costs memory and CPU of its own (every allocation records its traceback: the traced process
is slower and larger than an untraced one), so it is a tool to find causes, not a way to measure the
goals: the benchmark measures those on an untraced operator. The report rewrites one file (written to a
temporary name, then renamed, so a reader never sees half of one).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROFILE_ENV = "CONTINUAL_OPERATOR_MEMORY_PROFILE"
PROFILE_SECONDS_ENV = "CONTINUAL_OPERATOR_MEMORY_PROFILE_SECONDS"
PROFILE_FRAMES_ENV = "CONTINUAL_OPERATOR_MEMORY_PROFILE_FRAMES"
#: Frames kept per traced allocation (default): enough to see which handler or library call made it.
#: 0 traces nothing: the report then holds the RSS and the census only, at no cost between reports.
TRACE_FRAMES = 12
TOP_TRACEBACKS = 25
TOP_TYPES = 20


def kernel_memory_kib(pid: int | None = None) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process (this one by default), in KiB, from /proc."""
    values: dict[str, int] = {}
    status = Path(f"/proc/{pid or os.getpid()}/status")
    for line in status.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM", "Threads"}:
            values[key] = int(rest.split()[0])
    return values


def report(top: int = TOP_TRACEBACKS) -> str:
    """One report of this process's memory (see the module docstring)."""
    kernel = kernel_memory_kib()
    current, peak = tracemalloc.get_traced_memory()
    head = (
        f"time {time.strftime('%Y-%m-%dT%H:%M:%S')}  RSS {kernel.get('VmRSS', 0) / 1024:.1f} MiB  "
        f"peak RSS {kernel.get('VmHWM', 0) / 1024:.1f} MiB  threads {kernel.get('Threads', 0)}  "
        f"traced now {current / 2**20:.1f} MiB, at peak {peak / 2**20:.1f} MiB"
    )
    lines = [head]
    if tracemalloc.is_tracing():
        lines += ["", f"allocations alive, by traceback (top {top}):"]
        for stat in tracemalloc.take_snapshot().statistics("traceback")[:top]:
            lines.append(f"  {stat.size / 2**20:8.2f} MiB in {stat.count:7d} blocks")
            lines += [f"      {frame.filename}:{frame.lineno}" for frame in reversed(stat.traceback)]
    else:  # the census: with tracing on it would take seconds (every counter is a traced allocation)
        lines += _census()
    return "\n".join(lines) + "\n"


def _census() -> list[str]:
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj, 0)
    lines = [
        "",
        f"live objects tracked by gc, by type (top {TOP_TYPES} by their own size, contents not counted):",
    ]
    return lines + [
        f"  {counts[name]:9d}  {size / 2**20:8.2f} MiB  {name}" for name, size in sizes.most_common(TOP_TYPES)
    ]


@dataclass
class MemoryProfiler:
    """Rewrites ``path`` with :func:`report` every ``seconds`` from a daemon thread, until :meth:`stop`."""

    path: Path
    seconds: float = 30.0
    frames: int = TRACE_FRAMES
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @classmethod
    def from_environment(cls) -> MemoryProfiler | None:
        """The profiler the environment asks for (:data:`PROFILE_ENV`), or None: off."""
        path = os.environ.get(PROFILE_ENV)
        if not path:
            return None
        return cls(
            Path(path),
            _number(PROFILE_SECONDS_ENV, "30", float),
            int(_number(PROFILE_FRAMES_ENV, str(TRACE_FRAMES), int)),
        )

    def start(self) -> MemoryProfiler:
        """Start tracing allocations and the thread that writes the reports."""
        if self.frames > 0 and not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
        self._thread = threading.Thread(target=self._loop, name="memory-profile", daemon=True)
        self._thread.start()
        return self

    def write(self) -> None:
        """Write one report now."""
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(report())
        partial.replace(self.path)

    def stop(self) -> None:
        """Write the last report and stop tracing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.write()
        tracemalloc.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            self.write()


def _number(variable: str, default: str, kind: type[float | int]) -> float:
    raw = os.environ.get(variable, default)
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"{variable}={raw!r}: give a number, e.g. {default}") from None


@contextlib.contextmanager
def profiled_from_environment() -> Iterator[MemoryProfiler | None]:
    """Profile what runs inside when the environment asks for it (:data:`PROFILE_ENV`); else do nothing."""
    profiler = MemoryProfiler.from_environment()
    if profiler is None:
        yield None
        return
    profiler.start()
    try:
        yield profiler
    finally:
        profiler.stop()
