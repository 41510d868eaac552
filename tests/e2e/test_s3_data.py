"""A batch whose data is an S3 URI, end to end on a real control plane: run with ``spec.objectStore`` and a
credentials Secret, a TrainingBatch with ``data.uri`` on a moto server on 127.0.0.1 -> Job -> trained.

The trainer pod gets the access keys only as environment variables from the Secret (the pod runner resolves
``secretKeyRef`` as a kubelet does); the secret value appears nowhere else: not in the run's or the batch's
status, the Events, the ConfigMaps, the trainer's log or the operator's log.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from tests.s3server import S3Server

from .operator_world import DEMO_DATA, World, prepare_volume, run_manifest

pytestmark = pytest.mark.e2e

TRAINING_TIMEOUT = 180
#: Not moto's business (it accepts any keys), but what the test greps everything for.
SECRET_VALUE = "e2e-s3-secret-7f1d9c2b5a"  # noqa: S105 - a fake value for a fake server
ACCESS_KEY = "AKIAE2ES3DATA0000001"


def test_a_uri_batch_trains_from_s3_with_credentials_from_a_secret_that_leak_nowhere(
    world: World, s3_server: S3Server, tiny_model: Path
) -> None:
    run, claim, batch = "s3-run", "s3-volume", "day-001"
    data = (DEMO_DATA / "batch-001.jsonl").read_bytes()
    s3_server.make_bucket("training")
    s3_server.put("training", "days/001/part-0000.jsonl", data)

    world.create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }
    )
    run_folder = prepare_volume(world.pod_runner.claim_path(claim), tiny_model, f"runs/{run}")
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

    with world.explained():
        world.create(run_manifest(run, {"existingClaim": claim, "subPath": f"runs/{run}"}, objectStore=store))
        world.create(
            {
                "apiVersion": "continual.dev/v1alpha1",
                "kind": "TrainingBatch",
                "metadata": {"name": batch},
                "spec": {
                    "runName": run,
                    "data": {"uri": "s3://training/days/001/", "sha256": _listing_sha256(data)},
                },
            }
        )
        done = world.wait_batch_phase(batch, "Succeeded", timeout=TRAINING_TIMEOUT)
        got = done["status"]
        assert (got["startStep"], got["endStep"], got["attempts"]) == (0, 6, 1), got
        final = world.wait_run(run, lambda r: (r.get("status") or {}).get("completedStep") == 6, "step 6")

        # The Job's container got references, never values.
        (job,) = world.jobs(run)
        env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "store-creds",
            "key": "AWS_SECRET_ACCESS_KEY",
        }
        assert not (run_folder / "cache" / batch).exists()  # deleted at the batch end (no keepCache)

        # Grep everything a user or a log shipper sees for the secret (and its base64 form).
        processes = world.pod_runner.processes()
        assert processes, "no trainer process ran"
        haystacks = {
            "run": json.dumps(final),
            "batch": json.dumps(world.batch(batch)),
            "events": json.dumps(world.events()),
            "configmaps": json.dumps(world.api.get(world.config_maps_path)),
            "trainer logs": "".join(p.log() for p in processes),
            "operator log": world.operator.log(),
            "volume": "".join(
                p.read_text(errors="replace")
                for p in run_folder.rglob("*")
                if p.is_file() and p.suffix == ".json"
            ),
        }
        encoded = base64.b64encode(SECRET_VALUE.encode()).decode()
        for where, text in haystacks.items():
            assert SECRET_VALUE not in text, f"the secret leaked into the {where}"
            assert encoded not in text, f"the secret (base64) leaked into the {where}"
            assert ACCESS_KEY not in text, f"the access key id leaked into the {where}"


def _listing_sha256(data: bytes) -> str:
    line = f"part-0000.jsonl\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\n"
    return hashlib.sha256(line.encode()).hexdigest()
