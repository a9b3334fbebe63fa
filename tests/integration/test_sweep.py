"""``mmpretrain sweep`` on a real local Ray: every trial a real run (Ray Data -> TorchTrainer ->
DeepSpeed on gloo) on the tiny preset.

Three sweeps: an ASHA sweep with a trial that cannot learn (its lr is tiny), read by several
tests; a sweep whose driver is SIGKILLed and started again; a population-based one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmpretrain import cli
from mmpretrain.sweep.results import read_sweep, show_results
from mmpretrain.train.checkpoint.manifest import list_checkpoints
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration

MAX_STEPS = 64
BAD_LR = 1.0e-8  # the trial that cannot learn
# Ray's own per-cluster singletons (Ray Data's stats and autoscaling coordinator, usage
# collection), detached and shared by every job: not a trial's.
RAY_SINGLETONS = {"_AutoscalingCoordinatorActor", "_StatsActor", "_UsageCollectionActor"}


def _spec(name: str, **changes: Any) -> dict[str, Any]:
    """A fast spec: contrastive loss only (retrieval is what is ranked), one worker a trial."""
    spec: dict[str, Any] = {
        "name": name,
        "config": "tiny",
        "overrides": [
            "optim.warmup_steps=4",
            "objectives.itm=0",
            "objectives.mlm=0",
            "objectives.text_mlm=0",
            "objectives.image_ssl=0",
            "checkpoint.keep=2",
        ],
        "resources": {"train.num_workers": 1},
        "budget": {"train.max_steps": MAX_STEPS, "eval.every": 16, "checkpoint.every": 16},
        "metric": "mean_recall@5",  # steadier than R@1 over 96 pairs this early
        "concurrency": 2,
    }
    spec.update(changes)
    return spec


def _data(synth_data: dict[str, Path], storage: Path) -> list[str]:
    return [
        f"data.train={synth_data['train']}/*.tar",
        f"data.val={synth_data['val']}/*.tar",
        f"data.tokenizer={synth_data['tokenizer']}",
        f"train.storage_path={storage}",
    ]


def _write(folder: Path, spec: dict[str, Any]) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _rows(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    return {row["trial"]: row for row in json.loads(show_results(sweep_dir, as_json=True))}


@dataclass
class Sweep:
    folder: Path
    cwd: Path
    stdout: str
    placement_groups: list[dict[str, Any]]  # the cluster's, once the sweep is over
    alive_actors: list[dict[str, Any]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def asha_sweep(synth_data, tmp_path_factory) -> Sweep:
    """Three trials, two at a time, on a cluster of their own (its dashboard's state API tells
    what is left afterwards); the tiny-lr trial comes last, so it meets a recorded rung. One
    evaluation and one checkpoint at the rung (step 32) and at the end: all ASHA needs."""
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors, list_placement_groups

    cwd = tmp_path_factory.mktemp("asha")
    spec = _spec(
        "asha",
        space={"optim.lr": {"grid": [1.0e-3, 5.0e-4, BAD_LR]}},
        search={"algorithm": "grid"},
        scheduler={"type": "asha", "grace_period": 32, "reduction_factor": 2},
        budget={"train.max_steps": MAX_STEPS, "eval.every": 32, "checkpoint.every": 32},
    )
    port = _free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 6, "include_dashboard": True, "dashboard_port": port},
    )
    try:
        done = run_cli(
            "sweep",
            str(_write(cwd, spec)),
            *_data(synth_data, cwd / "runs"),
            "--address",
            cluster.address,
            cwd=cwd,
        )
        dashboard = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # Ray Train's cleaner may still be removing a stopped trial's group
            groups = [g for g in list_placement_groups(address=dashboard) if g.state != "REMOVED"]
            alive = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")])
            trial_actors = [a for a in alive if a.class_name not in RAY_SINGLETONS]
            if (not groups and not trial_actors) or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        cluster.shutdown()
    return Sweep(
        cwd / "runs" / "asha",
        cwd,
        done.stdout,
        [dict(g.__dict__) for g in groups],
        [dict(a.__dict__) for a in alive],
    )


def test_asha_stops_the_trial_that_cannot_learn_and_lists_every_trial(asha_sweep) -> None:
    rows = _rows(asha_sweep.folder)
    assert len(rows) == 3
    bad = next(row for row in rows.values() if row["values"]["optim.lr"] == BAD_LR)
    assert bad["status"] == "stopped early" and bad["steps"] < MAX_STEPS
    good = [row for row in rows.values() if row is not bad]
    assert max(row["best"] for row in good) > bad["best"]
    for row in rows.values():  # each status agrees with the steps the trial really trained
        expected = "finished" if row["steps"] == MAX_STEPS else "stopped early"
        assert row["status"] == expected, row
        metrics = Path(row["dir"]) / "metrics.jsonl"
        logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert max(logged) <= row["steps"] < max(logged) + 10  # logged every 10 steps
    ranked = [row["best"] for row in json.loads(show_results(asha_sweep.folder, as_json=True))]
    assert ranked == sorted(ranked, reverse=True)
    assert any(row["status"] == "finished" for row in rows.values())
    # The console: one line per trial event, and the table of all three at the end.
    assert f"{bad['trial']}: stopped early at step {bad['steps']}" in asha_sweep.stdout
    assert all(f"{name}: started" in asha_sweep.stdout for name in rows)
    assert "best config:" in asha_sweep.stdout
    assert "Configuration for experiment" not in asha_sweep.stdout  # Tune's own box


def test_a_stopped_trial_leaves_nothing_behind_in_the_cluster(asha_sweep) -> None:
    # Every trial's workers, Tune actor, Train controller and placement group are gone.
    assert asha_sweep.placement_groups == []
    left = [a["class_name"] for a in asha_sweep.alive_actors]
    assert set(left) <= RAY_SINGLETONS, left


def test_a_stopped_trials_last_checkpoint_stays_usable(asha_sweep, capfd) -> None:
    stopped = next(r for r in _rows(asha_sweep.folder).values() if r["status"] == "stopped early")
    statuses = list_checkpoints(stopped["dir"])
    assert statuses and statuses[0].complete and statuses[0].step == stopped["steps"]
    out = asha_sweep.cwd / "stopped-export"
    checkpoint = statuses[0].path.local_path.as_posix()
    assert cli.main(["export", "--checkpoint", checkpoint, "--out", str(out)]) == 0
    assert any(f.suffix == ".safetensors" and f.stat().st_size > 0 for f in out.iterdir())


def test_best_yaml_trains_with_mmpretrain_train(asha_sweep, local_ray, capfd) -> None:
    best_trial = json.loads(show_results(asha_sweep.folder, as_json=True))[0]
    best = asha_sweep.folder / "best.yaml"
    config = yaml.safe_load(best.read_text())
    assert config["optim"]["lr"] == best_trial["values"]["optim.lr"]
    assert config["cluster"]["address"] is None  # the sweep's cluster is gone
    # As it is, but paused at step 8 (train.stop_at) to keep the test short.
    assert cli.main(["train", "--config", str(best), "train.stop_at=8"]) == 0
    run = Path(config["train"]["storage_path"]) / "asha-best"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 8
    assert list_checkpoints(run)[0].step == 8


def test_report_compares_the_trials(asha_sweep, capfd) -> None:
    assert cli.main(["report", str(asha_sweep.folder)]) == 0
    report = (asha_sweep.folder / "report.md").read_text()
    assert all(name in report for name in _rows(asha_sweep.folder))
    assert (asha_sweep.folder / "fig3_comparison.png").stat().st_size > 0


def _sweep_command(spec: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "mmpretrain", "sweep", str(spec), *overrides]


def _wait_for(predicate, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the sweep ended before the moment to kill it"
        assert time.monotonic() < deadline, "timed out waiting for the sweep"
        time.sleep(1)


def _kill_ray_session_of(driver_pid: int) -> None:
    """Stops, by pid, any process of the Ray the killed driver embedded that outlived its
    process group (Ray names the session after the driver's pid)."""
    import psutil

    session = re.compile(rf"session_\S+_{driver_pid}\b")
    for process in psutil.process_iter(["pid", "cmdline"]):
        if session.search(" ".join(process.info["cmdline"] or [])):
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.mark.slow
def test_a_sweep_whose_driver_was_killed_continues(synth_data, tmp_path) -> None:
    spec = _spec(
        "restore",
        space={"optim.lr": {"choice": [1.0e-3, 7.0e-4]}},
        search={"algorithm": "optuna", "seed": 3},
        budget={"train.max_steps": 48, "eval.every": 16, "checkpoint.every": 16},
        num_trials=2,
        concurrency=1,
    )
    spec_path = _write(tmp_path, spec)
    overrides = _data(synth_data, tmp_path / "runs")
    folder = tmp_path / "runs" / "restore"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)

    def trials() -> list[Path]:
        return sorted(p for p in folder.glob("restore_*") if p.is_dir())

    def second_trial_checkpointed() -> bool:
        found = trials()
        return (
            len(found) == 2
            and any((p / "status.json").is_file() for p in found)
            and any(
                s.complete
                for p in found
                if not (p / "status.json").is_file()
                for s in list_checkpoints(p)
            )
        )

    first_log = tmp_path / "first.log"
    with first_log.open("w") as log:
        # Its own session: the kill takes the driver and the Ray it embedded, as a lost shell.
        driver = subprocess.Popen(
            _sweep_command(spec_path, overrides),
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for(second_trial_checkpointed, 600, driver)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
            _kill_ray_session_of(driver.pid)
    finished = next(p for p in trials() if (p / "status.json").is_file())
    interrupted = next(p for p in trials() if p != finished)
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}

    again = run_cli("sweep", str(spec_path), *overrides, cwd=tmp_path)  # the same command
    resumed = re.search(r"resumed from \S+ at step (\d+)", again.stdout)
    assert resumed and int(resumed.group(1)) > 0, again.stdout[-3000:]
    assert f"{interrupted.name}: finished at step 48" in again.stdout
    assert f"{finished.name}: started" not in again.stdout  # not run again
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == before
    rows = _rows(folder)
    assert {row["status"] for row in rows.values()} == {"finished"}
    assert len(rows) == 2

    # The same folder with another spec is refused before any Ray starts.
    changed = subprocess.run(
        [*_sweep_command(spec_path, overrides), "optim.weight_decay=0.05"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert changed.returncode == 2
    assert "holds sweep 'restore' with another spec (overrides changed)" in changed.stderr


@pytest.mark.slow
def test_pbt_clones_the_leader_and_continues_its_steps(synth_data, tmp_path) -> None:
    spec = _spec(
        "pbt",
        space={
            "optim.lr": {"grid": [1.0e-3, BAD_LR]},
            "objectives.itc": {"uniform": [0.5, 1.5]},
        },
        search={"algorithm": "random", "seed": 0},
        scheduler={"type": "pbt", "perturbation_interval": 16, "quantile_fraction": 0.5},
    )
    done = run_cli(
        "sweep", str(_write(tmp_path, spec)), *_data(synth_data, tmp_path / "runs"), cwd=tmp_path
    )
    folder = tmp_path / "runs" / "pbt"
    results = read_sweep(folder)
    cloned = [trial for trial in results.trials if trial.lineage]
    assert cloned, "no trial was replaced from the leader"
    for trial in cloned:
        others = {t.name for t in results.trials} - {trial.name}
        for clone in trial.lineage:
            assert clone.cloned_from in others and clone.step > 0
            assert set(clone.new) == {"optim.lr", "objectives.itc"}
        # The first clone replaced the trial's own values (a later one may draw the same
        # perturbation of the same leader again).
        assert trial.lineage[0].old != trial.lineage[0].new
        assert trial.steps == MAX_STEPS and trial.status == "finished"
        # After each clone the run went on from the cloned step, never from 0.
        rows = [json.loads(line) for line in (trial.folder / "metrics.jsonl").open()]
        lineage = [json.loads(line) for line in (trial.folder / "lineage.jsonl").open()]
        for clone in lineage:
            after = [row["step"] for row in rows if row["time"] > clone["time"]]
            assert after and min(after) > clone["step"]
        assert f"{trial.name}: cloned " in done.stdout
        assert re.search(r"resumed from \S+ at step [1-9]", done.stdout)
    table = show_results(folder)
    assert "cloned from" in table


def test_a_sweep_whose_trial_cannot_fit_fails_at_once(synth_data, local_ray, tmp_path) -> None:
    from mmpretrain.errors import ResourceError
    from mmpretrain.sweep.driver import run_sweep
    from mmpretrain.sweep.spec import load_spec

    spec = _spec(
        "too-big", resources={"train.num_workers": 8}, space={"optim.lr": {"grid": [1e-3]}}
    )
    started = time.monotonic()
    with pytest.raises(ResourceError, match=r"train.num_workers=8 x train.cpus_per_worker=1"):
        run_sweep(load_spec(_write(tmp_path, spec), _data(synth_data, tmp_path / "runs")))
    assert time.monotonic() - started < 60  # no trial was started and left to wait
    assert not list((tmp_path / "runs" / "too-big").glob("too-big_*"))


@pytest.mark.slow  # the fast tier's survived fault is test_failures' killed worker
def test_an_errored_trial_is_recorded_and_the_sweep_goes_on(
    synth_data, local_ray, tmp_path
) -> None:
    """A batch larger than the training set passes the config but fails in the workers."""
    from mmpretrain.sweep.driver import run_sweep
    from mmpretrain.sweep.spec import load_spec

    spec = _spec(
        "errors",
        space={"data.batch_size": {"grid": [1024]}},
        search={"algorithm": "grid"},
        budget={"train.max_steps": 16, "eval.every": 16, "checkpoint.every": 16},
    )
    folder = run_sweep(load_spec(_write(tmp_path, spec), _data(synth_data, tmp_path / "runs")))
    [row] = _rows(folder).values()
    assert row["status"] == "errored"
    assert "data.batch_size=1024" in row["error"]  # the run's own message, last line
    assert "errored" in show_results(folder)
