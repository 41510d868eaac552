"""Prometheus metrics of the operator: what it reconciles, what it starts, how batches end.

One :class:`Metrics` object per operator process, with a registry of its own (not the client library's
global one): the endpoint shows exactly these series, and tests make as many as they like.

* ``continual_reconciles_total{result}``: reconciles by result (``ok``; ``superseded``: it gave way to a
  newer reconcile of the run before its first write; ``invalid``: the spec or a built object was
  refused; ``error``: an API call failed and the run is retried);
* ``continual_reconcile_duration_seconds``: how long a reconcile takes, API calls included;
* ``continual_jobs_created_total``: trainer Jobs created (a 409 on a repeated create does not count);
* ``continual_batch_outcomes_total{outcome,reason}``: how attempts ended, as recorded in batch statuses:
  Succeeded, Failed (for good), Retried (after a failure, with back-off) or Preempted, by reason;
* ``continual_runs{phase}``: runs known to this operator, by the phase its last reconcile left them in.

Training-level series, labelled ``namespace`` and ``run`` only, are computed at scrape time from the last
run and batch statuses a reconcile (or local mode) saw (:meth:`Metrics.observe_run`): no API call is made
for a scrape, and a deleted run's series go away with :meth:`Metrics.forget`. Two histograms are fed from
batch transitions (:meth:`Metrics.batch_changed`): how long a batch trained (first Job to Succeeded) and
how long it waited in the queue (created to first Job). docs/observability.md lists every series.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from continual_operator.api import ContinualTrainingRun, ContinualTrainingRunStatus, TrainingBatch
from continual_operator.planning.status import parse_time

RunKey = tuple[str, str]
_Resource = TypeVar("_Resource", ContinualTrainingRun, TrainingBatch)
RUN_LABELS = ["namespace", "run"]
BATCH_PHASES = ("Queued", "Training", "Succeeded", "Failed")
#: Batches train for minutes to hours; they wait in the queue for seconds to days.
DURATION_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
WAIT_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 604800.0)


def _time(value: str | dt.datetime | None) -> dt.datetime | None:
    """A status timestamp (RFC 3339) or ``metadata.creationTimestamp`` as an aware datetime."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return parse_time(value)


def patched(obj: _Resource, patch: Mapping[str, Any] | None) -> _Resource:
    """A run or batch with a merge patch (camelCase keys, None deletes) applied to its status."""
    if not patch:
        return obj
    current = obj.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key, value in patch.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    return obj.model_copy(update={"status": type(obj.status).model_validate(current)})


@dataclass(frozen=True)
class RunSnapshot:
    """What a scrape shows of one run: taken from its status and its batches' statuses."""

    global_step: int | None = None
    last_loss: float | None = None
    last_learning_rate: float | None = None
    tokens: int = 0
    samples: int = 0
    batches: dict[str, int] = field(default_factory=dict)
    oldest_queued: dt.datetime | None = None
    last_checkpoint: dt.datetime | None = None
    last_progress: dt.datetime | None = None
    degraded: bool = False

    @classmethod
    def of(cls, run: ContinualTrainingRun, batches: Iterable[TrainingBatch]) -> RunSnapshot:
        """Sum the batch results; the oldest queued batch; the newest batch-end checkpoint."""
        counts = dict.fromkeys(BATCH_PHASES, 0)
        tokens = samples = 0
        queued: list[dt.datetime] = []
        ended: list[dt.datetime] = []
        for batch in batches:
            status = batch.status
            counts[status.phase or "Queued"] = counts.get(status.phase or "Queued", 0) + 1
            if status.phase == "Succeeded":
                tokens += status.tokens or 0
                samples += status.samples or 0
                if (when := _time(status.last_transition_time)) is not None:
                    ended.append(when)
            elif status.phase in (None, "Queued") and (created := _time(batch.metadata.creation_timestamp)):
                queued.append(created)
        s = run.status
        return cls(
            global_step=s.global_step,
            last_loss=s.last_loss,
            last_learning_rate=s.last_learning_rate,
            tokens=tokens,
            samples=samples,
            batches=counts,
            oldest_queued=min(queued, default=None),
            last_checkpoint=max(ended, default=None),
            last_progress=_time(s.last_progress_time),
            degraded=any(c.type == "Degraded" and c.status == "True" for c in s.conditions),
        )


def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    return {
        "step": gauge("continual_run_global_step", "Global optimizer step of the run.", labels=RUN_LABELS),
        "tokens": counter(
            "continual_run_trained_tokens",
            "Tokens trained by the run's succeeded batches.",
            labels=RUN_LABELS,
        ),
        "samples": counter(
            "continual_run_trained_samples",
            "Samples trained by the run's succeeded batches.",
            labels=RUN_LABELS,
        ),
        "loss": gauge(
            "continual_run_last_loss", "The most recent training loss reported.", labels=RUN_LABELS
        ),
        "lr": gauge("continual_run_learning_rate", "The most recent learning rate.", labels=RUN_LABELS),
        "batches": gauge(
            "continual_run_batches", "Batches of the run by phase.", labels=[*RUN_LABELS, "phase"]
        ),
        "oldest": gauge(
            "continual_run_oldest_queued_batch_age_seconds",
            "Age of the oldest batch waiting to be trained (0: none waits).",
            labels=RUN_LABELS,
        ),
        "checkpoint": gauge(
            "continual_run_seconds_since_last_checkpoint",
            "Seconds since the newest batch-end checkpoint (a batch Succeeded).",
            labels=RUN_LABELS,
        ),
        "progress": gauge(
            "continual_run_seconds_since_last_progress",
            "Seconds since the trainer last reported progress (status.lastProgressTime).",
            labels=RUN_LABELS,
        ),
        "degraded": gauge(
            "continual_run_degraded",
            "1 while the run's Degraded condition is True, else 0.",
            labels=RUN_LABELS,
        ),
    }


class _RunStats(Collector):
    """The per-run training series, computed at scrape time from the last snapshot of every run."""

    def __init__(self, snapshots: dict[RunKey, RunSnapshot], clock: Callable[[], dt.datetime]) -> None:
        self._snapshots = snapshots
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        families = _families()
        now = self._clock()
        for key, snap in sorted(self._snapshots.copy().items()):
            labels = list(key)
            for name, value in (
                ("step", snap.global_step),
                ("loss", snap.last_loss),
                ("lr", snap.last_learning_rate),
            ):
                if value is not None:
                    families[name].add_metric(labels, value)
            families["tokens"].add_metric(labels, snap.tokens)
            families["samples"].add_metric(labels, snap.samples)
            for phase, count in sorted(snap.batches.items()):
                families["batches"].add_metric([*labels, phase], count)
            oldest = snap.oldest_queued
            families["oldest"].add_metric(labels, max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
            for name, when in (("checkpoint", snap.last_checkpoint), ("progress", snap.last_progress)):
                if when is not None:
                    families[name].add_metric(labels, max(0.0, (now - when).total_seconds()))
            families["degraded"].add_metric(labels, 1.0 if snap.degraded else 0.0)
        yield from families.values()


class _RunPhases(Collector):
    """``continual_runs{phase}`` computed at scrape time from the last phase of every run."""

    def __init__(self, phases: dict[RunKey, str]) -> None:
        self._phases = phases

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("continual_runs", "Runs by phase.", labels=["phase"])
        counts: dict[str, int] = {}
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in sorted(counts.items()):
            family.add_metric([phase], count)
        yield family


class Metrics:
    """The operator's metrics and the registry that serves them."""

    def __init__(self, clock: Callable[[], dt.datetime] | None = None) -> None:
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "continual_reconciles", "Reconciles of a run, by result.", ["result"], registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "continual_reconcile_duration_seconds", "Duration of one reconcile.", registry=self.registry
        )
        self.jobs_created = Counter("continual_jobs_created", "Trainer Jobs created.", registry=self.registry)
        self.batch_outcomes = Counter(
            "continual_batch_outcomes",
            "Ends of batch attempts: Succeeded, Failed, Retried or Preempted, and why.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.batch_duration = Histogram(
            "continual_batch_duration_seconds",
            "How long a batch took from its first Job to Succeeded (retries included).",
            RUN_LABELS,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "continual_batch_queue_wait_seconds",
            "How long a batch waited from its creation to its first Job.",
            RUN_LABELS,
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self._phases: dict[RunKey, str] = {}
        self._snapshots: dict[RunKey, RunSnapshot] = {}
        self.registry.register(_RunPhases(self._phases))
        self.registry.register(_RunStats(self._snapshots, self._clock))

    def observe_run(self, key: RunKey, run: ContinualTrainingRun, batches: Iterable[TrainingBatch]) -> None:
        """Remember what the scrape shows of a run: its status and its batches' statuses."""
        self._snapshots[key] = RunSnapshot.of(run, batches)

    def progress(self, key: RunKey, status: Mapping[str, Any]) -> None:
        """The trainer's progress from a run's status (a watch event's body): step, loss, learning rate and
        ``lastProgressTime`` of a run a reconcile already observed (a deleted run does not come back)."""
        if (snap := self._snapshots.get(key)) is None:
            return
        fields = ("globalStep", "lastLoss", "lastLearningRate", "lastProgressTime")
        try:
            parsed = ContinualTrainingRunStatus.model_validate({k: status[k] for k in fields if k in status})
        except ValidationError:
            return  # a status the reconcile will report on; the metrics keep the last good values
        self._snapshots[key] = dataclasses.replace(
            snap,
            global_step=parsed.global_step if parsed.global_step is not None else snap.global_step,
            last_loss=parsed.last_loss if parsed.last_loss is not None else snap.last_loss,
            last_learning_rate=parsed.last_learning_rate
            if parsed.last_learning_rate is not None
            else snap.last_learning_rate,
            last_progress=_time(parsed.last_progress_time) or snap.last_progress,
        )

    def batch_changed(self, key: RunKey, batch: TrainingBatch, patch: Mapping[str, Any]) -> None:
        """Feed the histograms from one merge patch of a batch's status (``batch`` holds the old one)."""
        old, now = batch.status, self._clock()
        phase = patch.get("phase", old.phase)
        first_job = old.phase != "Training" and phase == "Training" and not old.attempts
        if first_job and (created := _time(batch.metadata.creation_timestamp)) is not None:
            self.queue_wait.labels(*key).observe(max(0.0, (now - created).total_seconds()))
        succeeded = old.phase == "Training" and phase == "Succeeded"
        if succeeded and (started := _time(old.last_transition_time)) is not None:
            ended = _time(patch.get("lastTransitionTime")) or now
            self.batch_duration.labels(*key).observe(max(0.0, (ended - started).total_seconds()))

    def run_phase(self, key: RunKey, phase: str | None) -> None:
        """Remember the phase a reconcile left a run in (None: unknown, not counted)."""
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase

    def forget(self, key: RunKey) -> None:
        """The run was deleted: its series go away."""
        self._phases.pop(key, None)
        self._snapshots.pop(key, None)
        for histogram in (self.batch_duration, self.queue_wait):
            with contextlib.suppress(KeyError):  # no batch of the run was observed
                histogram.remove(*key)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from other pods
        """Serve ``/metrics`` on a background thread (it lives as long as the process)."""
        start_http_server(port, addr=address, registry=self.registry)
