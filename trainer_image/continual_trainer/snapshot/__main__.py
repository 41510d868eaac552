"""``python -m continual_trainer.snapshot create|restore --config FILE ...``: the snapshot jobs' entry point.

Like the trainer's CLI: SIGTERM is handled from the first line (exit 85, nothing committed), every outcome
is one of the documented exit codes (0, 64, 75, 85), and one JSON result line goes to the config's
termination-message path (``/dev/termination-log`` in a pod) and to standard error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Literal

from continual_trainer import logs, preemption
from continual_trainer.exitcodes import ExitCode, TrainerError

log = logging.getLogger("continual_trainer.snapshot")

Kind = Literal["snapshot", "restore"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m continual_trainer.snapshot", description=__doc__.splitlines()[0]
    )
    logs.add_log_level(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser(
        "create", help="upload a verified snapshot of the run folder, then apply retention"
    )
    create.add_argument("--config", required=True, help="the trainer config file (YAML/JSON)")
    create.add_argument("--destination", required=True, help="s3://bucket/prefix/ (snapshots go below it)")
    create.add_argument(
        "--keep", type=int, default=7, help="committed snapshots of this run kept (default 7)"
    )
    create.add_argument("--pin", action="append", default=[], help="a snapshot id never deleted (repeatable)")
    create.add_argument("--inbox-state", help="JSON carried in the manifest (the run's status.inbox)")
    create.add_argument(
        "--sweep-grace-seconds",
        type=float,
        default=24 * 3600.0,
        help="incomplete snapshots of other writers are deleted after this long without a write (default 1 day)",
    )
    restore = sub.add_parser("restore", help="restore a snapshot into a new run's folder, verified first")
    restore.add_argument("--config", required=True, help="the trainer config file (YAML/JSON)")
    restore.add_argument("--source", required=True, help="s3://bucket/prefix/<snapshotId>/")
    for p in (create, restore):
        p.add_argument(
            "--no-store-checksums",
            action="store_true",
            help="do not ask the store for per-part SHA-256 checksums (for stores that refuse them); the "
            "manifest's sha256 is checked regardless",
        )
    return parser


def execute(args: argparse.Namespace) -> tuple[ExitCode, Any]:
    """Run the subcommand; the exit code and the result record (a pydantic model)."""
    from pydantic import ValidationError

    from continual_trainer.snapshot.job import parse_job_config
    from continual_trainer.snapshot.manifest import FailedResult
    from continual_trainer.snapshot.store import TransferOptions

    kind: Kind = "snapshot" if args.command == "create" else "restore"
    try:
        job = parse_job_config(Path(args.config).read_text())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        return _failed(kind, ExitCode.PERMANENT, "InvalidConfig", f"invalid trainer config: {problems}")
    except (OSError, ValueError, TypeError) as exc:
        return _failed(
            kind, ExitCode.PERMANENT, "InvalidConfig", f"cannot read the config {args.config}: {exc}"
        )
    args.job = job
    transfer = TransferOptions(checksum_algorithm=None if args.no_store_checksums else "SHA256")
    try:
        if kind == "snapshot":
            from continual_trainer.snapshot.create import CreateOptions, create

            inbox = json.loads(args.inbox_state) if args.inbox_state else None
            options = CreateOptions(
                destination=args.destination,
                keep=args.keep,
                pins=frozenset(args.pin),
                inbox_state=inbox,
                sweep_grace=dt.timedelta(seconds=args.sweep_grace_seconds),
                transfer=transfer,
            )
            return ExitCode.SUCCESS, create(job, options)
        from continual_trainer.snapshot.restore import RestoreOptions, restore

        return ExitCode.SUCCESS, restore(job, RestoreOptions(source=args.source, transfer=transfer))
    except TrainerError as exc:
        return exc.exit_code, FailedResult(
            kind=kind, outcome="Failed", exit_code=int(exc.exit_code), reason=exc.reason, message=exc.message
        )
    except json.JSONDecodeError as exc:
        return _failed(kind, ExitCode.PERMANENT, "InvalidInboxState", f"--inbox-state is not JSON: {exc}")
    except OSError as exc:
        return _failed(kind, ExitCode.TRANSIENT, "IOError", f"{type(exc).__name__}: {exc}")


def _failed(kind: Kind, code: ExitCode, reason: str, message: str) -> tuple[ExitCode, Any]:
    from continual_trainer.snapshot.manifest import FailedResult

    return code, FailedResult(
        kind=kind, outcome="Failed", exit_code=int(code), reason=reason, message=message
    )


def termination_line(result: Any) -> str:
    """The result as one JSON line of at most 4 KB (Kubernetes' limit): long id lists keep their newest."""
    from continual_trainer.records import TERMINATION_MESSAGE_LIMIT

    line = str(result.model_dump_json(by_alias=True))
    while len(line.encode()) > TERMINATION_MESSAGE_LIMIT and (
        getattr(result, "retired", None) or getattr(result, "swept", None)
    ):
        longer = "retired" if len(result.retired) >= len(result.swept) else "swept"
        log.info("termination message: %s %s left out (logged above)", longer, getattr(result, longer)[0])
        result = result.model_copy(update={longer: getattr(result, longer)[1:]})
        line = result.model_dump_json(by_alias=True)
    return line


def main(argv: list[str] | None = None) -> int:
    """Parse, run, report; returns the exit code (SIGTERM before the commit: 85, nothing committed)."""
    preemption.install()
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    kind: Kind = "snapshot" if args.command == "create" else "restore"
    try:
        code, result = execute(args)
    except preemption.Preempted:
        from continual_trainer.snapshot.manifest import FailedResult

        message = f"SIGTERM: the {kind} stopped before it committed; nothing counts from it; retry"
        code = ExitCode.PREEMPTED
        result = FailedResult(
            kind=kind, outcome="Preempted", exit_code=int(code), reason="Preempted", message=message
        )
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the outcome is decided
    line = termination_line(result)
    job = getattr(args, "job", None)
    path = job.termination_message_path if job is not None else None
    if path:
        try:
            Path(path).write_text(line)
        except OSError as exc:
            log.warning("cannot write the termination message to %s: %s", path, exc)
    print(f"continual-snapshot: {code.name} {line}", file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
