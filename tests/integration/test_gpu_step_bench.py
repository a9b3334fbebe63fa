"""benchmarks/gpu_step.py on CPU at tiny sizes: every section's rows are there and the table's
FLOPs, rates and ratios follow from each other; the real run is `mmpretrain train` (its own
embedded Ray, in a subprocess) and its data-wait share comes from its metrics.jsonl. No speed is
asserted (speed lives in RESULTS.md)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a benchmark smoke test

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
ARGS = [
    "--device", "cpu", "--preset", "tiny", "--batches", "2,4", "--switch-batch", "2",
    "--skip-compile", "--warmup", "1", "--iters", "1", "--matmul-size", "512",
    "--threads", "1",  # two threads spin against each other on a busy 2-core machine
    "--run-steps", "6", "--run-log-every", "2", "--run-batch", "8", "--image-side", "96",
]  # fmt: skip


def _printed(table: str, name: str) -> list[str]:
    """The cells of the printed row called ``name`` (columns are two or more spaces apart)."""
    line = next(line for line in table.splitlines() if f"  {name}  " in line)
    return re.split(r"\s{2,}", line.strip())


def test_every_section_prints_and_its_numbers_agree(capsys) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    threads = torch.get_num_threads()
    try:
        import gpu_step

        rows = gpu_step.main(ARGS)
    finally:
        sys.path.remove(str(BENCHMARKS))
        torch.set_num_threads(threads)  # --threads set it for this whole process
    table = capsys.readouterr().out
    header = table.splitlines()[0]
    for part in ("device cpu", "torch ", "preset tiny", "precision fp32", "measured"):
        assert part in header
    by = {(row.section, row.name, row.batch): row for row in rows}

    # 1. The full task at each batch: model FLOPs per sample do not depend on the batch.
    tasks = [by["task", "full pretraining task", batch] for batch in (2, 4)]
    assert all(row.ok and row.samples_per_s > 0 and row.peak_mb > 0 for row in tasks)
    flops = [row.flops_per_sample for row in tasks]
    assert min(flops) > 0
    assert max(flops) / min(flops) < 1.03
    for row in tasks:
        assert row.tflops == pytest.approx(row.flops_per_sample * row.samples_per_s / 1e12)
        assert row.mfu_measured > 0 and row.mfu_spec is None  # no spec peak for a CPU
    assert sum("best batch" in row.note for row in tasks) == 1

    # 2. The towers: combined = 1/(1/a + 1/b), below either; the ratio is fused / combined,
    # in the rows and as printed.
    vision = by["towers", "vision tower + ITC", 2].samples_per_s
    text = by["towers", "text tower + MLM", 2].samples_per_s
    combined = by["towers", "towers combined (1/(1/a+1/b))", 2].samples_per_s
    fused = by["towers", "fused task", 2]
    assert combined == pytest.approx(1 / (1 / vision + 1 / text))
    assert combined < min(vision, text)
    assert fused.samples_per_s == by["task", "full pretraining task", 2].samples_per_s
    assert fused.extra["ratio"] == pytest.approx(fused.samples_per_s / combined)
    printed_ratio = float(re.search(r"fused / combined = ([\d.]+)x", fused.note).group(1))
    printed_fused = float(_printed(table, "fused task")[3])
    printed_combined = float(_printed(table, "towers combined (1/(1/a+1/b))")[3])
    assert printed_ratio == pytest.approx(printed_fused / printed_combined, rel=0.02, abs=0.006)
    assert "goal" not in table  # goals are for GPUs

    # 3. Switches at batch 2 (compile skipped), each with the task's model FLOPs.
    switches = [row for row in rows if row.section == "switch"]
    assert [row.name for row in switches] == [
        "baseline (all off)",
        "+ channels_last",
        "+ activation_checkpointing",
        "+ fused AdamW",
    ]
    for row in switches:
        assert row.ok and row.batch == 2 and row.flops_per_sample == tasks[0].flops_per_sample
    for row in switches[1:]:
        speedup = float(re.match(r"([\d.]+)x baseline", row.note).group(1))
        assert speedup == pytest.approx(row.samples_per_s / switches[0].samples_per_s, abs=0.006)

    # 4. The real run: all its steps, and a data-wait share read from its own log rows.
    run = by["run", "mmpretrain train, 1 worker", 8]
    assert run.extra["steps"] == 6 and run.samples_per_s > 0
    assert 0.0 <= run.extra["data_wait_share"] <= 1.0
    printed_wait = float(re.search(r"data wait ([\d.]+)% of step time", run.note).group(1))
    assert 0.0 <= printed_wait <= 100.0
    assert printed_wait == pytest.approx(100 * run.extra["data_wait_share"], abs=0.06)
