"""The training run's logs: one JSON line per step (`loss.jsonl`), TensorBoard scalars (`tensorboard/`), and
`loss.html`, the curves drawn as inline SVG (no plotting library), next to the checkpoints."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path

LOSS_LOG = "loss.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOSS_PLOT = "loss.html"
SMOOTHING = 0.9  # the plotted line is an exponential moving average of the points (the points are drawn too)


class StepLog:
    """Appends a record per step to OUT/loss.jsonl and to TensorBoard. A resumed run first drops the records of the
    steps it repeats, so the log reads as the uninterrupted run's."""

    def __init__(self, out: Path, start: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # TensorBoard: only for a training run

        self.path = Path(out) / LOSS_LOG
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in read_log(self.path) if line["step"] <= start] if self.path.exists() else []
        self.path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        self.file = self.path.open("a")
        self.writer = SummaryWriter(str(Path(out) / TENSORBOARD_DIR), purge_step=start + 1 if start else None)

    def write(self, record: dict) -> None:
        """record: step (1-based, after the update), task, kind, loss, lr, grad_norm, ..."""
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        self.file.flush()
        step = record["step"]
        self.writer.add_scalar(f"loss/{record['task']}", record["loss"], step)
        self.writer.add_scalar("loss/all", record["loss"], step)
        self.writer.add_scalar("lr", record["lr"], step)
        self.writer.add_scalar("grad_norm", record["grad_norm"], step)

    def close(self) -> None:
        self.file.close()
        self.writer.close()


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _smooth(values: list[float]) -> list[float]:
    out, level = [], None
    for v in values:
        level = v if level is None else SMOOTHING * level + (1 - SMOOTHING) * v
        out.append(level)
    return out


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _panel(title: str, series: dict[str, list[tuple[int, float]]], width: int = 560, height: int = 220) -> str:
    """One SVG chart: each series' points faint, its moving average as a line; y from 0 to the 98th percentile."""
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    steps = [s for s, _ in points]
    ys = sorted(v for _, v in points)
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    top = ys[min(len(ys) - 1, int(0.98 * len(ys)))] or 1.0
    pad = 40

    def xy(step: float, value: float) -> tuple[float, float]:
        return (pad + (step - x0) / (x1 - x0) * (width - pad - 10),
                height - 25 - min(value, top) / top * (height - 45))

    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
             f'<text x="{pad}" y="14" font-weight="bold">{html.escape(title)}</text>',
             f'<text x="2" y="{height - 25}">0</text><text x="2" y="24">{top:.3g}</text>',
             f'<text x="{pad}" y="{height - 8}">step {x0}</text>',
             f'<text x="{width - 80}" y="{height - 8}">step {x1}</text>',
             f'<line x1="{pad}" y1="{height - 25}" x2="{width - 10}" y2="{height - 25}" stroke="#999"/>']
    for i, (name, values) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        parts += ['<circle cx="{:.1f}" cy="{:.1f}" r="1" fill="{}" opacity="0.25"/>'.format(*xy(s, v), colour)
                  for s, v in values]
        line = " ".join("{:.1f},{:.1f}".format(*xy(s, v)) for (s, _), v in zip(values, _smooth([v for _, v in values])))
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        parts.append(f'<text x="{width - 150}" y="{30 + 13 * i}" fill="{colour}">{html.escape(name)}</text>')
    return "\n".join(parts + ["</svg>"])


def write_loss_plot(logs: dict[str, Path], out: Path) -> Path:
    """An HTML page with, for each named loss log, its loss per task, learning rate and gradient norm."""
    sections = []
    for name, path in logs.items():
        records = read_log(path) if Path(path).exists() else []
        loss: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in records:
            loss[r["task"]].append((r["step"], r["loss"]))
        sections.append(f"<h2>{html.escape(name)} ({len(records)} steps, {html.escape(str(path))})</h2>"
                        + _panel("loss (v-MSE) per task", loss)
                        + _panel("learning rate", {"lr": [(r["step"], r["lr"]) for r in records]})
                        + _panel("gradient norm (before clipping)",
                                 {"grad_norm": [(r["step"], r["grad_norm"]) for r in records]}))
    out = Path(out)
    out.write_text("<!doctype html><meta charset='utf-8'><title>training curves</title>"
                   "<body style='font-family:sans-serif'>" + "\n".join(sections) + "</body>\n")
    return out
