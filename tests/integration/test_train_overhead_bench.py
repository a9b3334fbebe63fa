"""Smoke test of benchmarks/train_overhead.py on tiny sizes: every row runs for real (a plain
loop, DeepSpeed alone, ``mmpretrain train`` on Ray) and the table's arithmetic holds. The speed
itself is measured by the script on a quiet machine (benchmarks/RESULTS.md), never here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "train_overhead.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timing_from_log_rows_counts_each_window_by_its_steps() -> None:
    bench = load_script()
    rows = [
        {"step": 2, "time": 100.0, "step_s": 18.0, "data_wait_s": 16.0},  # warm-up
        {"step": 4, "time": 101.0, "step_s": 1.0, "data_wait_s": 0.0},
        {"step": 6, "time": 102.0, "step_s": 1.0, "data_wait_s": 0.2},
        {"step": 10, "time": 104.0, "step_s": 2.0, "data_wait_s": 0.1},
    ]
    per_step, wait = bench.mmpretrain_timing(rows, warmup=4)
    assert per_step == pytest.approx(3.0 / 6)
    assert wait == pytest.approx(0.3 / 3.0)  # the rows after the window's first


@pytest.mark.integration
@pytest.mark.slow  # every row of the benchmark, Ray included, for real
def test_every_row_runs_and_the_ratios_are_against_the_plain_loop(tmp_path: Path) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    bench = load_script()
    overrides = ["data.batch_size=8", "objectives.image_ssl=0"]
    results = bench.measure("tiny", 6, 2, 2, 1.0, overrides, tmp_path, rounds=1)
    assert [r["row"] for r in results] == [*bench.ROWS, "mmpretrain"]
    plain = results[0]["step_s"]
    for result in results:
        assert result["step_s"] > 0
        assert result["spread"] == (result["step_s"], result["step_s"])  # one round
        assert result["ratio"] == pytest.approx(result["step_s"] / plain)
    assert 0.0 <= results[-1]["data_wait"] <= 1.0
    table = bench.format_table(results)
    assert all(label in table for label in bench.LABELS.values())


def test_the_command_refuses_a_warmup_that_leaves_no_window() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "10", "--warmup", "5"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--warmup must be a multiple of --log-every" in done.stderr
