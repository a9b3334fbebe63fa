"""A real local multi-node Ray cluster (head + 1 worker, token auth) for integration tests.

Brought up with ``mmpretrain.local_cluster.up`` as ``mmpretrain cluster up`` does, once per
session, and stopped with ``down``: test_jobs.py and test_local_cluster.py share it (they run
one after the other), and the last test of test_local_cluster.py stops it itself, which
checks ``down``; the teardown's ``down`` then finds nothing to stop. Job tests submit to it
through ``env`` (the client environment: GCS address, Jobs API URL, token file) and place work
on a node through ``info.nodes[i].resource``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmpretrain.local_cluster import ClusterInfo, client_env, down, up
from mmpretrain.ports import free_ports

# Logical CPUs per node: a 2-worker tiny training with fractional train.cpus_per_worker plus
# Ray Data's tasks must fit on the cluster (2 x 4 = 8) without starving each other.
CPUS_PER_NODE = 4


@dataclass(frozen=True)
class LocalCluster:
    info: ClusterInfo
    env: dict[str, str]  # os.environ + client_env(info): for subprocesses that use the cluster
    token: str  # for HTTP calls to the dashboard (Authorization: Bearer TOKEN)


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    # A short dir of its own: pytest's tmp paths are too long for Ray's socket paths under it.
    state_dir = Path(tempfile.mkdtemp(prefix="mmpc-"))
    try:
        # Not 8265: a test must neither take nor fail on the port a user's Ray may hold.
        dashboard_port = free_ports(1)[0]
        info = up(state_dir, workers=1, cpus_per_node=CPUS_PER_NODE, dashboard_port=dashboard_port)
        env = {**os.environ, **client_env(info)}
        yield LocalCluster(info, env, info.token_path.read_text().strip())
    finally:
        down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
