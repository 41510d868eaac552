"""A stand-in for ``continual-trainer`` that "trains" one step per batch and exits at once.

Used by ``operator_scale.py`` to measure the operator, not the trainer: the pod runner maps the trainer
image's command (``continual-trainer --config /etc/continual/trainer.yaml``) to this script. It reads the
rendered trainer config, keeps the run's global step in ``<runDir>/fake-step`` and one record per batch id in
``<runDir>/fake-ledger/`` (a re-run of a finished batch answers ``AlreadyCompleted`` with the same steps, as
the real trainer's ledger does), writes a ``continual_trainer.records.BatchResult`` as JSON (camelCase) to
the termination-message path (a coalesced config, with ``nextBatches``: a ``JobResult``, one result per
batch), and exits 0. Batch k of a run reports steps k-1..k, so the operator's
contiguity check holds.

Only the standard library and PyYAML: it starts in about 30 ms.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml


def _write(path: Path, text: str) -> None:
    """Write in place, on purpose not atomically (temp file + rename).

    The e2e pod runner chowns the whole claim before it starts a pod, walking it while other pods write:
    a temp file that is renamed away between the walk and the chown fails that pod's start
    (FileNotFoundError in ``tests/e2e/volumes.py:_chown_tree``). Files that are only ever created and
    rewritten never vanish, and one tiny write per pod is as good as atomic here.
    """
    path.write_text(text)


def main() -> int:
    started = time.monotonic()
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    args, _ = parser.parse_known_args()
    config = yaml.safe_load(Path(args.config).read_text())
    run_dir = Path(config["runDir"])
    message_path = Path(config.get("terminationMessagePath") or "/dev/termination-log")
    batches = [config["batch"], *config.get("nextBatches", [])]
    results = [_train(run_dir, str(batch["id"]), started) for batch in batches]
    if len(batches) == 1:
        message: dict = results[0]
    else:  # a coalesced invocation: a JobResult, one result per batch (continual_trainer.records)
        message = {"kind": "batches", "exitCode": 0, "results": results}
    message_path.write_text(json.dumps(message, separators=(",", ":")))
    return 0


def _train(run_dir: Path, batch_id: str, started: float) -> dict:
    """One batch: one step, recorded once (a re-run answers AlreadyCompleted with the same steps)."""
    ledger = run_dir / "fake-ledger"
    ledger.mkdir(parents=True, exist_ok=True)
    record = ledger / f"{batch_id}.json"
    if record.exists():
        return dict(json.loads(record.read_text())) | {"outcome": "AlreadyCompleted"}
    counter = run_dir / "fake-step"
    start = int(counter.read_text()) if counter.exists() else 0
    result = {
        "batchId": batch_id,
        "outcome": "Succeeded",
        "startStep": start,
        "endStep": start + 1,
        "targetStep": start + 1,
        "samples": 1,
        "tokens": 1,
        "meanLoss": 1.0,
        "durationSeconds": round(time.monotonic() - started, 6),
        "exitCode": 0,
    }
    _write(record, json.dumps(result))
    _write(counter, str(start + 1))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
