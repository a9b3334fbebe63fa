"""Graceful stop: SIGTERM or SIGINT means finish the step, write one checkpoint, exit.

That is what ``ray job stop``, a Kubernetes pod deletion and a spot preemption send, and a
run that dies mid-step loses everything since its last checkpoint. The signal reaches only
the driver; the workers learn of it through a small named actor (the stop flag) that every
rank polls without waiting, and all ranks agree on the step to stop at through one collective,
so no rank stops while another waits for it in an all-reduce. The flag is the driver's, so it
outlives a restarted worker group: the new group sees a stop that was asked for before it
started.

A second signal, or a stop that overruns ``train.stop_grace_s``, ends the driver at once; the
checkpoint being written is then torn, has no manifest and is never chosen for resume.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import ray

from mmpretrain import distributed
from mmpretrain.console import console
from mmpretrain.data.run_actors import create_on_driver_node, lookup
from mmpretrain.errors import HardStopError

T = TypeVar("T")
# The run's last words, which `mmpretrain job stop` reads back from the job's log.
STOPPED_AT = r"stopped at step (\d+); run the same command to resume"
HARD_STOP_STEP = r"newest complete checkpoint: step (\d+)"


def stopped_message(step: int | None) -> str:
    return f"stopped at step {step}; run the same command to resume"


SIGNALS = (signal.SIGTERM, signal.SIGINT)
POLL_S = 0.2  # how often the waiting driver looks at the clock and its fit thread


@ray.remote(num_cpus=0)
class StopFlag:
    def __init__(self) -> None:
        self._reason: str | None = None

    def request(self, reason: str) -> None:
        self._reason = self._reason or reason

    def reason(self) -> str | None:
        return self._reason


def flag_name(run_name: str) -> str:
    """Unique per launch, so a stop never reaches another run on the same cluster."""
    return f"mmpretrain-stop-{run_name}-{uuid.uuid4().hex[:8]}"


def create_flag(name: str) -> ray.actor.ActorHandle:
    return create_on_driver_node(StopFlag, name)


class StopWatch:
    """A worker's view of the stop flag, asked once per step without waiting for the answer.

    One question is in flight at a time; its answer is used at the step it arrives, so a stop
    costs at most a step or two of latency and training never waits on the actor.
    """

    def __init__(self, name: str | None) -> None:
        self._flag = lookup(name) if name else None
        self._pending: ray.ObjectRef | None = None
        self._seen = False

    def _asked(self) -> bool:
        if self._flag is None or self._seen:
            return self._seen
        if self._pending is None:
            self._pending = self._flag.reason.remote()
        ready, _ = ray.wait([self._pending], timeout=0)
        if ready:
            self._seen = ray.get(self._pending) is not None
            self._pending = None
        return self._seen

    def agreed(self) -> bool:
        """Whether the run stops after this step (collective: every rank must call it)."""
        return bool(distributed.max_across_ranks(int(self._asked())))


class GracefulStop:
    """The driver's side: turns the first signal into a stop request and the second into
    HardStopError, while ``fit`` runs in a thread.

    ``fit`` runs off the main thread because that is where Python delivers signals, and
    because Ray Train's fit() replaces the SIGINT handler of the main thread with one that
    aborts the run without a checkpoint; from another thread it leaves signals alone.
    """

    def __init__(self, flag: ray.actor.ActorHandle, grace_s: float) -> None:
        self._flag = flag
        self._grace_s = grace_s
        self.signum: int | None = None
        self._asked_at = 0.0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def run(self, fit: Callable[[], T]) -> T:
        if threading.current_thread() is not threading.main_thread():
            return fit()  # a sweep trial: Tune owns the signals of its process
        outcome: dict[str, object] = {}

        def target() -> None:
            try:
                outcome["result"] = fit()
            except BaseException as exc:  # handed to the main thread as it is
                outcome["error"] = exc

        previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)
        # A daemon: after HardStopError the interpreter may exit around a blocked fit().
        worker = threading.Thread(target=target, name="mmpretrain-fit", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(POLL_S)
                self._check_grace()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["result"]  # type: ignore[return-value]

    def _on_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            raise HardStopError(f"second {name}: stopped at once, without a checkpoint", signum)
        self.signum, self._asked_at = signum, time.monotonic()
        console(
            f"{name}: finishing the step and writing a checkpoint (up to train.stop_grace_s="
            f"{self._grace_s:g}s); send it again to stop at once"
        )
        self._flag.request.remote(name)

    def _check_grace(self) -> None:
        if self.signum is not None and time.monotonic() - self._asked_at > self._grace_s:
            raise HardStopError(
                f"the stop did not finish within train.stop_grace_s={self._grace_s:g}s; "
                "stopped without its checkpoint",
                self.signum,
            )
