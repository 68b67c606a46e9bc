"""``WORKERS`` > 1: worker processes sharing one listening socket, each a whole gateway on the shared Redis.

uvicorn's own supervisor builds a plain ``uvicorn.Server`` in each worker, which would skip the gateway's
drain at SIGTERM (``server.GatewayServer``); so the parent here binds the socket, starts each worker as
``python -m llm_gateway --worker-fd N`` with the socket inherited, passes SIGTERM/SIGINT on, restarts a
worker that dies, and waits for them all. It also gives the workers one ``PROMETHEUS_MULTIPROC_DIR``, so
``/metrics`` on any of them reports the whole process group.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType

from prometheus_client import multiprocess

log = logging.getLogger(__name__)


def supervise(count: int, host: str, port: int) -> int:
    sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=2048)
    sock.set_inheritable(True)
    own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="llmgw-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    command = [sys.executable, "-m", "llm_gateway", "--env-file", os.devnull, "--worker-fd", str(sock.fileno())]
    stopping = False

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, pass_fds=[sock.fileno()])

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    workers = [start() for _ in range(count)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("started %d workers on %s:%d", count, host, port)
    try:
        while any(worker.poll() is None for worker in workers):
            for i, worker in enumerate(workers):
                if worker.poll() is not None and not stopping:
                    log.warning("worker %d exited with %s; starting another", worker.pid, worker.returncode)
                    multiprocess.mark_process_dead(worker.pid, metrics_dir)  # type: ignore[no-untyped-call]
                    workers[i] = start()
            time.sleep(0.2)
    finally:
        sock.close()
        if own_metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
