"""The state directory of one cluster: its record, its token, and where it lives.

Apart from ``processes`` because these files are how any other shell, later, finds a cluster
(``down``, ``status``, ``env``): their format and their permissions are a contract of their own,
read and written here only.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import tempfile
from pathlib import Path

from mmpretrain.errors import ClusterError
from mmpretrain.local_cluster.plan import ClusterInfo

INFO_FILE = "cluster.json"
TOKEN_FILE = "auth_token"

# Ray puts its Unix sockets at TEMP/session_<date>_<time>_<us>_<pid>/sockets/plasma_store(.N),
# and AF_UNIX paths stop at 107 bytes (Ray checks and fails). The session part takes up to 66.
MAX_TEMP_DIR_CHARS = 107 - len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.9")


def default_state_dir() -> Path:
    """``/tmp/mmpretrain-cluster-USER``: one cluster per user and machine by default.

    Under /tmp rather than the current folder because any shell, from any folder, must find the
    cluster to use or stop it, and because Ray's socket paths under it must stay short (see
    ``MAX_TEMP_DIR_CHARS``); per user because a folder with someone else's token in it is no
    place to start one's own cluster.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Path(tempfile.gettempdir()) / f"mmpretrain-cluster-{user}"


def write_token(path: Path) -> Path:
    """A fresh random token in a file created with mode 0600.

    Created 0600 rather than chmod-ed after: between a create and a chmod, anyone on the machine
    could open the file and keep reading it. Ray's own ``ray start`` would write a token to
    ~/.ray/auth_token, world-readable and shared by every cluster of the user; this one is the
    cluster's own, next to its record.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path


def write_info(info: ClusterInfo) -> None:
    """Written after every node start, atomically, so a crash of ``up`` leaves what to stop."""
    tmp = info.state_dir / f".{INFO_FILE}.tmp"
    tmp.write_text(json.dumps(info.to_json(), indent=2))
    os.replace(tmp, info.state_dir / INFO_FILE)


def forget(state_dir: Path) -> None:
    """Removes the record and the token of a stopped cluster; its logs stay."""
    for name in (INFO_FILE, TOKEN_FILE):
        (state_dir / name).unlink(missing_ok=True)


def read_info(state_dir: Path | str) -> ClusterInfo:
    """The cluster recorded in ``state_dir``; a ClusterError naming ``up`` when there is none."""
    state_dir = Path(state_dir).expanduser().resolve()
    path = state_dir / INFO_FILE
    if not path.is_file():
        raise ClusterError(
            f"no cluster in {state_dir}: start one with `mmpretrain cluster up --dir {state_dir}`"
        )
    return ClusterInfo.from_json(json.loads(path.read_text()))
