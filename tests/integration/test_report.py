"""``mmpretrain report`` on a real training run (the session's skeleton run): three figures and
a report that links them, drawn from the files the run wrote and its newest checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmpretrain import cli
from tests.integration.conftest import FIRST_STEPS

pytestmark = pytest.mark.integration

PAIRS = 3
# Fixed figure sizes at 100 dpi: convergence and comparison 10 x 5 in; attention 2 in per
# column (the image and 4 words) by 2.3 in per pair.
EXPECTED_PIXELS = {
    "fig1_convergence.png": (1000, 500),
    "fig2_attention.png": (1000, 230 * PAIRS),
    "fig3_comparison.png": (1000, 500),
}


def distinct_colours(path: Path) -> tuple[int, float]:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(np.int64)
    packed = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    return len(np.unique(packed)), float(pixels.std())


def test_report_draws_every_figure_of_a_real_run(skeleton_run, tmp_path) -> None:
    run_dir = tmp_path / "skeleton"  # a copy: the report writes into the run directory
    shutil.copytree(skeleton_run.run_dir, run_dir)
    final_path = run_dir / "eval.json"
    final = json.loads(final_path.read_text())

    command = ["report", str(run_dir), "--pairs", str(PAIRS), "--compare", str(final_path)]
    assert cli.main(command) == 0

    for name, size in EXPECTED_PIXELS.items():
        path = run_dir / name
        assert path.is_file(), f"{name} was not written"
        assert Image.open(path).size == size, name
        colours, spread = distinct_colours(path)
        assert colours > 200 and spread > 10, f"{name} looks blank: {colours} colours"

    report = (run_dir / "report.md").read_text()
    for name in EXPECTED_PIXELS:
        assert f"]({name})" in report, f"report.md does not link {name}"
    # The summary carries the run's numbers: steps, final losses, the final evaluation.
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"{FIRST_STEPS} steps" in report
    assert "| total (weighted) |" in report and f"{last['loss']:.3f}" in report
    # One table row per evaluation: the run's own and the eval JSON given to --compare.
    recall = f"{final['i2t_recall@1']:.3f}"
    rows = [line for line in report.splitlines() if line.startswith("| skeleton")]
    assert len(rows) == 2 and all(recall in row for row in rows), rows
