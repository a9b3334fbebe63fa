"""benchmarks/gpu_step.py's pure parts: the spec-peak table and the real run's summary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_step

        yield gpu_step
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", None),  # not the L4's peak, though its name contains "L4"
        ("NVIDIA H100 NVL", None),
        ("Tesla T4", None),
    ],
)
def test_spec_peak_by_device_name(bench, name: str, tflops: float | None) -> None:
    assert bench.spec_peak(name) == tflops


def test_run_summary_skips_the_warm_up_row_and_sums_the_clock(bench) -> None:
    rows = [
        {"step": 2, "time": 100.0, "samples_seen": 16, "step_s": 30.0, "data_wait_s": 29.0},
        {"step": 4, "time": 104.0, "samples_seen": 32, "step_s": 4.0, "data_wait_s": 1.0},
        {"step": 6, "time": 108.0, "samples_seen": 48, "step_s": 4.0, "data_wait_s": 0.0},
    ]
    row = bench.run_summary(rows, batch=8, flops_per_sample=1e9, gpu=True)
    assert row.samples_per_s == pytest.approx(32 / 8)
    assert row.extra["data_wait_share"] == pytest.approx(1 / 8)
    assert "data wait 12.5% of step time; goal < 5%: NOT met" in row.note
    with pytest.raises(ValueError, match="fewer than 2 log rows"):
        bench.run_summary(rows[:1], batch=8, flops_per_sample=None, gpu=False)


def test_rates_print_with_three_significant_digits(bench) -> None:
    assert [bench.rate(v) for v in (0.5321, 2.914, 12.34, 1234.4, None)] == [
        "0.532",
        "2.91",
        "12.3",
        "1234",
        "",
    ]
