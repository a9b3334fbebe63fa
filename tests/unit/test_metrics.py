"""Metric definitions, the local exposition, and the Grafana dashboard's use of them (no Ray)."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from mmpretrain.config import ConfigError, load_config
from mmpretrain.metrics import SPECS, TrainMetrics, exported_names, scrape_targets, serve_locally

DASHBOARD = Path(__file__).parents[2] / "cluster" / "grafana" / "mmpretrain-dashboard.json"
METRIC_NAME = re.compile(r"\b(?:ray_)?mmpretrain_[a-z0-9_]+\b")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_definitions_follow_prometheus_conventions() -> None:
    for spec in SPECS:
        assert spec.name.startswith("mmpretrain_"), spec.name
        assert (spec.kind == "counter") == spec.name.endswith("_total"), spec.name
        assert "seconds" not in spec.name or "_seconds" in spec.name
    assert "ray_mmpretrain_step_seconds_bucket" in exported_names()
    assert "ray_mmpretrain_samples_total" in exported_names()  # Ray adds ray_, keeps _total


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if isinstance(variable.get("query"), dict):
            exprs.append(variable["query"]["query"])
    return exprs


def test_every_dashboard_expression_uses_only_exported_metrics() -> None:
    exported = exported_names()
    exprs = _dashboard_exprs()
    assert len(exprs) >= 8
    for expr in exprs:
        used = set(METRIC_NAME.findall(expr))
        assert used, f"no mmpretrain metric in {expr!r}"
        assert used <= exported, f"{sorted(used - exported)} are not exported ({expr!r})"
    used_anywhere = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    for needed in ("samples_total", "step_seconds_bucket", "loss", "samples_skipped_total"):
        assert f"ray_mmpretrain_{needed}" in used_anywhere


def test_every_panel_and_the_run_list_filter_by_the_chosen_sweeps() -> None:
    """Metrics carry a sweep label (empty outside a sweep): picking a sweep narrows every panel
    and the run list to its trials; "All" (regex .*) also keeps runs that belong to no sweep."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    sweep = variables["sweep"]
    assert sweep["query"]["query"] == "label_values(ray_mmpretrain_steps_total, sweep)"
    assert sweep["multi"] and sweep["includeAll"] and sweep["allValue"] == ".*"
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names.index("sweep") < names.index("run")  # run's query uses $sweep
    assert 'sweep=~"$sweep"' in variables["run"]["query"]["query"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 8
    for expr in exprs:
        selectors = re.findall(r"mmpretrain_[a-z0-9_]+\{([^}]*)\}", expr)
        assert selectors and len(selectors) == len(METRIC_NAME.findall(expr)), expr
        for selector in selectors:
            assert 'sweep=~"$sweep"' in selector and 'run=~"$run"' in selector, expr


def test_local_exposition_carries_every_metric_with_run_and_rank_labels() -> None:
    port = free_port()
    metrics = TrainMetrics("unit", 0, use_ray=False, registry=serve_locally(port, "127.0.0.1"))
    metrics.batch_arrived()
    metrics.on_batch(8, torch.ones(4, 25, dtype=torch.long))
    metrics.on_step()
    values = {"loss": 3.0, "loss_itc": 1.0, "loss_mlm": 2.0, "lr": 1e-3}
    metrics.on_log(values, None, {"seen": 10, "skipped_corrupt_image": 1})  # no grad norm: fine
    metrics.on_log(values, torch.tensor(0.5), {"seen": 20, "skipped_corrupt_image": 3})
    metrics.on_checkpoint(1.5, 4096)
    metrics.on_eval({"i2t_recall@1": 0.25, "t2i_rerank_recall@5": 0.75, "chance@1": 0.1})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {
        (
            s.name,
            tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("run", "sweep", "rank"))),
        ): s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("mmpretrain_")
    }
    for (_, _), sample in samples.items():
        if not sample.name.endswith("_created"):
            assert sample.labels["run"] == "unit" and sample.labels["rank"] == "0"
    value = {key: s.value for key, s in samples.items()}
    assert value["mmpretrain_samples_total", ()] == 8
    assert value["mmpretrain_tokens_total", ()] == 100
    assert value["mmpretrain_step_seconds_count", ()] == 1
    assert value["mmpretrain_loss", (("objective", "itc"),)] == 1.0
    assert value["mmpretrain_loss", (("objective", "total"),)] == 3.0
    assert value["mmpretrain_grad_norm", ()] == 0.5
    assert value["mmpretrain_samples_skipped_total", (("reason", "corrupt_image"),)] == 3
    assert value["mmpretrain_checkpoint_bytes_total", ()] == 4096
    assert value["mmpretrain_eval_recall", (("direction", "i2t"), ("k", "1"))] == 0.25
    assert value["mmpretrain_eval_recall", (("direction", "t2i_rerank"), ("k", "5"))] == 0.75
    assert value["mmpretrain_process_resident_memory_bytes", ()] > 0
    local_names = {name for name, _ in samples if not name.endswith("_created")}
    assert local_names <= exported_names(prefix="")


def test_log_rows_get_the_step_and_data_wait_seconds_since_the_last_row() -> None:
    metrics = TrainMetrics("unit", 0, use_ray=False)
    for wait in (0.02, 0.03):
        time.sleep(wait)  # the loader is slow
        metrics.batch_arrived()
        time.sleep(0.01)  # forward, backward, step
        metrics.on_batch(4, torch.ones(4, 8, dtype=torch.long))
        metrics.on_step()
    timing = metrics.take_timing()
    assert 0.05 <= timing["data_wait_s"] < timing["step_s"]
    assert timing["step_s"] >= 0.07
    assert metrics.take_timing() == {"step_s": 0.0, "data_wait_s": 0.0}  # a fresh window


def test_a_taken_port_is_skipped_with_a_warning(capsys) -> None:
    port = free_port()
    assert serve_locally(port, "127.0.0.1") is not None
    assert serve_locally(port, "127.0.0.1") is None
    assert f"observe.metrics_port={port} not served" in capsys.readouterr().out


def test_only_rank_zero_books_the_run_wide_skip_counts() -> None:
    registry = serve_locally(free_port(), "127.0.0.1")
    TrainMetrics("unit", 1, use_ray=False, registry=registry).on_log(
        {"loss": 1.0}, None, {"skipped_no_image": 4}
    )
    names = {s.name for f in registry.collect() for s in f.samples}
    assert "mmpretrain_samples_skipped_total" not in names


def test_scrape_targets_name_ray_nodes_and_the_local_port() -> None:
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 8080},
        {"Alive": False, "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 8080},
    ]
    targets = scrape_targets(nodes, 9400, "127.0.0.1")
    assert targets[0].startswith("http://10.0.0.1:8080/metrics")
    assert targets[1].startswith("http://127.0.0.1:9400/metrics")
    assert scrape_targets(nodes, None, "127.0.0.1") == targets[:1]


def test_observe_config_is_validated() -> None:
    assert load_config("tiny").observe.metrics_port == 9400
    assert load_config("tiny", ["observe.metrics_port=null"]).observe.metrics_port is None
    with pytest.raises(ConfigError, match=r"observe\.metrics_port"):
        load_config("tiny", ["observe.metrics_port=70000"])
    with pytest.raises(ConfigError, match=r"observe\.metrics_host"):
        load_config("tiny", ["observe.metrics_host="])
