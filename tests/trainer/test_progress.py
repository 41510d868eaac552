"""Progress sinks: what reaches the status file and the custom resource, throttling, failure isolation."""

from __future__ import annotations

import json

from continual_trainer.config import KubernetesProgressSpec
from continual_trainer.progress import (
    Broadcast,
    KubernetesStatusSink,
    StatusFileSink,
    read_status,
    status_patch,
)
from continual_trainer.records import ProgressEvent


def event(step: int, kind: str = "progress") -> ProgressEvent:
    return ProgressEvent(
        kind=kind,
        run="r",
        batch_id="b2",
        global_step=step,
        batch_start_step=6,
        batch_target_step=12,
        loss=1.25,
        learning_rate=1e-4,
        latest_checkpoint="checkpoint-8",
        time="2026-01-01T00:00:00Z",
    )


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def patch_namespaced_custom_object_status(self, *args):
        self.calls.append(args)


def test_the_status_patch_uses_the_crd_field_names():
    assert status_patch(event(9)) == {
        "status": {
            "globalStep": 9,
            "currentBatch": "b2",
            "currentBatchProgress": 0.5,
            "lastProgressTime": "2026-01-01T00:00:00Z",
            "latestCheckpoint": "checkpoint-8",
            "lastLoss": 1.25,
            "lastLearningRate": 1e-4,
        }
    }


def test_kubernetes_sink_throttles_progress_but_not_checkpoints():
    api = FakeApi()
    sink = KubernetesStatusSink(
        KubernetesProgressSpec(namespace="ns", name="r", min_interval_seconds=3600), api=api
    )
    sink.emit(event(7))
    sink.emit(event(8))  # throttled
    sink.emit(event(8, "checkpoint"))  # always sent
    assert [c[-1]["status"]["globalStep"] for c in api.calls] == [7, 8]
    assert api.calls[0][:5] == ("continual.dev", "v1alpha1", "ns", "continualtrainingruns", "r")


def test_status_file_and_a_failing_sink(tmp_path):
    class Broken:
        def emit(self, event):
            raise RuntimeError("api down")

    path = tmp_path / "status.json"
    Broadcast([Broken(), StatusFileSink(path)]).emit(event(9))
    data = read_status(path)
    assert data["globalStep"] == 9
    assert data["batchProgress"] == 0.5
    assert json.loads(path.read_text()) == data
    assert read_status(tmp_path / "absent.json") is None


def test_the_status_file_keeps_the_last_reported_loss_and_learning_rate(tmp_path):
    path = tmp_path / "status.json"
    sink = StatusFileSink(path)
    sink.emit(event(8))
    # a boundary event has no learning rate (and a checkpoint event no loss) of its own
    sink.emit(event(9, "checkpoint").model_copy(update={"loss": None, "learning_rate": None}))
    written = read_status(path)
    assert (written["kind"], written["globalStep"]) == ("checkpoint", 9)
    assert (written["loss"], written["learningRate"]) == (1.25, 1e-4)
    finished = event(12, "batch-finished").model_copy(update={"loss": 1.5, "learning_rate": None})
    sink.emit(finished)
    assert (read_status(path)["loss"], read_status(path)["learningRate"]) == (1.5, 1e-4)  # the batch mean
