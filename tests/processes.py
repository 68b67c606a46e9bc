"""Ports and child processes, for the tests and the benchmarks alike (standard library only)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_processes(processes: Iterable[subprocess.Popen[bytes]], *, timeout: float = 15.0) -> None:
    """SIGTERM those still running, then wait for each; SIGKILL (and reap) any still there after ``timeout``."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
