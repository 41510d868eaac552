"""Local mode's status page (``continual-training local --serve PORT``): the page of
:mod:`continual_operator.observe.page` over what local mode keeps in its state folder."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from continual_operator.local.executor import localize
from continual_operator.local.mode import LocalOptions, load_run
from continual_operator.observe.page import RunSource, start
from continual_operator.workloads import resources


def local_source(options: LocalOptions) -> RunSource:
    """The run a local-mode invocation trains: its state folder and its folder on the volume."""
    run = load_run(options.manifest)
    run_dir = Path(localize(resources.run_dir(run.spec), options.volume))
    return RunSource(run.metadata.name, options.state, run_dir)


def run_with_page(
    options: LocalOptions, port: int, train: Callable[[], int], out: Callable[[str], None] = print
) -> int:
    """Local mode with its status page: serve, train, then (without --watch) keep serving until Ctrl-C."""
    page = start(local_source(options), port)
    out(f"status page: {page.url}")
    code: int | None = None
    try:
        code = train()
        if not options.watch:
            out(f"done (exit code {code}); the status page stays up at {page.url}: Ctrl-C to stop")
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()
    return 130 if code is None else code
