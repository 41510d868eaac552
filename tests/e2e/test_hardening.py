"""Issue 6 on a real control plane: what the operator refuses and how it reports pods that cannot start.

Kubernetes 1.20 enforces no CEL rules (a spec change of a trained run goes through) and has no kubelet
here: the pod runner reports what a kubelet would for a pod whose Secret is missing
(``CreateContainerConfigError``) or whose image cannot be pulled (``ErrImagePull``, for registries under
``.invalid``). The operator runs with its chart's RBAC, as in ``test_operator.py``.

Cost: three trainer processes (one per batch of the last two tests); the first test starts none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .kubeapi import JSON
from .operator_world import (
    DEMO_BATCHES,
    TRAINER_UID,
    World,
    batch_manifest,
    condition,
    prepare_volume,
    pvc_manifest,
    run_manifest,
    status,
)

pytestmark = pytest.mark.e2e

#: A trainer process (torch import, model load, 6 steps, checkpoints) takes 5-10 s on two busy cores.
TRAINING_TIMEOUT = 180
MISSING_SECRET = "missing-hf-token"  # noqa: S105 - the name of a Secret that does not exist
UNPULLABLE_IMAGE = "registry.invalid/continual/trainer:0"


def events_of(world: World, name: str, reason: str) -> list[JSON]:
    return [e for e in world.events() if e["involvedObject"]["name"] == name and e["reason"] == reason]


def degraded_reason(run: JSON) -> str | None:
    degraded = [c for c in status(run).get("conditions") or [] if c["type"] == "Degraded"]
    return degraded[0]["reason"] if degraded else None


def batch_has(world: World, name: str, **fields: object) -> JSON | None:
    got = world.batch(name)
    return got if all(status(got).get(k) == v for k, v in fields.items()) else None


def test_pods_that_cannot_start_are_shown_then_stopped_and_refusals_need_no_job(world: World) -> None:
    for claim in ("vol-a", "vol-b"):
        world.create(pvc_manifest(claim))
    secret_env = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": MISSING_SECRET, "key": "t"}}}]
    policy = {"startDeadlineSeconds": 4, "maxRetriesPerBatch": 1, "backoffSeconds": 1}
    with world.explained():
        world.create(run_manifest("stuck", {"existingClaim": "vol-a"}, env=secret_env, failurePolicy=policy))
        world.create(batch_manifest("b1", "stuck", "batch-001.jsonl"))
        world.create(run_manifest("unpullable", {"existingClaim": "vol-b"}, image=UNPULLABLE_IMAGE))
        world.create(batch_manifest("u1", "unpullable", "batch-001.jsonl"))
        world.create(batch_manifest("lost", "ghost", "batch-001.jsonl"))  # for a run nobody created

        # A missing Secret: the kubelet's reason and message on the batch, a Warning Event, the run Pending.
        b1 = world.wait(
            lambda: batch_has(world, "b1", reason="CreateContainerConfigError"), "b1 cannot start"
        )
        assert f'secret "{MISSING_SECRET}" not found' in status(b1)["message"], status(b1)
        assert status(b1)["phase"] == "Training"
        (event,) = world.wait(lambda: events_of(world, "b1", "CreateContainerConfigError"), "the Event")
        assert event["type"] == "Warning" and MISSING_SECRET in event["message"]
        stuck = world.run("stuck")
        assert status(stuck)["phase"] == "Pending"
        assert condition(stuck, "Training")["reason"] == "CreateContainerConfigError"
        # "stuck" holds vol-a from its first Job on (status.trainedWith): a run created now on it is refused.
        assert status(stuck)["trainedWith"]["storage"] == {"claim": "vol-a"}
        world.create(run_manifest("intruder", {"existingClaim": "vol-a"}))
        world.create(batch_manifest("i1", "intruder", "batch-001.jsonl"))

        # Past startDeadlineSeconds each attempt is stopped and counted; out of retries, b1 fails.
        b1 = world.wait(lambda: batch_has(world, "b1", phase="Failed"), "b1 out of retries", timeout=60)
        got = status(b1)
        assert (got["reason"], got["attempts"], got["failures"]) == ("RetriesExhausted", 2, 2), got
        assert "StartDeadlineExceeded" in got["message"] and MISSING_SECRET in got["message"], got
        assert "nextAttemptTime" not in got
        world.wait(lambda: not world.jobs("stuck"), "the stopped Jobs to be gone")
        assert len(events_of(world, "b1", "Retrying")) == 1
        assert world.wait(lambda: status(world.run("stuck")).get("phase") == "Halted", "stuck Halted")

        # An image that cannot be pulled: the pod waits with ErrImagePull, and the batch says so.
        u1 = world.wait(lambda: batch_has(world, "u1", reason="ErrImagePull"), "u1 cannot pull")
        assert UNPULLABLE_IMAGE in status(u1)["message"]
        (pod,) = [
            p
            for p in world.api.get(world.pods_path)["items"]
            if p["metadata"]["name"].startswith("unpullable-")
        ]
        (trainer,) = pod["status"]["containerStatuses"]
        assert trainer["state"]["waiting"]["reason"] == "ErrImagePull"
        assert world.wait(lambda: events_of(world, "u1", "ErrImagePull"), "the ErrImagePull Event")

        # One run per folder: the second run on vol-a is refused, naming the first; no Job, no pod.
        intruder = world.wait_run("intruder", lambda r: degraded_reason(r) == "VolumeInUse", "refused")
        assert "ContinualTrainingRun stuck" in condition(intruder, "Degraded")["message"]
        assert status(intruder)["phase"] == "Halted"
        assert world.jobs("intruder") == []
        assert status(world.batch("i1"))["phase"] == "Queued"

        # A batch naming a run that does not exist says that it waits for it.
        lost = world.wait(lambda: batch_has(world, "lost", reason="RunNotFound"), "lost waits")
        assert status(lost)["phase"] == "Queued" and "ContinualTrainingRun ghost" in status(lost)["message"]
        assert world.wait(lambda: events_of(world, "lost", "RunNotFound"), "the RunNotFound Event")


def test_a_spec_change_after_training_is_refused_at_once(world: World, tiny_model: Path) -> None:
    run, claim = "trained", "volume"
    world.create(pvc_manifest(claim))
    prepare_volume(world.pod_runner.claim_path(claim), tiny_model, f"runs/{run}")
    first, data = DEMO_BATCHES[0]
    with world.explained():
        world.create(run_manifest(run, {"existingClaim": claim, "subPath": f"runs/{run}"}))
        world.create(batch_manifest(first, run, data))
        world.wait_batch_phase(first, "Succeeded", timeout=TRAINING_TIMEOUT)
        recorded = status(world.run(run))["trainedWith"]
        assert recorded["storage"] == {"claim": claim, "subPath": f"runs/{run}"}, recorded
        old_r = recorded["lora"]["r"]

        # Accepted by the 1.20 API server (no CEL), refused by the operator at once.
        patch = json.dumps({"spec": {"lora": {"r": old_r * 2}, "storage": {"subPath": "runs/elsewhere"}}})
        world.control_plane.kubectl(
            "patch", "ctr", run, "-n", world.namespace, "--type", "merge", "-p", patch
        )
        refused = world.wait_run(run, lambda r: degraded_reason(r) == "SpecChangeRefused", "change refused")
        message = condition(refused, "Degraded")["message"]
        assert f"spec.lora.r: {old_r} -> {old_r * 2}" in message, message
        assert f'spec.storage.subPath: "runs/{run}" -> "runs/elsewhere"' in message, message
        assert status(refused)["phase"] == "Halted"
        assert status(refused)["trainedWith"] == recorded
        assert world.wait(lambda: events_of(world, run, "SpecChangeRefused"), "the Event")

        # A new batch waits; no Job starts for it.
        second, data2 = DEMO_BATCHES[1]
        world.create(batch_manifest(second, run, data2))
        world.wait(lambda: batch_has(world, second, phase="Queued"), "the new batch seen")
        assert [j["metadata"]["name"] for j in world.jobs(run) if second in j["metadata"]["name"]] == []

        # The trainer patched its progress into the run's status all along: kopf logged no handler call
        # for those patches (one INFO line per progress update, before), nor for the operator's own status
        # patches: the run's handler ran for its creation and for the spec change, nothing else.
        assert world.operator.log().count("Handler 'run-event' succeeded") == 2


def test_a_failed_batch_deleted_as_advised_lets_the_run_go_on(world: World, tiny_model: Path) -> None:
    run, claim = "recovers", "volume"
    world.create(pvc_manifest(claim))
    folder = prepare_volume(world.pod_runner.claim_path(claim), tiny_model, f"runs/{run}")
    (folder / "inbox" / "broken.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    os.chown(folder / "inbox" / "broken.jsonl", TRAINER_UID, TRAINER_UID)
    good, data = DEMO_BATCHES[0]
    with world.explained():
        world.create(run_manifest(run, {"existingClaim": claim, "subPath": f"runs/{run}"}))
        world.create(batch_manifest("broken", run, "broken.jsonl"))
        world.wait_batch_phase("broken", "Failed", timeout=TRAINING_TIMEOUT)
        world.create(batch_manifest(good, run, data))
        halted = world.wait_run(run, lambda r: status(r).get("phase") == "Halted", "Halted")
        assert "delete TrainingBatch broken" in condition(halted, "Degraded")["message"]

        # As the Degraded message advises: delete the failed batch. The run says so and goes on.
        world.api.delete(f"{world.batches_path}/broken")
        world.wait_batch_phase(good, "Succeeded", timeout=TRAINING_TIMEOUT)
        (removed,) = world.wait(lambda: events_of(world, run, "FailedBatchRemoved"), "FailedBatchRemoved")
        assert removed["type"] == "Normal" and "broken" in removed["message"]
        assert events_of(world, run, "DeletedBatchNotCompleted") == []
        assert (status(world.batch(good))["startStep"], status(world.batch(good))["attempts"]) == (0, 1)
        assert condition(world.run(run), "Degraded")["status"] == "False"
