"""Prometheus metrics of the operator: what it reconciles, what it starts, how batches end.

One :class:`Metrics` object per operator process, with a registry of its own (not the client library's
global one): the endpoint shows exactly these series, and tests make as many as they like.

* ``continual_reconciles_total{result}``: reconciles by result (``ok``, ``invalid``: the spec or a built
  object was refused, ``error``: an API call failed and the run is retried);
* ``continual_reconcile_duration_seconds``: how long a reconcile takes, API calls included;
* ``continual_jobs_created_total``: trainer Jobs created (a 409 on a repeated create does not count);
* ``continual_batch_outcomes_total{outcome,reason}``: how attempts ended, as recorded in batch statuses:
  Succeeded, Failed (for good), Retried (after a failure, with back-off) or Preempted, by reason;
* ``continual_runs{phase}``: runs known to this operator, by the phase its last reconcile left them in.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

RunKey = tuple[str, str]


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

    def __init__(self) -> None:
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
        self._phases: dict[RunKey, str] = {}
        self.registry.register(_RunPhases(self._phases))

    def run_phase(self, key: RunKey, phase: str | None) -> None:
        """Remember the phase a reconcile left a run in (None: unknown, not counted)."""
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase

    def forget(self, key: RunKey) -> None:
        """The run was deleted."""
        self._phases.pop(key, None)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from other pods
        """Serve ``/metrics`` on a background thread (it lives as long as the process)."""
        start_http_server(port, addr=address, registry=self.registry)
