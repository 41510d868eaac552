"""``continual-trainer --config trainer.yaml``: the container's entry point (a thin shell over ``main``).

It turns every outcome into the documented exit code (:mod:`continual_trainer.exitcodes`), writes the
result record to the termination-message file (``/dev/termination-log`` in a pod: Kubernetes shows it in
the pod status, and the operator reads it), and prints a one-line summary.

Launched as several ranks (``torchrun``, :mod:`continual_trainer.ranks`), global rank 0 runs the batch
session (:func:`continual_trainer.train.main`) and every other rank follows it
(:func:`continual_trainer.followers.follow`); all ranks end with the coordinator's exit code, and only the
coordinator writes the result record.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from continual_trainer import followers, logs, preemption, ranks, timeline
from continual_trainer.exitcodes import ExitCode, TrainerError

# Only the standard library, the exit codes, the logs, preemption and timeline modules at import time: ``run`` installs
# the SIGTERM handler before pydantic, the config models or torch are imported (see preemption.py).
if TYPE_CHECKING:
    from pydantic import ValidationError

    from continual_trainer.config import TrainerConfig
    from continual_trainer.records import BatchResult, JobResult

log = logging.getLogger("continual_trainer")

#: Where the result goes when SIGTERM came before the config was read (the config's default; in a pod).
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the field by its camelCase path (as written in the YAML)."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "invalid trainer config: " + "; ".join(lines)


def write_termination_message(path: str | None, result: BatchResult | JobResult) -> None:
    """Best effort: the file may not exist outside a pod."""
    if not path:
        return
    try:
        Path(path).write_text(result.to_termination_message())
    except OSError as exc:
        log.debug("no termination message written to %s: %s", path, exc)


def execute(config: TrainerConfig) -> tuple[ExitCode, BatchResult]:
    """Run ``main`` and classify the outcome (a :class:`~continual_trainer.preemption.Preempted` passes).

    A rank other than the coordinator follows it instead, and returns the coordinator's outcome.
    """
    from continual_trainer.train import main

    return classify(config, lambda: main(config))


def execute_batches(config: TrainerConfig) -> tuple[ExitCode, JobResult]:
    """A coalesced invocation: each batch as :func:`execute` would, in order, until one does not complete.

    The batches share what is loaded (``train.Warm``). A SIGTERM between two batches' training stops at the
    batch it came in: the batches before it stay completed, it resumes on the next attempt, the rest are
    untouched.
    """
    from continual_trainer.records import JobResult
    from continual_trainer.train import Warm, main

    warm = Warm()
    results: list[BatchResult] = []
    code = ExitCode.SUCCESS
    for batch in config.batch_configs():
        try:
            code, result = classify(batch, functools.partial(main, batch, warm))
        except preemption.Preempted as exc:
            code, result = ExitCode.PREEMPTED, preempted_result(batch, exc)
        if _follower():  # it followed every batch of the coordinator: its outcome is the coordinator's
            return code, JobResult(exit_code=int(code), results=[result])
        results.append(result)
        if code != ExitCode.SUCCESS:
            break
    return code, JobResult(exit_code=int(code), results=results)


def _follower() -> bool:
    gang = _gang()
    return gang.distributed and not gang.is_coordinator


def classify(config: TrainerConfig, train: Callable[[], BatchResult]) -> tuple[ExitCode, BatchResult]:
    """Run ``train`` (one batch of ``config``) and turn its outcome into an exit code and a result record."""
    from continual_trainer.records import BatchResult

    try:
        try:
            gang = ranks.current()
            if gang.distributed:
                preemption.phase("gang")
                ranks.init(gang)  # once per process (a no-op for the next batches of a coalesced invocation)
                if not gang.is_coordinator:
                    return followers.follow(config)
            result = train()
        except Exception as exc:
            preemption.raise_if_requested(exc)  # a SIGTERM a library wrapped in an error of its own
            raise
    except TrainerError as exc:
        code = exc.exit_code
        result = BatchResult(
            batch_id=config.batch.id,
            outcome="Failed",
            exit_code=int(code),
            reason=exc.reason,
            message=exc.message,
        )
        return code, result
    except MemoryError as exc:
        return ExitCode.PERMANENT, _failed(config, ExitCode.PERMANENT, "OutOfMemory", f"out of memory: {exc}")
    except OSError as exc:
        return ExitCode.TRANSIENT, _failed(
            config, ExitCode.TRANSIENT, "IOError", f"{type(exc).__name__}: {exc}"
        )
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch's, without importing torch here
            message = f"{exc}: lower training.perDeviceBatchSize or training.maxSeqLength"
            return ExitCode.PERMANENT, _failed(config, ExitCode.PERMANENT, "OutOfMemory", message)
        log.exception("unexpected error")
        return ExitCode.UNCLASSIFIED, _failed(
            config, ExitCode.UNCLASSIFIED, "Unexpected", f"{type(exc).__name__}: {exc}"
        )
    if result.outcome == "Preempted":
        return ExitCode.PREEMPTED, result
    return ExitCode.SUCCESS, result


def _failed(config: TrainerConfig, code: ExitCode, reason: str, message: str) -> BatchResult:
    from continual_trainer.records import BatchResult

    return BatchResult(
        batch_id=config.batch.id, outcome="Failed", exit_code=int(code), reason=reason, message=message
    )


def preempted_result(config: TrainerConfig | None, exc: preemption.Preempted) -> BatchResult:
    """The result record of a SIGTERM outside training (the batch id is unknown before the config is read)."""
    from continual_trainer.records import BatchResult

    return BatchResult(
        batch_id=config.batch.id if config is not None else "",
        outcome="Preempted",
        exit_code=int(ExitCode.PREEMPTED),
        reason="Preempted",
        message=exc.message,
    )


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point: SIGTERM is handled from its first line on (exit 85)."""
    preemption.install()
    timeline.mark("imports, config")
    config: TrainerConfig | None = None
    try:
        preemption.phase("entry")
        preemption.phase("imports")
        import argparse

        from pydantic import ValidationError

        from continual_trainer.config import parse_config

        parser = argparse.ArgumentParser(prog="continual-trainer", description=__doc__.splitlines()[0])
        parser.add_argument(
            "--config",
            default=os.environ.get("CONTINUAL_TRAINER_CONFIG", "/etc/continual/trainer.yaml"),
            help="YAML/JSON trainer config ('-' for standard input)",
        )
        logs.add_log_level(parser)
        args = parser.parse_args(argv)
        logs.configure(args.log_level)
        preemption.phase("config")
        try:
            text = sys.stdin.read() if args.config == "-" else Path(args.config).read_text()
            config = parse_config(text)
        except ValidationError as exc:
            print(f"continual-trainer: {format_validation_error(exc)}", file=sys.stderr)
            sys.exit(int(ExitCode.PERMANENT))
        except (OSError, ValueError, TypeError) as exc:
            print(f"continual-trainer: cannot read the config {args.config}: {exc}", file=sys.stderr)
            sys.exit(int(ExitCode.PERMANENT))
        result: BatchResult | JobResult
        if config.next_batches:
            code, result = execute_batches(config)
        else:
            code, result = execute(config)
    except preemption.Preempted as exc:
        code, result = ExitCode.PREEMPTED, preempted_result(config, exc)
    # The outcome is decided: a late SIGTERM must not turn it into a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gang = _gang()
    if config is not None:
        path = config.termination_message_path
    else:  # SIGTERM before the config was read: the pod's file, which the kubelet created
        path = DEFAULT_TERMINATION_PATH if Path(DEFAULT_TERMINATION_PATH).exists() else None
    if gang.is_coordinator:  # the ranks of a pod share its termination-message file: one writer
        write_termination_message(path, result)
        followers.finish(code, result)
    summary = result.model_dump_json(by_alias=True, exclude_none=True)
    who = f" ({gang.describe()})" if gang.distributed else ""
    print(f"continual-trainer{who}: {code.name} {summary}", file=sys.stderr)
    if gang.distributed:
        # A collective interrupted by SIGTERM (or left behind by a lost rank) is still pending, and the
        # process group's teardown would wait for it forever. Every write is durable already: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(int(code))
    sys.exit(int(code))


def _gang() -> ranks.Ranks:
    """This process's ranks; a broken rank environment was already reported (exit 64) as one process."""
    try:
        return ranks.current()
    except TrainerError:
        return ranks.Ranks()


if __name__ == "__main__":
    run()
