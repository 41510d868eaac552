"""The gang commands against the real torchrun: its parser accepts them, and a 2-node launch on loopback
gives global rank 0 (the coordinator) to the pod with completion index 0.

The launch runs two torchrun agents (the two "pods") with the built command, the kubelet's expansion of
``$(JOB_COMPLETION_INDEX)`` done by hand and the coordinator's DNS name replaced by 127.0.0.1; the workers
are a probe module that records its torch.distributed environment instead of training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_gang import command, flag, gang_job, produced
from tests.s3server import free_port

from continual_operator.workloads import gang
from continual_operator.workloads.gang import Gang

torch_run = pytest.importorskip("torch.distributed.run")

PROBE = """
import json, os, sys
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
out = os.path.join(os.environ["PROBE_DIR"], "rank-" + os.environ["RANK"] + ".json")
with open(out, "w") as f:
    json.dump({"env": {k: os.environ[k] for k in keys}, "argv": sys.argv[1:]}, f)
"""


@pytest.mark.parametrize("name", ["gang-job.yaml", "gang-jobset.yaml", "gang-indexed-job.yaml"])
def test_torchrun_parses_the_built_command(name: str) -> None:
    cmd = command(produced()[name])
    assert cmd[0] == "torchrun"
    args = torch_run.parse_args([a.replace("$(JOB_COMPLETION_INDEX)", "1") for a in cmd[1:]])
    assert args.module is True
    assert args.training_script == "continual_trainer.cli"
    assert args.training_script_args == ["--config", "/etc/continual/trainer.yaml"]
    assert args.max_restarts == 0
    assert args.shutdown_timeout == int(flag(cmd, "--shutdown-timeout"))
    if name == "gang-job.yaml":
        assert (args.nproc_per_node, args.nnodes, args.standalone) == ("2", "1", True)
    else:
        assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", 1)
        assert args.rdzv_backend == "static"  # ranks = node rank x processes per node + local rank
        assert (args.master_addr, args.master_port) == (flag(cmd, "--master-addr"), 29500)


def pod_command(cmd: list[str], index: int, port: int) -> list[str]:
    """What pod ``index`` runs: the kubelet's $(VAR) expansion, DNS resolved to loopback, the probe."""
    out = [a.replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in cmd]
    out[out.index("--master-addr") + 1] = "127.0.0.1"
    out[out.index("--master-port") + 1] = str(port)
    out[out.index("continual_trainer.cli")] = "gang_probe"
    return [sys.executable, "-m", "torch.distributed.run", *out[1:]]


def test_two_node_launch_gives_rank_zero_to_completion_index_zero(tmp_path: Path) -> None:
    job, _ = gang_job()
    (indexed, _service) = gang.build(job, Gang(nodes=2, gpus=2), "indexed-job")
    (tmp_path / "gang_probe.py").write_text(PROBE)
    port = free_port()
    env = os.environ | {"PROBE_DIR": str(tmp_path), "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    pods = [
        subprocess.Popen(pod_command(command(indexed), index, port), env=env, cwd=tmp_path)
        for index in (1, 0)  # the coordinator's pod may well start last
    ]
    assert [p.wait(timeout=120) for p in pods] == [0, 0]
    ranks: dict[int, dict[str, Any]] = {
        int(path.stem.split("-")[1]): json.loads(path.read_text()) for path in tmp_path.glob("rank-*.json")
    }
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, seen in ranks.items():
        env_ = seen["env"]
        assert env_["WORLD_SIZE"] == "4"
        assert int(env_["GROUP_RANK"]) == rank // 2  # the node rank: the pod's completion index
        assert int(env_["LOCAL_RANK"]) == rank % 2
        assert seen["argv"] == ["--config", "/etc/continual/trainer.yaml"]
    assert ranks[0]["env"]["GROUP_RANK"] == "0"  # the coordinator runs in pod 0, whose name is --master-addr
