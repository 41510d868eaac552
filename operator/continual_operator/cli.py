"""``continual-training``: the operator's command line.

* ``demo``      the quickstart: a tiny model built on the spot, three toy batches, trained locally;
* ``local``     train a run manifest on this machine (local mode: planner + trainer subprocesses);
* ``operator``  run the Kubernetes operator (kopf);
* ``crds``      write (or check) the CRD manifests generated from the API models;
* ``report``    draw a run's training curve from its volume (PNG + HTML; needs matplotlib);
* ``snapshot``  upload a verified snapshot of a local run to S3; ``restore`` puts one into a new volume
  (docs/snapshots.md).
* ``consolidate`` merge a local run's adapter into its base model: a deployable folder (docs/consolidation.md).

It never imports torch: training always happens in ``continual-trainer`` processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from importlib import resources as pkg_resources
from pathlib import Path
from typing import TYPE_CHECKING

from continual_operator.local.folder_inbox import DEFAULT_MARKER, DEFAULT_SETTLE_SECONDS
from continual_operator.local.mode import (
    EXIT_INVALID,
    EXIT_SIGNAL_BASE,
    LocalModeError,
    LocalOptions,
    run_local,
)

if TYPE_CHECKING:
    from continual_trainer.snapshot.job import JobConfig

#: The operator's status page, from the environment when no flag is given (the chart sets flags).
STATUS_PAGE_PORT_ENV = "CONTINUAL_STATUS_PAGE_PORT"
STATUS_PAGE_HOST_ENV = "CONTINUAL_STATUS_PAGE_HOST"


def _local_options(args: argparse.Namespace, manifest: Path) -> LocalOptions:
    command = tuple(shlex.split(args.trainer_command)) if args.trainer_command else None
    inbox = str(args.inbox) if args.inbox else None
    s3_inbox = inbox is not None and inbox.startswith("s3://")
    options = LocalOptions(
        manifest=manifest,
        volume=args.volume.resolve(),
        state=(args.state or args.volume / ".local-state").resolve(),
        inbox=Path(inbox).resolve() if inbox and not s3_inbox else None,
        s3_inbox=inbox if s3_inbox else None,
        batch_manifests=tuple(p.resolve() for p in args.batches or ()),
        watch=getattr(args, "watch", False),
        poll_seconds=getattr(args, "poll_seconds", 2.0),
        settle_seconds=args.settle_seconds,
        marker=args.marker,
        metrics_port=args.metrics_port,
    )
    return dataclasses.replace(options, trainer_command=command) if command else options


def cmd_local(args: argparse.Namespace) -> int:
    """Local mode on a user's manifest."""
    if args.inbox is None and not args.batches:
        print("continual-training local: give --inbox DIR and/or --batches FILE_OR_DIR", file=sys.stderr)
        return 2
    return _run(args, _local_options(args, args.run.resolve()))


def _run(args: argparse.Namespace, options: LocalOptions) -> int:
    """Local mode, with its status page when --serve is given."""
    if args.serve is None:
        return run_local(options)
    from continual_operator.local import page as web

    return web.run_with_page(options, args.serve, lambda: run_local(options))


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the tiny model and the toy batches under --volume, then train them in local mode."""
    volume: Path = args.volume
    model = volume / "models" / "tiny-llama"
    args.inbox = Path(args.inbox) if args.inbox else volume / "inbox"
    if not (model / "config.json").exists() or not any(args.inbox.glob("*")):
        print(f"building the tiny demo model in {model} and the toy batches in {args.inbox} ...")
        subprocess.run(
            [sys.executable, "-m", "continual_trainer.tinymodel", str(model), "--inbox", str(args.inbox)],
            check=True,
        )
        args.settle_seconds = 0  # we wrote these batches ourselves: they are complete
    manifest = volume / "demo-run.yaml"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    if not manifest.exists():
        manifest.write_text(pkg_resources.files("continual_operator.demo").joinpath("run.yaml").read_text())
    args.batches = []
    print(f"training run 'demo' ({manifest}) on {volume}: one trainer process per batch")
    return _run(args, _local_options(args, manifest.resolve()))


def cmd_operator(args: argparse.Namespace) -> int:
    """Run the operator (imports kopf only here)."""
    from continual_operator.cluster.operator_main import run_operator

    run_operator(
        namespaces=None if args.all_namespaces else (args.namespace or None),
        standalone=args.standalone,
        peering=args.peering,
        metrics_port=args.metrics_port,
        liveness=args.liveness_endpoint,
        status_page_port=args.status_page_port,
        status_page_host=args.status_page_host,
    )
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    """Generate the CRDs (or check the committed ones)."""
    from continual_operator.api import crdgen

    argv = [
        "--out",
        str(args.out),
        # crdgen's own default also writes the chart's copy (for maintainers in a checkout); this command
        # writes only where it is asked to
        "--chart-crds",
        str(args.chart_crds or ""),
        *(["--check"] if args.check else []),
        *(["--no-cel"] if args.no_cel else []),
    ]
    return crdgen.main(argv)


def cmd_report(args: argparse.Namespace) -> int:
    """Draw the training curve of every run on --volume (imports matplotlib only here)."""
    from continual_operator.observe.report import ReportError, write_report

    try:
        written = write_report(args.volume.resolve(), args.out.resolve())
    except ReportError as exc:
        print(f"continual-training report: {exc}", file=sys.stderr)
        return 2
    for files in written:
        print(f"run {files.run}: {files.png}, {files.html}")
    return 0


# -- snapshots ------------------------------------------------------------------------------------------
def _run_manifest(args: argparse.Namespace) -> Path:
    path: Path = args.run or args.volume / "demo-run.yaml"
    return path.resolve()


def _snapshot_job(args: argparse.Namespace) -> JobConfig:
    """The artifact job's config for the run on --volume, as local mode renders the run's trainer config."""
    from continual_operator.local.executor import localize
    from continual_operator.local.mode import load_run
    from continual_operator.local.state import LOCAL_NAMESPACE, run_uid
    from continual_operator.workloads import resources
    from continual_trainer.config import ObjectStoreClientSpec
    from continual_trainer.snapshot.job import JobConfig

    volume: Path = args.volume.resolve()
    manifest = _run_manifest(args)
    if not manifest.exists():
        raise LocalModeError(
            f"no run manifest: give --run MANIFEST (the ContinualTrainingRun file `continual-training local "
            f"--run` trains on this volume); a volume made by `continual-training demo` has {manifest}"
        )
    run = load_run(manifest)
    store = resources.object_store_client(run.spec)
    if args.endpoint_url:
        base = store or ObjectStoreClientSpec(addressing_style="path")
        store = base.model_copy(update={"endpoint_url": args.endpoint_url})
    model = run.spec.base_model.to_trainer(path=resources.base_model_path(run.spec))
    if model.path is not None:
        model = model.model_copy(update={"path": localize(model.path, volume)})
    return JobConfig(
        base_model=model,
        run_name=run.metadata.name,
        run_namespace=LOCAL_NAMESPACE,
        run_uid=run_uid(run.metadata.name),
        run_dir=localize(resources.run_dir(run.spec), volume),
        data_root=str(volume),
        object_store=store,
        termination_message_path=None,
    )


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Snapshot the run on --volume to --destination (the same code as the snapshot Job)."""
    from continual_trainer.exitcodes import TrainerError
    from continual_trainer.snapshot.create import CreateOptions, create

    options = CreateOptions(destination=args.destination, keep=args.keep, pins=frozenset(args.pin))
    try:
        result = create(_snapshot_job(args), options)
    except TrainerError as exc:
        print(f"continual-training snapshot: {exc.message} ({exc.reason})", file=sys.stderr)
        return int(exc.exit_code)
    print(
        f"snapshot {result.snapshot_id}: {result.uri} (global step {result.global_step}, {result.batches} "
        f"batches, {result.files} files, {result.bytes / 1e6:.1f} MB); restore it with: continual-training "
        f"restore --volume NEW_VOLUME --run {_run_manifest(args)} --source {result.uri}"
    )
    for name, ids in (("retired (retention)", result.retired), ("swept (incomplete)", result.swept)):
        if ids:
            print(f"{name}: {', '.join(ids)}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore --source into the run folder on --volume (the same code as the restore Job)."""
    from continual_trainer.exitcodes import TrainerError
    from continual_trainer.snapshot.restore import RestoreOptions, restore

    job = _snapshot_job(args)
    try:
        result = restore(job, RestoreOptions(source=args.source))
    except TrainerError as exc:
        print(f"continual-training restore: {exc.message} ({exc.reason})", file=sys.stderr)
        return int(exc.exit_code)
    print(
        f"restored {result.uri} into {job.run_dir} (global step {result.global_step}, {result.batches} "
        f"batches); run {job.run_name} continues from there with `continual-training local` on this volume"
    )
    return 0


def _local_job_config(volume: Path, state: Path, job: str) -> Path:
    """The trainer config local mode last rendered for the run on ``volume``, for an artifact job ``job``.

    It is the config a cluster's Job of that run would get (local paths, the run's identity), with the
    volume as the data root and the job's own termination-message file; written beside the batch configs.
    """
    from continual_operator.workloads.resources import render_trainer_config
    from continual_trainer.config import parse_config

    jobs = state / "jobs"
    configs = sorted(
        (p for p in jobs.glob("*.yaml") if not p.name.startswith(f"{job}-")), key=lambda p: p.stat().st_mtime
    )
    if not configs:
        raise LocalModeError(
            f"no local run on {volume}: {jobs} holds no trainer config. Train one first "
            "(`continual-training local --run RUN.yaml --volume ...` or `continual-training demo`), or give "
            "--state if the run keeps its state elsewhere"
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    config = parse_config(configs[-1].read_text()).model_copy(
        update={
            "data_root": str(volume),
            "termination_message_path": str(jobs / f"{job}-{stamp}.termination.json"),
        }
    )
    path = jobs / f"{job}-{stamp}.yaml"
    path.write_text(render_trainer_config(config))
    return path


def cmd_consolidate(args: argparse.Namespace) -> int:
    """Consolidate the run on --volume with the same job a cluster runs (``python -m continual_trainer.consolidate``)."""
    from continual_operator.local.state import locked

    volume = args.volume.resolve()
    state = (args.state or volume / ".local-state").resolve()
    with locked(state / "lock", volume / ".continual-local.lock"):  # never beside local mode's trainers
        config = _local_job_config(volume, state, "consolidate")
        command = [sys.executable, "-m", "continual_trainer.consolidate", "--config", str(config)]
        command += ["--output", args.output, *(["--dtype", args.dtype] if args.dtype else [])]
        env = dict(os.environ)
        if _on_volume_base(config):  # as local mode runs its trainers: a model on the volume needs no hub
            env.setdefault("HF_HUB_OFFLINE", "1")
        code = subprocess.run(command, env=env, check=False).returncode
    termination = config.with_name(config.name.removesuffix(".yaml") + ".termination.json")
    result = json.loads(termination.read_text()) if termination.exists() else {}
    if code == 0:
        print(
            f"consolidated global step {result['globalStep']} ({result['batches']} batches) into "
            f"{result['output']}: {result['dtype']}, {result['shards']} shards, logits within "
            f"{result['maxAbsDiff']:.3g} of base + adapter (tolerance {result['tolerance']:.3g})"
        )
    else:
        print(
            f"continual-training consolidate: {result.get('message', f'failed (exit {code})')}",
            file=sys.stderr,
        )
    return code


def _on_volume_base(config: Path) -> bool:
    import yaml

    return bool(yaml.safe_load(config.read_text()).get("baseModel", {}).get("path"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="continual-training", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    def local_flags(p: argparse.ArgumentParser, volume_default: str) -> None:
        p.add_argument(
            "--volume", type=Path, default=Path(volume_default), help="the folder standing for /data"
        )
        p.add_argument("--state", type=Path, help="status, events, job logs (default: VOLUME/.local-state)")
        p.add_argument(
            "--inbox",
            help="a folder: every file or folder in it is a batch, in name order; or s3://bucket/prefix/: "
            "every new object is a batch, in key order (the run's spec.objectStore; docs/inbox.md)",
        )
        p.add_argument(
            "--settle-seconds",
            type=float,
            default=DEFAULT_SETTLE_SECONDS,
            help="take an inbox entry once nothing in it changed for this long "
            f"(default {DEFAULT_SETTLE_SECONDS:g}; 0 when every file arrives by an atomic rename)",
        )
        p.add_argument(
            "--marker",
            default=DEFAULT_MARKER,
            help=f"a folder batch holding this file is taken at once (default {DEFAULT_MARKER})",
        )
        p.add_argument("--trainer-command", help="how to start the trainer (default: this Python's)")
        p.add_argument(
            "--serve",
            type=int,
            metavar="PORT",
            help="serve a read-only status page on http://127.0.0.1:PORT/ (0: any free port)",
        )
        p.add_argument(
            "--metrics-port",
            type=int,
            metavar="PORT",
            help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0: any free port; "
            "docs/observability.md)",
        )

    demo = sub.add_parser("demo", help="quickstart: tiny model, three toy batches, local mode")
    local_flags(demo, ".demo")
    demo.set_defaults(func=cmd_demo)

    local = sub.add_parser("local", help="train a ContinualTrainingRun manifest on this machine")
    local.add_argument("--run", type=Path, required=True, help="the ContinualTrainingRun manifest")
    local.add_argument("--batches", type=Path, nargs="*", help="TrainingBatch manifests (files or folders)")
    local.add_argument("--watch", action="store_true", help="keep watching for new batches")
    local.add_argument("--poll-seconds", type=float, default=2.0)
    local_flags(local, "volume")
    local.set_defaults(func=cmd_local)

    op = sub.add_parser("operator", help="run the Kubernetes operator")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (default)")
    scope.add_argument("--namespace", action="append", help="watch this namespace (repeatable)")
    op.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    op.add_argument("--peering", default="continual-training", help="kopf peering object name")
    op.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    op.add_argument("--liveness-endpoint", default=None, help="e.g. http://0.0.0.0:8081/healthz")
    op.add_argument(
        "--status-page-port",
        type=int,
        default=os.environ.get(STATUS_PAGE_PORT_ENV),  # argparse applies type=int to it
        help=f"serve the read-only status page on this port (default: ${STATUS_PAGE_PORT_ENV}, else off)",
    )
    op.add_argument(
        "--status-page-host",
        default=os.environ.get(STATUS_PAGE_HOST_ENV, "127.0.0.1"),
        help=f"the address the status page binds (default: ${STATUS_PAGE_HOST_ENV}, else 127.0.0.1)",
    )
    op.set_defaults(func=cmd_operator)

    crds = sub.add_parser("crds", help="write the CRD manifests generated from the API models")
    crds.add_argument("--out", type=Path, default=Path("crds"), help="folder for the CRD files")
    crds.add_argument(
        "--chart-crds", type=Path, help="also write (or check) a copy here, e.g. a chart's crds/"
    )
    crds.add_argument("--check", action="store_true", help="fail if the files differ from the models")
    crds.add_argument("--no-cel", action="store_true", help="leave out CEL rules (Kubernetes < 1.25)")
    crds.set_defaults(func=cmd_crds)

    report = sub.add_parser("report", help="draw a run's training curve (PNG + HTML) from its volume")
    report.add_argument("--volume", type=Path, required=True, help="the run's volume (or its run folder)")
    report.add_argument("--out", type=Path, default=Path("report"), help="where to write (default: report)")
    report.set_defaults(func=cmd_report)

    def snapshot_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--volume", type=Path, required=True, help="the folder standing for /data")
        p.add_argument(
            "--run", type=Path, help="the ContinualTrainingRun manifest (default: VOLUME/demo-run.yaml)"
        )
        p.add_argument(
            "--endpoint-url",
            help="the S3 endpoint (default: the run's spec.objectStore.endpointURL, else AWS)",
        )

    snapshot = sub.add_parser("snapshot", help="upload a verified snapshot of the run on a volume to S3")
    snapshot_flags(snapshot)
    snapshot.add_argument("--destination", required=True, help="s3://bucket/prefix/ (snapshots go below it)")
    snapshot.add_argument("--keep", type=int, default=7, help="this run's snapshots kept (default 7)")
    snapshot.add_argument(
        "--pin", action="append", default=[], help="a snapshot id never deleted (repeatable)"
    )
    snapshot.set_defaults(func=cmd_snapshot)

    restore = sub.add_parser("restore", help="restore a snapshot into a new volume, verified first")
    snapshot_flags(restore)
    restore.add_argument("--source", required=True, help="s3://bucket/prefix/<snapshotId>/")
    restore.set_defaults(func=cmd_restore)

    consolidate = sub.add_parser(
        "consolidate", help="merge a local run's latest adapter into its base model (a deployable folder)"
    )
    consolidate.add_argument("--volume", type=Path, required=True, help="the volume local mode trained on")
    consolidate.add_argument("--state", type=Path, help="local mode's state (default: VOLUME/.local-state)")
    consolidate.add_argument(
        "--output",
        required=True,
        help="a folder on the volume (relative to VOLUME; an earlier consolidation there is replaced), or "
        "s3://bucket/prefix/ (the run's spec.objectStore; a new folder per consolidation)",
    )
    consolidate.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="default: the base model's own"
    )
    consolidate.set_defaults(func=cmd_consolidate)
    return parser


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code = args.func(args)
    except LocalModeError as exc:
        print(f"continual-training: {exc}", file=sys.stderr)
        code = EXIT_INVALID
    except KeyboardInterrupt:  # before local mode took over the signals: nothing was started
        print("continual-training: interrupted", file=sys.stderr)
        code = EXIT_SIGNAL_BASE + signal.SIGINT
    sys.exit(code)


if __name__ == "__main__":
    run()
