"""The rank-aware trainer's pure parts: the ranks from the environment, the step share, rank checkpoint files.

Fast (no training). The gang itself (torchrun, gloo) is exercised in test_ranks.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from continual_trainer import checkpoints as ckpts
from continual_trainer import ranks
from continual_trainer.config import LoraSpec
from continual_trainer.exitcodes import IntegrityError, PermanentError
from continual_trainer.plan import build_plan, rank_share

LORA = LoraSpec.model_validate({"r": 4, "alpha": 8, "dropout": 0.1, "targetModules": ["q_proj", "v_proj"]})


@given(
    samples=st.integers(1, 60),
    batch=st.integers(1, 6),
    accumulation=st.integers(1, 7),
    world=st.integers(1, 9),
)
def test_every_micro_batch_of_a_step_goes_to_exactly_one_rank_in_order(samples, batch, accumulation, world):
    plan = build_plan(samples, batch_size=batch, accumulation=accumulation, epochs=2, seed=3, batch_id="b")
    for step in plan:
        shares = [rank_share(step, rank, world) for rank in range(world)]
        indices = sorted(i for share in shares for i, _ in share)
        assert indices == list(range(len(step.micro_batches)))  # none lost, none repeated, none padded
        for rank, share in enumerate(shares):
            assert [i for i, _ in share] == list(range(rank, len(step.micro_batches), world))
            assert all(step.micro_batches[i] == mb for i, mb in share)
        sizes = [len(share) for share in shares]
        assert max(sizes) - min(sizes) <= 1  # an uneven step differs by one micro-batch at most


def test_the_plan_does_not_depend_on_the_world_size():
    # The plan has no world-size input at all: its steps (target step), samples and order are fixed.
    plan = build_plan(20, batch_size=4, accumulation=3, epochs=2, seed=0, batch_id="b2")
    assert len(plan) == 4
    assert [len(s.micro_batches) for s in plan] == [3, 2, 3, 2]
    assert rank_share(plan[1], 0, 4) == [(0, plan[1].micro_batches[0])]
    assert rank_share(plan[1], 3, 4) == []  # idle on this step: joins the all-reduce with zero weight


def test_one_process_without_the_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    gang = ranks.current()
    assert gang == ranks.Ranks(rank=0, world_size=1, local_rank=0)
    assert gang.is_coordinator and not gang.distributed
    assert ranks.broadcast_object({"x": 1}) == {"x": 1}
    assert ranks.all_reduce_sum([1.5, 0.0]) == [1.5, 0.0]


def test_ranks_as_torchrun_sets_them(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    gang = ranks.current()
    assert (gang.rank, gang.world_size, gang.local_rank, gang.is_coordinator) == (3, 4, 1, False)
    assert gang.describe() == "rank 3 of 4"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2"),
    ],
)
def test_a_broken_rank_environment_is_refused_naming_it(monkeypatch, env, needle):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(PermanentError, match=needle) as info:
        ranks.current()
    assert info.value.reason == "BadRankEnvironment" and "torchrun" in info.value.message


def test_one_process_imports_nothing_distributed():
    code = (
        "import sys\n"
        "from continual_trainer import cli, ranks\n"
        "ranks.barrier('x'); ranks.broadcast_object(1); ranks.all_reduce_sum([1.0]); ranks.shutdown()\n"
        "assert not ranks.joined()\n"
        "assert 'torch.distributed' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr


def _checkpoint(folder: Path, world_size: int) -> Path:
    """A checkpoint folder with the files Trainer writes (contents need not be real for validation)."""
    folder.mkdir(parents=True)
    for name in ckpts.required_files(world_size):
        if name != ckpts.MANIFEST:
            (folder / name).write_bytes(name.encode())
    step = ckpts.step_of(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    adapter = {
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.1,
        "target_modules": ["v_proj", "q_proj"],
        "bias": "none",
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter))
    return folder


def test_a_checkpoint_of_two_ranks_lists_both_rank_files_and_validates(tmp_path):
    staged = _checkpoint(tmp_path / "staging" / "checkpoint-4", 2)
    final = ckpts.publish(staged, tmp_path / "checkpoints", batch_id="b", step=4, world_size=2)
    manifest = json.loads((final / ckpts.MANIFEST).read_text())
    assert manifest["worldSize"] == 2
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"])
    assert ckpts.validate(final, LORA) is None
    # one process's manifest stays as it always was
    single = ckpts.publish(
        _checkpoint(tmp_path / "s" / "checkpoint-2", 1), tmp_path / "checkpoints", batch_id="b", step=2
    )
    assert "worldSize" not in json.loads((single / ckpts.MANIFEST).read_text())
    assert ckpts.validate(single, LORA) is None


def test_a_checkpoint_missing_a_rank_file_is_quarantined_with_the_reason(tmp_path):
    run = tmp_path / "run"
    ckpts.publish(
        _checkpoint(tmp_path / "s" / "checkpoint-2", 2),
        run / "checkpoints",
        batch_id="b",
        step=2,
        world_size=2,
    )
    torn = ckpts.publish(
        _checkpoint(tmp_path / "s" / "checkpoint-4", 2),
        run / "checkpoints",
        batch_id="b",
        step=4,
        world_size=2,
    )
    (torn / "rng_state_1.pth").unlink()
    valid = ckpts.scan(run / "checkpoints", LORA, run)
    assert [c.step for c in valid] == [2]
    reason = ckpts.quarantine_reason(run, 4)
    assert reason is not None
    assert "missing files: rng_state_1.pth (saved by 2 ranks: each rank's file is part of it)" in reason


def test_a_staged_checkpoint_missing_a_rank_file_is_never_published(tmp_path):
    staged = _checkpoint(tmp_path / "staging" / "checkpoint-4", 2)
    (staged / "rng_state_1.pth").unlink()
    with pytest.raises(IntegrityError, match=r"lacks rng_state_1\.pth \(saved by 2 rank"):
        ckpts.publish(staged, tmp_path / "checkpoints", batch_id="b", step=4, world_size=2)
    assert not (tmp_path / "checkpoints" / "checkpoint-4").exists()
    assert staged.is_dir()  # nothing lost: the retry starts from the last published checkpoint


GANG_SCRIPT = """
import os, sys, time
from continual_trainer import preemption, ranks
preemption.install()
gang = ranks.init()
assert ranks.broadcast_object({"from": gang.rank} if gang.is_coordinator else None) == {"from": 0}
assert ranks.all_reduce_sum([1.0, float(gang.rank)]) == [2.0, 1.0]
ranks.barrier("both")
if gang.rank == 1:
    try:
        print("waiting", flush=True)
        ranks.barrier("rank 0 never comes")
    except preemption.Preempted:
        print("preempted", flush=True)
        os._exit(85)  # as the CLI leaves a gang: the interrupted barrier is still pending
time.sleep(120)
"""


def test_two_ranks_exchange_and_a_sigterm_interrupts_a_wait(tmp_path):
    import signal
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {
            "PATH": "/usr/bin:/bin",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", GANG_SCRIPT],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        assert procs[1].stdout is not None
        assert procs[1].stdout.readline().strip() == "waiting", (
            procs[1].stderr.read() if procs[1].stderr else ""
        )
        time.sleep(0.5)  # rank 1 is inside the barrier now, which rank 0 never reaches
        procs[1].send_signal(signal.SIGTERM)  # its wait is polled: the handler runs at once
        assert procs[1].wait(timeout=30) == 85
        assert procs[1].stdout.read().strip() == "preempted"
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
