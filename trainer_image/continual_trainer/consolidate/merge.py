"""The merge: ``W' = W + scale * B @ A`` in fp32 from the base's original weights, cast once, shard by shard.

Why this way:

* **fp32 from the original weights.** The base's tensors are read from its safetensors files (never from a
  model already loaded in bf16), upcast to fp32, the LoRA delta is added in fp32, and the sum is cast to the
  output dtype exactly once. Merging in bf16 rounds twice (the base, then the sum) and drifts.
* **Shard by shard.** The output shards are planned from the input headers (names, shapes, dtypes: no
  weights read); then for each output shard the input files holding its tensors are opened (``safe_open``
  maps a file; closing it unmaps it), its tensors merged one at a time, and the shard is written and
  dropped. Peak memory is about one output shard's worth of input plus the output shard, not the model.
* Tensors the adapter does not touch keep their bytes when the dtype does not change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continual_trainer.consolidate.source import (
    INDEX_NAME,
    Adapter,
    BaseWeights,
    LoraPair,
    lora_pairs,
    saved_modules,
)

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "bfloat16", "float16")
#: The default output shard size's ceiling (the size Hugging Face's hub tooling has long used).
MAX_DEFAULT_SHARD_BYTES = 5 * 10**9
#: safetensors header dtype -> bytes per element (for planning shards without reading weights).
_ELEMENT_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_FLOAT_HEADERS = {"F64", "F32", "BF16", "F16"}


@dataclass(frozen=True)
class TensorInfo:
    """One base tensor as its header describes it."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str  # the safetensors header spelling (F32, BF16, ...)

    def out_bytes(self, out_element_bytes: int) -> int:
        """Its size in the output (floats take the output dtype; anything else keeps its own)."""
        size = out_element_bytes if self.dtype in _FLOAT_HEADERS else _ELEMENT_BYTES.get(self.dtype, 8)
        return math.prod(self.shape) * size


@dataclass
class ShardPlan:
    """Which output shard each tensor goes to, decided from the headers before anything is merged."""

    shards: list[list[str]] = field(default_factory=list)
    total_bytes: int = 0

    def file_name(self, index: int) -> str:
        """HF's shard naming: ``model-00001-of-00008.safetensors``."""
        return f"model-{index + 1:05d}-of-{len(self.shards):05d}.safetensors"


@dataclass(frozen=True)
class MergeRequest:
    """What to merge into where."""

    adapter: Adapter
    base: BaseWeights
    dtype: str  # one of DTYPE_NAMES
    out: Path  # the staging folder the shards and their index are written into
    max_shard_bytes: int | None = None  # None: the base's largest shard (in the output dtype)


@dataclass(frozen=True)
class MergeStats:
    """What the merge wrote."""

    shards: int
    merged: int  # tensors changed by a LoRA delta
    replaced: int  # tensors replaced whole (modules_to_save, trained biases)
    total_bytes: int


def torch_dtype(name: str) -> torch.dtype:
    """``float32`` -> ``torch.float32``."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def tensor_infos(base: BaseWeights) -> list[TensorInfo]:
    """Every base tensor, in file order and then in the order of its bytes in the file."""
    from safetensors import safe_open

    infos: list[TensorInfo] = []
    for path in base.files:
        header = _header(path)
        with safe_open(str(path), framework="pt") as handle:
            names = [n for n in handle.keys() if base.weight_map.get(n) == path.name]  # noqa: SIM118
        names.sort(key=lambda n: header[n]["data_offsets"][0])
        infos.extend(TensorInfo(n, path, tuple(header[n]["shape"]), str(header[n]["dtype"])) for n in names)
    return infos


def _header(path: Path) -> dict[str, dict[str, Any]]:
    # The safetensors format: 8 bytes little-endian header length, then the JSON header (shapes, dtypes,
    # offsets). safe_open's slices give shape and dtype but not the offsets the file order needs.
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header: dict[str, dict[str, Any]] = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


def plan_shards(infos: list[TensorInfo], out_element_bytes: int, max_shard_bytes: int) -> ShardPlan:
    """Fill shards in order up to ``max_shard_bytes`` (a tensor larger than that gets a shard of its own)."""
    plan = ShardPlan()
    current: list[str] = []
    size = 0
    for info in infos:
        nbytes = info.out_bytes(out_element_bytes)
        if current and size + nbytes > max_shard_bytes:
            plan.shards.append(current)
            current, size = [], 0
        current.append(info.name)
        size += nbytes
        plan.total_bytes += nbytes
    if current:
        plan.shards.append(current)
    return plan


def default_shard_bytes(infos: list[TensorInfo], out_element_bytes: int) -> int:
    """The base's largest shard in the output dtype (the merged model keeps the base's layout), at most
    :data:`MAX_DEFAULT_SHARD_BYTES` (a base saved as one big file still merges a shard at a time)."""
    per_file: dict[Path, int] = {}
    for info in infos:
        per_file[info.file] = per_file.get(info.file, 0) + info.out_bytes(out_element_bytes)
    return min(MAX_DEFAULT_SHARD_BYTES, max(per_file.values(), default=1))


def lora_delta(pair: LoraPair, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``scale * B @ A`` in fp32 (transposed for a fan-in-fan-out layer, as PEFT's ``get_delta_weight``)."""
    delta = b.float() @ a.float()
    if pair.fan_in_fan_out:
        delta = delta.T
    return delta * pair.scale


def merge(request: MergeRequest) -> MergeStats:
    """Write the merged shards and ``model.safetensors.index.json`` into ``request.out``."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    adapter_tensors = load_file(str(request.adapter.folder / "adapter_model.safetensors"))  # small: MBs
    infos = tensor_infos(request.base)
    base_keys = {info.name for info in infos}
    pairs = {p.base_key: p for p in lora_pairs(request.adapter, list(adapter_tensors), base_keys)}
    replaced = {b: a for a, b in saved_modules(list(adapter_tensors), base_keys).items()}
    dtype = torch_dtype(request.dtype)
    element = dtype.itemsize
    budget = request.max_shard_bytes or default_shard_bytes(infos, element)
    plan = plan_shards(infos, element, budget)
    where = {info.name: info.file for info in infos}
    weight_map: dict[str, str] = {}
    for number, names in enumerate(plan.shards):
        out: dict[str, torch.Tensor] = {}
        # Each input file is opened for the tensors of this output shard only: closing it unmaps it, so
        # the pages read stay resident for one output shard's worth of tensors, whatever the input layout.
        for path, group in _by_file([(name, where[name]) for name in names]):
            with safe_open(str(path), framework="pt") as handle:
                for name in group:
                    out[name] = _merged(
                        name, handle.get_tensor(name), dtype, pairs, replaced, adapter_tensors
                    )
        file_name = plan.file_name(number)
        save_file(out, str(request.out / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(out, file_name))
        del out
    index = {"metadata": {"total_size": plan.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (request.out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return MergeStats(len(plan.shards), len(pairs), len(replaced), plan.total_bytes)


def _merged(
    name: str,
    tensor: torch.Tensor,
    dtype: torch.dtype,
    pairs: dict[str, LoraPair],
    replaced: dict[str, str],
    adapter: dict[str, torch.Tensor],
) -> torch.Tensor:
    """One output tensor: replaced whole, or ``W + delta`` in fp32, or as it was; floats cast once."""
    if name in replaced:
        tensor = adapter[replaced[name]]
    elif name in pairs:
        pair = pairs[name]
        tensor = tensor.float() + lora_delta(pair, adapter[pair.a_key], adapter[pair.b_key])
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _by_file(items: list[tuple[str, Path]]) -> Iterator[tuple[Path, list[str]]]:
    """Consecutive runs of tensor names that live in the same file (the plan keeps file order)."""
    current: Path | None = None
    names: list[str] = []
    for name, path in items:
        if path != current:
            if current is not None:
                yield current, names
            current, names = path, []
        names.append(name)
    if current is not None:
        yield current, names
