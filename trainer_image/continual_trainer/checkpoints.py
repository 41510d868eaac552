"""Checkpoints on the run's volume: publish atomically, accept only complete ones, retain safely.

``Trainer`` writes a checkpoint straight into ``checkpoint-N/`` and its ``get_last_checkpoint`` returns the
highest number without looking inside, so a kill during a save leaves a folder that every retry crashes on.
Here ``Trainer`` saves into a staging folder; we fsync every file, add a manifest (sizes and sha256 of every
file) and only then rename the folder into ``checkpoints/`` -- a rename is atomic, so ``checkpoints/`` only
ever holds checkpoints that were complete when published. On resume every candidate is validated again
(files, manifest, parseable state, step equal to the folder's number, LoRA config equal to the run's);
anything else is moved to ``quarantine/`` with the reason, never deleted, and the previous valid one is used.

A checkpoint saved by several ranks (``torchrun``) holds one RNG file per rank (``rng_state_<rank>.pth``,
written by each rank into the staging folder) instead of ``rng_state.pth``; the manifest records the
``worldSize`` that saved it, every rank's file is in it, and a checkpoint missing any rank's file is invalid.
Only the coordinator (rank 0) publishes, validates and retains.

Retention only ever deletes folders named exactly ``checkpoint-<int>`` in ``checkpoints/``, by step number
(not mtime), and never the one the last completed batch ended on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from continual_trainer.config import LoraSpec
from continual_trainer.exitcodes import IntegrityError
from continual_trainer.fsutil import atomic_write_json, fsync_dir, fsync_tree
from continual_trainer.ledger import utcnow

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "continual-manifest.json"
#: The files of a checkpoint saved by one process.
REQUIRED_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "trainer_state.json",
    "rng_state.pth",
    "training_args.bin",
    MANIFEST,
)


def rank_files(world_size: int) -> tuple[str, ...]:
    """The per-rank files ``Trainer`` saves: ``rng_state.pth`` alone, else ``rng_state_<rank>.pth`` per rank."""
    if world_size <= 1:
        return ("rng_state.pth",)
    return tuple(f"rng_state_{rank}.pth" for rank in range(world_size))


def required_files(world_size: int) -> tuple[str, ...]:
    """Every file a checkpoint saved by ``world_size`` ranks must hold."""
    shared = tuple(name for name in REQUIRED_FILES if name != "rng_state.pth")
    return shared + rank_files(world_size)


def _missing(folder: Path, world_size: int) -> str | None:
    missing = [name for name in required_files(world_size) if not (folder / name).is_file()]
    if not missing:
        return None
    ranks = [name for name in missing if name in rank_files(world_size) and world_size > 1]
    why = f" (saved by {world_size} ranks: each rank's file is part of it)" if ranks else ""
    return f"missing files: {', '.join(missing)}{why}"


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint."""

    path: Path
    step: int


def step_of(path: Path) -> int | None:
    """The step of a folder named ``checkpoint-<int>``, else None."""
    match = CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, *, batch_id: str, step: int, world_size: int = 1) -> None:
    """Record every file's size and hash (after the files were fsync'd), and the ranks that saved them."""
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest: dict[str, object] = {"batchId": batch_id, "step": step, "createdAt": utcnow(), "files": files}
    if world_size > 1:  # one process: the manifest as it always was
        manifest["worldSize"] = world_size
    atomic_write_json(folder / MANIFEST, manifest)


def publish(staged: Path, checkpoints_dir: Path, *, batch_id: str, step: int, world_size: int = 1) -> Path:
    """Make a staged checkpoint durable, add its manifest and rename it into ``checkpoints_dir``.

    A staged checkpoint that lacks a file (one rank's RNG state, say) is never published.
    """
    missing = [n for n in required_files(world_size) if n != MANIFEST and not (staged / n).is_file()]
    if missing:
        raise IntegrityError(
            f"the staged checkpoint {staged} lacks {', '.join(missing)} (saved by {world_size} rank(s)): not "
            "published; the batch is retried from the last published checkpoint"
        )
    fsync_tree(staged)
    write_manifest(staged, batch_id=batch_id, step=step, world_size=world_size)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / staged.name
    if final.exists():
        # Only possible if a previous attempt published this step and then crashed before recording it;
        # the two are the same training state (same data, same RNG), so keep the older one aside.
        quarantine(final, "superseded by a republished checkpoint of the same step", checkpoints_dir.parent)
    staged.rename(final)
    fsync_dir(checkpoints_dir)
    return final


def validate(folder: Path, lora: LoraSpec) -> str | None:
    """Why ``folder`` is not a usable checkpoint, or None if it is."""
    step = step_of(folder)
    if step is None:
        return "name is not checkpoint-<int>"
    if not (folder / MANIFEST).is_file():
        return _missing(folder, 1) or f"missing files: {MANIFEST}"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        world_size = manifest.get("worldSize", 1)
        if not isinstance(world_size, int) or world_size < 1:
            return f"{MANIFEST} has worldSize={world_size!r}, not a positive integer"
        missing = _missing(folder, world_size)
        if missing:
            return missing
        for name, meta in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                return f"manifest lists {name}, which is missing"
            if path.stat().st_size != meta["size"]:
                return f"{name} has {path.stat().st_size} bytes, the manifest says {meta['size']}"
            if _sha256(path) != meta["sha256"]:
                return f"{name} does not match its sha256 in the manifest"
        state = json.loads((folder / "trainer_state.json").read_text())
        adapter = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable metadata ({exc.__class__.__name__}: {exc})"
    if state.get("global_step") != step:
        return f"trainer_state.json says global_step={state.get('global_step')}, the folder says {step}"
    mismatch = lora_mismatch(adapter, lora)
    if mismatch:
        return f"adapter config differs from the run's: {mismatch}"
    return None


def lora_mismatch(adapter_config: dict[str, object], lora: LoraSpec) -> str | None:
    """Compare a saved ``adapter_config.json`` with the run's LoRA spec; describe the first difference."""
    target = adapter_config.get("target_modules")
    saved_targets = sorted(target) if isinstance(target, list | tuple | set) else [str(target)]
    pairs = [
        ("lora.r", adapter_config.get("r"), lora.r),
        ("lora.alpha", adapter_config.get("lora_alpha"), lora.alpha),
        ("lora.dropout", adapter_config.get("lora_dropout"), lora.dropout),
        ("lora.targetModules", saved_targets, lora.target_modules),
        ("lora.bias", adapter_config.get("bias"), lora.bias),
    ]
    for name, saved, wanted in pairs:
        if saved != wanted:
            return f"{name} is {wanted!r} in the config but {saved!r} in the checkpoint"
    return None


def quarantine(folder: Path, reason: str, run_dir: Path) -> Path:
    """Move ``folder`` to ``<run_dir>/quarantine/`` (outside the ``checkpoint-*`` namespace), with the reason."""
    qdir = run_dir / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    stamp = utcnow().replace(":", "")
    dest = qdir / f"{folder.name}.{stamp}"
    n = 1
    while dest.exists():
        dest = qdir / f"{folder.name}.{stamp}.{n}"
        n += 1
    folder.rename(dest)
    (dest / "QUARANTINE_REASON.txt").write_text(reason + "\n")
    fsync_dir(qdir)
    fsync_dir(folder.parent)
    log.warning("quarantined %s -> %s: %s", folder, dest, reason)
    return dest


def quarantined(run_dir: Path, step: int) -> list[Path]:
    """The quarantined copies of ``checkpoint-<step>``, oldest first."""
    qdir = run_dir / "quarantine"
    if not qdir.is_dir():
        return []
    return sorted(p for p in qdir.iterdir() if p.is_dir() and p.name.split(".", 1)[0] == f"checkpoint-{step}")


def quarantine_reason(run_dir: Path, step: int) -> str | None:
    """Why ``checkpoint-<step>`` was last moved to quarantine (its ``QUARANTINE_REASON.txt``), if it was."""
    for folder in reversed(quarantined(run_dir, step)):
        try:
            reason = (folder / "QUARANTINE_REASON.txt").read_text(errors="replace").strip()
        except OSError:
            continue
        return f"{reason} (quarantine/{folder.name})"
    return None


def scan(checkpoints_dir: Path, lora: LoraSpec, run_dir: Path) -> list[Checkpoint]:
    """Validate every ``checkpoint-<int>``; quarantine the invalid ones; return the valid ones by step."""
    valid = []
    if not checkpoints_dir.is_dir():
        return []
    for folder in sorted(checkpoints_dir.iterdir()):
        step = step_of(folder)
        if step is None or not folder.is_dir():
            continue  # not ours: never touched
        reason = validate(folder, lora)
        if reason is None:
            valid.append(Checkpoint(folder, step))
        else:
            quarantine(folder, f"invalid checkpoint: {reason}", run_dir)
    return sorted(valid, key=lambda c: c.step)


def retain(checkpoints: Iterable[Checkpoint], keep: int, protected_steps: set[int]) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints, never a protected step; return what was deleted."""
    ordered = sorted(checkpoints, key=lambda c: c.step, reverse=True)
    deleted = []
    for ckpt in ordered[keep:]:
        if ckpt.step in protected_steps or step_of(ckpt.path) != ckpt.step:
            continue
        shutil.rmtree(ckpt.path)
        deleted.append(ckpt.path)
        log.info("retention: deleted %s", ckpt.path)
    if deleted:
        fsync_dir(deleted[0].parent)
    return deleted


def list_published(checkpoints_dir: Path) -> list[Checkpoint]:
    """Published checkpoints by step, without re-validating (used by retention right after a publish)."""
    if not checkpoints_dir.is_dir():
        return []
    found = [
        Checkpoint(p, s) for p in checkpoints_dir.iterdir() if (s := step_of(p)) is not None and p.is_dir()
    ]
    return sorted(found, key=lambda c: c.step)
