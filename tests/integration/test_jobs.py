"""``mmpretrain job`` against a real 2-node cluster with token auth (``mmpretrain cluster up``).

Every command runs as a user types it, in its own process, through the real Ray Jobs API. The
job is jobs/pretrain-tiny.yaml with the test's data and storage: stopped with `job stop` while
its workers are still starting (so the stop must outlast Ray's default 3 s wait: the spec's
stop grace has to reach the job supervisor), then resubmitted, which resumes at the stop's step
and ends at ``train.max_steps``, a few steps on, with no sample trained on twice (every key of
an epoch trained exactly once is test_resume's audit).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml

from mmpretrain.data.shards import iter_shard
from mmpretrain.data.synth import write_synthetic_shards
from mmpretrain.jobs.spec import SUPERVISOR_MARGIN_S
from mmpretrain.train.audit import read_sample_keys
from mmpretrain.train.checkpoint.manifest import list_checkpoints
from tests.integration.cluster_fixture import LocalCluster
from tests.integration.test_local_cluster import http_get

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
SPEC = PROJECT / "jobs" / "pretrain-tiny.yaml"
SAMPLES, SHARD_SIZE, BATCH, WORKERS = 256, 32, 8, 2
# The stop lands at the first step (the workers are still starting when it is sent), so the
# resubmitted job trains the few steps after it; all within one epoch, so no key may repeat.
JOB_STEPS = 4
assert JOB_STEPS * BATCH * WORKERS < SAMPLES
RAY_DEFAULT_STOP_WAIT_S = 3  # Ray's job supervisor SIGKILLs after this unless told otherwise


def job_cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmpretrain", "job", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def no_token_env(cluster: LocalCluster) -> dict[str, str]:
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env["RAY_AUTH_MODE"] = "disabled"  # a client that does not know the cluster's token
    return env


@pytest.fixture(scope="module")
def epoch_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("job-epoch")
    write_synthetic_shards(root, SAMPLES, shard_size=SHARD_SIZE, seed=9)
    return root


def run_overrides(synth_data, shards: Path, storage: Path, name: str) -> list[str]:
    return [
        f"data.train={shards}",
        "data.val=null",
        f"data.tokenizer={synth_data['tokenizer']}",
        f"data.batch_size={BATCH}",
        "data.shuffle_buffer=0",
        f"train.max_steps={JOB_STEPS}",
        "train.log_every=1",
        "checkpoint.every=1000",
        "train.record_sample_keys=true",
        "observe.metrics_port=null",
        f"train.storage_path={storage}",
        f"train.run_name={name}",
    ]


def test_without_the_token_nothing_is_sent_and_the_user_is_told_how(
    local_cluster: LocalCluster, synth_data, epoch_shards, tmp_path
) -> None:
    url = local_cluster.info.dashboard_url
    assert http_get(f"{url}/api/jobs/") == 401
    assert http_get(f"{url}/api/jobs/", local_cluster.token) == 200

    overrides = run_overrides(synth_data, epoch_shards, tmp_path, "refused")
    proc = job_cli(no_token_env(local_cluster), "submit", str(SPEC), *overrides)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "asks for a token (HTTP 401)" in proc.stderr, proc.stderr
    assert "RAY_AUTH_TOKEN_PATH" in proc.stderr and "Traceback" not in proc.stderr
    assert local_cluster.token not in proc.stdout + proc.stderr

    # A bad override fails on this side, naming the key, before anything is sent.
    bad = job_cli(local_cluster.env, "submit", str(SPEC), *overrides, "train.max_stepz=3")
    assert bad.returncode == 2 and "train.max_stepz" in bad.stderr, bad.stdout + bad.stderr
    listing = job_cli(local_cluster.env, "list")
    assert listing.returncode == 0 and "no jobs" in listing.stdout, listing.stdout


def test_job_stop_waits_for_the_checkpoint_and_resubmit_resumes_exactly(
    local_cluster: LocalCluster, synth_data, epoch_shards, tmp_path
) -> None:
    env = local_cluster.env
    run_dir = tmp_path / "tiny-job"
    overrides = run_overrides(synth_data, epoch_shards, tmp_path, "tiny-job")
    sent = job_cli(env, "submit", str(SPEC), *overrides, "--no-wait", "--submission-id", "tiny-1")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert f"cluster: {local_cluster.info.dashboard_url}" in sent.stdout, sent.stdout

    # Stop once the driver has written the run's config: its workers are still starting, which
    # takes longer than Ray's default stop wait, so only a supervisor that got the spec's stop
    # grace lets the run reach its first step and write the stop checkpoint.
    deadline = time.monotonic() + 300
    while not (run_dir / "config.yaml").exists():
        assert time.monotonic() < deadline, job_cli(env, "logs", "tiny-1").stdout[-3000:]
        time.sleep(0.5)
    started = time.monotonic()
    stopped = job_cli(env, "stop", "tiny-1")
    took = time.monotonic() - started
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    found = re.search(r"tiny-1 STOPPED at step (\d+), with a complete checkpoint", stopped.stdout)
    assert found, stopped.stdout + job_cli(env, "logs", "tiny-1").stdout[-3000:]
    step = int(found.group(1))
    assert 1 <= step < JOB_STEPS
    assert took > RAY_DEFAULT_STOP_WAIT_S, took
    (status,) = list_checkpoints(run_dir)
    assert status.complete and status.step == step, status

    resumed = job_cli(env, "resubmit", "tiny-1", "--submission-id", "tiny-2")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"at step {step}" in resumed.stdout and "job tiny-2 SUCCEEDED" in resumed.stdout
    assert list_checkpoints(run_dir)[0].step == JOB_STEPS
    trained = Counter(key for _, key in read_sample_keys(run_dir))
    epoch = {k for shard in epoch_shards.glob("*.tar") for k in dict(iter_shard(shard))}
    assert sum(trained.values()) == JOB_STEPS * BATCH * WORKERS, sum(trained.values())
    assert set(trained) <= epoch and max(trained.values()) == 1, trained.most_common(3)

    listing = job_cli(env, "list").stdout
    assert re.search(r"tiny-1\s+STOPPED\s+pretrain-tiny", listing), listing
    assert re.search(r"tiny-2\s+SUCCEEDED\s+pretrain-tiny", listing), listing
    assert f"STOPPED at step {step}" in job_cli(env, "status", "tiny-1").stdout
    assert f"stopped at step {step}; run the same command" in job_cli(env, "logs", "tiny-1").stdout
    # What the cluster keeps of the jobs (entrypoints, metadata, env) never holds the token.
    jobs = http_get_text(f"{local_cluster.info.dashboard_url}/api/jobs/", local_cluster.token)
    assert "tiny-1" in jobs and local_cluster.token not in jobs
    wait_s = yaml.safe_load(SPEC.read_text())["stop_grace_s"] + SUPERVISOR_MARGIN_S
    assert json.loads(jobs)[0]["runtime_env"]["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == str(wait_s)
    # No driver of either job is left running on the cluster.
    left = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "train.run_name=tiny-job" in " ".join(p.info["cmdline"] or [])
    ]
    assert left == [], left


def http_get_text(url: str, token: str) -> str:
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()
