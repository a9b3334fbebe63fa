"""A real Prometheus (cluster/prometheus/run.sh) scrapes a real training run's metrics.

The run is the CLI in a process of its own, with its Ray in a private temp folder (RAY_TMPDIR),
so Ray's service-discovery file is this run's alone. Prometheus reads Ray's node endpoints from
that file and rank 0's observe.metrics_port; the assertions go through its HTTP API.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mmpretrain.metrics import SPECS
from tests.badshards import BAD_REASONS, write_mixed_shards

pytestmark = pytest.mark.integration

RUN_SH = Path(__file__).parents[2] / "cluster" / "prometheus" / "run.sh"
RUN = "prom-e2e"
STEPS, WORKERS, BATCH = 12, 2, 8
OBJECTIVES = ("itc", "itm", "mlm", "text_mlm", "image_ssl")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class LocalScraper(threading.Thread):
    """Keeps the last exposition rank 0's observe.metrics_port served while the run lived."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.url, self.text, self.done = f"http://127.0.0.1:{port}/metrics", "", threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    self.text = response.read().decode()
            except OSError:
                pass


@pytest.fixture(scope="module")
def scraped_run(synth_data, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus is not installed (apt-get install -y prometheus)")
    tmp = tmp_path_factory.mktemp("prom")
    shards = tmp / "shards"
    write_mixed_shards(shards, good=200)  # 9 bad, 206 usable: one epoch covers the 12 steps
    # Short: Ray's unix sockets live under it and their paths are limited to 107 characters.
    ray_tmp = Path(tempfile.mkdtemp(prefix="mmp-ray-", dir="/tmp"))
    prom_port, local_port = free_port(), free_port()
    env = {
        **os.environ,
        "PROM_PORT": str(prom_port),
        "RAY_SD_FILE": str(ray_tmp / "ray" / "prom_metrics_service_discovery.json"),
        "LOCAL_TARGET": f"127.0.0.1:{local_port}",
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_metrics_report_interval_ms": "1000",  # workers push to their agent every second
    }
    prometheus = subprocess.Popen(["bash", str(RUN_SH)], env=env)
    api = f"http://127.0.0.1:{prom_port}"
    scraper = LocalScraper(local_port)
    try:
        wait_until(lambda: urllib.request.urlopen(f"{api}/-/ready", timeout=2), 60, "prometheus")
        scraper.start()
        started = time.time()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmpretrain",
                "train",
                "--config",
                "tiny",
                f"data.train={shards}",
                f"data.val={synth_data['val']}",
                f"data.tokenizer={synth_data['tokenizer']}",
                f"data.batch_size={BATCH}",
                f"train.num_workers={WORKERS}",
                f"train.max_steps={STEPS}",
                "train.log_every=2",
                "checkpoint.every=6",
                "eval.every=6",  # mid-run: the final values may not outlive the workers
                "eval.rerank_k=0",
                f"train.storage_path={tmp / 'runs'}",
                f"train.run_name={RUN}",
                f"observe.metrics_port={local_port}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        ended = time.time()
        sys.stdout.write(f"training run took {ended - started:.1f} s\n")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        time.sleep(3)  # one more scrape interval after the last export
        yield {
            "api": api,
            "start": started,
            "end": ended + 3,
            "stdout": proc.stdout,
            "local": scraper.text,
            "local_port": local_port,
            "run_dir": tmp / "runs" / RUN,
        }
    finally:
        scraper.done.set()
        prometheus.terminate()
        prometheus.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def instant(run: dict, expr: str) -> list[dict]:
    query = urllib.parse.urlencode({"query": expr, "time": run["end"]})
    return get_json(f"{run['api']}/api/v1/query?{query}")["data"]["result"]


def over_run(metric: str, **labels: str) -> str:
    """The newest value within the run: the series go stale once the workers exit."""
    selector = ",".join(f'{k}="{v}"' for k, v in {"run": RUN, **labels}.items())
    return f"max_over_time({metric}{{{selector}}}[10m])"


def test_samples_processed_increase_over_time(scraped_run) -> None:
    query = urllib.parse.urlencode(
        {
            "query": f'sum(ray_mmpretrain_samples_total{{run="{RUN}"}})',
            "start": scraped_run["start"],
            "end": scraped_run["end"],
            "step": "1",
        }
    )
    (series,) = get_json(f"{scraped_run['api']}/api/v1/query_range?{query}")["data"]["result"]
    values = [float(v) for _, v in series["values"]]
    assert values == sorted(values), "a counter went backwards"
    assert len(set(values)) >= 3, f"expected samples to grow over several scrapes: {values}"
    assert values[-1] <= STEPS * WORKERS * BATCH


def test_every_objective_has_a_loss_series_per_rank(scraped_run) -> None:
    for objective in (*OBJECTIVES, "total"):
        result = instant(scraped_run, over_run("ray_mmpretrain_loss", objective=objective))
        assert sorted(r["metric"]["rank"] for r in result) == ["0", "1"], objective


def test_skipped_samples_match_the_injected_bad_ones(scraped_run) -> None:
    result = instant(scraped_run, over_run("ray_mmpretrain_samples_skipped_total"))
    exported = Counter()
    for row in result:
        exported[row["metric"]["reason"]] += int(float(row["value"][1]))
    assert exported == Counter(BAD_REASONS.values())
    assert {row["metric"]["rank"] for row in result} == {"0"}  # booked once, not per rank


def test_step_time_checkpoints_recall_and_memory_are_exported(scraped_run) -> None:
    steps = instant(
        scraped_run, f'sum(max_over_time(ray_mmpretrain_step_seconds_count{{run="{RUN}"}}[10m]))'
    )
    assert float(steps[0]["value"][1]) >= 2 * WORKERS  # at least the first log interval
    for metric in (
        "ray_mmpretrain_checkpoint_save_seconds_count",
        "ray_mmpretrain_checkpoint_bytes_total",
        "ray_mmpretrain_learning_rate",
        "ray_mmpretrain_grad_norm",
        "ray_mmpretrain_data_wait_seconds_total",
        "ray_mmpretrain_process_resident_memory_bytes",
    ):
        assert instant(scraped_run, over_run(metric)), metric
    recall = instant(scraped_run, over_run("ray_mmpretrain_eval_recall", direction="i2t", k="1"))
    assert recall and 0.0 <= float(recall[0]["value"][1]) <= 1.0


def test_local_port_exposition_has_our_names_and_labels(scraped_run) -> None:
    assert f"127.0.0.1:{scraped_run['local_port']}/metrics" in scraped_run["stdout"]
    families = {f.name: f for f in text_string_to_metric_families(scraped_run["local"])}
    ours = {f"{spec.name.removesuffix('_total')}": spec for spec in SPECS}
    assert {"mmpretrain_samples", "mmpretrain_loss", "mmpretrain_step_seconds"} <= set(families)
    for name, family in families.items():
        if name not in ours:
            continue
        assert family.type == ours[name].kind
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            assert sample.labels["run"] == RUN and sample.labels["rank"] == "0"
    objectives = {s.labels["objective"] for s in families["mmpretrain_loss"].samples}
    assert objectives == {*OBJECTIVES, "total"}
    # Prometheus scraped that port too, as job mmpretrain-local.
    assert instant(scraped_run, over_run("mmpretrain_samples_total", job="mmpretrain-local"))
