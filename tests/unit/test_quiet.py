"""--verbose is observe.verbose=true; without it Ray's console lines are cut, not its log files."""

from __future__ import annotations

import logging

import pytest
import yaml

from mmpretrain.cli import _run_overrides, build_parser, main
from mmpretrain.config import load_config


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "train.max_steps=3"], ["train.max_steps=3"]),
        (
            ["train", "--verbose", "train.max_steps=3"],
            ["train.max_steps=3", "observe.verbose=true"],
        ),
        (
            [
                "eval",
                "--checkpoint",
                "run",
                "--data",
                "val",
                "--address",
                "ray://h:10001",
                "--verbose",
            ],
            ["cluster.address=ray://h:10001", "observe.verbose=true"],
        ),
        (
            ["demo", "--verbose", "train.max_steps=20"],
            ["train.max_steps=20", "observe.verbose=true"],
        ),
    ],
)
def test_run_flags_become_overrides_that_come_last(argv: list[str], expected: list[str]) -> None:
    overrides = _run_overrides(build_parser().parse_args(argv))
    assert overrides == expected
    assert load_config("tiny", overrides).observe.verbose == ("--verbose" in argv)


def test_verbose_flag_wins_over_an_earlier_override() -> None:
    args = build_parser().parse_args(["train", "observe.verbose=false", "--verbose"])
    assert load_config("tiny", _run_overrides(args)).observe.verbose is True


def test_observe_verbose_is_a_validated_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_config("tiny").observe.verbose is False
    assert main(["config", "show", "observe.verbose=maybe"]) == 2
    assert "observe.verbose" in capsys.readouterr().err
    assert main(["config", "show", "observe.verbose=true"]) == 0
    assert "verbose: true" in capsys.readouterr().out


def test_ray_data_console_is_raised_and_its_log_file_keeps_everything(monkeypatch) -> None:
    from ray.data._internal import logging as data_logging

    from mmpretrain.train.quiet import RAY_DATA_LOGGING_ENV, ray_data_logging_file

    path = ray_data_logging_file()
    config = yaml.safe_load(path.read_text())
    assert config["handlers"]["console"]["level"] == "ERROR"
    assert config["loggers"]["ray.data"]["level"] == "DEBUG"  # the file still gets all
    assert "level" not in config["handlers"]["file"]

    # Ray Data reads the file each time it (re)configures logging, as a worker does when a
    # dataset starts there.
    monkeypatch.setenv(RAY_DATA_LOGGING_ENV, str(path))
    try:
        data_logging.configure_logging()
        handlers = {h.name: h for h in logging.getLogger("ray.data").handlers}
        assert handlers["console"].level == logging.ERROR
        assert handlers["file"].level == logging.NOTSET
    finally:
        monkeypatch.delenv(RAY_DATA_LOGGING_ENV)
        data_logging.configure_logging()  # back to Ray Data's defaults for other tests


def test_library_prints_go_to_the_log_not_the_console(capsys, caplog) -> None:
    from mmpretrain.train.quiet import library_prints

    with caplog.at_level(logging.INFO, logger="mmpretrain.library"):
        with library_prints(verbose=False):
            print("DeepSpeed op built successfully")
            print("in two", end=" ")
            print("writes")
        with library_prints(verbose=True):
            print("shown when verbose")
    assert capsys.readouterr().out == "shown when verbose\n"
    assert [r.getMessage() for r in caplog.records] == [
        "DeepSpeed op built successfully",
        "in two writes",
    ]


def test_ray_notices_are_dropped_from_the_drivers_echo_and_nothing_else() -> None:
    """The two notices Ray's core prints on every run, through Ray's real dispatcher."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from mmpretrain.train.quiet import RAY_FORWARDER, drop_ray_notices

    echoed: list[list[str]] = []
    saved = list(dispatcher.handlers)
    dispatcher.handlers = [(RAY_FORWARDER, lambda data: echoed.append(data["lines"]))]
    try:
        drop_ray_notices(verbose=False)
        drop_ray_notices(verbose=False)  # idempotent: one filter, not two
        assert len(dispatcher.handlers) == 1
        dispatcher.emit(
            {
                "lines": [
                    "[2026 E 1 2] core_worker.cc:2465: Actor with class name: "
                    "'PreemptionWatcher' and ID: 'ab' has constructor arguments in the object "
                    "store and max_restarts > 0.",
                    "step 5/10 | loss 12.003",
                ],
                "pid": 7,
                "is_err": False,
            }
        )
        dispatcher.emit({"lines": ["WARNING: 8 PYTHON worker processes have been started on "
                                   "node: x"], "pid": "raylet", "is_err": False})  # fmt: skip
        assert echoed == [["step 5/10 | loss 12.003"]]
    finally:
        dispatcher.handlers = saved
