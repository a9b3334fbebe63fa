"""Errors a user can act on, importable without Ray or torch so the CLI can report them."""


class DataQualityError(RuntimeError):
    """More of the data was unusable than ``data.max_bad_fraction`` allows."""


class ResourceError(RuntimeError):
    """The cluster cannot hold the requested worker group; Ray would otherwise wait forever."""


class ClusterError(ResourceError):
    """A local cluster that cannot start, is already running, or is not there to use.

    A ResourceError too: the CLI reports it as ``error: ...`` without a traceback, like any
    other cluster that cannot give a run what it needs.
    """


class CheckpointError(RuntimeError):
    """A path that is not a usable run directory, checkpoint or export; says which and why."""


class ReportError(RuntimeError):
    """A run directory or comparison input that lacks what ``mmpretrain report`` needs."""


class SweepError(ReportError):
    """A sweep directory that lacks what its results table, best config or report needs.

    A ReportError too: ``mmpretrain report SWEEP_DIR`` reports it like any other report input.
    """


class HardStopError(RuntimeError):
    """A second stop signal, or a graceful stop past train.stop_grace_s: the run ended
    without its stop checkpoint. ``signum`` gives the exit status (128 + signum)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class JobError(RuntimeError):
    """A Jobs API request that cannot go through (no cluster, no or wrong token, no such job)."""
