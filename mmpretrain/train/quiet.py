"""What Ray and the libraries under it print on the console: nothing but warnings, by default.

A user of ``mmpretrain train`` reads mmpretrain's own lines: rank 0's progress lines, its
warnings and evaluation tables (written straight to stdout, which Ray forwards to the driver),
and the driver's summary. Ray's INFO lines (the cluster start, Ray Data's execution plans and
progress notices, Ray Train's worker-group and "Reporting training result" lines) and the
deprecation notices of torch, transformers and DeepSpeed bury them, and say nothing a user can
act on. They still go to Ray's log files (``/tmp/ray/session_*/logs``); ``observe.verbose``
puts everything back on the console, exactly as Ray prints it.

Each line is silenced where it starts, because each process configures its own logging:
the driver before ``ray.init`` (``driver_logging``, ``quiet_driver``), the Ray Train controller
through its ``RunConfig`` (``train_logging``), and every training or evaluation worker at the
top of its loop (``quiet_worker``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path

import ray
import ray.train
import yaml
from ray.data import DataContext

QUIET_LEVEL = "WARNING"  # Ray's and Ray Train's console threshold unless observe.verbose
# Ray Data warns about its own defaults ("Progress bars disabled"), so it needs one step more.
RAY_DATA_CONSOLE_LEVEL = "ERROR"
RAY_DATA_LOGGING_ENV = "RAY_DATA_LOGGING_CONFIG"  # read each time Ray Data configures logging
# Ray Train V2 logs every ray.train.report at INFO under a logger named after its source file
# (not under ray.train), which reaches the console through the worker's root logger.
REPORT_LOGGER_MODULE = "ray.train.v2._internal.execution.context"
# Deprecation notices from libraries the run calls but whose calls the user does not write.
LIBRARY_WARNINGS = r"(torch|transformers|deepspeed)(\.|$)"
# Loggers of libraries that log their own set-up (DeepSpeed's accelerator guess, torch's
# "No CUDA runtime is found" when DeepSpeed builds a CPU op); errors still pass.
LIBRARY_LOGGERS = ("DeepSpeed", "torch.utils.cpp_extension")
# Two notices Ray's core prints on every run that nobody can act on: Ray Train's own preemption
# watcher trips a notice about its constructor arguments, and on a machine with few cores the
# raylet warns that it started more Python workers than cores. They stay in Ray's log files.
# A sweep adds a third: stopping a trial kills its Ray Train controller, and Train's cleaner
# then says it removed the trial's placement group, which is what should happen.
RAY_NOTICES = re.compile(
    r"'PreemptionWatcher' .*has constructor arguments in the object store"
    r"|PYTHON worker processes have been started on node"
    r"|Detected that the Ray Train controller actor .* is dead\. Cleaning up placement group"
)
RAY_FORWARDER = "ray_print_logs"  # ray.init's handler that echoes workers' output on the driver


def driver_logging(verbose: bool) -> ray.LoggingConfig | None:
    """For ``ray.init``: the driver's and every job process's ``ray`` and root loggers.

    None (Ray's own default, INFO) when verbose.
    """
    return None if verbose else ray.LoggingConfig(log_level=QUIET_LEVEL)


def train_logging(verbose: bool) -> ray.train.LoggingConfig:
    """For ``ray.train.RunConfig``: the console threshold of the Train controller and workers."""
    return ray.train.LoggingConfig(log_level="INFO" if verbose else QUIET_LEVEL)


def quiet_driver(verbose: bool, embedded: bool) -> None:
    """Driver-side switches, before ``ray.init`` and before any dataset is built.

    An embedded Ray's processes inherit the driver's environment, which is how the Ray Data
    logging of actors mmpretrain runs no code in (the split coordinator) is reached: its
    console handler is raised, its log file keeps everything. A cluster joined by address
    keeps its own environment; there the execution-plan lines are switched off in the
    DataContext, which datasets carry from the driver to where they execute.
    """
    if verbose:
        return
    # Ray Train's own data ingest builds ExecutionOptions in a way Ray Data has deprecated.
    warnings.filterwarnings("ignore", category=ray.util.annotations.RayDeprecationWarning)
    if embedded:
        os.environ[RAY_DATA_LOGGING_ENV] = str(ray_data_logging_file())
    else:  # no say over the split coordinator's logging: drop its plan lines at the source
        DataContext.get_current().print_on_execution_start = False  # "Execution plan of ..."


def drop_ray_notices(verbose: bool) -> None:
    """After ``ray.init``: the driver's echo of Ray processes' output leaves out RAY_NOTICES.

    Ray forwards every worker's and the raylet's output through one dispatcher whose handler
    ``ray.init`` registers; this wraps that handler with a filter of those two notices, and
    nothing else. The dispatcher is Ray's private API, so where it is not as expected
    (another Ray version) the echo is left as it is.
    """
    if verbose:
        return
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    forwarders = [h for name, h in getattr(dispatcher, "handlers", []) if name == RAY_FORWARDER]
    if len(forwarders) != 1 or getattr(forwarders[0], "drops_ray_notices", False):
        return
    echo = forwarders[0]

    def filtered(data: dict) -> None:
        lines = [line for line in data.get("lines", []) if not RAY_NOTICES.search(line)]
        if lines:
            echo({**data, "lines": lines})

    filtered.drops_ray_notices = True  # type: ignore[attr-defined]
    dispatcher.remove_handler(RAY_FORWARDER)
    dispatcher.add_handler(RAY_FORWARDER, filtered)


def quiet_worker(verbose: bool) -> None:
    """In a training or evaluation worker, first thing: mmpretrain's console lines only.

    Ray Train has already pointed the root logger (where ``print`` in a worker also goes) and
    ``ray.train`` at one console handler and at its log files; raising that handler's level
    keeps the files whole.
    """
    if verbose:
        return
    for handler in logging.getLogger().handlers:
        if handler.get_name() == "console":  # the handler Ray Train's dictConfig named
            handler.setLevel(QUIET_LEVEL)
    logging.getLogger(_module_file(REPORT_LOGGER_MODULE)).setLevel(QUIET_LEVEL)
    # Ray Data re-reads this each time a dataset starts in this process (also on a cluster
    # joined by address, whose worker environment the driver did not set).
    os.environ[RAY_DATA_LOGGING_ENV] = str(ray_data_logging_file())
    for name in LIBRARY_LOGGERS:
        # A filter, not a level: DeepSpeed resets its logger's level when it is imported.
        logging.getLogger(name).addFilter(_errors_only)
    warnings.filterwarnings("ignore", category=FutureWarning, module=LIBRARY_WARNINGS)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=LIBRARY_WARNINGS)


def library_prints(verbose: bool) -> contextlib.AbstractContextManager:
    """Around library set-up that ``print``s to stdout (DeepSpeed: "... built successfully"):
    the lines go to the worker's log (Ray Train's app log file), not to the console."""
    if verbose:
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(_LogStream(logging.getLogger("mmpretrain.library")))


class _LogStream(io.TextIOBase):
    """A text stream whose complete lines become INFO records of ``logger``."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self._partial = logger, ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line)
        return len(text)


def ray_data_logging_file() -> Path:
    """Ray Data's default logging config with only the console handler raised: its log file
    (``logs/ray-data``) keeps every line. Written on this machine, for its processes."""
    from ray.data._internal import logging as data_logging

    config = copy.deepcopy(data_logging.DEFAULT_CONFIG)
    config["handlers"]["console"]["level"] = RAY_DATA_CONSOLE_LEVEL
    text = yaml.safe_dump(config, sort_keys=True)
    path = Path(tempfile.gettempdir()) / f"mmpretrain-ray-data-logging-{os.getuid()}.yaml"
    if not path.is_file() or path.read_text() != text:
        # Write-then-rename: many workers may do this at once, and Ray Data may read it.
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(path)
    return path


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _module_file(module: str) -> str:
    import importlib

    return importlib.import_module(module).__file__ or module
