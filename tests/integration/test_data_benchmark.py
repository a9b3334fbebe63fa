"""benchmarks/data_throughput.py on tiny sizes: every loader delivers every sample, the table's
shares and ratios follow from its rates. No speed is asserted (speed lives in RESULTS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("open_clip_train")  # the bench extra: OpenCLIP's loader is the peer
pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a benchmark smoke test

ROOT = Path(__file__).resolve().parents[2]
SAMPLES, CPUS = 64, [1]

# Its own interpreter: the benchmark starts and stops Ray with num_cpus=N itself, which the
# session's shared Ray in this process would refuse.
SCRIPT = f"""
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, "benchmarks")
import data_throughput as bench
from mmpretrain.data.tokenizer import train_tokenizer
with tempfile.TemporaryDirectory() as tmp:
    paths = bench.make_shards(Path(tmp), {SAMPLES}, 16, sides=(96, 160))
    tok = str(train_tokenizer(tmp, Path(tmp) / "tok", vocab_size=300))
    per_core, rows = bench.measure(paths, tok, {SAMPLES}, {CPUS}, 64, 16, 2)
table = bench.format_table(per_core, rows, {CPUS}, "header")
print(json.dumps({{"per_core": per_core, "table": table, "rows": [
    dict(vars(r), share=r.share, per_core=r.per_core) for r in rows]}}))
"""


def test_benchmark_rows_deliver_every_sample_and_shares_follow_from_rates() -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    rows, per_core = out["rows"], out["per_core"]
    assert per_core > 0
    assert {r["loader"] for r in rows} == {
        "OpenCLIP get_wds_dataset",
        "mmpretrain crop=center",
        "mmpretrain crop=random_resized",
    }
    for r in rows:
        assert r["count"] == SAMPLES, r  # every loader, the random-resized one too
        assert r["rate"] > 0 and r["last_s"] > 0
        assert r["rate"] == pytest.approx(r["count"] / r["last_s"])
        assert r["ceiling"] == pytest.approx(per_core * r["cpus"])
        assert r["share"] == pytest.approx(r["rate"] / r["ceiling"])
    table = out["table"].splitlines()
    assert table[0] == "header" and len(table) == 2 + len(CPUS) * (1 + 3)
    assert table[2].startswith("ceiling") and f"{per_core:.1f}" in table[2]
    openclip = rows[0]  # per CPU count: the ceiling, then OpenCLIP, then mmpretrain's rows
    assert openclip["loader"].startswith("OpenCLIP") and table[3].endswith("1.00x")
    for line, r in zip(table[3:], rows, strict=True):
        assert line.startswith(r["loader"])
        assert line.endswith(f"{r['rate'] / openclip['rate']:.2f}x")
        assert f"{r['share']:.0%}" in line
