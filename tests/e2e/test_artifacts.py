"""Artifact Jobs on a real control plane: snapshots to S3, a consolidation, and a restore into a new run.

A run with ``spec.snapshots`` (every batch) and ``spec.consolidation`` (every 2 batches) trains two batches;
between and after them the operator runs a snapshot Job and a consolidation Job of the same trainer image
(the pod runner plays the kubelet). A Job watch audits that no two Jobs of the run are ever active at once
(a snapshot or a merge never runs beside a trainer), the results land in ``status.lastSnapshot`` and
``status.lastConsolidation``, the snapshot is committed in the bucket (its manifest) and the merged folder is
a plain Hugging Face model on the volume. Then a new run with ``spec.restoreFrom`` gets the snapshot
restored by a restore Job and trains its next batch from the snapshot's step on. The S3 secret appears in
no status, Event or ConfigMap.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from tests.s3server import S3Server

from .operator_world import (
    DEMO_DATA,
    TRAINER_UID,
    ActiveJobs,
    World,
    batch_manifest,
    prepare_volume,
    run_manifest,
    status,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 300
SECRET_VALUE = "e2e-artifacts-secret-51c0a9d7"  # noqa: S105 - a fake value for a fake server
ACCESS_KEY = "AKIAE2EARTIFACTS0001"


def _kind(job: dict) -> str:
    return (job["metadata"].get("labels") or {}).get("continual.dev/kind", "train")


def test_snapshot_and_consolidation_jobs_serialize_with_training_and_a_restored_run_continues(
    world: World, s3_server: S3Server, tiny_model: Path
) -> None:
    run, restored_run, claim = "art-run", "art-restored", "art-volume"
    s3_server.make_bucket("snaps")
    world.create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }
    )
    claim_folder = world.pod_runner.claim_path(claim)
    prepare_volume(claim_folder, tiny_model, f"runs/{run}")
    world.api.create(
        f"/api/v1/namespaces/{world.namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "store-creds"},
            "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_VALUE},
        },
    )
    store = s3_server.object_store() | {"credentialsSecretRef": {"name": "store-creds"}}
    active = ActiveJobs()
    kinds: Counter[str] = Counter()

    def on_job(record: object) -> None:
        active(record)  # type: ignore[arg-type]
        if record.type == "ADDED":  # type: ignore[attr-defined]
            kinds[_kind(record.object)] += 1  # type: ignore[attr-defined]

    world.record(world.jobs_path, on_job)

    with world.explained():
        world.create(
            run_manifest(
                run,
                {"existingClaim": claim, "subPath": f"runs/{run}"},
                objectStore=store,
                snapshots={"everyBatches": 1, "destination": f"s3://snaps/{run}/", "keep": 5},
                consolidation={"everyBatches": 2, "output": f"models/{run}-merged", "dtype": "float32"},
            )
        )
        for name, data_file in (("art-001", "batch-001.jsonl"), ("art-002", "batch-002.jsonl")):
            world.create(batch_manifest(name, run, data_file))

        def settled(r: dict) -> bool:
            s = status(r)
            done = s.get("completedStep")
            return (
                done == 12
                and (s.get("lastSnapshot") or {}).get("globalStep") == done
                and (s.get("lastConsolidation") or {}).get("globalStep") == done
            )

        final = world.wait_run(run, settled, "step 12 snapshotted and consolidated", timeout=TIMEOUT)
        snapshot = status(final)["lastSnapshot"]
        consolidation = status(final)["lastConsolidation"]

        # Serialized: never two Jobs of the run at once; every kind ran.
        assert active.most == 1, f"Jobs active at the same time: {active.overlaps}"
        assert kinds["train"] == 2, kinds
        assert kinds["snapshot"] >= 2, kinds  # after batch 1 and after batch 2
        assert kinds["consolidate"] >= 1, kinds
        for name in ("art-001", "art-002"):
            assert status(world.batch(name))["phase"] == "Succeeded"

        # The snapshot is committed in the bucket (manifest written last) and names its step.
        assert snapshot["uri"].startswith(f"s3://snaps/{run}/"), snapshot
        key = snapshot["uri"].removeprefix("s3://snaps/") + "manifest.json"
        manifest = json.loads(s3_server.client().get_object(Bucket="snaps", Key=key)["Body"].read())
        assert manifest["globalStep"] == 12, manifest

        # The merged model is a plain HF folder on the volume, with its manifest.
        merged = claim_folder / f"models/{run}-merged"
        assert (merged / "consolidation.json").is_file(), sorted(p.name for p in claim_folder.rglob("*"))[:50]
        assert (merged / "config.json").is_file()
        assert consolidation["globalStep"] == 12 and consolidation["dtype"] == "float32", consolidation

        # A new run restored from the snapshot continues from its step.
        restored_folder = claim_folder / f"runs/{restored_run}"
        (restored_folder / "inbox").mkdir(parents=True)
        shutil.copy2(DEMO_DATA / "batch-003.txt", restored_folder / "inbox" / "batch-003.txt")
        for entry in [restored_folder, *restored_folder.rglob("*")]:
            os.chown(entry, TRAINER_UID, TRAINER_UID)
        world.create(
            run_manifest(
                restored_run,
                {"existingClaim": claim, "subPath": f"runs/{restored_run}"},
                objectStore=store,
                restoreFrom=snapshot["uri"],
            )
        )
        world.create(batch_manifest("art-003", restored_run, "batch-003.txt"))
        done = world.wait_batch_phase("art-003", "Succeeded", timeout=TIMEOUT)
        assert (done["status"]["startStep"], done["status"]["endStep"]) == (12, 18), done["status"]
        assert kinds["restore"] == 1, kinds
        assert active.most == 1, f"Jobs active at the same time: {active.overlaps}"

        # The secret leaks into nothing a user or a log shipper sees.
        haystacks = {
            "runs": json.dumps([world.run(run), world.run(restored_run)]),
            "events": json.dumps(world.events()),
            "configmaps": json.dumps(world.api.get(world.config_maps_path)),
            "operator log": world.operator.log(),
        }
        for where, text in haystacks.items():
            assert SECRET_VALUE not in text, f"the secret leaked into the {where}"
            assert ACCESS_KEY not in text, f"the access key id leaked into the {where}"
