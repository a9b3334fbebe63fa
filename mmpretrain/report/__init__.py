"""``mmpretrain report RUN``: figures and a markdown summary of a training run.

Three PNGs and ``report.md`` are written into the run directory itself, beside what they
describe: convergence (losses and held-out recall by step), the fusion module's cross-modal
attention on held-out pairs, and a comparison of evaluations. Everything is read from the files
training wrote (metrics.jsonl, eval.jsonl, eval.json, the newest checkpoint) on one CPU
process; no Ray cluster, no DeepSpeed engine.

A sweep directory (it holds ``sweep.yaml``) gets the sweep's report instead: its trials ranked,
their metric by step and their last evaluations side by side (``report/sweep.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmpretrain.errors import ReportError
from mmpretrain.report.records import read_run

__all__ = ["ReportError", "write_report"]


def write_report(
    run_dir: str | Path,
    compare: Sequence[str | Path] = (),
    pairs: int = 4,
    data: str | None = None,
) -> Path:
    """Writes the figures and ``report.md`` into ``run_dir``; returns the report's path.

    ``run_dir`` may be a sweep directory: then the report compares its trials (``pairs`` and
    ``data`` are not used: a sweep report draws no attention maps).

    ``compare``: run directories or evaluation JSON files shown beside the run's own final
    evaluation. ``pairs``: held-out pairs in the attention figure, read from ``data`` (a shard
    pattern) or else the run's ``data.val``.
    """
    # Imported here: matplotlib and the model stack load only when a report is made.
    from mmpretrain.report import attention, comparison, convergence, summary, sweep
    from mmpretrain.sweep.results import read_sweep

    if pairs < 1:
        raise ReportError(f"--pairs must be >= 1, got {pairs}")
    if sweep.is_sweep_dir(run_dir):
        results = read_sweep(run_dir)
        return sweep.write_sweep_report(results, [comparison.load_item(c) for c in compare])
    records = read_run(run_dir)  # first: a wrong RUN fails before any model is loaded
    others = [comparison.load_item(item) for item in compare]
    own = (
        [comparison.Evaluated(records.name, records.run_dir, records.final_eval)]
        if records.final_eval is not None
        else []
    )
    compared = comparison.unique_labels([*own, *others])
    if not compared:
        raise ReportError(
            f"nothing to compare: {records.run_dir} has no eval.json or eval.jsonl (train with "
            "data.val set) and no --compare was given"
        )

    out = records.run_dir
    _, facts = attention.plot_attention(records.run_dir, out, pairs, data)  # may fail: first
    convergence.plot_convergence(records, out)
    comparison.plot_comparison(compared, out)
    report = out / summary.REPORT_FILE
    report.write_text(summary.render(records, facts, compared))
    return report
