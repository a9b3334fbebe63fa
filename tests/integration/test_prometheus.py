"""A real Prometheus (cluster/prometheus/run.sh) scrapes a real training run's metrics.

The run is the session's skeleton run (conftest.py): the CLI in a process of its own, with its
Ray in a private temp folder (RAY_TMPDIR), so Ray's service-discovery file is this run's alone.
Prometheus, started before it (prometheus_fixture.py), reads Ray's node endpoints from that
file and rank 0's observe.metrics_port; the assertions go through its HTTP API.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mmpretrain.metrics import SPECS
from tests.badshards import BAD_REASONS
from tests.integration.conftest import BATCH, FIRST_STEPS, WORKERS, SkeletonRun

pytestmark = pytest.mark.integration

RUN = "skeleton"
OBJECTIVES = ("itc", "itm", "mlm", "text_mlm", "image_ssl")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def scraped_run(skeleton_run: SkeletonRun) -> dict:
    if skeleton_run.scrape.api is None:
        pytest.skip("Debian's prometheus is not installed (apt-get install -y prometheus)")
    started, ended = skeleton_run.trained
    time.sleep(max(0.0, ended + 3 - time.time()))  # one more scrape after the last export
    return {
        "api": skeleton_run.scrape.api,
        "start": started,
        "end": ended + 3,
        "stdout": skeleton_run.stdout,
        "local": skeleton_run.scrape.scraper.text,
        "local_port": skeleton_run.scrape.local_port,
        "run_dir": skeleton_run.run_dir,
    }


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
    assert values[-1] <= FIRST_STEPS * WORKERS * BATCH


def test_every_objective_has_a_loss_series_per_rank(scraped_run) -> None:
    for objective in (*OBJECTIVES, "total"):
        result = instant(scraped_run, over_run("ray_mmpretrain_loss", objective=objective))
        assert sorted(r["metric"]["rank"] for r in result) == ["0", "1"], objective


def test_skipped_samples_are_the_runs_own_books_of_the_injected_bad_ones(scraped_run) -> None:
    result = instant(scraped_run, over_run("ray_mmpretrain_samples_skipped_total"))
    exported = Counter()
    for row in result:
        exported[row["metric"]["reason"]] += int(float(row["value"][1]))
    assert set(exported) == set(BAD_REASONS.values())
    assert {row["metric"]["rank"] for row in result} == {"0"}  # booked once, not per rank
    # Every epoch reads the bad samples again: Prometheus holds the books of one of the run's
    # last two log rows (the increase booked at the very last may not outlive the workers).
    rows = [json.loads(line) for line in (scraped_run["run_dir"] / "metrics.jsonl").open()]
    books = [
        Counter({k.removeprefix("skipped_"): v for k, v in row.items() if k.startswith("skipped_")})
        for row in rows
    ]
    assert exported in books[-2:], (exported, books[-2:])  # test_bad_data: books == injected


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
