"""Why a run (or a batch) must not train, decided from specs and statuses alone -- before any Job exists.

The API server cannot be trusted to refuse everything: CEL transition rules (``baseModel``, ``lora`` and
``storage`` are immutable) are not enforced before Kubernetes 1.25, and no schema can say that a path
stays inside a volume or that two runs share one folder. So the operator refuses these itself, at once
and with the field named, instead of letting a Job find out (ConfigDrift after minutes of model loading)
or, worse, not find out (a changed ``storage.subPath`` trains from step 0 into an empty folder):

* **paths outside the volume**: a batch's ``data.path`` and a run's ``baseModel.path`` are resolved as
  the trainer pod sees them (``posixpath.normpath``, relative to the run folder, resp. the volume's root;
  absolute paths as written) and must stay below the volume's mount. Pure string arithmetic: symlinks on
  the volume are the trainer's to check (it re-checks every path it opens against its ``dataRoot``);
* **spec changes the run cannot follow**: what the run trained with is recorded in
  ``status.trainedWith`` when its first Job is created (:func:`trained_with`); a later spec that differs
  there (:func:`changed_fields`) is refused, naming each field with its old and new value;
* **no engine for the gang**: ``spec.resources.nodes`` > 1 in local mode, or on a cluster without JobSet
  or Indexed Jobs (:func:`multi_node_refusal`);
* **one run per volume**: of the runs of a namespace on the same claim and ``subPath``, one holds the
  folder (:func:`volume_holder`: the one that has trained, else the oldest); the others are refused.

Everything here is plain data in, plain data out; the planner turns a :class:`Refusal` into conditions
and Events.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.api.run import TrainedStorage, TrainedWith
from continual_operator.workloads.gang import Engines
from continual_operator.workloads.resources import DATA_MOUNT, base_model_path, data_path, volume_claim_name

DATA_PATH_OUTSIDE_VOLUME = "DataPathOutsideVolume"
BASE_MODEL_PATH_OUTSIDE_VOLUME = "BaseModelPathOutsideVolume"
SPEC_CHANGE_REFUSED = "SpecChangeRefused"
VOLUME_IN_USE = "VolumeInUse"
MULTI_NODE_UNAVAILABLE = "MultiNodeUnavailable"
_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Refusal:
    """Why something may not train: a CamelCase reason and a message that names the field and the fix."""

    reason: str
    message: str


# -- paths --------------------------------------------------------------------------------------------
def inside_volume(pod_path: str) -> bool:
    """Whether a normalised absolute path (as the pod sees it) is the volume's mount or below it."""
    return pod_path == DATA_MOUNT or pod_path.startswith(DATA_MOUNT + "/")


def batch_path_refusal(run: ContinualTrainingRun, batch: TrainingBatch) -> Refusal | None:
    """A batch whose ``spec.data.path`` resolves outside the run's volume is refused (None: it is inside)."""
    path = batch.spec.data.path
    if path is None:
        return None  # the data is not on the volume (an object-store URI)
    resolved = data_path(run.spec, path)
    if inside_volume(resolved):
        return None
    return Refusal(
        DATA_PATH_OUTSIDE_VOLUME,
        f"spec.data.path {path!r} resolves to {resolved}, outside the run's volume (mounted at {DATA_MOUNT}): "
        f"a batch may only read data on its run's volume. Put the data on the volume and submit a new "
        f"TrainingBatch whose spec.data.path is relative to the run folder (or absolute below {DATA_MOUNT}); "
        "nothing was trained",
    )


def base_model_refusal(run: ContinualTrainingRun) -> Refusal | None:
    """A run whose ``spec.baseModel.path`` resolves outside its volume is refused."""
    resolved = base_model_path(run.spec)
    if resolved is None or inside_volume(resolved):
        return None
    return Refusal(
        BASE_MODEL_PATH_OUTSIDE_VOLUME,
        f"spec.baseModel.path {run.spec.base_model.path!r} resolves to {resolved}, outside the run's volume "
        f"(mounted at {DATA_MOUNT}): copy the model onto the volume and set spec.baseModel.path relative to "
        f"the volume's root (or absolute below {DATA_MOUNT}), or use spec.baseModel.id for a hub model; no "
        "batch starts until then",
    )


# -- what the run trained with --------------------------------------------------------------------------
def trained_with(run: ContinualTrainingRun) -> TrainedWith:
    """The values of ``run``'s spec its checkpoints depend on, as recorded in ``status.trainedWith``."""
    spec = run.spec
    return TrainedWith(
        base_model=spec.base_model.to_trainer().model_dump(mode="json", by_alias=True, exclude_none=True),
        lora=spec.lora.model_dump(mode="json", by_alias=True),
        storage=TrainedStorage(claim=volume_claim_name(run), sub_path=spec.storage.sub_path),
    )


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= _flatten(f"{prefix}.{key}", item)
        return out
    return {prefix: value}


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value)


def changed_fields(recorded: TrainedWith, run: ContinualTrainingRun) -> list[str]:
    """``field: old -> new`` for every recorded value the current spec differs from (empty: none).

    Only the fields of the record are compared: a field that a newer version of the API added (with its
    default) is not a change of what the run trained with.
    """
    current = trained_with(run)
    changes = []
    for section in ("base_model", "lora"):
        old = _flatten(f"spec.{_camel(section)}", getattr(recorded, section))
        new = _flatten(f"spec.{_camel(section)}", getattr(current, section))
        for where in sorted(old.keys() | new.keys()):
            if where in old and old[where] != new.get(where):
                changes.append(f"{where}: {_show(old[where])} -> {_show(new.get(where))}")
            elif where not in old and section == "base_model":
                changes.append(f"{where}: (unset) -> {_show(new[where])}")  # e.g. path -> id
    if recorded.storage.claim != current.storage.claim:
        changes.append(
            "spec.storage (the volume claim): "
            f"{_show(recorded.storage.claim)} -> {_show(current.storage.claim)}"
        )
    if recorded.storage.sub_path != current.storage.sub_path:
        changes.append(
            f"spec.storage.subPath: {_show(recorded.storage.sub_path)} -> {_show(current.storage.sub_path)}"
        )
    return changes


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def spec_change_refusal(run: ContinualTrainingRun) -> Refusal | None:
    """A spec that differs from ``status.trainedWith`` is refused, each changed field named."""
    recorded = run.status.trained_with
    if recorded is None:
        return None
    changes = changed_fields(recorded, run)
    if not changes:
        return None
    return Refusal(
        SPEC_CHANGE_REFUSED,
        f"the spec changed after the run trained ({'; '.join(changes)}): its checkpoints were trained with "
        "the old values (status.trainedWith), and the new ones would not fit them (or, for storage, would "
        "start again from step 0 in another folder). Set the field(s) back to the old value(s), or create a "
        "new ContinualTrainingRun for the new ones; no batch starts until then",
    )


# -- one run per volume ---------------------------------------------------------------------------------
def volume_key(run: ContinualTrainingRun) -> tuple[str, str]:
    """The folder a run writes: its claim and subPath (those it trained on, once it has)."""
    if (recorded := run.status.trained_with) is not None:
        return recorded.storage.claim, recorded.storage.sub_path or ""
    return volume_claim_name(run), run.spec.storage.sub_path or ""


def _holder_rank(run: ContinualTrainingRun) -> tuple[bool, dt.datetime, str]:
    created = run.metadata.creation_timestamp or _LATEST
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return (run.status.trained_with is None, created, run.metadata.name)


def volume_holder(run: ContinualTrainingRun, others: Sequence[ContinualTrainingRun]) -> ContinualTrainingRun:
    """The run that holds ``run``'s folder: of the runs on it, one that has trained, then the oldest."""
    key = volume_key(run)
    sharing = [o for o in others if o.metadata.name != run.metadata.name and volume_key(o) == key]
    return min([run, *sharing], key=_holder_rank)


def volume_refusal(run: ContinualTrainingRun, others: Sequence[ContinualTrainingRun]) -> Refusal | None:
    """A run whose folder another run of the namespace holds is refused, naming that run."""
    holder = volume_holder(run, others)
    if holder.metadata.name == run.metadata.name:
        return None
    claim, sub_path = volume_key(run)
    where = f"claim {claim}" + (f", subPath {sub_path}" if sub_path else " (its root)")
    why = "has trained there" if holder.status.trained_with is not None else "was created first"
    return Refusal(
        VOLUME_IN_USE,
        f"the run folder ({where}) belongs to ContinualTrainingRun {holder.metadata.name}, which {why}: two "
        "runs in one folder would overwrite each other's checkpoints and ledger. Delete this run and create "
        f"it again with another spec.storage.subPath or claim, or delete run {holder.metadata.name}; no batch "
        "starts until then",
    )


def multi_node_refusal(run: ContinualTrainingRun, engines: Engines | None) -> Refusal | None:
    """``spec.resources.nodes`` > 1 where nothing can run a gang: local mode (``engines`` None: one machine),
    or a cluster that offers neither JobSet nor Indexed Jobs (:class:`~continual_operator.workloads.gang.Engines`)."""
    nodes = run.spec.resources.nodes
    if nodes == 1 or (engines is not None and engines.engine_for(nodes) is not None):
        return None
    one_node = (
        "or set spec.resources.nodes: 1 and give the pod up to one node's GPUs in spec.resources.gpus (one "
        "trainer process per GPU under torchrun); no batch starts until then"
    )
    if engines is None:
        return Refusal(
            MULTI_NODE_UNAVAILABLE,
            f"spec.resources.nodes={nodes}: local mode trains on this one machine. Run it on a cluster "
            f"(docs/scaling.md), {one_node}",
        )
    return Refusal(
        MULTI_NODE_UNAVAILABLE,
        f"spec.resources.nodes={nodes}: {engines.missing()} (docs/scaling.md); the operator looks again "
        f"every few minutes, {one_node}",
    )


def run_refusal(
    run: ContinualTrainingRun,
    others: Sequence[ContinualTrainingRun] = (),
    *,
    check_paths: bool = True,
    engines: Engines | None = None,
) -> Refusal | None:
    """The first reason ``run`` may not start a Job, or None (``check_paths``, ``engines``: see
    ``PlanContext``)."""
    return (
        spec_change_refusal(run)
        or multi_node_refusal(run, engines)
        or (base_model_refusal(run) if check_paths else None)
        or volume_refusal(run, others)
    )
