"""Local mode's workloads: a built workload becomes a process on this machine, and its end a finished Job.

The plan carries the workload its kind built for a cluster (:class:`~continual_operator.workloads.kinds.
Workload`); this module applies it here, building nothing of its own:

* **the command** is the Job's container command and arguments, with the image's entry point
  (``continual-trainer``) replaced by local mode's trainer command and ``python`` by this interpreter;
* **the config** is the trainer config the workload carries (its Job's pod annotation, or its ConfigMap),
  with every path under ``/data`` moved to the local volume folder (:func:`local_trainer_config`), written
  beside the process's log;
* **the environment** is this process's, plus the container's literal variables (``spec.env``, offline hub
  flags) where not set already -- except those that point into the pod's own scratch space
  (:data:`POD_ONLY_ENV`). Variables from Secrets stay on the cluster: locally the usual boto3 chain and
  ``HF_TOKEN`` of your shell apply.

The exit code and the termination-message file play the part of the pod status the planner reads.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from continual_operator.local.state import LOCAL_NAMESPACE, run_uid
from continual_operator.workloads import resources
from continual_operator.workloads.kinds import Workload
from continual_operator.workloads.views import TRAINER_CONTAINER, JobPhase, JobView
from continual_trainer.config import BatchSpec, TrainerConfig

#: Container variables that name the pod's own scratch space (its ``/tmp`` emptyDir): not for this machine.
POD_ONLY_ENV = frozenset({"HOME", "HF_HOME"})
#: The image's entry point, run here as local mode's trainer command.
IMAGE_ENTRY_POINT = resources.TRAINER_COMMAND[0]


def localize(pod_path: str, volume: Path) -> str:
    """Map a path as the pod sees it (under ``/data``) to the local folder standing for the volume."""
    if pod_path == resources.DATA_MOUNT or pod_path.startswith(resources.DATA_MOUNT + "/"):
        return str(volume / pod_path[len(resources.DATA_MOUNT) :].lstrip("/"))
    return pod_path


def local_trainer_config(
    config: TrainerConfig, volume: Path, termination: Path, inbox: Path | None = None
) -> TrainerConfig:
    """The pod's trainer config with local paths, no Kubernetes progress sink, and a local message file.

    The data root (what the trainer confines data paths to) is the volume's folder, as ``/data`` is in a
    pod; batches found in ``--inbox`` (a folder the user named, often beside the volume) are confined to
    the inbox instead (the planner coalesces no inbox batch with a volume batch: one process, one root).
    """
    base = config.base_model
    if base.path is not None:
        base = base.model_copy(update={"path": localize(base.path, volume)})
    batch = _local_batch(config.batch, volume)
    next_batches = [_local_batch(b, volume) for b in config.next_batches]
    paths = [Path(str(b.data.path)) for b in (batch, *next_batches) if b.data.path is not None]
    in_inbox = inbox is not None and bool(paths) and all(p.is_relative_to(inbox.resolve()) for p in paths)
    store = config.object_store
    if store is not None and store.ca_bundle_path is not None:
        # The pod's CA bundle is a mounted Secret; a local process uses AWS_CA_BUNDLE like any boto3 program.
        store = store.model_copy(update={"ca_bundle_path": None})
    return config.model_copy(
        update={
            "object_store": store,
            "run_dir": localize(config.run_dir, volume),
            "data_root": str(inbox.resolve() if inbox is not None and in_inbox else volume),
            # one run per volume: the trainer's run record names its owner (local_state.claim does the same)
            "run_namespace": LOCAL_NAMESPACE,
            "run_uid": run_uid(config.run_name),
            "base_model": base,
            "batch": batch,
            "next_batches": next_batches,
            "progress": config.progress.model_copy(update={"kubernetes": None, "stdout": True}),
            "termination_message_path": str(termination),
        }
    )


def _local_batch(batch: BatchSpec, volume: Path) -> BatchSpec:
    data = batch.data
    if data.path is None:  # uri data is read from the store, not the volume
        return batch
    return batch.model_copy(update={"data": data.model_copy(update={"path": localize(data.path, volume)})})


@dataclass
class LocalJob:
    """A process standing in for a workload's Job."""

    view: JobView
    process: subprocess.Popen[bytes] | None
    termination: Path
    log_path: Path


@dataclass(frozen=True)
class LocalPlace:
    """Where local mode runs workloads: the volume folder, the state folder, the inbox, the trainer command."""

    volume: Path
    state: Path
    inbox: Path | None
    trainer_command: tuple[str, ...]


def _container(workload: Workload) -> Mapping[str, Any]:
    containers = workload.job["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == TRAINER_CONTAINER)


def command(workload: Workload, place: LocalPlace, config_path: Path) -> list[str]:
    """The container's command line, run here: local entry points, the local config file."""
    container = _container(workload)
    argv = [str(a) for a in (*container.get("command", ()), *container.get("args", ()))]
    if argv and argv[0] == IMAGE_ENTRY_POINT:
        argv = [*place.trainer_command, *argv[1:]]
    elif argv and argv[0] in {"python", "python3"}:
        argv = [sys.executable, *argv[1:]]
    for i, arg in enumerate(argv[:-1]):
        if arg == "--config":
            argv[i + 1] = str(config_path)
    return argv


def environment(workload: Workload, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (this process's environment) plus the container's literal variables it lacks."""
    env = dict(base)
    for var in _container(workload).get("env", ()):
        if "value" in var and var["name"] not in POD_ONLY_ENV:
            env.setdefault(var["name"], str(var["value"]))
    return env


def trainer_config(workload: Workload) -> TrainerConfig:
    """The trainer config the workload carries, as the pod would read it: its Job's pod annotation, or
    its ConfigMap (a large config; artifact kinds)."""
    data = resources.config_in_pod_annotation(workload.manifest("Job"))
    if data is None:
        data = workload.manifest("ConfigMap")["data"][resources.CONFIG_KEY]
    return TrainerConfig.model_validate(yaml.safe_load(data))


def launch(workload: Workload, place: LocalPlace, view: JobView) -> LocalJob:
    """Start the workload's process (its files in ``<state>/jobs/<name>.*``)."""
    jobs_dir = place.state / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    termination = jobs_dir / f"{workload.name}.termination.json"
    termination.unlink(missing_ok=True)
    config = local_trainer_config(trainer_config(workload), place.volume, termination, place.inbox)
    config_path = jobs_dir / f"{workload.name}.yaml"
    config_path.write_text(resources.render_trainer_config(config))
    log_path = jobs_dir / f"{workload.name}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            command(workload, place, config_path),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment(workload, os.environ),
            start_new_session=True,  # Ctrl-C goes to us; we forward SIGTERM so the trainer checkpoints
        )
    (jobs_dir / f"{workload.name}.pid").write_text(f"{process.pid}\n")  # for ps/kill, and tests
    return LocalJob(view, process, termination, log_path)


def poll(job: LocalJob) -> None:
    """A finished process becomes a finished Job view (exit code + termination message)."""
    if job.process is None or job.process.poll() is None:
        return
    code = job.process.returncode
    message = job.termination.read_text() if job.termination.exists() else None
    if code < 0:  # killed by a signal: report it as a container runtime would (128 + signal)
        code = 128 - code
    phase: JobPhase = "Succeeded" if code == 0 else "Failed"
    job.view = dataclasses.replace(job.view, phase=phase, exit_code=code, termination_message=message)
    job.process = None


def delete(jobs: dict[str, LocalJob], name: str) -> bool:
    """Delete a workload: a running process gets SIGTERM (it checkpoints and exits "preempted") and stays,
    marked deleting, until it has exited -- as a Job with foreground deletion; a finished one is forgotten.
    False when there was none."""
    job = jobs.get(name)
    if job is None:
        return False
    if job.process is not None and job.process.poll() is None:
        if not job.view.deleting:
            job.process.send_signal(signal.SIGTERM)
            job.view = dataclasses.replace(job.view, deleting=True)
        return True
    del jobs[name]
    return True


def views(jobs: Mapping[str, LocalJob]) -> Sequence[JobView]:
    return [j.view for j in jobs.values()]
