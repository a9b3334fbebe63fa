"""A sweep directory's results table, ``best.yaml`` and report, on small sweep folders written
here in the driver's format (sweep.yaml, one folder per trial with config.yaml, eval.jsonl,
metrics.jsonl, status.json and, under population-based training, lineage.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from mmpretrain.cli import main
from mmpretrain.config import ObserveConfig, load_config
from mmpretrain.errors import ReportError, SweepError
from mmpretrain.report import comparison, write_report
from mmpretrain.report import sweep as sweep_report
from mmpretrain.sweep.results import read_sweep, show_results, to_json, write_best

SPACE = {
    "model.fusion.type": {"choice": ["cross_attention", "merged"]},
    "optim.lr": {"loguniform": [1e-4, 1e-2]},
}
TRACEBACK = (
    'Traceback (most recent call last):\n  File "loop.py", line 9\nRuntimeError: loss is nan\n'
)


def evaluation(step: int, recall: float) -> dict[str, float]:
    row = {"step": step, "candidates": 96.0, "chance@1": 1 / 96, "chance@5": 5 / 96}
    for way in ("i2t", "t2i"):
        row |= {f"{way}_recall@1": recall, f"{way}_recall@5": min(1.0, 3 * recall)}
    return row | {"mean_recall@1": recall, "mean_recall@5": min(1.0, 3 * recall)}


def write_jsonl(path: Path, rows: list[dict[str, Any]], torn: bool = False) -> None:
    path.write_text(
        "".join(json.dumps(row) + "\n" for row in rows) + ('{"step": 9' if torn else "")
    )


def write_trial(
    sweep_dir: Path,
    name: str,
    values: dict[str, Any],
    evals: list[tuple[int, float]],
    logged: int,
    status: dict[str, Any] | None,
    lineage: list[dict[str, Any]] = (),
) -> Path:
    folder = sweep_dir / name
    folder.mkdir(parents=True)
    cfg = load_config(
        "tiny",
        values={
            "train.run_name": name,
            "train.storage_path": str(sweep_dir),
            "train.max_steps": 20,
            "observe.sweep": sweep_dir.name,
            "observe.metrics_port": None,
            **values,
        },
    )
    (folder / "config.yaml").write_text(cfg.to_yaml())
    write_jsonl(
        folder / "metrics.jsonl", [{"step": s, "loss": 5 - s / 10} for s in range(1, logged + 1)]
    )
    if evals:
        write_jsonl(folder / "eval.jsonl", [evaluation(step, recall) for step, recall in evals])
    if status is not None:
        (folder / "status.json").write_text(json.dumps(status))
    if lineage:
        write_jsonl(folder / "lineage.jsonl", list(lineage))
    (folder / "checkpoint_step_00000010").mkdir()  # not a trial's business here
    return folder


def write_spec(sweep_dir: Path, **fields: Any) -> Path:
    sweep_dir.mkdir(parents=True)
    spec = {
        "name": sweep_dir.name,
        "config": "tiny",
        "overrides": ["data.val=/data/val"],
        "space": SPACE,
        "scheduler": {"type": "asha"},
        "num_trials": 4,
        "concurrency": 2,
        **fields,
    }
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (sweep_dir / "tokenizer").mkdir()  # the driver's shared tokenizer: not a trial
    (sweep_dir / "experiment_state-2026.json").write_text("{}")  # Tune's own
    return sweep_dir


@pytest.fixture
def smoke(tmp_path) -> Path:
    """Four trials, one of each status; metric and mode left to their defaults."""
    root = write_spec(tmp_path / "runs" / "smoke")
    write_trial(
        root,
        "smoke_a1b2c_00000",
        {"model.fusion.type": "cross_attention", "optim.lr": 0.001},
        [(5, 0.3), (10, 0.5), (15, 0.5), (20, 0.45)],
        logged=20,
        status={"status": "finished", "step": 20, "error": None},
    )
    write_trial(
        root,
        "smoke_a1b2c_00001",
        {"model.fusion.type": "merged", "optim.lr": 0.0003},
        [(5, 0.2)],
        logged=6,
        status={"status": "stopped early", "step": 6, "error": None},
    )
    write_trial(
        root,
        "smoke_a1b2c_00002",
        {"model.fusion.type": "cross_attention", "optim.lr": 0.009},
        [(5, 0.35)],
        logged=7,
        status={"status": "errored", "step": 7, "error": TRACEBACK},
    )
    unfinished = write_trial(
        root,
        "smoke_a1b2c_00003",
        {"model.fusion.type": "merged", "optim.lr": 0.002},
        [],
        logged=3,
        status=None,
    )
    write_jsonl(unfinished / "metrics.jsonl", [{"step": 1}, {"step": 3}], torn=True)  # mid-write
    return root


@pytest.fixture
def pbt(tmp_path) -> Path:
    """Population-based training ranked by t2i_recall@1, lower is better (to test mode)."""
    space = {"objectives.itm": {"uniform": [0.5, 2.0]}, "optim.lr": {"loguniform": [1e-4, 1e-2]}}
    root = write_spec(
        tmp_path / "pbt",
        space=space,
        scheduler={"type": "pbt", "perturbation_interval": 10},
        metric="t2i_recall@1",
        mode="min",
    )
    done = {"status": "finished", "step": 20, "error": None}
    write_trial(
        root,
        "pbt_x_00000",
        {"objectives.itm": 1.0, "optim.lr": 0.001},
        [(10, 0.4), (20, 0.6)],
        20,
        done,
    )
    clones = [
        {
            "step": 20,
            "cloned_from": "pbt_x_00000",
            "source_step": 20,
            "old": {"objectives.itm": 1.2, "optim.lr": 0.0012},
            "new": {"objectives.itm": 1.44, "optim.lr": 0.00096},
        },
        {
            "step": 10,
            "cloned_from": "pbt_x_00000",
            "source_step": 10,
            "old": {"objectives.itm": 0.5, "optim.lr": 0.004},
            "new": {"objectives.itm": 1.2, "optim.lr": 0.0012},
        },
    ]
    write_trial(
        root,
        "pbt_x_00001",
        {"objectives.itm": 0.5, "optim.lr": 0.004},
        [(10, 0.2), (20, 0.3)],
        20,
        done,
        clones,
    )
    return root


def test_trials_are_ranked_best_first_with_their_status_steps_and_values(smoke) -> None:
    results = read_sweep(smoke)
    assert (results.name, results.metric, results.mode) == ("smoke", "mean_recall@1", "max")
    assert results.keys == ("model.fusion.type", "optim.lr")
    names = [trial.name for trial in results.trials]
    assert names == [
        "smoke_a1b2c_00000",
        "smoke_a1b2c_00002",
        "smoke_a1b2c_00001",
        "smoke_a1b2c_00003",
    ]
    best, errored, stopped, unfinished = results.trials
    assert (best.best, best.best_step, best.final) == (0.5, 10, 0.45)  # first step that reached it
    assert (best.steps, best.max_steps, best.status, best.error) == (20, 20, "finished", None)
    assert best.values == {"model.fusion.type": "cross_attention", "optim.lr": 0.001}
    assert (errored.status, errored.error) == ("errored", "RuntimeError: loss is nan")
    assert (stopped.status, stopped.steps, stopped.best) == ("stopped early", 6, 0.2)
    assert (unfinished.status, unfinished.steps, unfinished.best) == ("unfinished", 3, None)
    assert results.best is best


def test_the_table_names_the_metric_and_aligns_one_row_per_trial(smoke) -> None:
    text = show_results(smoke)
    lines = text.splitlines()
    assert lines[0] == "sweep smoke: 4 trial(s) ranked by held-out mean_recall@1 (higher is better)"
    header = lines[2]
    assert header.split() == [
        "trial",
        "model.fusion.type",
        "optim.lr",
        "steps",
        "best",
        "mean_recall@1",
        "@step",
        "final",
        "status",
    ]
    rows = lines[3:7]
    assert [row.split()[0] for row in rows] == [
        "smoke_a1b2c_00000",
        "smoke_a1b2c_00002",
        "smoke_a1b2c_00001",
        "smoke_a1b2c_00003",
    ]
    assert rows[0].split()[1:7] == ["cross_attention", "0.001", "20/20", "0.5", "10", "0.45"]
    assert rows[1].endswith("errored: RuntimeError: loss is nan")
    assert rows[2].endswith("stopped early") and rows[3].endswith("unfinished")
    assert rows[3].split()[3:7] == ["3/20", "–", "–", "–"]
    status_column = header.index("status")
    assert all(row[status_column - 2 : status_column] == "  " for row in rows)  # aligned
    assert lines[-2:] == [
        f"best config: {smoke / 'best.yaml'}",
        f"  train it: mmpretrain train --config {smoke / 'best.yaml'}",
    ]


def test_best_yaml_trains_the_best_trial_as_a_fresh_run(smoke) -> None:
    results = read_sweep(smoke)
    path = write_best(smoke, results.trials)
    assert path == smoke / "best.yaml"
    cfg = load_config(path)
    assert cfg.train.run_name == "smoke-best"
    assert Path(cfg.train.storage_path) == smoke.parent
    assert cfg.observe.sweep is None
    assert cfg.observe.metrics_port == ObserveConfig().metrics_port
    assert (cfg.model.fusion.type, cfg.optim.lr, cfg.train.max_steps) == (
        "cross_attention",
        0.001,
        20,
    )
    trial = load_config(smoke / "smoke_a1b2c_00000" / "config.yaml")
    assert cfg.objectives == trial.objectives and cfg.model == trial.model  # the full config


def test_json_rows_carry_values_status_and_full_lineage(smoke, pbt) -> None:
    rows = json.loads(show_results(smoke, as_json=True))
    assert [row["trial"] for row in rows] == [t.name for t in read_sweep(smoke).trials]
    assert rows[1]["error"] == "RuntimeError: loss is nan" and rows[1]["status"] == "errored"
    assert rows[0]["values"] == {"model.fusion.type": "cross_attention", "optim.lr": 0.001}
    assert (rows[0]["best"], rows[0]["best_step"], rows[0]["metric"]) == (0.5, 10, "mean_recall@1")
    assert rows[3]["best"] is None and rows[3]["lineage"] == []
    assert (smoke / "best.yaml").is_file()  # --json writes it too

    pbt_rows = to_json(read_sweep(pbt))
    assert [row["trial"] for row in pbt_rows] == ["pbt_x_00001", "pbt_x_00000"]  # mode: min
    lineage = pbt_rows[0]["lineage"]
    assert [clone["step"] for clone in lineage] == [10, 20]  # newest last
    assert lineage[1] == {
        "step": 20,
        "cloned_from": "pbt_x_00000",
        "source_step": 20,
        "old": {"objectives.itm": 1.2, "optim.lr": 0.0012},
        "new": {"objectives.itm": 1.44, "optim.lr": 0.00096},
    }
    assert json.dumps(pbt_rows)  # machine-readable as a whole


def test_sweep_results_is_a_subcommand_printing_the_table_or_json(smoke, capsys) -> None:
    assert main(["sweep", "results", str(smoke), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(show_results(smoke, as_json=True))
    assert main(["sweep", "results", str(smoke)]) == 0
    assert capsys.readouterr().out.strip() == show_results(smoke).strip()
    assert main(["sweep", "results", str(smoke / "missing")]) == 2
    assert "is not a sweep directory" in capsys.readouterr().err


def test_pbt_trials_show_every_clone_and_end_with_the_cloned_values(pbt) -> None:
    results = read_sweep(pbt)
    cloned = results.trials[0]
    assert cloned.values == {"objectives.itm": 1.44, "optim.lr": 0.00096}
    text = show_results(pbt)
    assert "t2i_recall@1 (lower is better)" in text.splitlines()[0]
    assert "lineage" in text.splitlines()[2].split()
    row = next(line for line in text.splitlines() if line.startswith("pbt_x_00001"))
    assert "cloned from pbt_x_00000 at step 10; cloned from pbt_x_00000 at step 20" in row
    assert load_config(pbt / "best.yaml").objectives.itm == 1.44


def test_a_folder_that_is_not_a_sweep_or_has_no_trials_gets_a_clear_error(tmp_path, capsys) -> None:
    with pytest.raises(SweepError, match=r"is not a sweep directory: it has no sweep\.yaml"):
        read_sweep(tmp_path)
    empty = write_spec(tmp_path / "empty")
    with pytest.raises(
        SweepError, match=r"sweep 'empty' .* has no trials yet \(no empty_\* folder\)"
    ):
        show_results(empty)
    assert main(["report", str(empty)]) == 2
    assert "has no trials yet" in capsys.readouterr().err
    assert issubclass(SweepError, ReportError)  # the CLI reports it like any report error


def test_without_an_evaluation_the_table_prints_and_best_yaml_is_not_written(
    tmp_path, capsys
) -> None:
    root = write_spec(tmp_path / "early")
    write_trial(
        root,
        "early_0_00000",
        {"model.fusion.type": "cross_attention", "optim.lr": 0.001},
        [],
        4,
        None,
    )
    text = show_results(root)
    assert "early_0_00000" in text and "unfinished" in text
    assert (
        "no trial in" in text
        and "has evaluated yet" in text
        and "best.yaml was not written" in text
    )
    assert not (root / "best.yaml").exists()
    with pytest.raises(SweepError, match="has evaluated yet"):
        write_best(root, read_sweep(root).trials)
    assert main(["report", str(root)]) == 2
    assert "no trial has evaluated yet" in capsys.readouterr().err


def test_report_of_a_sweep_draws_both_figures_and_lists_every_trial(smoke, pbt) -> None:
    report = write_report(smoke)
    assert report == smoke / "report.md"
    text = report.read_text()
    for trial in read_sweep(smoke).trials:
        assert trial.name in text
    assert "Best trial: `smoke_a1b2c_00000`, mean_recall@1 = 0.5 at step 10." in text
    assert f"`best.yaml` (`mmpretrain train --config {smoke / 'best.yaml'}`)" in text
    assert load_config(smoke / "best.yaml").train.run_name == "smoke-best"
    for name in (sweep_report.FILE, comparison.FILE):
        assert f"]({name})" in text
        image = Image.open(smoke / name)
        assert image.format == "PNG" and image.size == (1000, 500)
        assert len(image.convert("RGB").getcolors(maxcolors=100_000)) > 50  # something drawn
    table = text.split("## Last evaluation of each trial")[1]
    assert "| smoke_a1b2c_00000 | 96 |" in table and "smoke_a1b2c_00003" not in table  # unevaluated

    assert main(["report", str(pbt)]) == 0
    assert "cloned from pbt_x_00000 at step 20" in (pbt / "report.md").read_text()
    assert Image.open(pbt / sweep_report.FILE).size == (1000, 500)
