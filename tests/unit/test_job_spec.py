"""Job specs are checked whole before anything is sent: every shipped spec, and the mistakes
a user makes (unknown keys, bad overrides, a relative storage path, a token in env_vars)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from mmpretrain.cli import parse_command
from mmpretrain.config import ConfigError, load_config
from mmpretrain.jobs.client import stopped_step
from mmpretrain.jobs.spec import (
    METADATA_PREFIX,
    STOP_WAIT_ENV,
    SUPERVISOR_MARGIN_S,
    JobSpecError,
    check_command,
    load_job_spec,
)
from mmpretrain.train.stop import stopped_message

JOBS = Path(__file__).resolve().parents[2] / "jobs"
SHIPPED = sorted(JOBS.glob("*.yaml"))


def test_a_spec_ships_for_each_kind_of_job() -> None:
    assert {path.name for path in SHIPPED} >= {
        "pretrain-tiny.yaml",
        "pretrain-base.yaml",
        "sweep.yaml",
        "eval.yaml",
        "export.yaml",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_every_shipped_spec_parses_and_its_entrypoint_validates(path: Path) -> None:
    spec = load_job_spec(path, [], parse_command)
    argv = shlex.split(spec.command_line())
    assert argv[0] == "mmpretrain" and parse_command(argv[1:]).command == spec.command
    env = spec.runtime_env()
    # The job supervisor waits for the stop checkpoint longer than the run may take for it.
    assert int(env["env_vars"][STOP_WAIT_ENV]) >= spec.stop_grace_s + SUPERVISOR_MARGIN_S
    if spec.working_dir is not None:
        assert (spec.working_dir / "pyproject.toml").is_file()  # the project, uploaded
        assert {"/runs/", "/data/"} <= set(env["excludes"])
    if spec.command in ("train", "demo"):
        assert argv[-1] == f"train.stop_grace_s={spec.stop_grace_s:g}"


def test_pretrain_base_trains_on_the_base_preset_s_workers() -> None:
    """One GPU story: the job runs the preset's worker count (one 8-GPU node of the cloud
    YAMLs); a bigger run says so on submit (train.num_workers=32), not in a second default."""
    spec = load_job_spec(JOBS / "pretrain-base.yaml", [], parse_command)
    cfg = check_command(shlex.split(spec.command_line()), parse_command)
    assert cfg is not None and cfg.train.use_gpu
    assert cfg.train.num_workers == load_config("base").train.num_workers


def test_submit_overrides_are_appended_and_kept_for_resubmit() -> None:
    overrides = ["train.max_steps=20", "optim.lr=3e-4"]
    spec = load_job_spec(JOBS / "pretrain-tiny.yaml", overrides, parse_command)
    argv = shlex.split(spec.command_line())
    assert argv[-3:-1] == overrides  # before the stop grace, after the spec's own
    metadata = spec.job_metadata()
    assert shlex.split(metadata[f"{METADATA_PREFIX}overrides"]) == overrides
    again = load_job_spec(
        metadata[f"{METADATA_PREFIX}spec"],
        overrides,
        parse_command,
        text=metadata[f"{METADATA_PREFIX}spec_yaml"],
    )
    assert again.command_line() == spec.command_line()
    assert again.runtime_env() == spec.runtime_env()


def write_spec(tmp_path: Path, **changes: object) -> Path:
    raw = yaml.safe_load((JOBS / "pretrain-tiny.yaml").read_text())
    raw["runtime_env"]["working_dir"] = str(JOBS.parent)
    raw.update(changes)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("changes", "overrides", "named"),
    [
        ({"entrypont": "mmpretrain train"}, [], "entrypont"),
        ({"runtime_env": {"workdir": "."}}, [], "runtime_env.workdir"),
        ({"entrypoint_resources": {"cpus": 1}}, [], "entrypoint_resources.cpus"),
        ({"stop_grace_s": 0}, [], "stop_grace_s"),
        ({"entrypoint": "python train.py"}, [], "entrypoint"),
        ({"entrypoint": "mmpretrain report runs/x"}, [], "not a job command"),
        ({}, ["train.max_stepz=5"], "train.max_stepz"),
        ({}, ["train.zero_stage=7"], "train.zero_stage"),
        ({}, ["train.storage_path=runs"], "train.storage_path"),
        ({"runtime_env": {"env_vars": {"RAY_AUTH_TOKEN": "x"}}}, [], "RAY_AUTH_TOKEN"),
        ({"runtime_env": {"env_vars": {STOP_WAIT_ENV: "5"}}}, [], "stop_grace_s"),
        ({"metadata": {"mmpretrain.spec": "x"}}, [], "mmpretrain.spec"),
        # Ray reads excludes as .gitignore lines: an unanchored data/ drops mmpretrain/data/ too.
        ({"runtime_env": {"working_dir": str(JOBS.parent), "excludes": ["data/"]}}, [], "'/data/'"),
    ],
)
def test_a_bad_spec_or_override_fails_before_submission_naming_the_key(
    tmp_path: Path, changes: dict, overrides: list[str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_job_spec(write_spec(tmp_path, **changes), overrides, parse_command)


def test_a_sweep_job_checks_its_sweep_spec_in_the_uploaded_project(tmp_path: Path) -> None:
    spec = load_job_spec(JOBS / "sweep.yaml", [], parse_command)
    assert spec.working_dir == JOBS.parent
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_job_spec(JOBS / "sweep.yaml", ["optim.lrr=1"], parse_command)
    with pytest.raises(JobSpecError, match="does not exist"):
        load_job_spec(tmp_path / "missing.yaml", [], parse_command)


def test_the_stop_step_is_read_back_from_the_run_s_own_words() -> None:
    log = f"step 7/32 | loss 3.2\n\n{stopped_message(7)}\n"
    assert stopped_step(log) == (7, True)
    hard = "error: second SIGTERM: stopped at once; newest complete checkpoint: step 4; run..."
    assert stopped_step(hard) == (4, False)
    assert stopped_step("Traceback ...") == (None, False)
