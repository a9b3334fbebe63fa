"""Sweep specs are checked whole, before any Ray call, with errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mmpretrain.config import describe_fields
from mmpretrain.sweep.spec import SweepSpecError, load_spec, parse_spec

TUNE_DIR = Path(__file__).parents[2] / "tune"
DATA = ["data.train=shards/train-*.tar", "data.val=shards/val-*.tar"]


def _spec(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "unit",
        "config": "tiny",
        "overrides": list(DATA),
        "resources": {"train.num_workers": 1},
        "budget": {"train.max_steps": 64, "eval.every": 16, "checkpoint.every": 16},
        "space": {"optim.lr": {"loguniform": [1.0e-4, 1.0e-3]}},
        "num_trials": 4,
        "concurrency": 2,
    }
    raw.update(changes)
    return raw


def _error(**changes: Any) -> str:
    with pytest.raises(SweepSpecError) as caught:
        parse_spec(_spec(**changes))
    return str(caught.value)


@pytest.mark.parametrize("path", sorted(TUNE_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_searches_real_keys_with_accepted_values(path: Path) -> None:
    spec = load_spec(path, DATA)  # tries every listed value and both ends of every range
    known = {key for key, _ in describe_fields()}
    assert spec.space and all(dim.key in known for dim in spec.space)
    for dim in spec.space:
        for value in dim.probes():
            cfg = spec.base_config({dim.key: value})
            section, _, leaf = dim.key.rpartition(".")
            node: Any = cfg
            for part in section.split("."):
                node = getattr(node, part)
            assert getattr(node, leaf) == value
    assert spec.total_trials >= 2


def test_shipped_specs_cover_the_three_schedulers_and_the_four_fusions() -> None:
    specs = {p.stem: load_spec(p, DATA) for p in TUNE_DIR.glob("*.yaml")}
    assert {"smoke", "fusion-and-weights", "loss-weights-pbt"} <= set(specs)
    assert specs["fusion-and-weights"].scheduler == "asha"
    assert specs["fusion-and-weights"].searcher == "optuna"
    fusions = specs["fusion-and-weights"].dimension("model.fusion.type").values
    assert set(fusions) == {"cross_attention", "merged", "co_attention", "gated"}
    assert specs["loss-weights-pbt"].scheduler == "pbt"


def test_a_grid_multiplies_the_samples_as_in_tune() -> None:
    spec = parse_spec(
        _spec(space={"model.fusion.type": {"grid": ["merged", "gated"]}}, num_trials=3)
    )
    assert spec.total_trials == 6


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"space": {"optim.lrr": {"choice": [1e-3]}}}, "space.optim.lrr: not a config key; did you mean 'optim.lr'"),  # noqa: E501
        ({"space": {"model.fusion.type": {"choice": ["merged", "mixed"]}}}, "space.model.fusion.type: the config rejects 'mixed'"),  # noqa: E501
        ({"space": {"objectives.itm": {"uniform": [-1.0, 1.0]}}}, "space.objectives.itm: the config rejects -1.0"),  # noqa: E501
        ({"space": {"optim.lr": {"loguniform": [0.0, 1.0e-3]}}}, "space.optim.lr.loguniform: bounds must be > 0"),  # noqa: E501
        ({"space": {"optim.lr": {"normal": [0, 1]}}}, "space.optim.lr: got 'normal'; allowed values are"),  # noqa: E501
        ({"space": {"optim.lr": {"uniform": [1.0e-3, 1.0e-4]}}}, "low must be below high"),
        ({"space": {"train.num_workers": {"choice": [1, 2]}}}, "set by the sweep or in resources"),
        ({"space": {}}, "space: give at least one"),
        ({"search": {"algorithm": "bayes"}}, "search.algorithm: got 'bayes'; allowed values are ['random', 'grid', 'optuna']"),  # noqa: E501
        ({"scheduler": {"type": "hyperband"}}, "scheduler.type: got 'hyperband'; allowed values are ['asha', 'pbt', 'none']"),  # noqa: E501
        ({"scheduler": {"type": "asha", "patience": 3}}, "scheduler.patience: got unknown key; allowed keys: type, grace_period"),  # noqa: E501
        ({"metric": "recall"}, "metric: got 'recall', which is not reported; allowed values are ['mean_recall@1'"),  # noqa: E501
        ({"mode": "maximize"}, "mode: got 'maximize'; allowed values are ['max', 'min']"),
        ({"concurrency": 0}, "concurrency: a whole number >= 1"),
        ({"resources": {"train.max_steps": 3}}, "resources.train.max_steps: got unknown key; allowed keys: train.num_workers"),  # noqa: E501
        ({"budget": {"train.max_steps": 64, "eval.every": 0}}, "budget.eval.every: must be in [1, train.max_steps=64]"),  # noqa: E501
        ({"overrides": ["data.train=x/*.tar"]}, "data.val: a sweep ranks its trials on held-out pairs"),  # noqa: E501
        ({"overrides": [*DATA, "observe.metrics_port=9500"]}, "overrides: observe.metrics_port is set by the sweep"),  # noqa: E501
        ({"overrides": [*DATA, "train.lr=0.1"]}, "overrides: train.lr: got a moved key; it is now optim.lr"),  # noqa: E501
        ({"name": "a/b"}, "name: required"),
        ({"trials": 3}, "trials: got unknown key; allowed keys: name, description, config"),
    ],
)  # fmt: skip
def test_a_bad_spec_fails_naming_the_key(changes: dict[str, Any], expected: str) -> None:
    assert expected in _error(**changes)


def test_the_grid_searcher_needs_listed_values_and_optuna_refuses_grids() -> None:
    assert "the grid searcher needs choice or grid values, not loguniform" in _error(
        search={"algorithm": "grid"}
    )
    grid = {"model.fusion.type": {"grid": ["merged", "gated"]}}
    assert "Optuna samples; use choice" in _error(search={"algorithm": "optuna"}, space=grid)


def test_pbt_changes_only_weights_and_lr_on_evaluated_checkpoints() -> None:
    pbt = {"type": "pbt", "perturbation_interval": 16}
    fusion = {"model.fusion.type": {"choice": ["merged", "gated"]}}
    assert "space.model.fusion.type: population-based training changes only" in _error(
        scheduler=pbt, space=fusion
    )
    assert "scheduler.perturbation_interval: a multiple of eval.every=16" in _error(
        scheduler={"type": "pbt", "perturbation_interval": 20}
    )
    assert "budget.checkpoint.every: must divide eval.every=16" in _error(
        scheduler=pbt,
        budget={"train.max_steps": 64, "eval.every": 16, "checkpoint.every": 32},
    )
    assert "give num_trials and concurrency >= 2" in _error(scheduler=pbt, concurrency=1)
    spec = parse_spec(_spec(scheduler=pbt))
    assert spec.scheduler_options == {"perturbation_interval": 16}


def test_a_pbt_perturbation_is_clipped_into_the_searched_range() -> None:
    dim = parse_spec(_spec()).dimension("optim.lr")
    assert dim.clip(5.0e-3) == 1.0e-3 and dim.clip(1.0e-6) == 1.0e-4 and dim.clip(5e-4) == 5e-4


def test_a_spec_file_reads_its_config_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"model": {"embed_dim": 48}}))
    raw = _spec(config="mine.yaml", overrides=[])
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp_path / "sweep.yaml", DATA)
    assert spec.config == str(tmp_path / "mine.yaml")
    assert spec.base_config().model.embed_dim == 48
    assert spec.to_dict()["overrides"] == DATA  # command-line overrides are part of the spec
    with pytest.raises(SweepSpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
