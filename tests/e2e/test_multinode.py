"""N > 1 nodes on the real control plane: ``spec.resources.nodes: 2`` trains each batch as a JobSet gang.

The operator discovers JobSet (its CRD is installed with the control plane, ``testdata/jobset-crd.yaml``)
and creates one JobSet per attempt; JobSet's controller is emulated by the harness
(:mod:`.jobset_emulator`: Kubernetes 1.20 cannot run Indexed Jobs, so neither the real JobSet nor the
operator's Indexed-Job engine can run here). The pod runner runs both pods of a gang on this machine; the
coordinator's DNS name (``<jobset>-node-0-0.<jobset>``) is mapped to 127.0.0.1 and torchrun's port to a
free one, so the two torchrun agents meet on loopback (gloo).

Shown: a 2-node x 1-process gang trains a batch to completion; the next batch's gang loses a pod mid-batch
(rank 1 frozen at step 9 by a failpoint, then its pod SIGKILLed), the JobSet fails, the operator restarts
the gang as the next attempt, which resumes from the checkpoint at step 8; the adapter ends bit for bit
equal (max abs diff 0.0) to one uninterrupted 2-process torchrun of the same two batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from continual_operator.naming import job_name
from continual_trainer.config import TrainerConfig

from .controlplane import free_port
from .jobset_emulator import API_VERSION, COMPLETION_INDEX, RESTART_ATTEMPT, JobSetEmulator
from .operator_world import (
    Recorded,
    World,
    batch_manifest,
    prepare_volume,
    pvc_manifest,
    run_manifest,
    status,
)
from .podlaunch import ContainerCommand, local_command
from .podrunner import PodRunner
from .test_operator import on_this_machine, trainer_configs
from .waiting import wait_until

pytestmark = pytest.mark.e2e

TIMEOUT = 300


class LoopbackRendezvous:
    """The pod runner's command map: torchrun's ``--master-addr`` (the coordinator's DNS name) becomes
    127.0.0.1 and ``--master-port`` a free port, the same one for every pod of an attempt (its address
    names the attempt), as cluster DNS would give every pod of the gang the coordinator's pod IP."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}

    def __call__(self, request: ContainerCommand) -> list[str]:
        argv = local_command(request)
        if argv[:1] == ["torchrun"] and "--master-addr" in argv:
            at = argv.index("--master-addr") + 1
            port = self.ports.setdefault(argv[at], free_port())
            argv[at] = "127.0.0.1"
            argv[argv.index("--master-port") + 1] = str(port)
        return argv


@pytest.fixture
def pod_runner(make_pod_runner: Any) -> PodRunner:
    """The runner the ``world`` fixture uses, with the rendezvous on loopback."""
    return make_pod_runner(command_map=LoopbackRendezvous())  # type: ignore[no-any-return]


@pytest.fixture
def jobsets(world: World) -> Iterator[JobSetEmulator]:
    emulator = JobSetEmulator(world.api, world.namespace).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, state), from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        found[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants: a pod's container is torchrun, whose workers run in sessions of their
    own (so a signal to the container's process group does not reach them)."""
    processes, out = _processes(), [pid]
    for candidate in out:
        out += [child for child, (parent, _) in processes.items() if parent == candidate and child not in out]
    return out


def frozen(pid: int) -> bool:
    """Whether a process of the container ``pid`` (torchrun or its worker) is stopped (state T)."""
    processes = _processes()
    return any(processes.get(p, (0, ""))[1] == "T" for p in tree(pid))


def signal_container(pid: int, signum: int) -> None:
    """``signum`` to every process of the container, as a container runtime kills (or resumes) a whole
    container, workers first."""
    for process in reversed(tree(pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signum)


def gang_pods(world: World, jobset: str) -> list[dict[str, Any]]:
    query = {"labelSelector": f"jobset.sigs.k8s.io/jobset-name={jobset}"}
    return list(world.api.get(world.pods_path, query)["items"])


def reference_run(configs: list[TrainerConfig], run_dir: Path) -> Path:
    """The batches trained back to back by one uninterrupted 2-process torchrun (the reference trainer)."""
    paths = []
    for config in configs:
        path = run_dir.parent / f"{config.batch.id}.json"
        path.write_text(json.dumps(config.model_dump(mode="json", by_alias=True)))
        paths.append(str(path))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    argv += ["-m", "continual_trainer.reference", "--run-dir", str(run_dir), *paths]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUAL_TRAINER_FAILPOINT")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_a_two_node_gang_trains_and_a_killed_pod_restarts_the_gang_to_the_exact_weights(
    world: World, jobsets: JobSetEmulator, tiny_model: Path, tmp_path: Path
) -> None:
    run, claim = "multinode", "multinode-volume"
    world.create(pvc_manifest(claim))
    volume = world.pod_runner.claim_path(claim)
    prepare_volume(volume, tiny_model, f"runs/{run}")
    jobsets_path = f"/apis/{API_VERSION}/namespaces/{world.namespace}/jobsets"
    created = world.record(jobsets_path)
    # saveSteps 2 (counted from the batch's start): a checkpoint at step 8, inside batch 2 (steps 7..12).
    # Rank 1 (pod 1's only process) freezes at the end of step 9, after it: the test then kills its pod,
    # known to be mid-batch, with no race against the batch finishing.
    freeze = [
        {"name": "CONTINUAL_TRAINER_FAILPOINTS", "value": "step-end@9=stop"},
        {"name": "CONTINUAL_TRAINER_FAILPOINT_RANK", "value": "1"},
    ]
    storage = {"existingClaim": claim, "subPath": f"runs/{run}"}
    with world.explained():
        world.create(
            run_manifest(
                run, storage, training={"saveSteps": 2}, resources={"gpus": 0, "nodes": 2}, env=freeze
            )
        )
        world.create(batch_manifest("batch-001", run, "batch-001.jsonl"))

        # 1. A 2-node gang trains batch 1: one JobSet (no Job of the operator's), two pods.
        first = job_name(run, "batch-001", 1)
        got = status(world.wait_batch_phase("batch-001", "Succeeded", timeout=TIMEOUT))
        assert (got["startStep"], got["endStep"], got["attempts"], got["worldSize"]) == (0, 6, 1, 2), got
        assert world.jobs(run) == []
        jobset = world.api.get(f"{jobsets_path}/{first}")
        assert jobset["metadata"]["ownerReferences"][0]["kind"] == "ContinualTrainingRun"
        pods = gang_pods(world, first)
        assert sorted(p["metadata"]["annotations"][COMPLETION_INDEX] for p in pods) == ["0", "1"]
        logs = "".join(p.log() for p in world.pod_runner.processes(first))
        assert "rank 1 of 2" in logs, logs[-3000:]

        # 2. Batch 2: pod 1 is killed mid-batch; the JobSet fails; the gang is restarted as attempt 2.
        world.create(batch_manifest("batch-002", run, "batch-002.jsonl"))
        killed_job = job_name(run, "batch-002", 1)
        (rank_1,) = world.wait(
            lambda: world.pod_runner.processes(f"{killed_job}-node-0-1-") or None,
            "attempt 1's rank 1",
            TIMEOUT,
        )
        world.wait(lambda: frozen(rank_1.pid), "rank 1 frozen at step 9", TIMEOUT)
        # (the coordinator waits for it in step 9's collective; its progress lines are rate-limited, so
        # the published checkpoint is read from the volume)
        assert (volume / "runs" / run / "checkpoints" / "checkpoint-8").is_dir()
        signal_container(rank_1.pid, signal.SIGKILL)  # the whole pod: torchrun and its worker
        failed = world.wait(
            lambda: (
                "Failed"
                in {
                    c["type"]
                    for c in status(world.api.get(f"{jobsets_path}/{killed_job}")).get("conditions") or []
                }
            ),
            "the JobSet of attempt 1 Failed",
        )
        assert failed
        retried = job_name(run, "batch-002", 2)
        _, resumed = world.wait_trainer_event(
            retried, lambda e: e["kind"] == "batch-started", "attempt 2 started", TIMEOUT
        )
        assert (resumed["globalStep"], resumed["latestCheckpoint"]) == (8, "checkpoint-8"), resumed
        (rank_1,) = world.wait(
            lambda: world.pod_runner.processes(f"{retried}-node-0-1-") or None, "attempt 2's rank 1"
        )
        world.wait(lambda: frozen(rank_1.pid), "attempt 2's rank 1 frozen at step 9")
        signal_container(rank_1.pid, signal.SIGCONT)
        got = status(world.wait_batch_phase("batch-002", "Succeeded", timeout=TIMEOUT))
        assert (got["startStep"], got["endStep"], got["attempts"], got["failures"]) == (6, 12, 2, 1), got
        names = [name for _, name, _ in jobsets.gangs]
        assert names == [first, killed_job, retried], jobsets.gangs
        assert {p["metadata"]["labels"][RESTART_ATTEMPT] for p in gang_pods(world, retried)} == {"0"}

        # 3. The weights of one uninterrupted 2-process torchrun of the same batches.
        from trainer.helpers import adapter_weights, max_abs_diff

        configs = trainer_configs(world, [as_job(r) for r in created.snapshot()], run)
        reference = tmp_path / "reference" / run
        reference.parent.mkdir(parents=True)
        local = [
            on_this_machine(configs[b], volume=volume, run_dir=reference) for b in ("batch-001", "batch-002")
        ]
        reference_run(local, reference)
        on_claim = volume / "runs" / run / "checkpoints" / "checkpoint-12"
        diff = max_abs_diff(
            adapter_weights(on_claim), adapter_weights(reference / "checkpoints" / "checkpoint-12")
        )
        assert diff == 0.0


def as_job(record: Recorded) -> Recorded:
    """A recorded JobSet as the Job its replicated job stands for (its pod template: the trainer config)."""
    jobset = record.object
    template = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    job = {"metadata": jobset["metadata"], "spec": {"template": template}}
    return dataclasses.replace(record, object=job)


def test_the_jobset_emulator_restarts_the_whole_gang_within_max_restarts(
    raw_api: Any, crds: object, namespace: str, pod_runner: PodRunner
) -> None:
    """The harness's JobSet controller on its own (shell pods, no operator): a pod of restart 0 fails, so
    every pod is recreated with ``restart-attempt`` 1 (``maxRestarts: 1``), and the JobSet completes."""
    # pod 1 of restart 0 fails; every other pod succeeds
    script = 'test "$RESTART" != 0 || test "$INDEX" = 0'
    env = [
        {
            "name": "RESTART",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{RESTART_ATTEMPT}']"}},
        },
        {
            "name": "INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
        },
    ]
    pod = {
        "restartPolicy": "Never",
        "containers": [{"name": "c", "image": "shell", "command": ["sh", "-c", script], "env": env}],
    }
    job = {"parallelism": 2, "completions": 2, "backoffLimit": 0, "template": {"metadata": {}, "spec": pod}}
    jobset = {
        "apiVersion": API_VERSION,
        "kind": "JobSet",
        "metadata": {"name": "gang"},
        "spec": {
            "failurePolicy": {"maxRestarts": 1},
            "replicatedJobs": [{"name": "w", "replicas": 1, "template": {"spec": job}}],
        },
    }
    path = f"/apis/{API_VERSION}/namespaces/{namespace}/jobsets"
    raw_api.create(path, jobset)
    emulator = JobSetEmulator(raw_api, namespace).start()
    try:
        done = wait_until(
            lambda: (js := raw_api.get(f"{path}/gang")).get("status", {}).get("terminalState") and js,
            timeout=60,
            what="the JobSet finished",
            dump=pod_runner.describe,
        )
    finally:
        emulator.stop()
    assert done["status"]["terminalState"] == "Completed" and done["status"]["restarts"] == 1, done["status"]
    assert [restart for _, _, restart in emulator.gangs] == [0, 1]
    pods = raw_api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    assert sorted(p["spec"]["hostname"] for p in pods) == ["gang-w-0-0", "gang-w-0-1"]
    assert {p["metadata"]["labels"][RESTART_ATTEMPT] for p in pods} == {"1"}  # the old gang is gone
