"""A bad key or value fails the same way in a run config, a sweep spec and a job spec: one line
``error: <file>: <dotted.key>: got X; allowed ...`` on stderr, exit status 2, no traceback, and
before anything starts (no Ray, no request to a cluster)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmpretrain import cli

ROOT = Path(__file__).parents[2]
SHAPE = re.compile(r"error: (?P<file>[^:]+): (?P<key>[\w.\[\]-]+): got (?P<got>.+); allowed\b(.+)")


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str]) -> re.Match[str]:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    match = SHAPE.fullmatch(err.strip())
    assert match, err
    return match


def _write(tmp_path: Path, name: str, data: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _sweep(**changes: Any) -> dict[str, Any]:
    return {"name": "shape", "space": {"optim.lr": {"choice": [1e-4]}}, **changes}


def _job(**changes: Any) -> dict[str, Any]:
    spec = yaml.safe_load((ROOT / "jobs" / "pretrain-tiny.yaml").read_text())
    spec["runtime_env"]["working_dir"] = str(ROOT)
    return {**spec, **changes}


@pytest.mark.parametrize(
    ("kind", "data", "key", "got"),
    [
        ("run", {"train": {"max_step": 5}}, "train.max_step", "unknown key"),
        ("run", {"train": {"zero_stage": 7}}, "train.zero_stage", "7"),
        ("run", {"optim": {"lr": "fast"}}, "optim.lr", "'fast'"),
        ("sweep", _sweep(trials=3), "trials", "unknown key"),
        ("sweep", _sweep(mode="maximize"), "mode", "'maximize'"),
        ("sweep", _sweep(scheduler={"type": "asha", "patience": 3}), "scheduler.patience", "unknown key"),  # noqa: E501
        ("job", _job(entrypont="mmpretrain train"), "entrypont", "unknown key"),
        ("job", _job(stop_grace_s="soon"), "stop_grace_s", "'soon'"),
        ("job", _job(runtime_env={"workdir": "."}), "runtime_env.workdir", "unknown key"),
    ],
)  # fmt: skip
def test_a_bad_key_or_value_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, data: dict, key: str, got: str
) -> None:
    path = _write(tmp_path, f"{kind}.yaml", data)
    argv = {
        "run": ["train", "--config", str(path)],
        "sweep": ["sweep", "run", str(path), "data.val=x"],
        "job": ["job", "submit", str(path)],
    }[kind]
    match = _fails(capsys, argv)
    assert (match["file"], match["key"], match["got"]) == (str(path), key, got)


def test_unknown_keys_are_refused_in_one_wording_for_all_three(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _write(tmp_path, "run.yaml", {"trian": {}})
    sweep = _write(tmp_path, "sweep.yaml", _sweep(trian=1))
    job = _write(tmp_path, "job.yaml", _job(trian=1))
    tails = []
    for argv in (
        ["train", "--config", str(run)],
        ["sweep", str(sweep)],
        ["job", "submit", str(job)],
    ):
        match = _fails(capsys, argv)
        assert match["key"] == "trian" and match["got"] == "unknown key"
        tails.append(match[0].split(": trian: ", 1)[1].split(":", 1)[0])
    assert tails == ["got unknown key; allowed keys"] * 3


def test_an_override_typed_on_the_command_line_names_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    match = _fails(capsys, ["train", "train.zero_stage=9"])
    assert (match["file"], match["key"]) == ("<command line>", "train.zero_stage")
    job = _write(tmp_path, "job.yaml", _job())
    match = _fails(capsys, ["job", "submit", str(job), "train.max_stepz=5"])
    assert (match["file"], match["key"]) == ("<command line>", "train.max_stepz")


def test_a_key_in_a_job_entrypoint_is_the_spec_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _write(tmp_path, "job.yaml", _job(entrypoint="mmpretrain train train.zero_stage=9"))
    assert cli.main(["job", "submit", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {job}: entrypoint: train.zero_stage: got 9; allowed values")
