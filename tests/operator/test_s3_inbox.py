"""The S3 inbox end to end at the handler tier: moto's S3 over real HTTP, kmock as the API server.

Each test drives the reconciler (what kopf calls) against a run with ``spec.inbox`` and asserts on what
the operator created, noted and reported. The operator's clock is the real one shifted by ``later()``,
because the store stamps its listings with real time; a poll is due ``pollSeconds`` after the last.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jsonschema
import kmock
import pytest
import yaml
from kube_world import BATCHES, JOBS, NS, RUN, RUNS, KubeWorld, run_body
from pydantic import ValidationError
from test_crds import ROOT, as_json_schema, schema_of
from tests.s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, free_port

from continual_operator.api import RUN_INFO, ContinualTrainingRun, InboxSpec, InboxStatus
from continual_operator.cluster.reconciler import Reconciler
from continual_operator.errors import KubernetesApiError
from continual_operator.inbox.decide import decide, inbox_batch_name
from continual_operator.inbox.store import InboxLister
from continual_trainer.config import ObjectStoreClientSpec
from continual_trainer.objectstore import Credentials, make_client

SECRETS = kmock.resource("", "v1", "secrets")
BUCKET = "inbox"
URI = f"s3://{BUCKET}/in/"
EXAMPLE = ROOT / "examples" / "s3-inbox"


class Clock:
    """The operator's clock: now, plus whatever the test lets pass."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def later(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)


@pytest.fixture
def world(kmock: kmock.KubernetesEmulator) -> KubeWorld:
    world = KubeWorld(kmock)
    kmock.resources[SECRETS] = kmock_info()
    return world


def kmock_info() -> Any:
    return kmock.ResourceInfo(kind="Secret", namespaced=True, verbs={"get", "create"})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def operator(world: KubeWorld, clock: Clock) -> AsyncIterator[Reconciler]:
    reconciler = Reconciler(world.storage(), clock=clock)
    yield reconciler
    await reconciler.close()
    reconciler.storage.close()


@pytest.fixture
def store(s3_server: S3Server) -> Iterator[S3Server]:
    s3_server.make_bucket(BUCKET)
    return s3_server


def secret(name: str = "s3-creds", **data: str) -> dict[str, Any]:
    values = data or {"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def seed(world: KubeWorld, endpoint_url: str, *, with_secret: bool = True, **inbox: Any) -> None:
    world.add(SECRETS, secret()) if with_secret else None
    world.add(
        RUNS,
        run_body(
            objectStore={
                "endpointURL": endpoint_url,
                "region": "us-east-1",
                "addressingStyle": "path",
                "credentialsSecretRef": {"name": "s3-creds"},
            },
            inbox={"uri": URI, "pollSeconds": 30, **inbox},
        ),
    )


def inbox_status(world: KubeWorld) -> dict[str, Any]:
    run = world.get(RUNS, RUN)
    assert run is not None
    return (run.get("status") or {}).get("inbox") or {}


def inbox_condition(world: KubeWorld) -> dict[str, Any]:
    run = world.get(RUNS, RUN)
    assert run is not None
    return next(c for c in run["status"]["conditions"] if c["type"] == "InboxReady")


def inbox_batches(world: KubeWorld) -> list[dict[str, Any]]:
    found = [world.get(BATCHES, n) for n in world.names(BATCHES)]
    return sorted((b for b in found if b is not None), key=lambda b: b["spec"]["order"])


def reasons(world: KubeWorld) -> list[str]:
    return [e["reason"] for e in world.events() if e["reason"].startswith("Inbox")]


async def poll(operator: Reconciler, clock: Clock, seconds: float = 31) -> None:
    clock.later(seconds)
    await operator.reconcile((NS, RUN))


# -- discovery, order, idempotency ---------------------------------------------------------------------
async def test_new_objects_become_batches_in_key_order_and_the_first_one_trains(
    world: KubeWorld, operator: Reconciler, clock: Clock, store: S3Server
) -> None:
    for key in ("in/2025-03-02.jsonl", "in/2025-03-01.jsonl", "in/_SUCCESS", "in/folder/"):
        store.put(BUCKET, key, b'{"text": "hello"}\n')
    seed(world, store.endpoint_url)
    await operator.reconcile((NS, RUN))

    batches = inbox_batches(world)
    assert [b["metadata"]["annotations"]["continual.dev/source-key"] for b in batches] == [
        "2025-03-01.jsonl",
        "2025-03-02.jsonl",
    ]
    first = batches[0]
    assert first["metadata"]["name"] == inbox_batch_name(RUN, "2025-03-01.jsonl")
    assert first["spec"] == {"runName": RUN, "order": 1, "data": {"uri": f"{URI}2025-03-01.jsonl"}}
    assert first["metadata"]["ownerReferences"][0]["uid"] == f"uid-run-{RUN}"
    annotations = first["metadata"]["annotations"]
    assert annotations["continual.dev/source-size"] == str(len(b'{"text": "hello"}\n'))
    assert annotations["continual.dev/source-etag"]
    assert inbox_status(world)["watermark"] == "2025-03-02.jsonl"
    assert inbox_condition(world)["status"] == "True"
    assert reasons(world) == ["InboxBatchesCreated"]
    # the planner saw the new batches in the same reconcile: the first one's Job exists
    assert [j for j in world.names(JOBS) if first["metadata"]["name"] in j]
    # ... and the poll's status and the plan's went to the run in one patch
    run_patches = [r for r in world.requests("PATCH", RUNS) if r.subresource == "status"]
    assert len(run_patches) == 1
    assert {"inbox", "phase", "currentJob"} <= set(run_patches[0].data["status"])
    # nothing of the credentials anywhere the operator wrote
    written = str(world.get(RUNS, RUN)) + str(world.events()) + str(batches)
    assert SECRET_ACCESS_KEY not in written
    assert ACCESS_KEY_ID not in written


async def test_restart_relisting_and_deleted_batches_never_re_ingest(
    world: KubeWorld, clock: Clock, store: S3Server
) -> None:
    store.put(BUCKET, "in/a.jsonl", b"a\n")
    store.put(BUCKET, "in/b.jsonl", b"b\n")
    await asyncio.sleep(1.1)  # the store's clock has second precision: the objects predate the first poll
    seed(world, store.endpoint_url)
    first = Reconciler(world.storage(), clock=clock)
    await first.reconcile((NS, RUN))
    await first.close()
    assert len(inbox_batches(world)) == 2

    # the batches trained and were deleted; a new operator process polls again, twice
    for name in world.names(BATCHES):
        world.server.objects[BATCHES, NS, name].delete()
    posts_before = len(world.requests("POST", BATCHES))
    second = Reconciler(world.storage(), clock=clock)
    await poll(second, clock)
    await poll(second, clock)
    await second.close()
    assert world.names(BATCHES) == []
    assert len(world.requests("POST", BATCHES)) == posts_before
    assert reasons(world) == ["InboxBatchesCreated"]  # no late, changed or deleted report


async def test_a_crash_between_create_and_watermark_creates_nothing_twice(
    world: KubeWorld, operator: Reconciler, clock: Clock, store: S3Server
) -> None:
    store.put(BUCKET, "in/a.jsonl", b"a\n")
    seed(world, store.endpoint_url)
    # the run's status patch (the watermark) fails once: the batch exists, the watermark does not move
    world.server["patch", RUNS][:1] << kmock.KubernetesError(status=503, reason="ServiceUnavailable")
    with pytest.raises(KubernetesApiError, match="503"):
        await operator.reconcile((NS, RUN))
    assert len(inbox_batches(world)) == 1
    run = world.get(RUNS, RUN)
    assert run is not None
    run["status"].pop("inbox")  # kmock stored the refused patch; a real API server would not have
    world.add(RUNS, run)
    await operator.reconcile((NS, RUN))
    assert len(inbox_batches(world)) == 1
    assert len(world.requests("POST", BATCHES)) == 1  # the batch was found: no second create
    assert inbox_status(world)["watermark"] == "a.jsonl"


async def test_a_multi_file_batch_is_taken_only_after_its_marker(
    world: KubeWorld, operator: Reconciler, clock: Clock, store: S3Server
) -> None:
    store.put(BUCKET, "in/day-1/part-0.jsonl", b"a\n")
    store.put(BUCKET, "in/day-1/part-1.jsonl", b"b\n")
    store.put(BUCKET, "in/day-2/part-0.jsonl", b"c\n")
    store.put(BUCKET, "in/day-2/_SUCCESS", b"")
    seed(world, store.endpoint_url, batchFrom="Prefix")
    await operator.reconcile((NS, RUN))
    assert inbox_batches(world) == []  # day-1 is incomplete, and day-2 may not go first

    store.put(BUCKET, "in/day-1/_SUCCESS", b"")
    await poll(operator, clock)
    batches = inbox_batches(world)
    assert [b["spec"]["data"]["uri"] for b in batches] == [f"{URI}day-1/", f"{URI}day-2/"]
    assert inbox_status(world)["watermark"] == "day-2/"


# -- below the watermark, changed, deleted ---------------------------------------------------------------
async def test_objects_below_the_watermark_changed_or_deleted_are_reported_not_trained(
    world: KubeWorld, operator: Reconciler, clock: Clock, store: S3Server
) -> None:
    store.put(BUCKET, "in/b.jsonl", b"b\n")
    store.put(BUCKET, "in/c.jsonl", b"c\n")
    seed(world, store.endpoint_url)
    await operator.reconcile((NS, RUN))
    assert len(inbox_batches(world)) == 2

    store.put(BUCKET, "in/a.jsonl", b"late\n")  # below the watermark c.jsonl
    store.put(BUCKET, "in/b.jsonl", b"other bytes\n")  # changed after ingestion
    store.client().delete_object(Bucket=BUCKET, Key="in/c.jsonl")  # deleted after ingestion
    await poll(operator, clock)
    await poll(operator, clock)  # each is reported once

    assert len(inbox_batches(world)) == 2
    warnings = {e["reason"]: e["message"] for e in world.events() if e["type"] == "Warning"}
    assert sorted(warnings) == ["InboxObjectBelowWatermark", "InboxObjectChanged", "InboxObjectDeleted"]
    assert reasons(world).count("InboxObjectBelowWatermark") == 1
    assert f"{URI}a.jsonl" in warnings["InboxObjectBelowWatermark"]
    assert "copy it to a key that sorts after 'c.jsonl'" in warnings["InboxObjectBelowWatermark"]
    assert "apply a TrainingBatch" in warnings["InboxObjectBelowWatermark"]
    changed = world.get(BATCHES, inbox_batch_name(RUN, "b.jsonl"))
    assert changed is not None
    assert changed["metadata"]["annotations"]["continual.dev/source-reported"].startswith("etag:")
    assert changed["spec"]["data"] == {"uri": f"{URI}b.jsonl"}  # the same batch, not retrained anew
    status = inbox_status(world)
    assert (status["lateObjects"], status["changedObjects"]) == (1, 2)


# -- the store unreachable: a condition, back-off, recovery ---------------------------------------------
async def test_missing_bucket_sets_the_condition_and_recovers_by_itself(
    world: KubeWorld, operator: Reconciler, clock: Clock, s3_server: S3Server
) -> None:
    seed(world, s3_server.endpoint_url)
    await operator.reconcile((NS, RUN))
    condition = inbox_condition(world)
    assert (condition["status"], condition["reason"]) == ("False", "NoSuchBucket")
    assert BUCKET in condition["message"]
    assert reasons(world) == ["InboxUnavailable"]
    assert inbox_status(world)["consecutiveFailures"] == 1
    await poll(operator, clock, 10)  # within the back-off: no new attempt
    assert inbox_status(world)["consecutiveFailures"] == 1

    s3_server.make_bucket(BUCKET)
    s3_server.put(BUCKET, "in/a.jsonl", b"a\n")
    await poll(operator, clock)
    assert inbox_condition(world)["status"] == "True"
    assert "InboxRecovered" in reasons(world)
    assert len(inbox_batches(world)) == 1


async def test_a_missing_credentials_secret_is_named_with_the_fix(
    world: KubeWorld, operator: Reconciler, store: S3Server
) -> None:
    seed(world, store.endpoint_url, with_secret=False)
    await operator.reconcile((NS, RUN))
    condition = inbox_condition(world)
    assert (condition["status"], condition["reason"]) == ("False", "CredentialsSecretUnavailable")
    assert "kubectl create secret generic s3-creds" in condition["message"]


async def test_endpoint_down_then_up(
    world: KubeWorld, operator: Reconciler, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # one try per poll: the poll's back-off is what is tested
    port = free_port()
    seed(world, f"http://127.0.0.1:{port}")
    await operator.reconcile((NS, RUN))
    condition = inbox_condition(world)
    assert (condition["status"], condition["reason"]) == ("False", "EndpointUnreachable")
    assert f"127.0.0.1:{port}" in condition["message"]

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        up = S3Server(endpoint_url=f"http://127.0.0.1:{port}")
        up.make_bucket(BUCKET)
        up.put(BUCKET, "in/a.jsonl", b"a\n")
        await poll(operator, clock)
        assert inbox_condition(world)["status"] == "True"
        assert len(inbox_batches(world)) == 1
    finally:
        server.stop()


# -- the example and the API ---------------------------------------------------------------------------
def test_the_s3_inbox_example_validates_against_the_generated_crd_and_the_models() -> None:
    manifest = yaml.safe_load((EXAMPLE / "run.yaml").read_text())
    jsonschema.Draft4Validator(as_json_schema(schema_of(RUN_INFO))).validate(manifest)
    run = ContinualTrainingRun.model_validate(manifest)
    assert run.spec.inbox is not None
    assert (run.spec.inbox.bucket, run.spec.inbox.prefix) == ("training-data", "support/")
    assert run.spec.object_store is not None
    assert run.spec.object_store.credentials_secret_ref is not None
    secret_manifest = yaml.safe_load((EXAMPLE / "secret.yaml").read_text())
    assert secret_manifest["metadata"]["name"] == run.spec.object_store.credentials_secret_ref.name


@pytest.mark.parametrize("uri", ["s3://bucket/prefix", "https://bucket/prefix/", "s3://Bucket/x/"])
def test_an_inbox_uri_must_be_an_s3_prefix(uri: str) -> None:
    manifest = yaml.safe_load((EXAMPLE / "run.yaml").read_text())
    manifest["spec"]["inbox"]["uri"] = uri
    errors = list(jsonschema.Draft4Validator(as_json_schema(schema_of(RUN_INFO))).iter_errors(manifest))
    assert errors
    with pytest.raises(ValidationError, match="inbox"):
        ContinualTrainingRun.model_validate(manifest)


# -- a long history: bounded requests and memory per poll ---------------------------------------------
def test_a_10000_object_inbox_is_listed_in_bounded_pages_and_memory(s3_server: S3Server) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    s3_server.make_bucket(BUCKET)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]  # seeded in-process; listed over HTTP below
    for i in range(10_000):
        backend.put_object(BUCKET, f"in/{i:06}.jsonl", b"x\n")
    client = make_client(
        ObjectStoreClientSpec.model_validate(s3_server.object_store()),
        credentials=Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY),
    )
    sent: list[str] = []
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))

    # a backlog: three pages of at most 1,000 for maxKeysPerPoll 2500, and nothing more
    spec = InboxSpec(uri=URI, max_keys_per_poll=2500)
    lister = InboxLister(client, spec)
    listing = lister.poll(None)
    # memory: what a poll holds is its units (at most maxKeysPerPoll) and one page of at most 1,000 keys
    assert (len(listing.units), listing.backlog, len(sent)) == (2500, True, 3)
    assert [next(p for p in url.split("?")[1].split("&") if p.startswith("max-keys")) for url in sent] == [
        "max-keys=1000",
        "max-keys=1000",
        "max-keys=500",
    ]
    decision = decide(RUN, spec, None, listing, [])
    assert decision.status.watermark == "002499.jsonl"

    # deep in the history, a poll still costs one forward page and one audit page
    sent.clear()
    later = InboxStatus(watermark="009499.jsonl", audit_cursor="004999.jsonl")
    listing = InboxLister(client, InboxSpec(uri=URI)).poll(later)
    assert len(sent) == 2
    assert "start-after=in%2F009499.jsonl" in sent[0]
    assert [u.key for u in listing.units][:1] == ["009500.jsonl"]
    assert (len(listing.units), listing.backlog) == (500, False)
    assert listing.audit is not None
    assert len(listing.audit.objects) == 1000


async def test_a_ca_bundle_secret_is_used_when_there_and_named_when_missing(
    world: KubeWorld, operator: Reconciler, clock: Clock, store: S3Server
) -> None:
    store.put(BUCKET, "in/a.jsonl", b"a\n")
    seed(world, store.endpoint_url)
    run = world.get(RUNS, RUN)
    assert run is not None
    run["spec"]["objectStore"]["caBundleSecretRef"] = {"name": "store-ca"}
    world.add(RUNS, run)
    await operator.reconcile((NS, RUN))
    condition = inbox_condition(world)
    assert (condition["status"], condition["reason"]) == ("False", "CredentialsSecretUnavailable")
    assert "caBundleSecretRef" in condition["message"]
    assert "kubectl create secret generic store-ca --from-file=ca.crt=" in condition["message"]

    # with the bundle (any PEM: the endpoint is plain HTTP here) the client is built and the poll works
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    world.add(SECRETS, {**secret("store-ca"), "data": {"ca.crt": base64.b64encode(pem.encode()).decode()}})
    await poll(operator, clock)
    assert inbox_condition(world)["status"] == "True"
    assert len(inbox_batches(world)) == 1


async def test_a_refused_batch_create_keeps_the_watermark_and_the_run_reconciling(
    world: KubeWorld, operator: Reconciler, clock: Clock, store: S3Server
) -> None:
    store.put(BUCKET, "in/a.jsonl", b"a\n")
    seed(world, store.endpoint_url)
    world.server["post", BATCHES][:1] << kmock.KubernetesError(status=403, reason="Forbidden")
    await operator.reconcile((NS, RUN))  # no exception: the planner still ran for the run
    condition = inbox_condition(world)
    assert (condition["status"], condition["reason"]) == ("False", "BatchCreateFailed")
    assert "create trainingbatches.continual.dev" in condition["message"]
    assert inbox_status(world).get("watermark") is None
    world.unstore(BATCHES, inbox_batch_name(RUN, "a.jsonl"))  # kmock stored the refused object
    await poll(operator, clock)
    assert inbox_condition(world)["status"] == "True"
    assert inbox_status(world)["watermark"] == "a.jsonl"
    assert len(inbox_batches(world)) == 1
