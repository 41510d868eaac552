"""One consolidation, from the run's trainer config: lock, locate, merge, check, publish.

The job holds the run folder's lock (the one ``train.py`` takes: ``RunLayout.lock``) from start to end, so
it never reads an adapter a trainer is replacing, and a trainer never starts beside it. Every refusal comes
before a byte is written; a failed check, an error or SIGTERM removes the staging folder, so nothing is
published and the run folder is untouched (the job only reads it, apart from an S3 output's staging).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continual_trainer import preemption, runrecord, sandbox
from continual_trainer.config import TrainerConfig
from continual_trainer.consolidate import check, merge, publish, source
from continual_trainer.consolidate.result import ConsolidationResult
from continual_trainer.exitcodes import BadConfigError, PermanentError, TransientError
from continual_trainer.fsutil import exclusive_lock
from continual_trainer.identity import model_identity
from continual_trainer.ledger import Ledger

log = logging.getLogger(__name__)


class CheckFailedError(PermanentError):
    """The merged model's logits are not within tolerance of base + adapter: nothing was published."""

    reason = "ConsolidationCheckFailed"


@dataclass(frozen=True)
class ConsolidationRequest:
    """What the command line asks for (beyond the trainer config)."""

    output: str
    dtype: str | None = None  # None: the base model's own dtype (config.json), else float32
    snapshot_id: str | None = None  # the snapshot holding the same training state, for the model card
    max_shard_bytes: int | None = None  # None: the base's largest shard


@dataclass(frozen=True)
class Located:
    """What is merged, found and checked before anything is written."""

    adapter: source.Adapter
    base: source.BaseWeights
    batches: int
    dtype: str


def utc_now() -> dt.datetime:
    """Now, in UTC, to the second."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def rfc3339(when: dt.datetime) -> str:
    """``2026-12-01T17:30:00Z``."""
    return when.isoformat().replace("+00:00", "Z")


def consolidate(config: TrainerConfig, request: ConsolidationRequest) -> ConsolidationResult:
    """Merge ``adapters/latest`` into the base model and publish it at ``request.output``."""
    from continual_trainer.train import RunLayout

    config = config.model_copy(update={"base_model": sandbox.confined_base_model(config)})
    if request.dtype is not None and request.dtype not in merge.DTYPE_NAMES:
        raise BadConfigError(f"--dtype: {request.dtype!r} is not one of {', '.join(merge.DTYPE_NAMES)}")
    layout = RunLayout(config.root)
    preemption.phase("lock")
    if not layout.root.is_dir():
        raise source.NothingToConsolidateError(
            f"runDir: {layout.root} does not exist: the run has trained nothing yet; train a batch first"
        )
    try:
        with exclusive_lock(layout.lock):
            return _consolidate_locked(config, request)
    except BlockingIOError as exc:
        raise TransientError(
            f"another process holds the lock on {layout.lock} (a trainer, a snapshot): consolidation waits "
            "for it; retry when it is done"
        ) from exc


def locate(config: TrainerConfig, request: ConsolidationRequest) -> Located:
    """The adapter, the base's shards, the batches trained and the output dtype (or a refusal)."""
    preemption.phase("checks")
    adapter = source.latest_adapter(config.root)
    base = source.base_weights(source.base_folder(config.base_model))
    ledger = Ledger(config.root)
    # The adapter was trained on the recorded base model: merging it into another one would be wrong.
    runrecord.check(config, ledger.read_run(), sandbox.data_root(config))
    done = [r for r in ledger.batches() if r.state == "completed"]
    batches = sum(1 for r in done if r.target_step <= adapter.global_step)
    dtype = request.dtype or _base_dtype(base.config)
    return Located(adapter, base, batches, dtype)


def _base_dtype(config: dict[str, Any]) -> str:
    named = config.get("dtype") or config.get("torch_dtype")
    return named if named in merge.DTYPE_NAMES else "float32"


def _consolidate_locked(config: TrainerConfig, request: ConsolidationRequest) -> ConsolidationResult:
    found = locate(config, request)
    started = utc_now()
    target = _target(config, request, found, started)
    staging = target.make_staging()
    try:
        stats, result = _build(config, request, found, staging)
        manifest = publish.write_manifest(staging, _manifest(config, request, found, stats, result, started))
        preemption.phase("publish")  # a SIGTERM up to the rename publishes nothing (the staging is removed)
        target.commit(staging, manifest)
    finally:
        publish.discard(staging)
    log.info("consolidated step %s into %s", found.adapter.global_step, target.where)
    return ConsolidationResult(
        output=target.where,
        global_step=found.adapter.global_step,
        batches=found.batches,
        dtype=found.dtype,
        shards=stats.shards,
        max_abs_diff=result.max_abs_diff,
        tolerance=result.tolerance,
        completed_at=rfc3339(utc_now()),
    )


def _target(
    config: TrainerConfig, request: ConsolidationRequest, found: Located, started: dt.datetime
) -> publish.VolumeTarget | publish.S3Target:
    """Where the model goes, checked (confined, not ours to replace, the bucket reachable) before the merge."""
    root = sandbox.data_root(config)
    if request.output.startswith("s3://"):
        consolidation_id = f"{started.strftime('%Y%m%dT%H%M%SZ')}-step{found.adapter.global_step:08d}"
        return publish.s3_target(request.output, consolidation_id, config.object_store, root)
    return publish.volume_target(request.output, root, config.root, found.base.folder)


def _build(
    config: TrainerConfig, request: ConsolidationRequest, found: Located, staging: Path
) -> tuple[merge.MergeStats, check.CheckResult]:
    """Merge into ``staging``, add config, generation config, tokenizer and card, then check it."""
    from transformers import AutoConfig, AutoTokenizer

    preemption.phase("merge")
    stats = merge.merge(
        merge.MergeRequest(found.adapter, found.base, found.dtype, staging, request.max_shard_bytes)
    )
    model_config = AutoConfig.from_pretrained(str(found.base.folder))
    model_config.dtype = found.dtype
    model_config.save_pretrained(str(staging))
    if (found.base.folder / "generation_config.json").is_file():
        shutil.copy2(found.base.folder / "generation_config.json", staging / "generation_config.json")
    AutoTokenizer.from_pretrained(str(found.adapter.folder)).save_pretrained(str(staging))
    preemption.phase("check")
    result = check.compare(found.base.folder, found.adapter.folder, staging, found.dtype)
    if not result.passed:
        raise CheckFailedError(
            f"the merged model's logits differ from base + adapter by {result.max_abs_diff:.3g}, more than the "
            f"tolerance {result.tolerance:.3g} ({found.dtype}): nothing was published and the run is untouched. "
            "The merge does not reproduce this adapter (an architecture whose layers the merge does not "
            "understand?): serve base + adapters/latest with PEFT, and report this with the base model's name"
        )
    (staging / "README.md").write_text(_model_card(config, request, found, result))
    return stats, result


def _base_name(config: TrainerConfig) -> tuple[str, str | None]:
    base = config.base_model
    return (str(base.id), base.revision) if base.id is not None else (str(base.path), None)


def _manifest(
    config: TrainerConfig,
    request: ConsolidationRequest,
    found: Located,
    stats: merge.MergeStats,
    result: check.CheckResult,
    started: dt.datetime,
) -> dict[str, Any]:
    name, revision = _base_name(config)
    identity = model_identity(config.base_model, sandbox.data_root(config))
    return {
        "kind": "consolidation",
        "run": {"namespace": config.run_namespace, "name": config.run_name, "uid": config.run_uid},
        # the digests the run record checks drift with: config.json, and the weight files' names and sizes
        "baseModel": {
            "name": name,
            "revision": revision,
            "configSha256": identity.config_sha256,
            "weightsSha256": identity.weights_sha256,
        },
        "adapter": f"adapters/{found.adapter.folder.name}",
        "globalStep": found.adapter.global_step,
        "batches": found.batches,
        "snapshotId": request.snapshot_id,
        "dtype": found.dtype,
        "shards": stats.shards,
        "mergedTensors": stats.merged,
        "replacedTensors": stats.replaced,
        "check": {
            "reference": "base model in float32 + adapter through PEFT (unmerged), eval mode",
            "candidate": "this folder with AutoModelForCausalLM.from_pretrained, upcast to float32",
            "probe": result.probe,
            "maxAbsDiff": result.max_abs_diff,
            "tolerance": result.tolerance,
            "roundingDrift": result.rounding_drift,
        },
        "startedAt": rfc3339(started),
    }


def _model_card(
    config: TrainerConfig, request: ConsolidationRequest, found: Located, result: check.CheckResult
) -> str:
    name, revision = _base_name(config)
    snapshot = request.snapshot_id or "none recorded"
    tolerance_note = (
        "atol 1e-4 (fp32)"
        if result.rounding_drift is None
        else f"{check.ROUNDED_FACTOR:g} x the drift of rounding the unmerged weights to {found.dtype} "
        f"({result.rounding_drift:.3g})"
    )
    return f"""---
base_model: {name}
library_name: transformers
tags:
- continual-training
- lora
- merged
---

# {config.run_name}: {name} with its LoRA adapter merged in

A deployable model written by continual-training's consolidation: the run's adapter
`adapters/{found.adapter.folder.name}` merged into the base model (in float32 from the base's original
weights, cast once to {found.dtype}). Load it with plain `AutoModelForCausalLM.from_pretrained`; no PEFT.

| | |
| --- | --- |
| base model | `{name}` |
| base revision | `{revision or "n/a (a local folder)"}` |
| run | `{config.run_namespace or ""}/{config.run_name}` |
| global step | {found.adapter.global_step} |
| batches trained | {found.batches} |
| snapshot with the same state | {snapshot} |
| dtype | {found.dtype} |
| check: max abs logits diff | {result.max_abs_diff:.3g} (tolerance {result.tolerance:.3g}: {tolerance_note}) |

Every file's sha256 and size are in `consolidation.json`.
"""
