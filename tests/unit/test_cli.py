"""The command line as a user meets it: help, version, and each command wired to its handler."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from mmpretrain import cli


def test_help_says_what_the_tool_does(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "Pretrain fused image-text encoders" in text
    assert "No logic" not in text  # the maintainers' note stays out of the user's help
    for command in ("train", "eval", "export", "demo", "report", "checkpoints"):
        assert command in text


def test_version_is_the_installed_distributions(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mmpretrain {metadata.version('mmpretrain')}"


def test_every_command_has_a_handler() -> None:
    parser = cli.build_parser()
    commands = [
        ["config", "show"],
        ["config", "keys"],
        ["config", "docs"],
        ["sweep", "run", "spec.yaml"],
        ["sweep", "results", "runs/x"],
        ["data", "synth", "--out", "x", "--samples", "1"],
        ["data", "convert", "src", "--out", "x"],
        ["data", "inspect", "x"],
        ["tokenizer", "train", "--data", "x", "--out", "y"],
        ["train"],
        ["eval", "--checkpoint", "x", "--data", "y"],
        ["export", "--checkpoint", "x", "--out", "y"],
        ["checkpoints", "list", "x"],
        ["report", "x"],
        ["demo"],
    ]
    handlers = {parser.parse_args(argv).handler for argv in commands}
    assert len(handlers) == len(commands) and all(map(callable, handlers))


def test_a_config_error_is_one_line_and_exit_code_2(capsys) -> None:
    assert cli.main(["config", "show", "train.zero_stage=5"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: <command line>: train.zero_stage: got 5; allowed values are [0, 1, 2, 3]"
    )


def test_sweep_spec_is_short_for_sweep_run_and_results_is_its_own_subcommand() -> None:
    short = cli.parse_command(["sweep", "tune/smoke.yaml", "data.val=x", "--address", "auto"])
    full = cli.parse_command(["sweep", "run", "tune/smoke.yaml", "data.val=x", "--address", "auto"])
    assert vars(short) == vars(full)
    assert (short.action, short.spec, short.overrides) == ("run", "tune/smoke.yaml", ["data.val=x"])
    results = cli.parse_command(["sweep", "results", "runs/smoke", "--json"])
    assert (results.action, results.dir, results.json) == ("results", "runs/smoke", True)
    assert not hasattr(results, "spec")


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """``mmpretrain config show | head -1``: the pipe closes before the command writes."""
    command = [sys.executable, "-m", "mmpretrain", "config", "show"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before the child has imported anything
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
