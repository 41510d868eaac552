"""Progress sinks: where the trainer says how far it got.

Every sink receives the same :class:`~continual_trainer.records.ProgressEvent`. Sinks never fail training:
a sink that raises is logged and training goes on (progress is advisory; the ledger and the checkpoints are
the truth).

* :class:`StdoutSink` -- JSON lines on standard output (``kubectl logs``, local mode);
* :class:`StatusFileSink` -- ``status.json`` on the run's volume, replaced atomically;
* :class:`KubernetesStatusSink` -- merge-patches the run's custom-resource status (inside a Job, through
  a ServiceAccount allowed to patch only that one object's status);
* :class:`~continual_trainer.history.HistorySink` -- ``history.jsonl`` on the volume: every event,
  appended, for the training curve (``continual-training report``); see :mod:`continual_trainer.history`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from continual_trainer.config import KubernetesProgressSpec
from continual_trainer.fsutil import atomic_write_json
from continual_trainer.records import ProgressEvent

log = logging.getLogger(__name__)


class ProgressSink(Protocol):
    """Receives progress events."""

    def emit(self, event: ProgressEvent) -> None:
        """Handle one event (may be throttled)."""
        ...


class StdoutSink:
    """One JSON object per line on standard output."""

    def emit(self, event: ProgressEvent) -> None:
        """Print the event."""
        sys.stdout.write(event.model_dump_json(by_alias=True, exclude_none=True) + "\n")
        sys.stdout.flush()


class StatusFileSink:
    """``status.json`` on the volume: the latest event, plus the batch it belongs to.

    Boundary events (checkpoint, batch-finished) carry no learning rate, and only the batch mean as loss:
    the file keeps the last loss and learning rate a progress event reported, so that whoever reads it
    only now and then (local mode mirrors it into the run's status) still sees them, as the merge-patched
    custom-resource status does in a cluster.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._loss: float | None = None
        self._learning_rate: float | None = None

    def emit(self, event: ProgressEvent) -> None:
        """Replace the status file."""
        if event.kind == "progress":
            self._loss = event.loss if event.loss is not None else self._loss
            self._learning_rate = (
                event.learning_rate if event.learning_rate is not None else self._learning_rate
            )
        filled = {
            "loss": event.loss if event.loss is not None else self._loss,
            "learning_rate": event.learning_rate if event.learning_rate is not None else self._learning_rate,
        }
        data = event.model_copy(update=filled).model_dump(mode="json", by_alias=True, exclude_none=True)
        data["batchProgress"] = round(event.batch_progress, 6)
        atomic_write_json(self.path, data)


def status_patch(event: ProgressEvent) -> dict[str, Any]:
    """The custom-resource status fields the trainer owns while it trains."""
    status: dict[str, Any] = {
        "globalStep": event.global_step,
        "currentBatch": event.batch_id,
        "currentBatchProgress": round(event.batch_progress, 4),
        "lastProgressTime": event.time,
    }
    if event.latest_checkpoint is not None:
        status["latestCheckpoint"] = event.latest_checkpoint
    if event.loss is not None:
        # 5 significant digits, as the operator writes losses (kubectl prints what is stored).
        status["lastLoss"] = float(f"{event.loss:.5g}")
    if event.learning_rate is not None:
        status["lastLearningRate"] = event.learning_rate
    return {"status": status}


class KubernetesStatusSink:
    """Merge-patches ``status`` of the run's custom resource, at most every ``min_interval_seconds``.

    Checkpoint and batch boundary events are always sent; plain progress is throttled so that a fast
    trainer does not flood the API server.
    """

    def __init__(self, spec: KubernetesProgressSpec, api: Any | None = None) -> None:
        self.spec = spec
        self._api = api
        self._last_sent = float("-inf")  # the first event always goes out

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            self._api = client.CustomObjectsApi()
        return self._api

    def emit(self, event: ProgressEvent) -> None:
        """Patch the status (throttled)."""
        now = time.monotonic()
        if event.kind == "progress" and now - self._last_sent < self.spec.min_interval_seconds:
            return
        self._client().patch_namespaced_custom_object_status(
            self.spec.group,
            self.spec.version,
            self.spec.namespace,
            self.spec.plural,
            self.spec.name,
            status_patch(event),
        )
        self._last_sent = now


class Broadcast:
    """Fans an event out to several sinks; a failing sink is logged, never fatal."""

    def __init__(self, sinks: Sequence[ProgressSink]) -> None:
        self.sinks = list(sinks)

    def emit(self, event: ProgressEvent) -> None:
        """Send to every sink."""
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception as exc:
                log.warning("progress sink %s failed: %s", type(sink).__name__, exc)


def read_status(path: Path) -> dict[str, Any] | None:
    """Read a status file written by :class:`StatusFileSink` (None when absent)."""
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
