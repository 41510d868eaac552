"""Coalesced batches on a real control plane: one Job trains several queued batches in one trainer process.

Three batches are queued while the run is suspended; on resume the operator creates ONE Job for the three
(``spec.training.maxBatchesPerJob: 4``). The trainer freezes at the end of step 9, inside batch 2, and gets
SIGTERM there: batch 1 stays Succeeded with its own status, batch 2 resumes as the first batch of the next
Job with batch 3 after it; steps are contiguous and the final adapter equals one uninterrupted process.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.naming import ANNOTATION_NEXT_BATCHES
from continual_operator.workloads.resources import get_trainer_config

from .operator_world import (
    DEMO_BATCHES,
    DEMO_STEPS,
    ActiveJobs,
    World,
    batch_manifest,
    prepare_volume,
    pvc_manifest,
    run_manifest,
    status,
)
from .test_operator import TRAINING_TIMEOUT, created_jobs, is_stopped, job_name, on_this_machine

pytestmark = pytest.mark.e2e


def test_three_queued_batches_share_one_job_and_a_sigterm_mid_way_resumes_exactly(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    run, claim = "coalesced", "coalesced-volume"
    world.create(pvc_manifest(claim))
    volume = world.pod_runner.claim_path(claim)
    prepare_volume(volume, tiny_model, f"runs/{run}")
    active = ActiveJobs()
    jobs = world.record(world.jobs_path, active)

    with world.explained():
        freeze = [{"name": "CONTINUAL_TRAINER_FAILPOINTS", "value": "step-end@9=stop"}]
        storage = {"existingClaim": claim, "subPath": f"runs/{run}"}
        manifest = run_manifest(run, storage, training={"maxBatchesPerJob": 4}, env=freeze, suspend=True)
        world.create(manifest)
        for name, data_file in DEMO_BATCHES:
            world.create(batch_manifest(name, run, data_file))
        world.wait(
            lambda: all(status(world.batch(b)).get("phase") == "Queued" for b, _ in DEMO_BATCHES),
            "the three batches Queued",
        )
        world.api.patch(f"{world.runs_path}/{run}", {"spec": {"suspend": False}})

        # One Job for the three, named after the first batch's attempt.
        first = job_name(run, "batch-001")
        frozen, _ = world.wait_trainer_event(
            first,
            lambda e: e["kind"] == "batch-started" and e["batchId"] == "batch-002",
            "batch 2 started",
            TRAINING_TIMEOUT,
        )
        job = world.api.get(f"{world.jobs_path}/{first}")
        assert job["metadata"]["annotations"][ANNOTATION_NEXT_BATCHES] == "batch-002,batch-003"
        for batch, _ in DEMO_BATCHES:
            assert status(world.batch(batch)).get("job") == first, world.batch(batch)
        # batch 1 is done while batch 2 trains in the same process (its own status, from the Job's result
        # only once the Job ends): frozen at step 9, SIGTERM, then let it go on: it checkpoints, exits 85.
        world.wait(lambda: is_stopped(frozen.pid), "the trainer frozen at step 9", TRAINING_TIMEOUT)
        world.pod_runner.kill(frozen.pod, signal.SIGTERM)
        world.pod_runner.kill(frozen.pod, signal.SIGCONT)
        world.wait(lambda: frozen.returncode is not None, "the coalesced trainer to exit", 60)
        assert frozen.returncode == 85, frozen.log()[-3000:]

        # The next Job: batch 2's second attempt, batch 3 after it.
        second = job_name(run, "batch-002", 2)
        world.wait_trainer_event(
            second, lambda e: e["kind"] == "batch-started", "attempt 2", TRAINING_TIMEOUT
        )
        b1 = status(world.batch("batch-001"))
        assert (b1["phase"], b1["startStep"], b1["endStep"], b1["attempts"]) == ("Succeeded", 0, 6, 1), b1
        assert (
            world.api.get(f"{world.jobs_path}/{second}")["metadata"]["annotations"][ANNOTATION_NEXT_BATCHES]
            == "batch-003"
        )
        final = world.wait_run(
            run,
            lambda r: status(r).get("phase") == "Idle" and status(r).get("batchesCompleted") == 3,
            "Idle with 3 batches completed",
            timeout=TRAINING_TIMEOUT * 2,
        )
        assert status(final)["globalStep"] == status(final)["completedStep"] == 18

        expected = {"batch-001": (1, None), "batch-002": (2, 1), "batch-003": (1, None)}
        for batch, (start, end) in DEMO_STEPS.items():
            got = status(world.batch(batch))
            assert got["phase"] == "Succeeded", got
            assert (got["startStep"], got["endStep"]) == (start, end), got  # contiguous
            assert (got["attempts"], got.get("preemptions")) == expected[batch], got
            assert got["checkpoint"] == f"checkpoints/checkpoint-{end}" and got["samples"] > 0, got
        assert created_jobs(jobs.snapshot()) == Counter({first: 1, second: 1})
        assert active.most == 1, f"Jobs active at the same time: {active.overlaps}"

        # Same weights as one uninterrupted process over the same data with the same settings.
        from continual_trainer.reference import run_uninterrupted
        from trainer.helpers import adapter_weights, max_abs_diff

        stored_run = ContinualTrainingRun.model_validate(world.run(run))
        reference = tmp_path / "reference" / run
        configs = [
            on_this_machine(
                get_trainer_config(stored_run, TrainingBatch.model_validate(world.batch(b))),
                volume=volume,
                run_dir=reference,
            )
            for b, _ in DEMO_BATCHES
        ]
        assert run_uninterrupted(configs, reference).final_step == 18
        on_claim = volume / "runs" / run / "checkpoints" / "checkpoint-18"
        diff = max_abs_diff(
            adapter_weights(on_claim), adapter_weights(reference / "checkpoints" / "checkpoint-18")
        )
        assert diff == 0.0
