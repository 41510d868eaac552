"""The runnable example in docs/trainer.md runs as written (paths moved to a temp folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from continual_trainer.config import parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "trainer.md"


def example() -> str:
    return re.search(r"```bash\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)


def test_the_documented_config_is_valid():
    yaml_text = re.search(r"<<'YAML'\n(.*?)\nYAML", example(), re.DOTALL).group(1)
    config = parse_config(yaml_text)
    assert config.batch.id == "batch-001"
    assert config.training.lr_schedule.type == "constant_with_warmup"


def test_the_documented_example_runs(tmp_path):
    script = example().replace("/tmp/ct", str(tmp_path / "ct")).replace(". .venv/bin/activate", "true")
    script = script.replace(
        "continual-trainer --config", f"{sys.executable} -m continual_trainer.cli --config"
    )
    script = script.replace(
        "python -m continual_trainer.tinymodel", f"{sys.executable} -m continual_trainer.tinymodel"
    )
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=dict(os.environ), timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exit code 0" in proc.stdout
    assert '"outcome":"Succeeded","startStep":0,"endStep":6' in proc.stdout
    assert "AlreadyCompleted" in proc.stderr
