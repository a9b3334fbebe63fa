"""``mmpretrain report SWEEP_DIR``: a sweep's trials side by side, from the files they wrote.

Two figures and ``report.md`` go into the sweep directory: the sweep metric by step, one line
per trial (a star where population-based training cloned a trial), and figure 3 with one entry
per evaluated trial (its last evaluation). The ranking is the one ``mmpretrain sweep results``
prints, read by the same code (``mmpretrain.sweep.results``), so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmpretrain.errors import SweepError
from mmpretrain.report import comparison
from mmpretrain.report.figures import new_figure, save_png
from mmpretrain.sweep.results import SPEC_FILE, SweepResults, Trial, format_table, write_best

FILE = "fig4_sweep_metric.png"
REPORT_FILE = "report.md"
SIZE_IN = (10.0, 5.0)
LINE_STYLES = ("-", "--", "-.", ":")


def is_sweep_dir(path: str | Path) -> bool:
    """A sweep directory holds the spec its driver wrote; a run directory never does."""
    return (Path(path).expanduser() / SPEC_FILE).is_file()


def evaluated(results: SweepResults) -> list[comparison.Evaluated]:
    """Each evaluated trial's last evaluation, best trial first (figure 3's items)."""
    return [
        comparison.Evaluated(trial.name, trial.folder, trial.evals[-1])
        for trial in results.trials
        if trial.evals
    ]


def _value_at(trial: Trial, metric: str, step: int) -> float | None:
    """The trial's metric at ``step``, or at its nearest earlier evaluation."""
    earlier = [row for row in trial.evals if int(row["step"]) <= step and metric in row]
    return float(earlier[-1][metric]) if earlier else None


def _chance(results: SweepResults) -> float | None:
    """Recall@K's chance level (K over the candidates), the highest any trial recorded."""
    if "_recall@" not in results.metric:
        return None
    key = f"chance@{results.metric.split('@')[1]}"
    levels = [float(row[key]) for trial in results.trials for row in trial.evals if key in row]
    return max(levels) if levels else None


def plot_metric_by_step(results: SweepResults, out_dir: Path) -> Path:
    """One line per trial of the sweep's metric at each evaluation; PBT clones starred."""
    figure = new_figure(*SIZE_IN)
    axes = figure.add_subplot()
    metric = results.metric
    starred = False
    for index, trial in enumerate(results.trials):
        points = [(int(row["step"]), float(row[metric])) for row in trial.evals if metric in row]
        if not points:
            continue
        colour = f"C{index % 10}"
        style = LINE_STYLES[index // 10 % len(LINE_STYLES)]  # tab10 repeats after ten trials
        steps, values = zip(*points, strict=True)
        axes.plot(
            steps, values, marker="o", markersize=3, color=colour, linestyle=style, label=trial.name
        )
        for clone in trial.lineage:
            at = _value_at(trial, metric, clone.step)
            if at is None:
                continue
            axes.plot([clone.step], [at], marker="*", markersize=12, color=colour, zorder=3)
            axes.annotate(
                f"<- {clone.cloned_from}",
                (clone.step, at),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=6,
                color=colour,
            )
            starred = True
    if starred:  # one legend entry for all stars
        axes.plot([], [], linestyle="", marker="*", markersize=10, color="grey", label="cloned")
    level = _chance(results)
    if level is not None:
        axes.axhline(level, color="black", linestyle=":", linewidth=1, label="chance")
    axes.set_xlabel("step")
    axes.set_ylabel(f"held-out {metric}")
    axes.grid(alpha=0.3)
    figure.legend(loc="outside right upper", fontsize=7)
    better = "higher" if results.mode == "max" else "lower"
    axes.set_title(f"sweep {results.name}: held-out {metric} by step ({better} is better)")
    return save_png(figure, out_dir / FILE)


def render(
    results: SweepResults, best: Trial, compared: Sequence[comparison.Evaluated], best_file: Path
) -> str:
    best_line = (
        f"Best trial: `{best.name}`, {results.metric} = {best.best:.4g} at step {best.best_step}."
        f" Its full config, as a fresh run of its own: `{best_file.name}` (`mmpretrain train "
        f"--config {best_file}`)."
    )
    return "\n".join(
        [
            f"# Sweep report: {results.name}",
            "",
            best_line,
            "",
            "## Trials",
            "",
            "```text",
            format_table(results),
            "```",
            "",
            "## Held-out metric by step",
            "",
            f"![{results.metric} by step, one line per trial]({FILE})",
            "",
            "Each line is one trial's evaluations; a star marks a step where population-based "
            "training replaced the trial's weights with a better trial's checkpoint (named "
            "beside it) and perturbed its searched values.",
            "",
            "## Last evaluation of each trial",
            "",
            f"![Recall by trial]({comparison.FILE})",
            "",
            comparison.markdown_table(list(compared)),
            "",
            "Black ticks in the figure mark each evaluation's chance level.",
            "",
        ]
    )


def write_sweep_report(results: SweepResults, others: Sequence[comparison.Evaluated] = ()) -> Path:
    """Both figures, ``report.md`` and the best trial's ``best.yaml`` (which the report points
    to) in the sweep directory; ``others`` (``--compare``) are drawn beside the trials in
    figure 3."""
    compared = comparison.unique_labels([*evaluated(results), *others])
    best = results.best
    if best is None:
        raise SweepError(
            f"sweep {results.name} in {results.folder}: no trial has evaluated yet, so there is "
            "nothing to plot (`mmpretrain sweep results` shows where the trials are)"
        )
    out = results.folder
    best_file = write_best(out, results.trials)
    plot_metric_by_step(results, out)
    comparison.plot_comparison(compared, out)
    report = out / REPORT_FILE
    report.write_text(render(results, best, compared, best_file))
    return report
