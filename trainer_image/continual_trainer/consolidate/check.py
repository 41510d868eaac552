"""The check a merged model passes before it counts: its logits against base + adapter through PEFT.

The reference is what training meant: the base model in fp32 with the adapter applied by PEFT (no merge),
in eval mode (no dropout). The candidate is the merged folder loaded with plain
``AutoModelForCausalLM.from_pretrained`` (no PEFT: what a serving stack does), upcast to fp32 so that the
comparison measures the merge and the rounding of its weights, not bf16 arithmetic. Both run on the same
probe: fixed token ids drawn from a seeded generator over the vocabulary.

Tolerance: fp32 output, ``atol = 1e-4`` (as PEFT's own merge tests). bf16/fp16 output, the tolerance is
measured on the spot: the reference's weights are rounded to the output dtype (base and adapter separately,
without merging) and the logits' drift that this rounding alone causes is the unit; the merged model may
differ by at most :data:`ROUNDED_FACTOR` times that (and never less than the fp32 tolerance). A wrong merge
(a missing delta, a wrong scale, a transposed update) moves logits by the adapter's whole effect, far more.

The models are loaded one after the other and freed, so the check's peak is about one fp32 model.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FP32_TOLERANCE = 1e-4
#: How many times the drift of merely rounding the reference's weights a bf16/fp16 merge may show.
ROUNDED_FACTOR = 4.0
PROBE_SEED = 1234
PROBE_SHAPE = (2, 32)


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


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    import torch

    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=ids).logits
    return logits.float()


def _load(folder: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model.eval()  # no dropout


def compare(base: Path, adapter: Path, merged: Path, dtype: str) -> CheckResult:
    """Logits of ``merged`` (plain transformers) vs ``base`` + ``adapter`` (PEFT), on the probe."""
    import torch
    from peft import PeftModel

    reference = PeftModel.from_pretrained(_load(base), str(adapter)).eval()
    ids = probe_ids(int(reference.config.vocab_size))
    expected = _logits(reference, ids)
    drift: float | None = None
    if dtype != "float32":
        rounded_to = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        with torch.no_grad():
            for param in reference.parameters():
                param.copy_(param.to(rounded_to).float())
        drift = float((_logits(reference, ids) - expected).abs().max())
    del reference
    gc.collect()
    candidate = _load(merged)
    got = _logits(candidate, ids)
    del candidate
    gc.collect()
    diff = float((got - expected).abs().max())
    if math.isnan(diff):  # never within any tolerance
        diff = float("inf")
    tolerance = FP32_TOLERANCE if drift is None else max(FP32_TOLERANCE, ROUNDED_FACTOR * drift)
    probe = f"{PROBE_SHAPE[0]}x{PROBE_SHAPE[1]} token ids, torch.randint seeded {PROBE_SEED}"
    return CheckResult(max_abs_diff=diff, tolerance=tolerance, rounding_drift=drift, probe=probe)
