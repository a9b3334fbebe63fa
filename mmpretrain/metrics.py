"""Training metrics in Prometheus conventions, from the training workers.

Every worker records into Ray's metrics (``ray.util.metrics``), which its node's metrics agent
serves for Prometheus (the endpoint KubeRay's PodMonitor scrapes). Ray 2.60 exports each under
``ray_`` + its name (``mmpretrain_samples_total`` -> ``ray_mmpretrain_samples_total``) and adds
labels of its own (``NodeAddress``, ``WorkerId``, ``SessionName``...). Rank 0 can also serve the
same metrics under their own names from a prometheus_client registry on ``observe.metrics_port``,
for a look without Ray's agent or Prometheus.

Per-step calls only add to in-process counters (Ray's recorder and prometheus_client are both
in memory); anything that needs a device sync (losses, gradient norm) is recorded at log steps
from values the loop already has.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import prometheus_client
import psutil
import torch

from mmpretrain.console import console
from mmpretrain.data.quality import SKIPPED_PREFIX

RAY_PREFIX = "ray_"  # what Ray 2.60's metrics agent puts before every application metric
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHECKPOINT_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
RECALL_KEY = re.compile(r"^(i2t|t2i)(_rerank)?_recall@(\d+)$")
LABELS = ("run", "sweep", "rank")  # sweep: "" for a run outside any sweep
RECORD = {"counter": "inc", "gauge": "set", "histogram": "observe"}  # same in both libraries


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter | gauge | histogram
    description: str
    labels: tuple[str, ...] = ()  # beyond run and rank
    buckets: tuple[float, ...] = ()


SPECS = (
    MetricSpec("mmpretrain_samples_total", "counter", "Training samples consumed by this rank."),
    MetricSpec("mmpretrain_tokens_total", "counter", "Non-padding caption tokens consumed."),
    MetricSpec(
        "mmpretrain_step_seconds",
        "histogram",
        "Wall time of one optimizer step, data wait included.",
        buckets=STEP_BUCKETS,
    ),
    MetricSpec(
        "mmpretrain_data_wait_seconds_total", "counter", "Time spent waiting for the next batch."
    ),
    MetricSpec("mmpretrain_steps_total", "counter", "Optimizer steps taken."),
    MetricSpec(
        "mmpretrain_loss", "gauge", "Loss at the last log step, mean over ranks.", ("objective",)
    ),
    MetricSpec("mmpretrain_learning_rate", "gauge", "Learning rate at the last log step."),
    MetricSpec("mmpretrain_grad_norm", "gauge", "Global gradient norm at the last log step."),
    MetricSpec(
        "mmpretrain_samples_skipped_total",
        "counter",
        "Unusable samples dropped by the data pipeline, by reason (rank 0 books the whole run's).",
        ("reason",),
    ),
    MetricSpec(
        "mmpretrain_checkpoint_save_seconds",
        "histogram",
        "Wall time of one checkpoint save.",
        buckets=CHECKPOINT_BUCKETS,
    ),
    MetricSpec("mmpretrain_checkpoint_bytes_total", "counter", "Checkpoint bytes this rank wrote."),
    MetricSpec(
        "mmpretrain_eval_recall", "gauge", "Held-out retrieval recall@k.", ("direction", "k")
    ),
    MetricSpec("mmpretrain_process_resident_memory_bytes", "gauge", "RSS of the worker process."),
    MetricSpec("mmpretrain_gpu_memory_allocated_bytes", "gauge", "GPU memory held by tensors."),
)


def exported_names(prefix: str = RAY_PREFIX) -> set[str]:
    """Every series name Prometheus sees from ``SPECS`` (histograms as _bucket/_count/_sum)."""
    names: set[str] = set()
    for spec in SPECS:
        base = prefix + spec.name
        if spec.kind == "histogram":
            names |= {f"{base}_bucket", f"{base}_count", f"{base}_sum"}
        else:
            names.add(base)
    return names


class _Metric:
    """One metric recorded into Ray's metrics and, on rank 0 with a port, a local registry."""

    def __init__(self, spec: MetricSpec, default: dict[str, str], use_ray: bool, registry: Any):
        self.spec, self.default = spec, default
        keys = (*LABELS, *spec.labels)
        self.ray = _ray_metric(spec, keys, default) if use_ray else None
        self.local = _local_metric(spec, keys, registry) if registry is not None else None

    def record(self, value: float, **labels: str) -> None:
        if self.spec.kind == "counter" and value <= 0:
            return  # nothing to add (a rank that wrote no file); Ray's Counter refuses 0
        method = RECORD[self.spec.kind]
        if self.ray is not None:
            getattr(self.ray, method)(value, tags={**self.default, **labels})
        if self.local is not None:
            getattr(self.local.labels(**self.default, **labels), method)(value)


def _ray_metric(spec: MetricSpec, keys: tuple[str, ...], default: dict[str, str]) -> Any:
    from ray.util import metrics  # here: the definitions and the local port need no Ray

    if spec.kind == "histogram":
        metric = metrics.Histogram(spec.name, spec.description, list(spec.buckets), keys)
    else:
        kind = metrics.Counter if spec.kind == "counter" else metrics.Gauge
        metric = kind(spec.name, spec.description, keys)
    metric.set_default_tags(default)
    return metric


def _local_metric(spec: MetricSpec, keys: tuple[str, ...], registry: Any) -> Any:
    if spec.kind == "histogram":
        return prometheus_client.Histogram(
            spec.name, spec.description, keys, registry=registry, buckets=spec.buckets
        )
    # prometheus_client adds _total itself to counters and refuses a name that has it.
    name = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
    kind = prometheus_client.Counter if spec.kind == "counter" else prometheus_client.Gauge
    return kind(name, spec.description, keys, registry=registry)


def serve_locally(port: int, host: str) -> prometheus_client.CollectorRegistry | None:
    """A registry of our own served on ``host:port``; None (with a warning) if it is taken,
    so a second run on the machine trains on without its local endpoint."""
    registry = prometheus_client.CollectorRegistry()
    try:
        prometheus_client.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        console(f"warning: observe.metrics_port={port} not served ({exc})")
        return None
    return registry


class TrainMetrics:
    """What the training loop records, in one place (one call per event)."""

    def __init__(
        self,
        run: str,
        rank: int,
        *,
        sweep: str = "",
        use_ray: bool = True,
        registry: prometheus_client.CollectorRegistry | None = None,
    ):
        default = {"run": run, "sweep": sweep, "rank": str(rank)}
        self.rank = rank
        self._m = {spec.name: _Metric(spec, default, use_ray, registry) for spec in SPECS}
        self._skipped: dict[str, int] = {}
        self._tokens: torch.Tensor | int = 0
        self._timing = {"step_s": 0.0, "data_wait_s": 0.0}  # since the last log row
        self._restart_clock()

    @classmethod
    def for_worker(
        cls, run: str, rank: int, port: int | None, host: str, sweep: str | None = None
    ) -> TrainMetrics:
        """A training worker's metrics: Ray's on every rank, plus the local port on rank 0."""
        registry = serve_locally(port, host) if rank == 0 and port is not None else None
        return cls(run, rank, sweep=sweep or "", registry=registry)

    def _record(self, name: str, value: float, **labels: str) -> None:
        self._m[f"mmpretrain_{name}"].record(value, **labels)

    def batch_arrived(self) -> None:
        """The loop got its next batch: the time since the last step ended was data wait."""
        now = time.perf_counter()
        self._waited += now - self._mark
        self._mark = now

    def on_batch(self, samples: int, attention_mask: torch.Tensor) -> None:
        """After each micro-batch's optimizer call. The token count stays a tensor (on the
        device the batch may already be on) until the next log step reads it: no sync here."""
        self._record("samples_total", samples)
        self._tokens = self._tokens + attention_mask.sum()
        self._mark = time.perf_counter()

    def on_step(self) -> None:
        """At a gradient-accumulation boundary: one optimizer step's time and data wait."""
        step_s = time.perf_counter() - self._step_start
        self._record("steps_total", 1)
        self._record("step_seconds", step_s)
        self._record("data_wait_seconds_total", self._waited)
        self._timing["step_s"] += step_s
        self._timing["data_wait_s"] += self._waited
        self._restart_clock()

    def take_timing(self) -> dict[str, float]:
        """Step and data-wait seconds summed since the last call, for the log row.

        The same clock as the step and data-wait metrics, but written to ``metrics.jsonl``, so
        a run's data-wait share can still be read after its Ray (and its metrics) are gone.
        """
        timing, self._timing = self._timing, {"step_s": 0.0, "data_wait_s": 0.0}
        return timing

    def _restart_clock(self) -> None:
        """Logging, checkpoints and evaluation between steps count as neither step nor wait."""
        self._mark = self._step_start = time.perf_counter()
        self._waited = 0.0

    def on_log(
        self, values: Mapping[str, float], grad_norm: Any, quality_counts: Mapping[str, int]
    ) -> None:
        """At log steps: losses (already averaged across ranks), lr, gradient norm (None under
        some ZeRO stages), the increase of the run's skip books, and memory."""
        for key, value in values.items():
            if key.startswith("loss_"):
                self._record("loss", value, objective=key.removeprefix("loss_"))
        if "loss" in values:
            self._record("loss", values["loss"], objective="total")
        self._record("tokens_total", int(self._tokens))
        self._tokens = 0
        if "lr" in values:
            self._record("learning_rate", values["lr"])
        if grad_norm is not None:
            self._record("grad_norm", float(grad_norm))
        if self.rank == 0:  # every rank holds the same run-wide books; count them once
            for key, total in quality_counts.items():
                if key.startswith(SKIPPED_PREFIX) and total > self._skipped.get(key, 0):
                    reason = key.removeprefix(SKIPPED_PREFIX)
                    self._record(
                        "samples_skipped_total", total - self._skipped.get(key, 0), reason=reason
                    )
                    self._skipped[key] = total
        self._record("process_resident_memory_bytes", psutil.Process().memory_info().rss)
        gpu = _gpu_bytes()
        if gpu is not None:
            self._record("gpu_memory_allocated_bytes", gpu)
        self._restart_clock()

    def on_checkpoint(self, seconds: float, written_bytes: int) -> None:
        self._record("checkpoint_save_seconds", seconds)
        self._record("checkpoint_bytes_total", written_bytes)
        self._restart_clock()

    def on_eval(self, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            match = RECALL_KEY.match(key)
            if match:
                direction = match.group(1) + (match.group(2) or "")
                self._record("eval_recall", value, direction=direction, k=match.group(3))
        self._restart_clock()


def _gpu_bytes() -> int | None:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else None


def scrape_targets(nodes: list[dict[str, Any]], port: int | None, host: str) -> list[str]:
    """Where Prometheus finds a run's metrics: each live Ray node's metrics endpoint (from
    ``ray.nodes()``) and, when set, rank 0's observe.metrics_port on its node."""
    targets = [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics (Ray node)"
        for node in nodes
        if node.get("Alive") and node.get("MetricsExportPort")
    ]
    if port is not None:
        targets.append(f"http://{host}:{port}/metrics (rank 0's node, observe.metrics_port)")
    return targets
