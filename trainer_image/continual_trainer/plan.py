"""The step plan of a data batch: which samples each optimizer step trains, decided before training.

Trainer's own bookkeeping assumes one dataset per run; resumed on a *new* batch it fast-forwards the new data
by the whole run's ``global_step`` and silently trains nothing, or the wrong samples. So the plan is ours:

* a batch of ``N`` samples is trained for ``E`` epochs; epoch ``e`` visits the samples in a permutation
  seeded by (run seed, batch id, e), so the order is reproducible in any process;
* each epoch is cut into micro-batches of ``B`` samples (the last one may be smaller) and those into
  optimizer steps of ``G`` micro-batches (the last step of an epoch may have fewer): exactly how ``Trainer``
  counts, so ``steps = E * ceil(ceil(N / B) / G)``;
* step ``k`` of the batch is global step ``start + k``. A retry that resumes from a checkpoint at global step
  ``c`` continues with batch step ``c - start``: skipped data is measured from the batch start, never from 0.

None of this depends on how many processes train the batch. With ``W`` ranks (:mod:`continual_trainer.ranks`)
each step is *shared out*, never re-planned: micro-batch ``i`` of a step goes to rank ``i mod W``
(:func:`rank_share`), so rank ``r`` trains micro-batches ``r, r + W, r + 2W, ...``. A step whose micro-batch
count does not divide by ``W`` gives some ranks one micro-batch fewer; a rank with none (fewer micro-batches
than ranks) takes part in the gradient all-reduce with a zero contribution. No padding, no repeated sample:
every loss term is divided by the whole step's label-token count and multiplied by ``W`` (DDP averages the
ranks' gradients), so the reduced gradient is the one-process sum, up to the order of the additions. The
batch's target step, its samples and their order are the same for every ``W``; ``W`` may change between
batches and between attempts of one batch.

This module is pure Python (no torch): the operator and tests can compute plans too.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPlan:
    """One optimizer step: its micro-batches, each a tuple of sample indices into the batch."""

    micro_batches: tuple[tuple[int, ...], ...]

    @property
    def sample_indices(self) -> tuple[int, ...]:
        """All samples of the step, in order."""
        return tuple(i for mb in self.micro_batches for i in mb)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python versions (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def epoch_order(num_samples: int, seed: int, batch_id: str, epoch: int) -> list[int]:
    """The order in which epoch ``epoch`` of a batch visits its samples."""
    order = list(range(num_samples))
    random.Random(derive_seed("data-order", seed, batch_id, epoch)).shuffle(order)  # noqa: S311 - not crypto
    return order


def steps_per_epoch(num_samples: int, batch_size: int, accumulation: int) -> int:
    """Optimizer steps in one epoch, as ``Trainer`` counts them."""
    if num_samples <= 0:
        return 0
    return math.ceil(math.ceil(num_samples / batch_size) / accumulation)


def total_steps(num_samples: int, batch_size: int, accumulation: int, epochs: int) -> int:
    """Optimizer steps for the whole batch."""
    return epochs * steps_per_epoch(num_samples, batch_size, accumulation)


def build_plan(
    num_samples: int, *, batch_size: int, accumulation: int, epochs: int, seed: int, batch_id: str
) -> list[StepPlan]:
    """Every optimizer step of the batch, in order."""
    steps: list[StepPlan] = []
    for epoch in range(epochs):
        order = epoch_order(num_samples, seed, batch_id, epoch)
        micro = [tuple(order[i : i + batch_size]) for i in range(0, num_samples, batch_size)]
        steps.extend(
            StepPlan(micro_batches=tuple(micro[i : i + accumulation]))
            for i in range(0, len(micro), accumulation)
        )
    return steps


def rank_share(step: StepPlan, rank: int, world_size: int) -> list[tuple[int, tuple[int, ...]]]:
    """The micro-batches of ``step`` that ``rank`` of ``world_size`` trains, with their index in the step.

    Round robin: micro-batch ``i`` goes to rank ``i mod world_size`` (see the module docstring). The index
    seeds the micro-batch's dropout, so what a micro-batch draws is the same on whichever rank trains it.
    """
    return [(i, mb) for i, mb in enumerate(step.micro_batches) if i % world_size == rank]
