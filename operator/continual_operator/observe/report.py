"""``continual-training report``: a run's training curve as a PNG and a self-contained HTML page.

From the records on a run's volume (``curve.load_curve``: the ledger and ``history.jsonl``) it draws loss
and learning rate against the global step, across every batch, with each batch's boundary marked, a
preemption as a triangle, a retry (a new attempt resuming after a kill or a preemption) as a dotted line,
and a failed batch's rolled-back steps in grey. The HTML page embeds the PNG (a ``data:`` URI: one file
to mail or attach to a ticket) and a per-batch table: steps, samples, tokens, mean loss, duration.

matplotlib draws (Agg backend: no display needed); it is an optional dependency
(``pip install 'continual-training[report]'``) so that the operator image stays small, and is imported
only when a report is drawn.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continual_operator.observe.curve import BatchCurve, RunCurve, find_runs, load_curve

#: The PNG's size: 1200 x 700 pixels, wide enough for a few hundred batches' boundaries.
FIGURE_INCHES = (12.0, 7.0)
FIGURE_DPI = 100
MISSING_MATPLOTLIB = (
    "the report draws with matplotlib, which is not installed: pip install 'continual-training[report]' "
    "(or: pip install matplotlib)"
)


class ReportError(Exception):
    """A report cannot be made (no run on the volume, matplotlib missing): the CLI prints it, exit 2."""


@dataclass(frozen=True)
class ReportFiles:
    """What was written for one run."""

    run: str
    png: Path
    html: Path


def _pyplot() -> Any:
    try:
        import matplotlib as mpl
    except ImportError as exc:
        raise ReportError(MISSING_MATPLOTLIB) from exc
    mpl.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def render_png(curve: RunCurve) -> bytes:
    """The curve as PNG bytes: loss (top) and learning rate (bottom) against the global step."""
    plt = _pyplot()
    fig, (loss_ax, lr_ax) = plt.subplots(
        2, 1, figsize=FIGURE_INCHES, dpi=FIGURE_DPI, sharex=True, height_ratios=(2, 1)
    )
    try:
        for batch in curve.batches:
            _draw_batch(loss_ax, lr_ax, batch)
        for ax in (loss_ax, lr_ax):
            _draw_marks(ax, curve)
            ax.grid(visible=True, alpha=0.3)
        loss_ax.set_title(f"run {curve.name}: {len(curve.batches)} batches, global step {curve.global_step}")
        loss_ax.set_ylabel("training loss")
        lr_ax.set_ylabel("learning rate")
        lr_ax.set_xlabel("global step")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        lr_ax.xaxis.set_major_locator(_integer_ticks())  # steps are whole numbers
        _legend(loss_ax, curve)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", metadata={"Software": None})  # no version stamp: stable bytes
        return out.getvalue()
    finally:
        plt.close(fig)


def _draw_batch(loss_ax: Any, lr_ax: Any, batch: BatchCurve) -> None:
    failed = batch.state == "failed"
    style: dict[str, Any] = {"color": "0.6", "linestyle": "--"} if failed else {}
    label = f"{batch.batch_id} (failed)" if failed else None
    steps = [p.step for p in batch.points if p.loss is not None]
    losses = [p.loss for p in batch.points if p.loss is not None]
    (line,) = loss_ax.plot(steps, losses, marker=".", label=label, **style)
    lr_steps = [p.step for p in batch.points if p.learning_rate is not None]
    lrs = [p.learning_rate for p in batch.points if p.learning_rate is not None]
    lr_ax.plot(lr_steps, lrs, color=style.get("color", line.get_color()), linestyle=style.get("linestyle"))
    if not failed:
        for ax in (loss_ax, lr_ax):
            ax.axvline(batch.start_step, color="0.3", linewidth=0.8)  # where the batch began
        loss_ax.annotate(
            batch.batch_id,
            xy=(batch.start_step, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
        )


def _draw_marks(ax: Any, curve: RunCurve) -> None:
    for mark in curve.marks:
        if mark.kind == "preempted":
            ax.axvline(mark.step, color="tab:red", linewidth=1.2, alpha=0.7)
            ax.plot(
                [mark.step],
                [1.0],
                marker="v",
                color="tab:red",
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
        else:
            ax.axvline(mark.step, color="tab:orange", linestyle=":", linewidth=1.5)


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _legend(ax: Any, curve: RunCurve) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.3", linewidth=0.8, label="batch start")]
    kinds = {m.kind for m in curve.marks}
    if "preempted" in kinds:
        handles.append(Line2D([], [], color="tab:red", marker="v", label="preempted (SIGTERM)"))
    if "retried" in kinds:
        handles.append(Line2D([], [], color="tab:orange", linestyle=":", label="retry resumed"))
    handles.extend(h for h in ax.get_lines() if not h.get_label().startswith("_"))
    ax.legend(handles=handles, loc="upper right", fontsize=8)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def batch_rows(curve: RunCurve) -> list[dict[str, str]]:
    """The per-batch table, as text cells (shared by the HTML report and the status page)."""
    rows = []
    for batch in curve.batches:
        events = []
        if batch.preemptions:
            events.append(f"{batch.preemptions} preempted")
        if batch.attempts > 1:
            events.append(f"{batch.attempts} attempts")
        rows.append(
            {
                "batch": batch.batch_id,
                "state": batch.state,
                "steps": f"{batch.start_step}..{batch.end_step if batch.end_step is not None else batch.target_step}",
                "samples": str(batch.samples),
                "tokens": "" if batch.tokens is None else str(batch.tokens),
                "mean loss": _fmt(batch.mean_loss),
                "duration (s)": _fmt(batch.duration_seconds, 1),
                "attempts": ", ".join(events),
            }
        )
    return rows


def table_html(rows: list[dict[str, str]]) -> str:
    """An HTML table of text cells (escaped)."""
    if not rows:
        return "<p>No batch has started yet.</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        f'<tr class="state-{html.escape(r["state"])}">'
        + "".join(f"<td>{html.escape(v)}</td>" for v in r.values())
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child, td:nth-child(2) { text-align: left; }
tr.state-failed td { color: #b00020; }
img { max-width: 100%; }
"""


def render_html(curve: RunCurve, png: bytes) -> str:
    """A self-contained page: the PNG embedded as a data URI, and the batch table."""
    name = html.escape(curve.name)
    image = base64.b64encode(png).decode()
    notes = ""
    if curve.skipped_lines:
        notes = f"<p>history.jsonl: skipped unreadable lines {curve.skipped_lines} (a torn write).</p>"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>run {name}: training curve'
        f"</title><style>{PAGE_STYLE}</style></head><body>"
        f"<h1>Run {name}</h1><p>Global step {curve.global_step}; {len(curve.batches)} batches; from "
        f"{html.escape(str(curve.run_dir))}.</p>"
        f'<img id="curve" alt="training loss and learning rate against the global step" '
        f'src="data:image/png;base64,{image}">'
        f"{notes}<h2>Batches</h2>{table_html(batch_rows(curve))}</body></html>\n"
    )


def write_report(volume: Path, out: Path) -> list[ReportFiles]:
    """Render every run found on ``volume`` into ``out`` (``<run>-curve.png``, ``<run>-report.html``)."""
    if not volume.is_dir():
        raise ReportError(f"--volume {volume}: no such folder (give the folder that stands for /data)")
    runs = find_runs(volume)
    if not runs:
        raise ReportError(
            f"--volume {volume}: no run folder (one holding ledger/run.json) in it or in the "
            "folders below it: give the volume a run trained on (e.g. the --volume of continual-training local)"
        )
    out.mkdir(parents=True, exist_ok=True)
    written: list[ReportFiles] = []
    for run_dir in runs:
        curve = load_curve(run_dir)
        png = render_png(curve)
        stem = _file_stem(curve.name, run_dir, volume, {f.png.name for f in written})
        files = ReportFiles(curve.name, out / f"{stem}-curve.png", out / f"{stem}-report.html")
        files.png.write_bytes(png)
        files.html.write_text(render_html(curve, png))
        written.append(files)
    return written


def _file_stem(name: str, run_dir: Path, volume: Path, taken: set[str]) -> str:
    """The run's name, made file-safe; the run folder's path instead when two runs share a name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    if f"{stem}-curve.png" in taken:
        relative = run_dir.relative_to(volume).as_posix() if run_dir != volume else run_dir.name
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", relative).strip("-.")
    return stem
