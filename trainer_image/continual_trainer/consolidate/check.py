"""The check a merged model passes before it counts: its logits against base + adapter through PEFT.

The reference is what training meant: the base model in fp32 with the adapter applied by PEFT (no merge),
in eval mode (no dropout). The candidate is the merged folder as plain transformers builds it (no PEFT: what
a serving stack does), upcast to fp32 so that the comparison measures the merge and the rounding of its
weights, not bf16 arithmetic. Both run on the same probe: fixed token ids drawn from a seeded generator over
the vocabulary.

Tolerance: fp32 output, ``atol = 1e-4`` (as PEFT's own merge tests). bf16/fp16 output, the tolerance is
measured on the spot: the reference's weights are rounded to the output dtype (base and adapter separately,
without merging) and the logits' drift that this rounding alone causes is the unit; the merged model may
differ by at most :data:`ROUNDED_FACTOR` times that (and never less than the fp32 tolerance). A wrong merge
(a missing delta, a wrong scale, a transposed update) moves logits by the adapter's whole effect, far more.

**Streamed, so memory is bounded by one module, not the model.** Neither model is loaded whole: each is
built on the meta device (``accelerate.init_empty_weights``: the real modules and their forward code,
no weight storage; buffers such as rotary frequencies are real), the adapter is loaded by PEFT onto that
skeleton (its own weights are real: they are small), and every module owning weights gets a forward
pre-hook that reads just its weights from the folder's safetensors files (``safe_open`` maps a file,
closing it unmaps it), upcast to fp32 as ``from_pretrained(dtype=float32)`` does, and a forward hook that
drops them again. The forward code, the weights and the order of operations are those of the in-memory
models, so the logits are bit-for-bit theirs (a test compares them); the peak is the libraries plus the
largest single module's weights in fp32 (usually the embedding or ``lm_head``) plus the probe's
activations. This is accelerate's disk offload done lazily from the original files: nothing is copied to
an offload folder. Its limit: a model whose forward reads a weight outside the forward of the module that
owns it fails loudly (a meta tensor has no data), never silently; the message says so.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continual_trainer.consolidate.source import base_weights
from continual_trainer.exitcodes import PermanentError

if TYPE_CHECKING:
    import torch

FP32_TOLERANCE = 1e-4
#: How many times the drift of merely rounding the reference's weights a bf16/fp16 merge may show.
ROUNDED_FACTOR = 4.0
PROBE_SEED = 1234
PROBE_SHAPE = (2, 32)


class StreamedCheckError(PermanentError):
    """The streamed forward pass cannot run on this model (the message names why): nothing is published."""

    reason = "ConsolidationCheckUnsupported"

    def __init__(self, message: str) -> None:
        super().__init__(
            f"{message}. Nothing was published; serve base + adapters/latest with PEFT meanwhile, and report "
            "it with the base model's architecture"
        )


@dataclass(frozen=True)
class CheckResult:
    """What the check measured."""

    max_abs_diff: float
    tolerance: float
    rounding_drift: float | None  # bf16/fp16: the drift of rounding the reference's weights alone
    probe: str  # how the probe was made, for the manifest

    @property
    def passed(self) -> bool:
        """Whether the merged model is within tolerance (a NaN never passes)."""
        return self.max_abs_diff <= self.tolerance


def probe_ids(vocab_size: int) -> torch.Tensor:
    """The probe: ``PROBE_SHAPE`` token ids from a generator seeded with ``PROBE_SEED``."""
    import torch

    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randint(0, vocab_size, PROBE_SHAPE, generator=generator)


@dataclass(frozen=True)
class _Weights:
    """A folder's safetensors tensors by name, read on demand and upcast to fp32 (rounded first if asked)."""

    folder: Path
    weight_map: dict[str, str]  # tensor name -> file name
    round_to: torch.dtype | None = None

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        import torch
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        out = {}
        for file, in_file in by_file.items():
            with safe_open(str(self.folder / file), framework="pt") as handle:  # closed: unmapped
                for name in in_file:
                    tensor = handle.get_tensor(name)
                    if tensor.is_floating_point():
                        tensor = tensor.to(torch.float32)
                        if self.round_to is not None:
                            tensor = tensor.to(self.round_to).float()
                    out[name] = tensor
        return out


def _skeleton(folder: Path) -> Any:
    """The folder's model on the meta device: modules and forward code, weights not allocated."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    with init_empty_weights(include_buffers=False):
        model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.tie_weights()  # as from_pretrained does: a tied lm_head is the embedding's parameter
    return model.eval()  # no dropout


def _checkpoint_keys(model: Any, weights: _Weights) -> list[tuple[Any, dict[str, str]]]:
    """For each module owning weights: (module, {parameter name: tensor name in the files})."""
    aliases: dict[int, list[str]] = {}  # a tied parameter has several names; the files hold one of them
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    owners = []
    for module_name, module in model.named_modules():
        keys = {}
        for pname, param in module.named_parameters(recurse=False):
            own = f"{module_name}.{pname}" if module_name else pname
            found = [n for n in [own, *aliases[id(param)]] if n in weights.weight_map]
            if not found:
                raise StreamedCheckError(
                    f"{weights.folder} has no weight for {own} (none in its safetensors index): the folder "
                    "does not hold this architecture's full weights"
                )
            keys[pname] = found[0]
        if keys:
            owners.append((module, keys))
    return owners


def _load_buffers(model: Any, weights: _Weights) -> None:
    """Persistent buffers the files hold (small: position ids, masks), as from_pretrained loads them."""
    names = [name for name, _ in model.named_buffers() if name in weights.weight_map]
    for name, tensor in weights.read(names).items():
        module_name, _, buffer = name.rpartition(".")
        module = model.get_submodule(module_name)
        module._buffers[buffer] = tensor.to(module._buffers[buffer].dtype)


def _stream(model: Any, weights: _Weights) -> set[int]:
    """Hooks that read a module's weights just before its forward and drop them just after.

    Returns the ids of the modules streamed. The hooks are plain functions keyed by module id: a copy PEFT
    makes of a module (``modules_to_save``) carries the hooks but not the id, so it is left to the adapter.
    """
    import torch

    _load_buffers(model, weights)
    streamed = _checkpoint_keys(model, weights)
    owners = {id(module): keys for module, keys in streamed}
    swapped: dict[int, dict[str, Any]] = {}

    def load(module: Any, _args: Any) -> None:
        keys = owners.get(id(module), {})
        want = {p: k for p, k in keys.items() if module._parameters[p].is_meta}
        tensors = weights.read(list(want.values()))
        saved = {}
        for pname, key in want.items():
            meta = module._parameters[pname]
            if tuple(tensors[key].shape) != tuple(meta.shape):
                raise StreamedCheckError(
                    f"{weights.folder}: {key} has shape {tuple(tensors[key].shape)}, the model expects "
                    f"{tuple(meta.shape)}: its config.json does not describe its weights"
                )
            saved[pname] = meta
            module._parameters[pname] = torch.nn.Parameter(tensors[key], requires_grad=False)
        swapped[id(module)] = saved

    def free(module: Any, _args: Any, _output: Any) -> None:
        for pname, meta in swapped.pop(id(module), {}).items():
            module._parameters[pname] = meta

    for module, _keys in streamed:
        module.register_forward_pre_hook(load)
        module.register_forward_hook(free)
    return set(owners)


def _load_adapter(model: Any, state: dict[str, Any]) -> set[str]:
    """Load the adapter's tensors into ``model``; the model's keys it left untouched.

    A tensor landing on a meta parameter is a no-op (and a torch warning, silenced): the caller makes
    those parameters real first and loads again.
    """
    from peft import set_peft_model_state_dict

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*to a meta parameter in the current model.*")
        loaded: Any = set_peft_model_state_dict(model, state)
    return set(loaded.missing_keys)


def _with_adapter(skeleton: Any, adapter: Path, streamed: set[int]) -> Any:
    """PEFT's model of base + adapter on the skeleton, the adapter's own weights real (in fp32)."""
    import torch
    from peft import PeftModel, load_peft_weights

    # PEFT creates the adapter's layers on the device of the layer they wrap (meta, here) and its load is a
    # no-op there: make them real on the CPU, then load the adapter's file into them
    with warnings.catch_warnings():  # that no-op load, which the load below replaces
        warnings.filterwarnings("ignore", message=".*to a meta parameter in the current model.*")
        model = PeftModel.from_pretrained(skeleton, str(adapter)).eval()
    state = load_peft_weights(str(adapter))
    materialized = set()
    for name, module in model.named_modules():
        if id(module) in streamed or not any(p.is_meta for p in module.parameters(recurse=False)):
            continue
        module.to_empty(device="cpu", recurse=False)
        materialized |= {f"{name}.{pname}" for pname, _ in module.named_parameters(recurse=False)}
    missing = _load_adapter(model, state)
    # the adapter's own value for a streamed module's weight (a trained bias) replaces the base's: made real
    # here, the streaming hooks leave it alone (they read meta parameters only)
    overrides = {name for name, param in model.named_parameters() if param.is_meta} - missing
    for name in overrides:
        module_name, _, pname = name.rpartition(".")
        module = model.get_submodule(module_name)
        meta: Any = module._parameters[pname]
        module._parameters[pname] = torch.nn.Parameter(
            torch.empty(meta.shape, dtype=meta.dtype), requires_grad=False
        )
    if overrides:
        missing = _load_adapter(model, state)
    unset = (materialized | overrides) & missing
    if unset:
        raise StreamedCheckError(f"{adapter}: the adapter's file has no value for {sorted(unset)[:3]}")
    return model


def _weights(folder: Path, round_to: torch.dtype | None = None) -> _Weights:
    return _Weights(folder, base_weights(folder).weight_map, round_to)


def _meta_inputs(value: Any) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return bool(value.is_meta)
    if isinstance(value, list | tuple):
        return any(_meta_inputs(v) for v in value)
    if isinstance(value, dict):
        return any(_meta_inputs(v) for v in value.values())
    return False


def _real_outputs(value: Any) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return not value.is_meta
    if isinstance(value, list | tuple):
        return any(_real_outputs(v) for v in value)
    return False


def _no_meta_reads() -> Any:
    """A torch function mode refusing any op that turns a meta tensor into a real one.

    Some kernels (``F.linear`` with a meta weight and a real input) return uninitialised memory instead of
    raising: a weight read outside the forward of its module (so never streamed) would then give garbage
    logits. Reading a meta tensor's shape or dtype, or ops from meta to meta, stay allowed.
    """
    from torch.overrides import TorchFunctionMode

    class NoMetaReads(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if (_meta_inputs(args) or _meta_inputs(kwargs)) and _real_outputs(out):
                raise StreamedCheckError(
                    f"the streamed forward pass read a weight outside its module's forward ({func}): "
                    "this architecture cannot be checked with weights streamed module by module"
                )
            return out

    return NoMetaReads()


def _forward(model: Any, ids: torch.Tensor) -> torch.Tensor:
    import torch

    try:
        with torch.no_grad(), _no_meta_reads():
            logits: torch.Tensor = model(input_ids=ids).logits
    except (NotImplementedError, RuntimeError) as exc:
        if "meta" not in str(exc):
            raise
        raise StreamedCheckError(
            f"the streamed forward pass read a weight outside its module's forward ({exc}): this "
            "architecture cannot be checked with weights streamed module by module"
        ) from exc
    return logits.float()


def vocab_size(folder: Path) -> int:
    """The vocabulary the probe is drawn from (the base's config)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(folder)).vocab_size)


def reference_logits(
    base: Path, adapter: Path, ids: torch.Tensor, round_to: torch.dtype | None = None
) -> torch.Tensor:
    """Base (fp32, streamed) + adapter through PEFT, unmerged; weights rounded to ``round_to`` first if given."""
    import torch

    skeleton = _skeleton(base)
    streamed = _stream(skeleton, _weights(base, round_to))  # before PEFT wraps: its base layers keep them
    reference = _with_adapter(skeleton, adapter, streamed)
    with torch.no_grad():
        for param in reference.parameters():
            if param.is_meta or not param.is_floating_point():
                continue  # the base's: streamed, rounded when read
            # as on a fp32 base in memory: the adapter's weights are fp32, rounded like the base's if asked
            param.data = param.float() if round_to is None else param.to(round_to).float()
    return _forward(reference, ids)


def model_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    """A plain (PEFT-free) model folder's logits in fp32, its weights streamed."""
    model = _skeleton(folder)
    _stream(model, _weights(folder))
    return _forward(model, ids)


def compare(base: Path, adapter: Path, merged: Path, dtype: str) -> CheckResult:
    """Logits of ``merged`` (plain transformers) vs ``base`` + ``adapter`` (PEFT), on the probe, streamed."""
    import torch

    ids = probe_ids(vocab_size(base))
    expected = reference_logits(base, adapter, ids)
    drift: float | None = None
    if dtype != "float32":
        rounded_to = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        drift = float((reference_logits(base, adapter, ids, rounded_to) - expected).abs().max())
    got = model_logits(merged, ids)
    diff = float((got - expected).abs().max())
    if math.isnan(diff):  # never within any tolerance
        diff = float("inf")
    tolerance = FP32_TOLERANCE if drift is None else max(FP32_TOLERANCE, ROUNDED_FACTOR * drift)
    probe = f"{PROBE_SHAPE[0]}x{PROBE_SHAPE[1]} token ids, torch.randint seeded {PROBE_SEED}"
    return CheckResult(max_abs_diff=diff, tolerance=tolerance, rounding_drift=drift, probe=probe)
