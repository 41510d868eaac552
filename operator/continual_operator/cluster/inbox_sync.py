"""Poll a run's S3 inbox and carry the decision out: the I/O shell around :mod:`.decide`.

Called by the reconciler at the start of a run's reconcile (the batches it creates are then planned in
the same reconcile). A poll happens only when one is due: ``pollSeconds`` after the last one, or after
the back-off of a failed one (``pollSeconds`` doubled per failure in a row, capped at ten minutes or
``pollSeconds``); the reconciler requeues the run for the next one.

The order of the writes is what makes the inbox exactly-once:

1. create the new TrainingBatches (deterministic names; 409 AlreadyExists is success),
2. note reported source changes on existing batches (an annotation, so each is reported once),
3. post the Events,
4. patch ``status.inbox`` (the watermark) and the ``InboxReady`` condition.

3 and 4 are the reconciler's: it applies them with the plan it makes next (:class:`InboxPoll`), so that a
reconcile patches the run's status once, not once for the poll and once for the plan. A crash or an
error anywhere before 4 repeats the same poll from the old watermark, which re-creates the same names
(409) and re-notes the same notes; a crash after 4 has lost nothing. The store's credentials come from the
Secret in ``spec.objectStore.credentialsSecretRef`` (read with ``get``; the values live in memory for one
poll, and are never logged, stored or put into an Event); without one, boto3's default chain applies
(IRSA, instance roles, the operator's environment).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continual_operator.api import ContinualTrainingRun, InboxSpec, InboxStatus
from continual_operator.api.meta import ConditionStatus
from continual_operator.cluster.k8s import BATCHES, KubernetesStorage
from continual_operator.errors import KubernetesApiError
from continual_operator.inbox.decide import (
    ANNOTATION_SOURCE_REPORTED,
    Ingested,
    batch_manifest,
    decide,
    failed,
    retry_seconds,
)
from continual_operator.inbox.store import InboxLister, InboxStoreError
from continual_operator.planning.actions import Action, EmitEvent, EventType, UpdateRunStatus
from continual_operator.planning.status import parse_time, rfc3339, set_condition, wire
from continual_trainer.config import ObjectStoreClientSpec
from continual_trainer.objectstore import Credentials, make_client

logger = logging.getLogger(__name__)

CONDITION = "InboxReady"
#: The next poll comes this soon when a poll stopped at maxKeysPerPoll with keys left.
BACKLOG_DELAY_SECONDS = 1.0
#: The InboxReady condition's (status, reason, message).
Condition3 = tuple[ConditionStatus, str, str]
#: Builds a boto3 S3 client (tests and benchmarks count or redirect requests through it).
ClientFactory = Callable[[ObjectStoreClientSpec | None, Credentials | None], Any]


def default_client(spec: ObjectStoreClientSpec | None, credentials: Credentials | None) -> Any:
    """:func:`continual_trainer.objectstore.make_client`: bounded timeouts, botocore retries."""
    return make_client(spec, credentials=credentials)


class InboxCredentialsError(Exception):
    """The credentials Secret of ``spec.objectStore`` is missing or lacks a key."""


@dataclass(frozen=True)
class InboxPoll:
    """The outcome of :meth:`InboxSync.sync`: the run with its new status, and when to poll next.

    ``actions``: the poll's Events and its run status patch, not applied yet: the reconciler applies them
    with its plan, so that the run's status is patched once per reconcile (the planner's patch is made
    from ``run``, which already holds the poll's status).
    """

    run: ContinualTrainingRun
    next_poll_seconds: float | None
    created: tuple[str, ...] = ()
    actions: tuple[Action, ...] = ()


def due_in(spec: InboxSpec, status: InboxStatus | None, now: dt.datetime) -> float:
    """Seconds until the next poll is due (0 or less: now)."""
    last = parse_time(status.last_poll_time) if status is not None else None
    if last is None:
        return 0.0
    failures = (status.consecutive_failures or 0) if status is not None else 0
    delay = retry_seconds(spec, failures) if failures else float(spec.poll_seconds)
    return (last + dt.timedelta(seconds=delay) - now).total_seconds()


#: ``(namespace, run) -> the run's TrainingBatches as stored``.
BatchReader = Callable[[str, str], Awaitable[list[dict[str, Any]]]]


class InboxSync:
    """Polls the inboxes of runs (one poll per call, when due)."""

    def __init__(
        self,
        storage: KubernetesStorage,
        *,
        client_factory: ClientFactory = default_client,
        batches: BatchReader | None = None,
    ) -> None:
        self.storage = storage
        self.client_factory = client_factory
        #: How the run's batches are read (the reconciler's watch-fed view; None: listed afresh).
        self.batches: BatchReader = batches if batches is not None else storage.list_batches
        #: S3 requests made by this process's polls (for metrics and benchmarks).
        self.requests = 0

    async def sync(self, run: ContinualTrainingRun, *, now: dt.datetime) -> InboxPoll:
        """Poll the run's inbox if a poll is due; the run as it is afterwards."""
        spec = run.spec.inbox
        if spec is None:
            return InboxPoll(run, None)
        old = run.status.inbox
        wait = due_in(spec, old, now)
        if wait > 0:
            return InboxPoll(run, wait)
        namespace, name = run.metadata.namespace or "default", run.metadata.name
        created: list[str] = []
        try:
            credentials = await self._credentials(run)
            with tempfile.TemporaryDirectory(prefix="inbox-ca-") as scratch:
                client_spec = await self._client_spec(run, Path(scratch))
                client = await asyncio.to_thread(self.client_factory, client_spec, credentials)
            lister = InboxLister(client, spec, secrets=credentials.secrets() if credentials else [])
            try:
                listing = await asyncio.to_thread(lister.poll, old)
                batches = await self.batches(namespace, name)
                records = [r for b in batches if (r := _ingested(b)) is not None]
                decision = decide(name, spec, old, listing, records, now=now)
                confirmed = await asyncio.to_thread(lister.confirm, decision.create)
            finally:
                self.requests += lister.requests
            for batch in confirmed:
                manifest = batch_manifest(
                    namespace=namespace, run=name, run_uid=run.metadata.uid, batch=batch
                )
                if await self.storage.create(manifest):
                    created.append(batch.name)
            for note in decision.notes:
                await self.storage.patch_metadata(
                    BATCHES,
                    namespace,
                    note.batch,
                    {"annotations": {ANNOTATION_SOURCE_REPORTED: note.reported}},
                )
            status = decision.status.model_copy(
                # objects deleted between the listing and their create are not batches
                update={
                    "batches_created": (decision.status.batches_created or 0)
                    - len(decision.create)
                    + len(confirmed)
                }
            )
            events = list(decision.events)
            watermark = status.watermark or "(none yet)"
            condition: Condition3 = (
                "True",
                "Polling",
                f"{spec.uri} is listed every {spec.poll_seconds}s; watermark: {watermark}",
            )
            if old is not None and old.consecutive_failures:
                events.append(_event(name, "Normal", "InboxRecovered", f"{spec.uri} can be listed again"))
            delay = BACKLOG_DELAY_SECONDS if decision.backlog else float(spec.poll_seconds)
        except (InboxStoreError, InboxCredentialsError, KubernetesApiError) as error:
            # A failed create (RBAC, quota, a webhook) leaves the watermark where it was: the next poll
            # creates the same names again. The run's own reconcile goes on: queued batches still train.
            message = str(error)
            status = failed(old, message).model_copy(update={"last_poll_time": rfc3339(now)})
            reason = (
                error.reason
                if isinstance(error, InboxStoreError)
                else "BatchCreateFailed"
                if isinstance(error, KubernetesApiError)
                else "CredentialsSecretUnavailable"
            )
            condition = ("False", reason, message)
            delay = retry_seconds(spec, status.consecutive_failures or 1)
            events = []
            if old is None or old.last_error != message:
                events.append(
                    _event(name, "Warning", "InboxUnavailable", f"{message} (retried in {delay:.0f}s)")
                )
        conditions = set_condition(
            run.status.conditions, CONDITION, *condition, generation=run.metadata.generation, now=now
        )
        patch = {"inbox": wire(status), "conditions": [wire(c) for c in conditions]}
        new_run = run.model_copy(
            update={"status": run.status.model_copy(update={"inbox": status, "conditions": conditions})}
        )
        return InboxPoll(new_run, delay, tuple(created), (*events, UpdateRunStatus(patch)))

    async def _client_spec(self, run: ContinualTrainingRun, scratch: Path) -> ObjectStoreClientSpec | None:
        """The trainer's client settings for the operator; a CA bundle Secret is written to ``scratch``.

        botocore reads the bundle when the client is built, so the file may go right after.
        """
        store = run.spec.object_store
        if store is None:
            return None
        ca_path: str | None = None
        if (ref := store.ca_bundle_secret_ref) is not None:
            namespace = run.metadata.namespace or "default"
            secret = await self.storage.get_secret(namespace, ref.name)
            data = (secret or {}).get("data") or {}
            if ref.key not in data:
                raise InboxCredentialsError(
                    f"the Secret {namespace}/{ref.name} named by spec.objectStore.caBundleSecretRef does not "
                    f"exist or has no key {ref.key!r}: create it (kubectl create secret generic {ref.name} "
                    f"--from-file={ref.key}=ca.pem)"
                )
            path = scratch / "ca.pem"
            path.write_bytes(base64.b64decode(data[ref.key]))
            ca_path = str(path)
        return ObjectStoreClientSpec(
            endpoint_url=store.endpoint_url,
            region=store.region,
            addressing_style=store.addressing_style,
            ca_bundle_path=ca_path,
        )

    async def _credentials(self, run: ContinualTrainingRun) -> Credentials | None:
        store = run.spec.object_store
        ref = store.credentials_secret_ref if store is not None else None
        if ref is None:
            return None
        namespace = run.metadata.namespace or "default"
        try:
            secret = await self.storage.get_secret(namespace, ref.name)
        except KubernetesApiError as error:
            raise InboxCredentialsError(
                f"the Secret {namespace}/{ref.name} of spec.objectStore.credentialsSecretRef could not be read: "
                f"{error}"
            ) from None
        if secret is None:
            raise InboxCredentialsError(
                f"the Secret {namespace}/{ref.name} named by spec.objectStore.credentialsSecretRef does not "
                f"exist: create it (kubectl create secret generic {ref.name} --from-literal="
                f"{ref.access_key_id_key}=... --from-literal={ref.secret_access_key_key}=...)"
            )
        data: Mapping[str, str] = secret.get("data") or {}

        def value(key: str | None, *, required: bool) -> str | None:
            if key is None:
                return None
            if key not in data:
                if required:
                    raise InboxCredentialsError(
                        f"the Secret {namespace}/{ref.name} has no key {key!r} "
                        "(spec.objectStore.credentialsSecretRef names it): add it, or name the key it has"
                    )
                return None
            return base64.b64decode(data[key]).decode()

        access = value(ref.access_key_id_key, required=True)
        secret_key = value(ref.secret_access_key_key, required=True)
        token = value(ref.session_token_key, required=False)
        assert access is not None
        assert secret_key is not None
        return Credentials(access, secret_key, token)


def _ingested(raw: Mapping[str, Any]) -> Ingested | None:
    meta = raw.get("metadata") or {}
    return Ingested.from_annotations(str(meta.get("name")), meta.get("annotations") or {})


def _event(run: str, type_: EventType, reason: str, message: str) -> EmitEvent:
    return EmitEvent("ContinualTrainingRun", run, type_, reason, message)
