"""The data sandbox: every path the trainer reads from its config must stay inside the data root.

The config is rendered from manifests that anyone with create rights on a ``TrainingBatch`` can write, so
the trainer does not trust it: a batch path like ``../../../../etc/passwd``, an absolute ``/etc/passwd``,
a symlink on the volume that points outside it, or a symlink inside a folder batch would otherwise be read
and trained (and its content would then live on in the adapter). Every such path is resolved with symlinks
followed and refused unless it lies inside ``dataRoot`` (the volume's mount; the run's folder by default).

This is the one place the check lives: :class:`continual_trainer.data.LocalSource` calls :func:`confine`
for the batch path and for every file below a folder batch, and :func:`confined_base_model` handles the
base model's path. Symlinks that stay inside the root are fine.
"""

from __future__ import annotations

import os
from pathlib import Path

from continual_trainer.config import BaseModelSpec, TrainerConfig
from continual_trainer.exitcodes import PermanentError


class OutsideDataRootError(PermanentError):
    """A path from the config resolves outside the data root: refused before anything is read."""

    reason = "PathOutsideDataRoot"


def data_root(config: TrainerConfig) -> Path:
    """The folder every data path must resolve inside (``dataRoot``, or the run's folder)."""
    return Path(config.data_root if config.data_root is not None else config.run_dir)


def confine(path: Path, root: Path, *, field: str, given: str, fix: str) -> Path:
    """``path`` with every symlink resolved, or :class:`OutsideDataRootError` if that is outside ``root``.

    ``field`` and ``given`` name what the user wrote (``batch.data.path: '../x'``); ``fix`` says what to do.
    A path that does not exist is resolved as far as it exists (so ``../..`` and dangling links outside
    are still refused); whether it must exist is the caller's business.
    """
    real_root = root.resolve()
    try:
        real = _resolve(path)
    except (OSError, RuntimeError) as exc:  # a symlink loop, a component that is not a folder
        raise OutsideDataRootError(
            f"{field}: {given!r} cannot be resolved ({exc}): {fix}", reason="UnresolvablePath"
        ) from exc
    if not real.is_relative_to(real_root):
        where = "" if str(real) == os.path.normpath(path.absolute()) else f" (through a symlink in {path})"
        raise OutsideDataRootError(
            f"{field}: {given!r} resolves to {real}{where}, outside the data root {real_root} (dataRoot): "
            f"the trainer only reads data on the run's volume; {fix}"
        )
    return real


def _resolve(path: Path) -> Path:
    """Every symlink followed; a missing tail is kept as spelled (after the links before it)."""
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:
        return path.resolve(strict=False)


def batch_data_path(config: TrainerConfig) -> Path:
    """The batch's path as given (relative paths are inside the run's folder), not yet confined."""
    assert config.batch.data.path is not None, "a uri batch has no data path (it is read by S3Source)"
    path = Path(config.batch.data.path)
    return path if path.is_absolute() else config.root / path


def confined_base_model(config: TrainerConfig) -> BaseModelSpec:
    """The base model spec with an on-volume path checked (and a relative one made absolute).

    On the volume means relative (to the data root) or absolute below it; both must resolve inside it. An
    absolute path elsewhere is a folder of the trainer's image (a model baked in), not of the volume, and
    stays as given. A hub id is left alone.
    """
    base = config.base_model
    if base.path is None:
        return base
    root = data_root(config)
    path = Path(base.path)
    if path.is_absolute() and not _lexically_inside(path, root):
        return base
    full = path if path.is_absolute() else root / path
    confine(
        full,
        root,
        field="baseModel.path",
        given=base.path,
        fix="put the model folder on the volume (below dataRoot) and point baseModel.path at it, or use "
        "baseModel.id for a hub model",
    )
    # An absolute path stays as written (it is part of the run's identity, checked for drift); a relative
    # one is loaded from the data root, not from wherever the process happens to start.
    return base if path.is_absolute() else base.model_copy(update={"path": os.path.normpath(full)})


def _lexically_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is spelled as a path below ``root`` (before symlinks are looked at)."""
    norm, norm_root = Path(os.path.normpath(path)), Path(os.path.normpath(root.absolute()))
    real_root = root.resolve()
    return any(norm == r or norm.is_relative_to(r) for r in (norm_root, real_root))
