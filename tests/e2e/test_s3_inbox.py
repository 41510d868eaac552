"""A run fed from an S3 inbox, end to end on a real control plane: objects put -> batches -> Jobs -> steps.

moto's S3 (ThreadedMotoServer on 127.0.0.1, over HTTP as MinIO would be) holds the inbox; the operator
runs with the chart's RBAC (which must let it create TrainingBatches and get the credentials Secret) and
lists it with the Secret's keys; the pod runner runs the real trainer, which reads each batch from S3
with the same Secret given as environment. The secret values must appear nowhere a user or another
tenant could read them: statuses, Events, ConfigMaps, batch annotations, the operator's log, pod logs.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from tests.s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server

from continual_operator.inbox.decide import inbox_batch_name

from .operator_world import (
    DEMO_BATCHES,
    DEMO_DATA,
    World,
    condition,
    prepare_volume,
    pvc_manifest,
    run_manifest,
    status,
)
from .test_operator import TRAINING_TIMEOUT

pytestmark = pytest.mark.e2e

BUCKET = "e2e-inbox"


def test_objects_put_in_the_inbox_train_in_key_order_and_the_credentials_leak_nowhere(
    world: World, tiny_model: Path, s3_server: S3Server
) -> None:
    run, claim, secret = "fed-from-s3", "inbox-volume", "inbox-credentials"
    s3_server.make_bucket(BUCKET)
    world.create(pvc_manifest(claim))
    prepare_volume(world.pod_runner.claim_path(claim), tiny_model, f"runs/{run}")
    world.api.create(
        f"/api/v1/namespaces/{world.namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret},
            "data": {
                "AWS_ACCESS_KEY_ID": base64.b64encode(ACCESS_KEY_ID.encode()).decode(),
                "AWS_SECRET_ACCESS_KEY": base64.b64encode(SECRET_ACCESS_KEY.encode()).decode(),
            },
        },
    )
    # The first two objects are there before the run; the third arrives while the first one trains.
    for _, data_file in DEMO_BATCHES[:2]:
        s3_server.put(BUCKET, f"support/{data_file}", (DEMO_DATA / data_file).read_bytes())

    with world.explained():
        world.create(
            run_manifest(
                run,
                {"existingClaim": claim, "subPath": f"runs/{run}"},
                objectStore={**s3_server.object_store(), "credentialsSecretRef": {"name": secret}},
                inbox={"uri": f"s3://{BUCKET}/support/", "pollSeconds": 2},
            )
        )
        names = [inbox_batch_name(run, data_file) for _, data_file in DEMO_BATCHES]
        world.wait_batch_phase(names[0], "Training", timeout=TRAINING_TIMEOUT)
        last = DEMO_BATCHES[2][1]
        s3_server.put(BUCKET, f"support/{last}", (DEMO_DATA / last).read_bytes())

        final = world.wait_run(
            run,
            lambda r: status(r).get("phase") == "Idle" and status(r).get("batchesCompleted") == 3,
            "Idle with 3 batches completed",
            timeout=TRAINING_TIMEOUT * 3,
        )
        # key order, contiguous steps: the same ranges as the demo batches applied by hand
        ranges = [(status(world.batch(n))["startStep"], status(world.batch(n))["endStep"]) for n in names]
        assert ranges == [(0, 6), (6, 12), (12, 18)]
        for name, (_, data_file) in zip(names, DEMO_BATCHES, strict=True):
            batch = world.batch(name)
            assert batch["spec"]["data"]["uri"] == f"s3://{BUCKET}/support/{data_file}"
            assert batch["metadata"]["annotations"]["continual.dev/source-key"] == data_file
            assert batch["metadata"]["ownerReferences"][0]["name"] == run
        inbox = status(final)["inbox"]
        assert (inbox["watermark"], inbox["batchesCreated"]) == (last, 3)
        assert condition(final, "InboxReady")["status"] == "True"
        assert status(final)["globalStep"] == 18

        # the trainer pods got the credentials from the Secret, as environment, and nothing else did
        job = world.jobs(run)[0]
        env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_SECRET_ACCESS_KEY"}},
        } in env
        readable = [
            json.dumps(world.run(run)),
            json.dumps([world.batch(n) for n in names]),
            json.dumps(world.events()),
            json.dumps(world.config_maps(run)),
            json.dumps(world.jobs(run)),
            world.operator.log_path.read_text(),
        ]
        readable += [process.log() for process in world.pod_runner.processes()]
        for text in readable:
            assert SECRET_ACCESS_KEY not in text
            assert ACCESS_KEY_ID not in text
