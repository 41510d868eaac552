"""Every documented per-batch setting changed between batches applies from the next batch, exactly.

For each setting: b1 trains with the base settings, b2 with the setting changed. Batch by batch (a fresh
trainer per batch) must equal the uninterrupted reference run given the same two configs (max abs diff
0.0): so the reference follows each batch's settings across a boundary inside one process, and the trainer
applies them over whatever the restored checkpoint says. Settings that change the weights must also make a
difference against a run without the change (a setting ignored by both would otherwise pass).

Most cases run the batches in-process (``execute``, which restores ``optimizer.pt`` and the RNG state from
disk exactly as a new process does); ``weightDecay`` (the setting a restored optimizer used to override)
also runs one process per batch, as the Jobs do; the seed's cross-process behaviour is what
test_exactness.py already covers. Precision is left out: it cannot be bit-exact against a reference in another precision.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.trainer.helpers import DEMO_BATCHES, adapter_weights, make_config, max_abs_diff, run_trainer

from continual_trainer.cli import execute
from continual_trainer.exitcodes import ExitCode
from continual_trainer.reference import run_uninterrupted

pytestmark = pytest.mark.slow
(B1, P1), (B2, P2) = DEMO_BATCHES[:2]
#: One epoch per batch keeps each case small: b1 is steps 0..3 (24 samples, batch 4 x accumulation 2),
#: b2 steps 3..6 (20 samples).
BASE = {"epochsPerBatch": 1}
BASE_END, UNCHANGED_END = 3, 6

#: setting -> (the value b2 gets, whether it changes the weights)
CHANGES: dict[str, tuple[Any, bool]] = {
    "learningRate": (0.0005, True),
    "lrSchedule": ({"type": "rewarm", "warmupSteps": 2, "minLrRatio": 0.1}, True),
    "perDeviceBatchSize": (3, True),
    "gradientAccumulationSteps": (1, True),
    "epochsPerBatch": (2, True),
    "maxSeqLength": (10, True),  # b2's samples have 15 tokens
    "seed": (7, True),
    "weightDecay": (0.5, True),
    "maxGradNorm": (0.001, True),
    "saveSteps": (1, False),
    "checkpointsKept": (1, False),
}


@pytest.fixture(scope="module")
def after_b1(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("settings-after-b1") / "run"
    code, result = execute(make_config(run_dir, tiny_model, B1, P1, training=BASE))
    assert code == ExitCode.SUCCESS, result
    assert result.end_step == BASE_END
    return run_dir


@pytest.fixture(scope="module")
def unchanged(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference without any change: its final adapter."""
    run_dir = tmp_path_factory.mktemp("settings-unchanged") / "run"
    configs = [make_config(run_dir, tiny_model, b, p, training=BASE) for b, p in DEMO_BATCHES[:2]]
    result = run_uninterrupted(configs, run_dir)
    assert result.final_step == UNCHANGED_END
    return adapter_weights(run_dir / "checkpoints" / f"checkpoint-{result.final_step}")


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))


def reference_with(change: dict[str, Any], model: Path, run_dir: Path) -> tuple[int, dict[str, Any]]:
    configs = [
        make_config(run_dir, model, B1, P1, training=BASE),
        make_config(run_dir, model, B2, P2, training={**BASE, **change}),
    ]
    result = run_uninterrupted(configs, run_dir)
    return result.final_step, adapter_weights(run_dir / "checkpoints" / f"checkpoint-{result.final_step}")


@pytest.mark.parametrize("setting", list(CHANGES))
def test_a_setting_changed_between_batches_applies_from_the_next_batch(
    setting, after_b1, unchanged, tiny_model, tmp_path
):
    value, affects_weights = CHANGES[setting]
    change = {setting: value}
    run_dir = tmp_path / "run"
    shutil.copytree(after_b1, run_dir, symlinks=True)
    code, result = execute(make_config(run_dir, tiny_model, B2, P2, training={**BASE, **change}))
    assert code == ExitCode.SUCCESS, result
    assert result.start_step == BASE_END
    end, ref = reference_with(change, tiny_model, tmp_path / "ref")
    assert result.end_step == end
    final = adapter_weights(run_dir / "checkpoints" / f"checkpoint-{end}")
    assert max_abs_diff(final, ref) == 0.0
    if affects_weights:
        assert end != UNCHANGED_END or max_abs_diff(final, unchanged) > 0.0, f"{setting} had no effect"
        return
    assert max_abs_diff(final, unchanged) == 0.0
    if setting == "saveSteps":
        # every step of b2 in both runs (the reference keeps every checkpoint, the run 2); unchanged, b2
        # would save at 5 and 6 only
        assert checkpoint_steps(tmp_path / "ref") == [2, 3, 4, 5, 6]
        assert checkpoint_steps(run_dir) == [5, 6]
    else:
        assert checkpoint_steps(run_dir) == [6]


def test_a_changed_weight_decay_in_separate_processes_equals_the_reference(tiny_model, tmp_path):
    change = {"weightDecay": CHANGES["weightDecay"][0]}
    run_dir = tmp_path / "run"
    for batch, path, training in ((B1, P1, BASE), (B2, P2, {**BASE, **change})):
        out = run_trainer(make_config(run_dir, tiny_model, batch, path, training=training))
        assert out.code == 0, out.stderr[-3000:]
    end, ref = reference_with(change, tiny_model, tmp_path / "ref")
    final = run_dir / "checkpoints" / f"checkpoint-{end}"
    assert max_abs_diff(adapter_weights(final), ref) == 0.0
    # the restored optimizer's param groups no longer win: the decaying group has b2's value
    groups = torch.load(final / "optimizer.pt", weights_only=True)["param_groups"]
    assert [g["weight_decay"] for g in groups if g["params"]] == [0.5]
