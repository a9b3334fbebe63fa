"""Figure 3 and its table: held-out recall and zero-shot accuracy of several runs side by side.

An item is a run directory (its final evaluation) or an evaluation JSON file, as ``mmpretrain
eval --out`` and training's ``eval.json`` write, so runs, checkpoints and exports evaluated on
the same held-out set can be compared in one picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpretrain.errors import ReportError
from mmpretrain.report.figures import new_figure, save_png
from mmpretrain.report.records import is_evaluation, read_evaluations, read_json

FILE = "fig3_comparison.png"
SIZE_IN = (10.0, 5.0)
ZERO_SHOT = ("zeroshot_top1", "zeroshot_top5")


@dataclass(frozen=True)
class Evaluated:
    label: str
    source: Path
    metrics: dict[str, float]


def load_item(path: str | Path) -> Evaluated:
    """A run directory's final evaluation, or an evaluation JSON file; errors name the path."""
    source = Path(path).expanduser().resolve()
    if source.is_dir():
        _, final = read_evaluations(source)
        if final is None:
            raise ReportError(f"--compare {str(path)!r}: the run has no eval.json or eval.jsonl")
        return Evaluated(source.name, source, final)
    if not source.is_file():
        raise ReportError(f"--compare {str(path)!r} is neither a run directory nor a file")
    metrics = read_json(source)
    if not is_evaluation(metrics):
        raise ReportError(f"--compare {str(path)!r} holds no recall@K results")
    return Evaluated(f"{source.parent.name}/{source.name}", source, metrics)


def unique_labels(items: list[Evaluated]) -> list[Evaluated]:
    """Same-named inputs (two runs called ``run``) get ``#2``, ``#3`` so bars stay apart."""
    seen: dict[str, int] = {}
    out = []
    for item in items:
        seen[item.label] = seen.get(item.label, 0) + 1
        label = item.label if seen[item.label] == 1 else f"{item.label} #{seen[item.label]}"
        out.append(Evaluated(label, item.source, item.metrics))
    return out


def metric_columns(items: list[Evaluated]) -> list[str]:
    """Recall@K both ways for every K any item has, then zero-shot accuracy where present."""
    keys = {key for item in items for key in item.metrics}
    ks = sorted(
        {int(key.split("@")[1]) for key in keys if key.startswith(("i2t_recall@", "t2i_recall@"))}
    )
    recall = [f"{way}_recall@{k}" for way in ("i2t", "t2i") for k in ks]
    return [name for name in (*recall, *ZERO_SHOT) if name in keys]


def chance(metrics: dict[str, float], column: str) -> float | None:
    """The chance level the evaluation recorded for this column, if any."""
    if column.startswith(("i2t_recall@", "t2i_recall@")):
        return metrics.get(f"chance@{column.split('@')[1]}")
    if column in ZERO_SHOT and "zeroshot_classes" in metrics:
        return min(1.0, int(column[-1]) / metrics["zeroshot_classes"])
    return None


def markdown_table(items: list[Evaluated]) -> str:
    columns = metric_columns(items)
    lines = [
        "| " + " | ".join(["evaluation", "pairs", *columns]) + " |",
        "|" + "---|" * (len(columns) + 2),
    ]
    for item in items:
        pairs = item.metrics.get("candidates")
        cells = [f"{item.metrics[c]:.3f}" if c in item.metrics else "–" for c in columns]
        lines.append(
            "| " + " | ".join([item.label, f"{pairs:.0f}" if pairs else "–", *cells]) + " |"
        )
    return "\n".join(lines)


def plot_comparison(items: list[Evaluated], out_dir: Path) -> Path:
    """Grouped bars: one group per metric, one bar per item (at least one), a tick at each
    chance level."""
    columns = metric_columns(items)
    figure = new_figure(*SIZE_IN)
    axes = figure.add_subplot()
    width = 0.8 / len(items)
    centres = np.arange(len(columns))
    for index, item in enumerate(items):
        xs = centres - 0.4 + width * (index + 0.5)
        values = [item.metrics.get(column, np.nan) for column in columns]
        bars = axes.bar(xs, values, width=width, label=item.label)
        axes.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        for x, column in zip(xs, columns, strict=True):
            level = chance(item.metrics, column)
            if level is not None:
                axes.hlines(level, x - width / 2, x + width / 2, colors="black", linewidth=1.5)
    axes.plot([], [], color="black", linewidth=1.5, label="chance")  # legend entry for ticks
    axes.set_xticks(centres, [column.replace("_recall", " R") for column in columns])
    axes.set_ylim(0.0, 1.08)
    axes.set_ylabel("held-out recall / accuracy")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    axes.set_title("held-out retrieval recall@K (i2t: image->text, t2i: text->image) and zero-shot")
    return save_png(figure, out_dir / FILE)
