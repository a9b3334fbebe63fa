"""A real Prometheus (cluster/prometheus/run.sh) for the session's skeleton run to be scraped by.

It must be up before the run starts, so the skeleton run (conftest.py) asks for it. It reads
Ray's node endpoints from the service-discovery file of a Ray of its own (RAY_TMPDIR, so no
other Ray on the machine writes that file) and scrapes rank 0's observe.metrics_port; a
thread keeps the last exposition that port served, for the tests that read it directly. When
Debian's prometheus is not installed the run goes on unscraped and the Prometheus tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmpretrain.ports import free_ports

RUN_SH = Path(__file__).parents[2] / "cluster" / "prometheus" / "run.sh"


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


@dataclass
class Scrape:
    """What a run needs to be scraped, and what the tests read afterwards."""

    api: str | None  # Prometheus' HTTP API; None when prometheus is not installed
    local_port: int
    run_env: dict[str, str]  # for the run's process: its Ray's temp dir, metrics every second
    scraper: LocalScraper  # the run stops it when it ends


@pytest.fixture(scope="session")
def prometheus() -> Iterator[Scrape]:
    # Short: Ray's unix sockets live under it and their paths are limited to 107 characters.
    ray_tmp = Path(tempfile.mkdtemp(prefix="mmp-ray-", dir="/tmp"))
    prom_port, local_port = free_ports(2)
    run_env = {
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_metrics_report_interval_ms": "1000",  # workers push to their agent every second
    }
    scrape = Scrape(None, local_port, run_env, LocalScraper(local_port))
    server = None
    try:
        if shutil.which("prometheus") is not None:
            env = {
                "PROM_PORT": str(prom_port),
                "RAY_SD_FILE": str(ray_tmp / "ray" / "prom_metrics_service_discovery.json"),
                "LOCAL_TARGET": f"127.0.0.1:{local_port}",
            }
            # Stopped by its pid below; run.sh's exit trap stops the prometheus it started.
            server = subprocess.Popen(["bash", str(RUN_SH)], env={**os.environ, **env})
            api = f"http://127.0.0.1:{prom_port}"
            ready = f"{api}/-/ready"
            wait_until(lambda: urllib.request.urlopen(ready, timeout=2), 60, "prometheus")
            scrape.api = api
        scrape.scraper.start()
        yield scrape
    finally:
        scrape.scraper.done.set()
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
