"""Smoke test of benchmarks/zero_memory.py on the tiny preset: 2 real gloo ranks (local
processes, no Ray) with a real DeepSpeed engine, ZeRO stages 0 and 3.

Asserts the invariants the table rests on rather than any number of MB: AdamW's state is two
fp32 copies of the trainable parameters, ZeRO-3 keeps half of the parameters (its ``ds_tensor``
slices) and half of the gradients on each of 2 ranks, padding aside, and the theory columns are
full/N exactly where the stage shards.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "zero_memory.py"
WORLD = 2
STAGES = (0, 3)
# Two real DeepSpeed ranks per stage: a benchmark smoke test, in the slow tier.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAD = 0.01  # DeepSpeed pads each flat partition to its alignment: a few elements, well under 1%


def _load_bench():
    spec = importlib.util.spec_from_file_location("zero_memory_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_bench()


@pytest.fixture(scope="module")
def rows(bench):
    """One 2-rank run per stage; starting the rank processes is the slow part, so once."""
    return {
        (row.stage, row.rank): row
        for row in bench.measure("tiny", STAGES, WORLD, image_size=32, batch=2)
    }


def test_one_row_per_stage_and_rank(rows):
    assert sorted(rows) == [(stage, rank) for stage in STAGES for rank in range(WORLD)]
    for row in rows.values():
        assert row.world_size == WORLD
        assert row.params > 0 and row.grads > 0 and row.optim > 0 and row.peak_rss > 0


def test_stage0_holds_everything_and_adamw_state_is_two_copies(rows):
    for rank in range(WORLD):
        row = rows[0, rank]
        assert row.params_shard == 0 and row.master == 0  # no ZeRO partitions at stage 0
        assert row.params == row.theory_params  # every parameter, once, unpadded
        assert row.grads == row.theory_grads == row.params  # tiny trains every parameter
        # exp_avg + exp_avg_sq, plus AdamW's 4-byte step counter per parameter tensor
        assert row.optim == pytest.approx(2 * row.params, rel=PAD)
        assert row.optim >= 2 * row.params
        assert row.ratios() == {} and row.sharded_parts() == []


def test_stage3_holds_half_the_parameters_and_gradients(rows):
    full_params = rows[0, 0].params
    for rank in range(WORLD):
        row = rows[3, rank]
        # this rank's ds_tensor slices: half of stage 0's parameters, padding aside
        assert row.params_shard == pytest.approx(full_params / WORLD, rel=PAD)
        assert row.params_shard >= full_params / WORLD
        # the parameters ZeRO-3 keeps whole (under its persistence threshold) are not all
        assert 0 < row.params_full < full_params / WORLD
        assert row.grads == pytest.approx(rows[0, rank].grads / WORLD, rel=PAD)
        assert row.optim == pytest.approx(rows[0, rank].optim / WORLD, rel=PAD)
        assert row.master == pytest.approx(full_params / WORLD, rel=PAD)
        ratios = row.ratios()
        assert set(ratios) == {"params", "master", "grads", "optim"}
        for part in ("master", "grads", "optim"):
            assert abs(ratios[part] - 1.0) < PAD
        assert ratios["params"] == pytest.approx(row.params / row.theory_params)


def test_theory_is_full_over_n_where_the_stage_shards(bench, rows):
    base = rows[0, 0]
    for rank in range(WORLD):
        row = rows[3, rank]
        assert row.theory_params == base.theory_params // WORLD
        assert row.theory_grads == base.theory_grads // WORLD
        assert row.theory_optim == base.theory_optim // WORLD
        assert row.theory_master == base.theory_grads // WORLD
        assert row.theory_total == (
            row.theory_params + row.theory_master + row.theory_grads + row.theory_optim
        )
    full = {"param_bytes": 1000, "grad_bytes": 800}
    expected = {  # stage: (params, master, grads, optim) per rank, N = 4
        0: (1000, 0, 800, 1600),
        1: (1000, 200, 800, 400),
        2: (1000, 200, 200, 400),
        3: (250, 200, 200, 400),
    }
    for stage, (params, master, grads, optim) in expected.items():
        assert bench.theory(stage, 4, **full) == {
            "theory_params": params,
            "theory_master": master,
            "theory_grads": grads,
            "theory_optim": optim,
        }


def test_table_has_a_line_per_row(bench, rows):
    table = bench.format_table(list(rows.values())).splitlines()
    assert len(table) == 1 + len(rows)
    assert table[0].split()[:2] == ["stage", "rank"]
    assert {tuple(line.split()[:2]) for line in table[1:]} == {
        (str(stage), str(rank)) for stage, rank in rows
    }
