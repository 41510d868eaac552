"""``continual-training report``: the curve of a real quickstart volume, and of a run with a preemption and a kill."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

from PIL import Image
from tests.observe.conftest import InterruptedRun, report_cli

from continual_operator.observe.curve import find_runs, load_curve
from continual_operator.observe.report import FIGURE_DPI, FIGURE_INCHES, render_png

WIDTH, HEIGHT = (int(v * FIGURE_DPI) for v in FIGURE_INCHES)
LOSS_BLUE = (31, 119, 180)  # matplotlib's first line colour: the first batch's loss
PREEMPT_RED = (214, 39, 40)


def pixels(png: bytes) -> tuple[Image.Image, list[tuple[int, int, int]]]:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return image, list(image.getdata())


def test_the_quickstart_curve_is_a_drawn_png_of_the_documented_size(demo_report: Path):
    image, data = pixels((demo_report / "demo-curve.png").read_bytes())
    assert image.size == (WIDTH, HEIGHT)
    ink = sum(1 for p in data if p != (255, 255, 255))
    assert ink > 0.03 * len(data)  # axes, labels, three batches' lines: not a blank canvas
    assert sum(1 for p in data if p == LOSS_BLUE) > 100  # the loss line itself was drawn


def test_the_html_page_embeds_the_png_and_tabulates_every_batch(demo_report: Path, demo_volume: Path):
    page = (demo_report / "demo-report.html").read_text()
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert embedded is not None
    assert base64.b64decode(embedded.group(1)) == (demo_report / "demo-curve.png").read_bytes()
    assert "<script" not in page and "http" not in page  # self-contained: nothing to fetch
    (run_dir,) = find_runs(demo_volume)
    for record in sorted((run_dir / "ledger" / "batches").glob("*.json")):
        ledger = json.loads(record.read_text())
        result = ledger["result"]
        row = (
            f"<td>{ledger['batchId']}</td><td>completed</td><td>{result['startStep']}..{result['endStep']}</td>"
            f"<td>{ledger['samples']}</td><td>{result['tokens']}</td><td>{result['meanLoss']:.4f}</td>"
        )
        assert row in page


def test_the_curve_has_every_step_once_with_loss_and_lr(demo_volume: Path):
    (run_dir,) = find_runs(demo_volume)
    curve = load_curve(run_dir)
    assert [b.batch_id for b in curve.batches] == ["batch-001", "batch-002", "batch-003"]
    steps = [p.step for b in curve.batches for p in b.points]
    assert steps == list(range(1, 19))
    assert all(p.loss is not None and p.learning_rate is not None for b in curve.batches for p in b.points)
    assert curve.marks == []  # nothing was interrupted


def test_preemptions_and_retries_are_marked(interrupted_run: InterruptedRun):
    curve = load_curve(interrupted_run.run_dir)
    marks = [(m.kind, m.batch_id, m.step) for m in curve.marks]
    assert marks == [
        ("preempted", "b1", interrupted_run.preempted_at),
        ("retried", "b1", interrupted_run.preempted_at),
        ("retried", "b2", 8),
    ]
    b1, b2 = curve.batches
    assert (b1.attempts, b1.preemptions, b2.attempts, b2.preemptions) == (2, 1, 2, 0)
    assert [p.step for p in b2.points] == list(range(7, 13))
    _, data = pixels(render_png(curve))
    assert sum(1 for p in data if p == PREEMPT_RED) > 50  # the preemption line is drawn


def test_a_volume_without_a_run_is_refused_with_the_fix(tmp_path: Path):
    proc = report_cli(tmp_path, tmp_path / "out")
    assert proc.returncode == 2
    assert "no run folder (one holding ledger/run.json)" in proc.stderr
    assert not (tmp_path / "out").exists()
