"""The run record's life: read (or rebuild), check, and write only once the model was built.

``ledger/run.json`` is what configuration drift is checked against, so it must never be poisoned:

* it is written only after the base model and its LoRA adapter were built successfully: a first attempt
  with wrong ``targetModules`` or a model folder without weights leaves no record behind, and the fixed
  config then simply works;
* when it is missing although the run has trained, it is rebuilt from what the checkpoints say (their copy
  of the run record, ``continual-run.json``, or else PEFT's ``adapter_config.json``), never from the
  incoming config, and drift is reported against that;
* it names the run that owns the volume: another run's config on the same folder is refused.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from pydantic import ValidationError

from continual_trainer.checkpoints import list_published
from continual_trainer.config import BaseModelSpec, LoraSpec, TrainerConfig
from continual_trainer.exitcodes import ConfigDriftError, PermanentError
from continual_trainer.identity import (
    Difference,
    legacy_identity,
    lora_difference,
    model_difference,
    model_identity,
    owner_conflict,
    run_identity,
)
from continual_trainer.ledger import Ledger, RunRecord, utcnow

log = logging.getLogger(__name__)

#: A copy of the run record inside every published checkpoint (covered by its manifest).
RUN_RECORD_COPY = "continual-run.json"


def stamp(staged: Path, ledger: Ledger) -> None:
    """Put a copy of the run record into a staged checkpoint, so a lost run.json can be rebuilt exactly."""
    source = ledger.root / "run.json"
    if source.is_file():
        shutil.copyfile(source, staged / RUN_RECORD_COPY)


def read_or_rebuild(ledger: Ledger, run_dir: Path) -> RunRecord | None:
    """The run record; when run.json is missing but the run has trained, the one its checkpoints imply."""
    record = ledger.read_run()
    if record is not None:
        return record
    record = rebuild(run_dir)
    if record is not None:
        ledger.write_run(record)
        log.warning(
            "ledger/run.json was missing: rebuilt it from %s (drift is checked against that)",
            record.rebuilt_from,
        )
    return record


def rebuild(run_dir: Path) -> RunRecord | None:
    """The run record implied by the newest checkpoint (or exported adapter) that says enough; None if none."""
    folders = [c.path for c in reversed(list_published(run_dir / "checkpoints"))]
    adapters = run_dir / "adapters"
    if adapters.is_dir():
        exported = [p for p in adapters.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
        folders += sorted(exported, key=lambda p: int(p.name[5:]), reverse=True)
    for folder in folders:
        record = _record_of(folder)
        if record is not None:
            return record.model_copy(update={"rebuilt_from": folder.relative_to(run_dir).as_posix()})
    return None


def _record_of(folder: Path) -> RunRecord | None:
    copy = folder / RUN_RECORD_COPY
    try:
        if copy.is_file():
            return RunRecord.model_validate(json.loads(copy.read_text()))
        adapter = json.loads((folder / "adapter_config.json").read_text())
        lora = LoraSpec(
            r=adapter["r"],
            alpha=int(adapter["lora_alpha"]),
            dropout=float(adapter["lora_dropout"]),
            target_modules=list(adapter["target_modules"]),
            bias=adapter.get("bias", "none"),
        )
        name = str(adapter["base_model_name_or_path"])
        revision = adapter.get("revision")
        looks_like_path = name.startswith(("/", ".")) or Path(name).exists()
        base = BaseModelSpec(path=name) if looks_like_path else BaseModelSpec(id=name, revision=revision)
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        log.warning("cannot tell the run's settings from %s: %s", folder, exc)
        return None
    return RunRecord(base_model=base, lora=lora, created_at=utcnow())


def check(config: TrainerConfig, record: RunRecord | None, root: Path) -> None:
    """Refuse another run's config, and a base model or LoRA settings other than the recorded ones."""
    if record is None:
        return
    wanted_run = run_identity(config)
    if record.run is not None and owner_conflict(record.run, wanted_run):
        raise PermanentError(
            f"the run folder {config.run_dir} belongs to run {record.run.describe()}, not to run "
            f"{wanted_run.describe()}: two runs on one folder would train one adapter and overwrite each "
            f"other's ledger. Give run {wanted_run.name} a folder of its own (another storage.subPath, or "
            "another storage.existingClaim; in local mode another --volume folder), or delete it if it was "
            "meant to be the same run",
            reason="VolumeBelongsToAnotherRun",
        )
    recorded_model = record.model or legacy_identity(record.base_model, root)
    difference = lora_difference(record.lora, config.lora) or model_difference(
        recorded_model, model_identity(config.base_model, root), root
    )
    if difference is not None:
        raise _drift(difference, record)


def _drift(difference: Difference, record: RunRecord) -> ConfigDriftError:
    name, recorded, wanted = difference.field, difference.recorded, difference.wanted
    source = "the run's checkpoints were trained with"
    if record.rebuilt_from is not None:
        source = f"{record.rebuilt_from} (ledger/run.json was rebuilt from it) was trained with"
    if difference.content is not None:
        return ConfigDriftError(
            f"{name}: the model there is not the one {source.removesuffix(' with')}: its "
            f"{difference.content} differ (sha256 {str(recorded)[:12]}... recorded, {str(wanted)[:12]}... "
            f"now). Put the run's model back at {name}, or start a new run (a new run folder) for this model"
        )
    return ConfigDriftError(
        f"{name} is {wanted!r} but {source} {recorded!r}: a run's base model and LoRA settings cannot "
        f"change. Set {name} back to {recorded!r}, or start a new run (a new run folder) for the new "
        "settings"
    )


def settle(config: TrainerConfig, ledger: Ledger, record: RunRecord | None, root: Path) -> RunRecord:
    """After the model and adapter were built: write the run record, or complete an older one.

    A new run gets its record now (never before: a failed build leaves nothing to drift against). An
    existing record gains what it lacks: the run that adopts it, the model's identity (with digests that
    only a download made known, checked first), the model's new place after the project folder moved.
    """
    identity = model_identity(config.base_model, root)
    owner = run_identity(config)
    if record is None:
        record = RunRecord(
            base_model=config.base_model, lora=config.lora, created_at=utcnow(), model=identity, run=owner
        )
        ledger.write_run(record)
        return record
    recorded_model = record.model or legacy_identity(record.base_model, root)
    difference = model_difference(recorded_model, identity, root)
    if difference is not None:  # a hub model whose files only the download made known
        raise _drift(difference, record)
    updated = record.model_copy(update={"model": identity, "run": record.run or owner})
    if record.run is not None and record.run.uid != owner.uid and owner.uid:
        updated = updated.model_copy(update={"run": owner})
    if updated != record:
        ledger.write_run(updated)
    return updated
