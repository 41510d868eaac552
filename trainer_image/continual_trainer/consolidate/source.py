"""What a consolidation merges: the run's latest adapter and the base model's original safetensors shards.

Everything here reads headers and small JSON files only (no weights are loaded), so that every refusal --
nothing trained yet, a quantized base, weights that are not safetensors, an adapter this merge does not
understand -- comes before a byte of output is written.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continual_trainer.config import BaseModelSpec
from continual_trainer.exitcodes import BadConfigError, PermanentError

#: PEFT saves adapter tensors under this prefix (the PeftModel wrapping the causal LM).
PEFT_PREFIX = "base_model.model."
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
#: safetensors dtype names of quantized or packed weights (bitsandbytes int8/4-bit, GPTQ/AWQ packed ints).
QUANTIZED_DTYPES = {"I8", "U8", "I16", "I32", "F8_E4M3", "F8_E5M2", "F4"}
#: Tensor name endings that only quantized checkpoints have (GPTQ/AWQ, bitsandbytes).
QUANTIZED_SUFFIXES = (
    ".qweight",
    ".qzeros",
    ".scales",
    ".g_idx",
    ".SCB",
    ".absmax",
    ".quant_map",
    ".quant_state",
)


class NothingToConsolidateError(PermanentError):
    """The run has no exported adapter yet: no batch has completed."""

    reason = "NothingToConsolidate"


class QuantizedBaseError(PermanentError):
    """The base model is quantized: merging into rounded integers would lose the adapter."""

    reason = "QuantizedBaseModel"


class UnsupportedAdapterError(PermanentError):
    """The adapter (or the base's weight format) is one this merge does not handle."""

    reason = "UnsupportedForConsolidation"


@dataclass(frozen=True)
class Adapter:
    """The exported adapter ``adapters/step-N`` that ``adapters/latest`` points at."""

    folder: Path
    global_step: int
    config: dict[str, Any]


@dataclass(frozen=True)
class LoraPair:
    """One LoRA target: ``W' = W + scale * B @ A`` (transposed for fan-in-fan-out layers)."""

    base_key: str
    a_key: str
    b_key: str
    scale: float
    fan_in_fan_out: bool


@dataclass(frozen=True)
class BaseWeights:
    """The base model's folder and its safetensors shards (each tensor name -> its file)."""

    folder: Path
    files: list[Path]
    weight_map: dict[str, str]
    config: dict[str, Any]


def latest_adapter(run_dir: Path) -> Adapter:
    """``adapters/latest`` resolved, or a clear refusal when no batch has completed yet."""
    link = run_dir / "adapters" / "latest"
    folder = link.resolve() if link.is_symlink() or link.exists() else None
    if folder is None or not (folder / "adapter_model.safetensors").is_file():
        raise NothingToConsolidateError(
            f"no adapter to consolidate in {run_dir}: {link} does not exist yet (no batch has completed). "
            "Consolidation merges the adapter a completed batch exports; train a batch first (spec.consolidation "
            "runs again on its schedule)"
        )
    match = re.fullmatch(r"step-(\d+)", folder.name)
    if match is None or not folder.is_relative_to((run_dir / "adapters").resolve()):
        raise PermanentError(
            f"{link} points at {folder}, not at an adapters/step-N folder of the run: it is written by the "
            "trainer only (at every batch end): point it back at the newest adapter (`ln -sfn step-N "
            "adapters/latest` in the run folder, N its global step), or restore the volume from a backup",
            reason="AdapterLinkDamaged",
        )
    config = _read_json(folder / "adapter_config.json", "the adapter's config")
    return Adapter(folder=folder, global_step=int(match.group(1)), config=config)


def base_folder(base: BaseModelSpec) -> Path:
    """The base model's folder: ``baseModel.path`` (already confined), or the hub model's cached snapshot."""
    if base.path is not None:
        return Path(base.path)
    from huggingface_hub import snapshot_download

    from continual_trainer.model import _hub_kwargs, load_error

    try:
        return Path(snapshot_download(str(base.id), **_hub_kwargs(base)))
    except (OSError, ValueError) as exc:
        raise load_error("the base model's files", base, exc) from exc


def base_weights(folder: Path) -> BaseWeights:
    """The shards of a base folder, refusing quantized or non-safetensors weights (names the fix)."""
    config = _read_json(folder / "config.json", "the base model's config")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "unknown")
        raise QuantizedBaseError(
            f"baseModel: {folder} is quantized (config.json has quantization_config, quant_method {method!r}): "
            "merging a LoRA adapter into quantized weights loses it. Merge before quantizing: point "
            "baseModel at the unquantized model, consolidate, then quantize the merged folder"
        )
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = dict(_read_json(index, "the base model's shard index")["weight_map"])
    elif (folder / SINGLE_NAME).is_file():
        weight_map = dict.fromkeys(_tensor_names(folder / SINGLE_NAME), SINGLE_NAME)
    else:
        raise UnsupportedAdapterError(
            f"baseModel: {folder} has no safetensors weights ({SINGLE_NAME} or {INDEX_NAME}); consolidation "
            "reads the original weights from safetensors only: re-save the base with save_pretrained "
            "(safetensors is its default) and point baseModel at that folder"
        )
    files = [folder / name for name in dict.fromkeys(weight_map.values())]
    _refuse_quantized_tensors(files)
    return BaseWeights(folder=folder, files=files, weight_map=weight_map, config=config)


def _tensor_names(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def _refuse_quantized_tensors(files: list[Path]) -> None:
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                dtype = handle.get_slice(name).get_dtype()
                if name.endswith(QUANTIZED_SUFFIXES) or (
                    dtype in QUANTIZED_DTYPES and name.endswith(".weight")
                ):
                    raise QuantizedBaseError(
                        f"baseModel: {path.name} holds quantized weights ({name}: {dtype}): merging a LoRA "
                        "adapter into quantized weights loses it. Merge before quantizing: point baseModel at "
                        "the unquantized model, consolidate, then quantize the merged folder"
                    )


def lora_pairs(adapter: Adapter, adapter_keys: list[str], base_keys: set[str]) -> list[LoraPair]:
    """Every LoRA target of the adapter, mapped to the base tensor it changes (refusing what it cannot merge)."""
    config = adapter.config
    if config.get("peft_type", "LORA") != "LORA":
        raise UnsupportedAdapterError(f"{adapter.folder}: a {config.get('peft_type')} adapter, not LoRA")
    extras = [k for k in adapter_keys if any(t in k for t in ("lora_magnitude", "lora_embedding"))]
    if config.get("use_dora") or extras:
        raise UnsupportedAdapterError(
            f"{adapter.folder}: DoRA or embedding LoRA tensors ({extras[:3]}) are not merged by consolidation; "
            "train plain LoRA on linear layers (lora.targetModules)"
        )
    pairs = []
    for a_key in sorted(k for k in adapter_keys if k.endswith(".lora_A.weight")):
        module = a_key.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
        b_key = a_key.replace(".lora_A.weight", ".lora_B.weight")
        base_key = f"{module}.weight"
        if b_key not in adapter_keys or base_key not in base_keys:
            raise UnsupportedAdapterError(
                f"{adapter.folder}: the LoRA target {module} has no {'lora_B' if b_key not in adapter_keys else 'base tensor ' + base_key}"
                " (an architecture that renames its weights when it loads them is not supported by consolidation)"
            )
        pairs.append(
            LoraPair(base_key, a_key, b_key, _scale(config, module), bool(config.get("fan_in_fan_out")))
        )
    if not pairs:
        raise UnsupportedAdapterError(f"{adapter.folder}: the adapter holds no LoRA weights (lora_A/lora_B)")
    return pairs


def saved_modules(adapter_keys: list[str], base_keys: set[str]) -> dict[str, str]:
    """Full tensors the adapter replaces (``modules_to_save``, trained biases): adapter key -> base key."""
    out = {}
    for key in adapter_keys:
        if ".lora_" in key:
            continue
        base_key = key.removeprefix(PEFT_PREFIX).replace(".modules_to_save", "")
        if base_key not in base_keys:
            raise UnsupportedAdapterError(
                f"the adapter tensor {key} replaces {base_key}, which the base model's files do not hold"
            )
        out[key] = base_key
    return out


def _scale(config: dict[str, Any], module: str) -> float:
    """``lora_alpha / r`` (``/ sqrt(r)`` with rslora), with PEFT's per-module rank and alpha patterns."""
    r = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else float(r))


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT matches a pattern against the end of the module name (peft.utils.other.get_pattern_key)
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BadConfigError(f"{what} is missing: {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise BadConfigError(f"{what} is unreadable: {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BadConfigError(f"{what} is not a JSON object: {path}")
    return data
