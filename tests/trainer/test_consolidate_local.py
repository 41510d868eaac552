"""``continual-training consolidate --volume DIR``: the consolidation job on a volume a real local run made."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from continual_operator.cli import build_parser
from continual_operator.local.mode import LocalOptions, run_local

DEMO = Path(__file__).resolve().parents[2] / "operator" / "continual_operator" / "demo" / "run.yaml"
DATA = Path(__file__).resolve().parents[2] / "trainer_image" / "continual_trainer" / "demo_data"


def _consolidate(*argv: str) -> int:
    args = build_parser().parse_args(["consolidate", *argv])
    return int(args.func(args))


def test_consolidate_a_local_run_into_a_folder_plain_transformers_loads(tiny_model, tmp_path, capsys):
    volume = tmp_path / "volume"
    shutil.copytree(tiny_model, volume / "models" / "tiny-llama")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(DATA / "batch-001.jsonl", inbox / "batch-001.jsonl")
    manifest = tmp_path / "run.yaml"
    manifest.write_text(DEMO.read_text())
    options = LocalOptions(
        manifest=manifest, volume=volume, state=volume / ".local-state", inbox=inbox, settle_seconds=0
    )
    assert run_local(options, out=lambda _line: None) == 0

    assert _consolidate("--volume", str(volume), "--output", "merged") == 0
    printed = capsys.readouterr().out
    out = volume / "merged"
    assert f"consolidated global step 6 (1 batches) into {out}: float32" in printed
    manifest_json = json.loads((out / "consolidation.json").read_text())
    assert manifest_json["run"] == {"namespace": "local", "name": "demo", "uid": "local:demo"}
    assert manifest_json["globalStep"] == 6 and manifest_json["adapter"] == "adapters/step-6"

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(out))
    base = AutoModelForCausalLM.from_pretrained(str(volume / "models" / "tiny-llama"))
    assert any(not torch.equal(a, b) for a, b in zip(merged.parameters(), base.parameters(), strict=True))

    # the volume's own folders are refused, with the message on stderr and exit 64
    assert _consolidate("--volume", str(volume), "--output", "runs/demo") == 64
    assert "--output: 'runs/demo'" in capsys.readouterr().err
    # the job's config is the run's, written beside local mode's own job configs
    configs = sorted((volume / ".local-state" / "jobs").glob("consolidate-*.yaml"))
    assert configs and yaml.safe_load(configs[-1].read_text())["dataRoot"] == str(volume)


def test_a_volume_local_mode_never_trained_says_how_to_train(tmp_path):
    from continual_operator.local.state import LocalModeError

    with pytest.raises(LocalModeError, match="continual-training local --run"):
        _consolidate("--volume", str(tmp_path), "--output", "merged")
