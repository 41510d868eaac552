"""``python -m continual_trainer.consolidate --config FILE --output PATH|s3://... [--dtype ...]``.

The artifact job's entry point: the same trainer config the train Job gets; one JSON result line to the
termination-message path; exit 0 (published), 64 (bad input or a failed check: the message names the field
and the fix), 75 (the store or the lock, after retries), 85 (SIGTERM before the publish: nothing published).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from continual_trainer import logs, preemption
from continual_trainer.exitcodes import ExitCode, TrainerError

if TYPE_CHECKING:
    from continual_trainer.consolidate.result import ConsolidationResult

log = logging.getLogger("continual_trainer.consolidate")


def build_parser() -> argparse.ArgumentParser:
    """The command line (the artifact-job contract: --config, --output, --dtype)."""
    parser = argparse.ArgumentParser(
        prog="python -m continual_trainer.consolidate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="the run's trainer config (YAML/JSON)")
    parser.add_argument(
        "--output", required=True, help="a folder on the volume (below dataRoot), or s3://bucket/prefix/"
    )
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="default: the base model's own"
    )
    parser.add_argument("--snapshot", help="the snapshot id holding the same training state (model card)")
    parser.add_argument(
        "--max-shard-bytes", type=int, help="output shard size (default: the base's largest shard)"
    )
    logs.add_log_level(parser)
    return parser


def _failed(code: ExitCode, reason: str, message: str) -> ConsolidationResult:
    from continual_trainer.consolidate.result import ConsolidationResult

    return ConsolidationResult(exit_code=int(code), reason=reason, message=message)


def execute(args: argparse.Namespace) -> tuple[ExitCode, ConsolidationResult, str | None]:
    """Read the config, consolidate, classify the outcome: (exit code, result, termination-message path)."""
    from pydantic import ValidationError

    from continual_trainer.cli import format_validation_error
    from continual_trainer.config import parse_config
    from continual_trainer.consolidate.job import ConsolidationRequest, consolidate

    try:
        config = parse_config(Path(args.config).read_text())
    except ValidationError as exc:
        return (
            ExitCode.PERMANENT,
            _failed(ExitCode.PERMANENT, "InvalidConfig", format_validation_error(exc)),
            None,
        )
    except (OSError, ValueError, TypeError) as exc:
        message = f"cannot read the config {args.config}: {exc}"
        return ExitCode.PERMANENT, _failed(ExitCode.PERMANENT, "InvalidConfig", message), None
    where = config.termination_message_path
    request = ConsolidationRequest(args.output, args.dtype, args.snapshot, args.max_shard_bytes)
    try:
        try:
            return ExitCode.SUCCESS, consolidate(config, request), where
        except Exception as exc:
            preemption.raise_if_requested(exc)  # a SIGTERM a library wrapped in an error of its own
            raise
    except preemption.Preempted:
        message = "SIGTERM before the publish: nothing was published; retry"
        return ExitCode.PREEMPTED, _failed(ExitCode.PREEMPTED, "Preempted", message), where
    except TrainerError as exc:
        return exc.exit_code, _failed(exc.exit_code, exc.reason, exc.message), where
    except MemoryError as exc:
        return ExitCode.PERMANENT, _failed(ExitCode.PERMANENT, "OutOfMemory", f"out of memory: {exc}"), where
    except OSError as exc:
        message = f"{type(exc).__name__}: {exc}"
        return ExitCode.TRANSIENT, _failed(ExitCode.TRANSIENT, "IOError", message), where
    except Exception as exc:
        log.exception("unexpected error")
        message = f"{type(exc).__name__}: {exc}"
        return ExitCode.UNCLASSIFIED, _failed(ExitCode.UNCLASSIFIED, "Unexpected", message), where


def run(argv: list[str] | None = None) -> None:
    """Parse, consolidate, write the result record, exit with the documented code."""
    preemption.install()
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    where: str | None = None
    try:
        code, result, where = execute(args)
    except preemption.Preempted:
        code = ExitCode.PREEMPTED
        result = _failed(code, "Preempted", "SIGTERM before the publish: nothing was published; retry")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the outcome is decided
    if where:
        try:
            Path(where).write_text(result.to_termination_message())
        except OSError as exc:
            log.debug("no termination message written to %s: %s", where, exc)
    print(
        f"consolidate: {code.name} {result.model_dump_json(by_alias=True, exclude_none=True)}",
        file=sys.stderr,
    )
    sys.exit(int(code))


if __name__ == "__main__":
    run()
