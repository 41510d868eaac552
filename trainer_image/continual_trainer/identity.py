"""What a run's volume belongs to: the run that owns it, and the base model its adapter was trained on.

The run record (``ledger/run.json``) stores *identities*, not host paths, so that moving the whole project
folder (local mode) or mounting the volume elsewhere is not configuration drift, while a different model
under the same path is:

* the base model is named by its path **relative to the data root** (absolute only when it lives outside
  it), or by hub id + revision, plus two digests: ``config.json`` (canonical JSON, without the
  ``transformers_version`` stamp that a re-save changes) and the weight files' names and sizes (cheap: no
  gigabytes are hashed);
* the run is named by namespace/name (and uid on a cluster): another run's config on the same folder is
  refused, a record written before runs were named adopts the first run that comes.

No torch here: the checks run before anything heavy is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from continual_trainer.config import BaseModelSpec, LoraSpec, Model, TrainerConfig
from continual_trainer.exitcodes import BadConfigError

log = logging.getLogger(__name__)

#: Files whose names and sizes make up a model folder's weights digest.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


class RunIdentity(Model):
    """The run a volume belongs to (namespace and uid where known)."""

    namespace: str | None = None
    name: str
    uid: str | None = None

    def describe(self) -> str:
        """``namespace/name (uid ...)`` as far as known."""
        text = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{text} (uid {self.uid})" if self.uid else text


class ModelIdentity(Model):
    """The base model as the run knows it: where (relative to the data root) or which (hub id), and what."""

    path: str | None = None
    id: str | None = None
    revision: str | None = None
    config_sha256: str | None = None
    weights_sha256: str | None = None

    def describe(self) -> str:
        """A short human-readable name."""
        if self.path is not None:
            return f"path {self.path!r}"
        return f"id {self.id!r}" + (f" at revision {self.revision!r}" if self.revision else "")


def run_identity(config: TrainerConfig) -> RunIdentity:
    """The run a config belongs to."""
    return RunIdentity(namespace=config.run_namespace, name=config.run_name, uid=config.run_uid)


def base_model_folder(base: BaseModelSpec, root: Path) -> Path | None:
    """The base model's folder (a relative ``baseModel.path`` is relative to the data root); None for an id."""
    if base.path is None:
        return None
    path = Path(base.path)
    return path if path.is_absolute() else root / path


def require_base_model_folder(base: BaseModelSpec, root: Path) -> None:
    """A ``baseModel.path`` that does not exist says so (rather than "Repo id must be in the form ...")."""
    folder = base_model_folder(base, root)
    if folder is None:
        return
    if not folder.exists():
        raise BadConfigError(
            f"baseModel.path: {base.path!r} does not exist (looked at {folder}); point baseModel.path at a "
            "folder written by save_pretrained (or use baseModel.id for a hub model)"
        )
    if not folder.is_dir():
        raise BadConfigError(
            f"baseModel.path: {base.path!r} is not a folder ({folder}); point baseModel.path at the folder "
            "written by save_pretrained, not at a file inside it"
        )


def _relative_name(folder: Path, root: Path) -> str:
    resolved = folder.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def _config_digest(config_json: Path) -> str | None:
    try:
        data = json.loads(config_json.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict):
        data.pop("transformers_version", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _weights_digest(folder: Path) -> str | None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return None
    listing = "".join(f"{p.name}\t{p.stat().st_size}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def _hub_snapshot(base: BaseModelSpec) -> Path | None:
    """The cached snapshot folder of a hub model (after a download), or None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(str(base.id), "config.json", revision=base.revision)
    return Path(found).parent if isinstance(found, str) else None


def model_identity(base: BaseModelSpec, root: Path) -> ModelIdentity:
    """The identity of the configured base model (digests None where the files are not there yet)."""
    folder = base_model_folder(base, root)
    if folder is None:
        snapshot = _hub_snapshot(base)
        return ModelIdentity(
            id=base.id,
            revision=base.revision,
            config_sha256=_config_digest(snapshot / "config.json") if snapshot else None,
            weights_sha256=_weights_digest(snapshot) if snapshot else None,
        )
    present = folder.is_dir()
    return ModelIdentity(
        path=_relative_name(folder, root),
        config_sha256=_config_digest(folder / "config.json") if present else None,
        weights_sha256=_weights_digest(folder) if present else None,
    )


def legacy_identity(base: BaseModelSpec, root: Path) -> ModelIdentity:
    """A run record written before identities (a host path, no digests), in today's terms."""
    folder = base_model_folder(base, root)
    if folder is None:
        return ModelIdentity(id=base.id, revision=base.revision)
    return ModelIdentity(path=_relative_name(folder, root))


@dataclass(frozen=True)
class Difference:
    """A setting that differs from the recorded one; ``content`` when the same place holds another model."""

    field: str
    recorded: object
    wanted: object
    content: str | None = None


def model_difference(recorded: ModelIdentity, wanted: ModelIdentity, root: Path) -> Difference | None:
    """How the configured base model differs from the recorded one (None: the same model)."""
    if recorded.id != wanted.id:
        return Difference("baseModel.id", recorded.id, wanted.id)
    if recorded.id is not None and recorded.revision != wanted.revision:
        return Difference("baseModel.revision", recorded.revision, wanted.revision)
    if _place(recorded.path, root) != _place(wanted.path, root) and not _moved(recorded, wanted, root):
        return Difference("baseModel.path", recorded.path, wanted.path)
    for what, old, new in (
        ("config.json", recorded.config_sha256, wanted.config_sha256),
        ("weight files (names and sizes)", recorded.weights_sha256, wanted.weights_sha256),
    ):
        if old is not None and new is not None and old != new:
            field = "baseModel.path" if wanted.path is not None else "baseModel.id"
            return Difference(field, old, new, content=what)
    return None


def _place(path: str | None, root: Path) -> str | None:
    """A recorded path in today's terms: an absolute one inside the data root becomes relative to it.

    So a record is read the same whether it was written with the data root that is used now or before
    (e.g. by a trainer that recorded host paths, or took the run folder as its data root).
    """
    if path is None or not Path(path).is_absolute():
        return path
    return _relative_name(Path(path), root)


def _moved(recorded: ModelIdentity, wanted: ModelIdentity, root: Path) -> bool:
    """A recorded folder that is gone, replaced by the same model elsewhere: the project folder moved.

    With digests: both must match. A record from before digests only has a host path: the same folder
    name must do (and the digests are recorded from now on).
    """
    if recorded.path is None or wanted.path is None:
        return False
    old = Path(recorded.path)
    if (old if old.is_absolute() else root / old).exists():
        return False
    if recorded.config_sha256 is not None or recorded.weights_sha256 is not None:
        return (recorded.config_sha256, recorded.weights_sha256) == (
            wanted.config_sha256,
            wanted.weights_sha256,
        )
    return old.name == Path(wanted.path).name


def lora_difference(recorded: LoraSpec, wanted: LoraSpec) -> Difference | None:
    """The first LoRA setting that differs from the recorded one."""
    for name, old, new in (
        ("lora.r", recorded.r, wanted.r),
        ("lora.alpha", recorded.alpha, wanted.alpha),
        ("lora.dropout", recorded.dropout, wanted.dropout),
        ("lora.targetModules", recorded.target_modules, wanted.target_modules),
        ("lora.bias", recorded.bias, wanted.bias),
    ):
        if old != new:
            return Difference(name, old, new)
    return None


def owner_conflict(recorded: RunIdentity, wanted: RunIdentity) -> bool:
    """Whether ``wanted`` is another run than the one the volume belongs to.

    Name and (where both know it) namespace decide; a different uid under the same namespace/name is the
    same run re-created (e.g. by a GitOps sync) and continues its volume, with a warning.
    """
    if recorded.name != wanted.name:
        return True
    if recorded.namespace and wanted.namespace and recorded.namespace != wanted.namespace:
        return True
    if recorded.uid and wanted.uid and recorded.uid != wanted.uid:
        log.warning(
            "run %s was re-created (uid %s, the volume's record says %s): it continues its volume",
            wanted.describe(),
            wanted.uid,
            recorded.uid,
        )
    return False
