"""Several trainer processes in one pod on a real control plane: ``spec.resources.gpus: 2`` makes the
batch's Job run ``torchrun --nproc-per-node 2`` (gloo on the CPU here, NCCL on GPUs), one pod, one Job.

The pod runner plays the kubelet (it does not schedule GPUs; the limit is only rendered). The batch trains
to its target step with both ranks (two micro-batches per step: one each), and the run's steps are the
ones a single process trains: the step plan does not depend on the world size.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .operator_world import World, batch_manifest, prepare_volume, pvc_manifest, run_manifest, status

pytestmark = pytest.mark.e2e

TIMEOUT = 300


def test_two_processes_per_pod_train_a_batch_under_torchrun(world: World, tiny_model: Path) -> None:
    run, claim, batch = "gang-run", "gang-volume", "gang-001"
    world.create(pvc_manifest(claim))
    prepare_volume(world.pod_runner.claim_path(claim), tiny_model, f"runs/{run}")
    with world.explained():
        world.create(
            run_manifest(
                run,
                {"existingClaim": claim, "subPath": f"runs/{run}"},
                resources={"gpus": 2},
            )
        )
        world.create(batch_manifest(batch, run, "batch-001.jsonl"))
        done = world.wait_batch_phase(batch, "Succeeded", timeout=TIMEOUT)
        got = status(done)
        # batch-001 with the demo settings (4 per micro-batch, 2 micro-batches per step: one per rank): the
        # 6 steps one process trains
        assert (got["startStep"], got["endStep"], got["attempts"]) == (0, 6, 1), got

        (job,) = world.jobs(run)
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[:3] == ["torchrun", "--nproc-per-node", "2"], command
        processes = world.pod_runner.processes()
        assert len({p.pod for p in processes}) == 1
        log = "".join(p.log() for p in processes)
        assert "rank 1 of 2" in log, log[-3000:]  # the follower rank reported its own summary line
