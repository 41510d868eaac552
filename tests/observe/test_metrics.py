"""Training metrics: computed at scrape time from run and batch statuses, fed by transitions, gone with the run;
and a live scrape of local mode (``--metrics-port``) while and after it trains a real batch."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from continual_operator.api import ContinualTrainingRunStatus, TrainingBatch
from continual_operator.local.mode import LocalOptions, load_run, run_local
from continual_operator.observe.metrics import Metrics, patched

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
KEY = ("ml", "llama")
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "operator" / "continual_operator" / "demo" / "run.yaml"
DATA = REPO / "trainer_image" / "continual_trainer" / "demo_data"

#: Every training-level series and its type, as docs/observability.md lists them.
RUN_SERIES = {
    "continual_run_global_step": "gauge",
    "continual_run_trained_tokens": "counter",
    "continual_run_trained_samples": "counter",
    "continual_run_last_loss": "gauge",
    "continual_run_learning_rate": "gauge",
    "continual_run_batches": "gauge",
    "continual_run_oldest_queued_batch_age_seconds": "gauge",
    "continual_run_seconds_since_last_checkpoint": "gauge",
    "continual_run_seconds_since_last_progress": "gauge",
    "continual_run_degraded": "gauge",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(generate_latest(metrics.registry).decode())


def run_labels(**extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": KEY[0], "run": KEY[1], **extra}.items()))


def batch(name: str, created: dt.datetime, **status: Any) -> TrainingBatch:
    return TrainingBatch.model_validate(
        {
            "metadata": {"name": name, "namespace": KEY[0], "creationTimestamp": created.isoformat()},
            "spec": {"runName": KEY[1], "data": {"path": f"{name}.jsonl"}},
            "status": status,
        }
    )


def a_run(**status: Any) -> Any:
    run = load_run(DEMO)
    return run.model_copy(update={"status": ContinualTrainingRunStatus.model_validate(status)})


def test_run_series_are_computed_from_the_statuses_at_scrape_time() -> None:
    clock = [NOW]
    metrics = Metrics(clock=lambda: clock[0])
    run = a_run(
        phase="Training",
        globalStep=12,
        lastLoss=2.5,
        lastLearningRate=1e-4,
        lastProgressTime="2026-12-01T11:59:00Z",
        conditions=[{"type": "Degraded", "status": "True", "reason": "BadBatch"}],
    )
    minute = dt.timedelta(minutes=1)
    batches = [
        batch(
            "b1",
            NOW - 60 * minute,
            phase="Succeeded",
            tokens=300,
            samples=20,
            lastTransitionTime="2026-12-01T11:50:00Z",
        ),
        batch(
            "b2",
            NOW - 50 * minute,
            phase="Succeeded",
            tokens=200,
            samples=10,
            lastTransitionTime="2026-12-01T11:55:00Z",
        ),
        batch("b3", NOW - 40 * minute, phase="Training", tokens=999, samples=99),
        batch("b4", NOW - 30 * minute, phase="Queued"),
        batch("b5", NOW - 10 * minute),
        batch("b6", NOW - 90 * minute, phase="Failed", tokens=5),
    ]
    metrics.observe_run(KEY, run, batches)
    got = scrape(metrics)
    assert got[("continual_run_global_step", run_labels())] == 12
    assert got[("continual_run_trained_tokens_total", run_labels())] == 500  # succeeded batches only
    assert got[("continual_run_trained_samples_total", run_labels())] == 30
    assert got[("continual_run_last_loss", run_labels())] == 2.5
    assert got[("continual_run_learning_rate", run_labels())] == 1e-4
    by_phase = {
        p: got[("continual_run_batches", run_labels(phase=p))]
        for p in ("Queued", "Training", "Succeeded", "Failed")
    }
    assert by_phase == {"Queued": 2, "Training": 1, "Succeeded": 2, "Failed": 1}
    assert got[("continual_run_oldest_queued_batch_age_seconds", run_labels())] == 30 * 60
    assert got[("continual_run_seconds_since_last_checkpoint", run_labels())] == 5 * 60
    assert got[("continual_run_seconds_since_last_progress", run_labels())] == 60
    assert got[("continual_run_degraded", run_labels())] == 1
    # Ages are computed at scrape time: a later scrape of the same snapshot shows older ages.
    clock[0] = NOW + 10 * minute
    later = scrape(metrics)
    assert later[("continual_run_oldest_queued_batch_age_seconds", run_labels())] == 40 * 60
    assert later[("continual_run_seconds_since_last_checkpoint", run_labels())] == 15 * 60


def test_transitions_feed_the_histograms_and_a_deleted_run_takes_its_series_along() -> None:
    metrics = Metrics(clock=lambda: NOW)
    queued = batch("b1", NOW - dt.timedelta(seconds=40), phase="Queued")
    metrics.batch_changed(
        KEY, queued, {"phase": "Training", "attempts": 1, "lastTransitionTime": "2026-12-01T12:00:00Z"}
    )
    training = batch(
        "b1",
        NOW - dt.timedelta(seconds=40),
        phase="Training",
        attempts=1,
        lastTransitionTime="2026-12-01T11:58:00Z",
    )
    # a second attempt of the same batch is not a queue wait
    metrics.batch_changed(KEY, patched(training, {"phase": "Queued"}), {"phase": "Training", "attempts": 2})
    metrics.batch_changed(KEY, training, {"phase": "Succeeded", "lastTransitionTime": "2026-12-01T12:00:00Z"})
    metrics.observe_run(KEY, a_run(phase="Idle", globalStep=6), [patched(training, {"phase": "Succeeded"})])
    metrics.run_phase(KEY, "Idle")
    got = scrape(metrics)
    assert got[("continual_batch_queue_wait_seconds_count", run_labels())] == 1
    assert got[("continual_batch_queue_wait_seconds_sum", run_labels())] == 40
    assert got[("continual_batch_duration_seconds_count", run_labels())] == 1
    assert got[("continual_batch_duration_seconds_sum", run_labels())] == 120
    assert got[("continual_batch_duration_seconds_bucket", run_labels(le="120.0"))] == 1
    assert got[("continual_batch_duration_seconds_bucket", run_labels(le="60.0"))] == 0

    metrics.forget(KEY)
    left = [name for name, labels in scrape(metrics) if ("run", KEY[1]) in labels]
    assert left == []
    assert ("continual_runs", (("phase", "Idle"),)) not in scrape(metrics)


def phase_labels(labels: tuple[tuple[str, str], ...], phase: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((*labels, ("phase", phase))))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_local_mode_serves_the_training_metrics_while_and_after_it_trains(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A real local run of one batch with ``--metrics-port``; real HTTP GETs of /metrics from its output hook."""
    volume = tmp_path / "volume"
    shutil.copytree(tiny_model, volume / "models" / "tiny-llama")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(DATA / "batch-001.jsonl", inbox / "batch-001.jsonl")
    manifest = tmp_path / "run.yaml"
    manifest.write_text(DEMO.read_text())
    run_name = yaml.safe_load(DEMO.read_text())["metadata"]["name"]
    port = free_port()
    options = LocalOptions(
        manifest=manifest,
        volume=volume,
        state=tmp_path / "state",
        inbox=inbox,
        poll_seconds=0.2,
        settle_seconds=0,
        metrics_port=port,
    )
    scrapes: dict[str, str] = {}

    def out(line: str) -> None:
        lines.append(line)
        moment = (
            "trained"
            if line.startswith("batch batch-001: steps")
            else "summary"
            if line.startswith("run ")
            else None
        )
        if moment:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                assert response.status == 200
                scrapes[moment] = response.read().decode()

    lines: list[str] = []
    assert run_local(options, out=out) == 0
    assert f"metrics on http://127.0.0.1:{port}/metrics" in lines
    assert set(scrapes) == {"trained", "summary"}
    labels = tuple(sorted({"namespace": "local", "run": run_name}.items()))
    # while it trains: the scrape shows the status local mode last wrote, the batch still Training
    assert samples(scrapes["trained"])[("continual_run_batches", phase_labels(labels, "Training"))] == 1
    families = {f.name: f for f in text_string_to_metric_families(scrapes["summary"])}
    for name, kind in RUN_SERIES.items():
        assert families[name].type == kind, name
        label_sets = {frozenset(s.labels) for s in families[name].samples}
        assert label_sets == {
            frozenset({"namespace", "run"} | ({"phase"} if name == "continual_run_batches" else set()))
        }, name
    got = samples(scrapes["summary"])
    assert got[("continual_run_global_step", labels)] == 6
    assert got[("continual_run_trained_samples_total", labels)] > 0
    assert got[("continual_run_trained_tokens_total", labels)] > 0
    assert got[("continual_run_batches", phase_labels(labels, "Succeeded"))] == 1
    assert got[("continual_batch_duration_seconds_count", labels)] == 1
    assert got[("continual_batch_queue_wait_seconds_count", labels)] == 1
    assert got[("continual_run_degraded", labels)] == 0
    assert 0 <= got[("continual_run_seconds_since_last_checkpoint", labels)] < 600
    # the server is gone once local mode exits
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
