"""`kubectl get ctr,tbatch` on the real control plane shows Ready and the Ready message (Flux/Kueue style)."""

from __future__ import annotations

import pytest

from .operator_world import World, batch_manifest, condition, pvc_manifest, run_manifest, status

pytestmark = pytest.mark.e2e


def _table(world: World, *args: str) -> list[dict[str, str]]:
    """kubectl's table as one dict per row (header -> cell); cells are separated by 3+ spaces or aligned."""
    out = world.control_plane.kubectl("get", *args, "-n", world.namespace).stdout.splitlines()
    header = out[0]
    starts = [i for i in range(len(header)) if header[i] != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    bounds = [*starts[1:], None]
    return [{n: row[s:e].strip() for n, s, e in zip(names, starts, bounds, strict=True)} for row in out[1:]]


def test_ready_message_and_batch_reason_columns(world: World) -> None:
    run = "columns"
    world.create(pvc_manifest("data"))
    with world.explained():
        # The CRD accepts any schedule name; the operator refuses it: Ready=False with a message to act on.
        world.create(
            run_manifest(run, {"existingClaim": "data"}, training={"lrSchedule": {"type": "cosine"}})
        )
        world.create(batch_manifest("orphan", "no-such-run", "batch-001.jsonl"))
        degraded = world.wait_run(run, lambda r: status(r).get("phase") == "Failed", "Failed")
        world.wait(lambda: status(world.batch("orphan")).get("reason") == "RunNotFound", "RunNotFound")

        (row,) = _table(world, "ctr")
        assert list(row) == ["NAME", "READY", "PHASE", "STEP", "BATCHES", "LOSS", "AGE"]
        assert (row["NAME"], row["READY"], row["PHASE"]) == (run, "False", "Failed")
        (wide,) = _table(world, "ctr", "-o", "wide")
        assert list(wide)[-1] == "MESSAGE"
        assert condition(degraded, "Ready")["message"].startswith(wide["MESSAGE"][:40])
        assert "spec.training.lrSchedule.type" in wide["MESSAGE"]

        (batch,) = _table(world, "tbatch", "-o", "wide")
        assert list(batch) == [
            "NAME", "RUN", "PHASE", "START", "END", "LOSS", "ATTEMPTS", "JOB", "AGE", "REASON", "MESSAGE",
        ]  # fmt: skip
        assert (batch["RUN"], batch["PHASE"], batch["REASON"]) == ("no-such-run", "Queued", "RunNotFound")
