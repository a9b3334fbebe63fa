"""Free TCP ports on this machine, asked of the kernel rather than guessed.

Several Rays (a user's, a test session's, an embedded one, a local cluster's nodes) share one
machine, and every one of them needs ports no other holds. On the ground floor, beside errors and
storage, because the local cluster, the embedded Ray of ``train/launch`` and the benchmarks all
pick ports and none of them should reach up into another to do it.
"""

from __future__ import annotations

import contextlib
import socket


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` on any address.

    Ray's gRPC servers bind every address, so a port taken on any one of them is taken.
    SO_REUSEADDR lets a port left in TIME_WAIT by a closed server count as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free right now: all bound at once, so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("", 0))
            ports.append(sock.getsockname()[1])
    return ports
