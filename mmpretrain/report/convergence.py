"""Figure 1: does the run converge? Each objective's loss and the weighted total by step, with
held-out recall on a second axis, so a falling loss can be read against what it bought."""

from __future__ import annotations

from pathlib import Path

from mmpretrain.report.figures import new_figure, save_png
from mmpretrain.report.records import RunRecords

FILE = "fig1_convergence.png"
SIZE_IN = (10.0, 5.0)
TOTAL = "loss"  # the weighted sum the optimiser minimises; the loss_* entries are unweighted
# Losses take tab10's first colours, evaluations its last ones: no two lines share a colour.
PALETTE = [f"C{index}" for index in range(10)]


def loss_names(rows: list[dict]) -> list[str]:
    """``loss`` then every ``loss_<objective>`` logged in any row, in a stable order."""
    names = sorted({key for row in rows for key in row if key.startswith("loss_")})
    return [TOTAL, *names] if any(TOTAL in row for row in rows) else names


def recall_names(rows: list[dict]) -> list[str]:
    """Recall@K both ways at the two smallest K, plus zero-shot top-1, where evaluated."""
    keys = {key for row in rows for key in row}
    ks = sorted({int(key.split("@")[1]) for key in keys if key.startswith("i2t_recall@")})[:2]
    names = [f"{way}_recall@{k}" for k in ks for way in ("i2t", "t2i")]
    return [name for name in (*names, "zeroshot_top1") if name in keys]


def _series(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    points = [(int(row["step"]), float(row[name])) for row in rows if name in row]
    return [step for step, _ in points], [value for _, value in points]


def plot_convergence(records: RunRecords, out_dir: Path) -> Path:
    figure = new_figure(*SIZE_IN)
    losses = figure.add_subplot()
    objective_colours = iter(PALETTE)
    for name in loss_names(records.metrics):
        steps, values = _series(records.metrics, name)
        total = name == TOTAL
        losses.plot(
            steps,
            values,
            label="total (weighted)" if total else name.removeprefix("loss_"),
            color="black" if total else next(objective_colours),
            linewidth=2.2 if total else 1.3,
            marker="." if len(steps) < 40 else None,
        )
    losses.set_xlabel("step")
    losses.set_ylabel("loss (objectives unweighted)")
    losses.grid(alpha=0.3)

    handles, labels = losses.get_legend_handles_labels()
    recall = losses.twinx()
    names = recall_names(records.evals)
    for name, colour in zip(names, reversed(PALETTE), strict=False):
        steps, values = _series(records.evals, name)
        recall.plot(
            steps, values, linestyle="--", marker="o", markersize=4, color=colour, label=name
        )
    if names and any("chance@1" in row for row in records.evals):
        steps, values = _series(records.evals, "chance@1")
        recall.plot(steps, values, linestyle=":", color="black", label="chance (R@1)")
    recall.set_ylim(0.0, 1.02)
    recall.set_ylabel("held-out recall / accuracy")
    more_handles, more_labels = recall.get_legend_handles_labels()
    figure.legend(
        handles + more_handles, labels + more_labels, loc="outside right upper", fontsize=8
    )
    evaluated = "" if names else " (no held-out evaluation recorded)"
    losses.set_title(f"{records.name}: training losses and held-out recall{evaluated}")
    return save_png(figure, out_dir / FILE)
