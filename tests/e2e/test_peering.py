"""Two operator replicas with kopf peering: only one acts (one Job per batch), the other stands by and
takes over when the active one goes away."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from .controlplane import ControlPlane
from .operator_process import HelmUnavailableError, OperatorProcess, OperatorRbac, helm_binary
from .operator_world import World, batch_manifest, prepare_volume, run_manifest
from .podrunner import PodRunner
from .test_operator import DEMO_BATCHES, TRAINING_TIMEOUT, created_jobs, job_name, pvc_manifest, status

pytestmark = pytest.mark.e2e
PEERING_CRDS = (
    Path(__file__).resolve().parents[2] / "charts" / "continual-training" / "crds" / "kopf.dev_peerings.yaml"
)


def test_two_replicas_with_peering_create_each_job_once(
    control_plane: ControlPlane,
    crds: object,
    namespace: str,
    pod_runner: PodRunner,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    try:
        helm_binary()
    except HelmUnavailableError as error:
        pytest.skip(f"the chart's RBAC cannot be rendered: {error}")
    control_plane.kubectl("apply", "-f", str(PEERING_CRDS))
    control_plane.kubectl("wait", "--for=condition=established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
    rbac = OperatorRbac(control_plane, namespace, tmp_path / "rbac", peering=True)
    kubeconfig = rbac.apply()  # the chart's RBAC and its KopfPeering object for the namespace
    replicas = [
        OperatorProcess(kubeconfig, namespace, tmp_path / f"replica-{i}.log", standalone=False)
        for i in range(2)
    ]
    try:
        for replica in replicas:
            replica.start()
        world = World(control_plane, namespace, pod_runner, replicas[0])
        try:
            jobs = world.record(world.jobs_path)
            run, claim = "peered", "peered-volume"
            world.create(pvc_manifest(claim))
            prepare_volume(pod_runner.claim_path(claim), tiny_model, f"runs/{run}")
            with world.explained():
                world.create(run_manifest(run, {"existingClaim": claim, "subPath": f"runs/{run}"}))
                for name, data_file in DEMO_BATCHES[:2]:
                    world.create(batch_manifest(name, run, data_file))
                world.wait_run(
                    run,
                    lambda r: status(r).get("batchesCompleted") == 2 and status(r).get("phase") == "Idle",
                    "two batches completed",
                    timeout=TRAINING_TIMEOUT * 2,
                )
                assert created_jobs(jobs.snapshot()) == Counter(
                    {job_name(run, b): 1 for b, _ in DEMO_BATCHES[:2]}
                )
                assert all(replica.alive for replica in replicas)
                # exactly one replica acted; the other stood by (kopf starts paused until it knows its peers)
                acting = [r for r in replicas if "created Job" in r.log()]
                assert len(acting) == 1, "\n".join(r.log_tail() for r in replicas)
                (standby,) = [r for r in replicas if r is not acting[0]]

                # the active replica goes away (a rolling update: SIGTERM, it leaves the peering object);
                # the standby resumes and trains the next batch
                acting[0].stop()
                world.wait(
                    lambda: "Resuming operations" in standby.log(), "the standby replica to resume", 60
                )
                name, data_file = DEMO_BATCHES[2]
                world.create(batch_manifest(name, run, data_file))
                world.wait_run(
                    run,
                    lambda r: status(r).get("batchesCompleted") == 3,
                    "the third batch completed by the standby",
                    timeout=TRAINING_TIMEOUT * 2,
                )
                assert f"created Job {job_name(run, name)}" in standby.log()
                assert created_jobs(jobs.snapshot()) == Counter(
                    {job_name(run, b): 1 for b, _ in DEMO_BATCHES}
                )
        finally:
            world.close()
    finally:
        for replica in replicas:
            replica.stop()
        rbac.remove()
