"""CPU, latency and memory of streamed answers through the gateway, beside the upstream alone (and LiteLLM).

    .venv/bin/python -m bench.streams [--runs 3] [--streams 400] [--concurrency 100] [--redis] [--redis-cluster]
                                     [--litellm PATH-TO-litellm] [--path query|subscribe|messages]

The server measured runs alone on one core; the load generator, the emulated upstream and Redis share the other.
Each run streams N answers of D deltas, C at a time, then 50 one at a time, through every target in turn
(interleaved, so drift hits them alike). Afterwards, per gateway: RSS per finished log (N more answers), RSS per
live SSE subscriber (S sockets on one running task) and, on Redis, the replica's connections to it with and
without those subscribers. Prints a table: ranges are min–max over the runs. Loopback only; bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from bench.procs import (
    REST_CPUS,
    SERVER_CPU,
    cpu_seconds,
    gateway_command,
    redis_server_binary,
    rss_bytes,
    spawn,
    stop,
    wait_for,
)
from tests.processes import free_port

LATENCY_STREAMS = 50
KEEPALIVE_EXPIRY = 2.0  # seconds an idle client connection is kept: under every server's keep-alive timeout here
MASTER_KEY = "sk-bench-0123456789abcdef0123456789abcdef"  # LiteLLM refuses to start without one


class StreamFailed(RuntimeError):
    """A failed stream is cheap: never let one pass for a fast one."""


@dataclass
class Target:
    name: str
    url: str
    pid: int
    one: Callable[[httpx.AsyncClient, str, int], Awaitable[float]]
    redis_pids: list[int] = field(default_factory=list)
    redis_nodes: list[str] = field(default_factory=list)  # each node's own redis:// URL
    gateway: bool = False
    cpu: list[float] = field(default_factory=list)  # ms per stream at --concurrency, one per run
    cpu_alone: list[float] = field(default_factory=list)  # ms per stream, one at a time
    rate: list[float] = field(default_factory=list)  # streams/s at --concurrency
    ttfe: list[float] = field(default_factory=list)  # p50 ms, one at a time
    redis_cpu: list[float] = field(default_factory=list)
    failures: int = 0
    failure: str = ""
    per_log: str = "–"
    per_subscriber: str = "–"
    connections: str = "–"


async def read_stream(response: httpx.Response, start: float, delta: str, end: str, deltas: int) -> float:
    """Time to the first ``delta`` line; checks every delta arrived and the ``end`` line closed the stream."""
    first, seen, ended = 0.0, 0, False
    async for line in response.aiter_lines():
        if line.startswith(delta):
            seen += 1
            first = first or time.perf_counter() - start
        ended = ended or line == end
    if seen != deltas or not ended:
        raise StreamFailed(f"{delta!r}: got {seen}/{deltas} deltas, ended cleanly: {ended}")
    return first


def prompt(deltas: int) -> str:
    return f"bench [emu:deltas={deltas}]"


def messages_client(path: str, headers: dict[str, str]) -> Callable[[httpx.AsyncClient, str, int], Awaitable[float]]:
    """One streamed Messages API call (the upstream's own frames), as to Claude."""

    async def one(client: httpx.AsyncClient, url: str, deltas: int) -> float:
        body = {
            "model": "claude-bench",
            "max_tokens": 1024,
            "stream": True,
            "messages": [{"role": "user", "content": prompt(deltas)}],
        }
        start = time.perf_counter()
        async with client.stream("POST", url + path, json=body, headers=headers) as response:
            return await read_stream(response, start, "event: content_block_delta", "event: message_stop", deltas)

    return one


async def one_subscribe(client: httpx.AsyncClient, url: str, deltas: int) -> float:
    """Two requests: start a task, then read it over SSE (native dialect)."""
    start = time.perf_counter()
    accepted = await client.post(f"{url}/api/claude/prompt/async", json={"prompt": prompt(deltas)})
    task_id = accepted.json()["task_id"]
    async with client.stream("GET", f"{url}/api/claude/subscribe/{task_id}") as response:
        return await read_stream(response, start, "event: chunk", "event: complete", deltas)


async def one_query(client: httpx.AsyncClient, url: str, deltas: int) -> float:
    """One request: POST /llm/query answers with the stream itself (text dialect: one id: line per delta)."""
    start = time.perf_counter()
    async with client.stream("POST", f"{url}/llm/query", json={"prompt": prompt(deltas)}) as response:
        return await read_stream(response, start, "id: ", "data: [DONE]", deltas)


GATEWAY_PATHS = {
    "query": one_query,
    "subscribe": one_subscribe,
    "messages": messages_client("/v1/messages", {}),
}


async def measure(target: Target, streams: int, concurrency: int, deltas: int) -> None:
    """One run: ``streams`` at ``concurrency`` (CPU, rate), then LATENCY_STREAMS one at a time (TTFE, CPU)."""
    # Idle connections are dropped before a server's keep-alive timeout (uvicorn's: 5 s) can close one as it is
    # reused, which fails that stream with a ReadError that is the harness's, not the server's.
    limits = httpx.Limits(
        max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2, keepalive_expiry=KEEPALIVE_EXPIRY
    )
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        await asyncio.gather(*(target.one(client, target.url, deltas) for _ in range(concurrency)))  # warm up
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded() -> float:
            async with semaphore:
                return await target.one(client, target.url, deltas)

        cpu, redis_cpu, wall = cpu_seconds(target.pid), sum(map(cpu_seconds, target.redis_pids)), time.perf_counter()
        results = await asyncio.gather(*(bounded() for _ in range(streams)), return_exceptions=True)
        wall = time.perf_counter() - wall
        failed = [result for result in results if isinstance(result, BaseException)]
        if failed:  # counted, and shown: a failed stream costs less than a whole one
            target.failures += len(failed)
            target.failure = f"{type(failed[0]).__name__}: {failed[0]}"[:100]
        target.cpu.append((cpu_seconds(target.pid) - cpu) / streams * 1000)
        target.redis_cpu.append((sum(map(cpu_seconds, target.redis_pids)) - redis_cpu) / streams * 1000)
        target.rate.append(streams / wall)
        cpu = cpu_seconds(target.pid)
        alone = [await target.one(client, target.url, deltas) for _ in range(LATENCY_STREAMS)]
        target.cpu_alone.append((cpu_seconds(target.pid) - cpu) / LATENCY_STREAMS * 1000)
        target.ttfe.append(statistics.median(alone) * 1000)


async def memory_per_log(target: Target, logs: int, deltas: int) -> None:
    """RSS (embedded) or Redis' used_memory (Redis) grown per finished answer, over ``logs`` more of them."""
    before = rss_bytes(target.pid), redis_memory(target.redis_nodes)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100, keepalive_expiry=KEEPALIVE_EXPIRY)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        semaphore = asyncio.Semaphore(50)

        async def bounded() -> float:
            async with semaphore:
                return await one_query(client, target.url, deltas)

        await asyncio.gather(*(bounded() for _ in range(logs)))
    await asyncio.sleep(1)
    rss = (rss_bytes(target.pid) - before[0]) / logs / 1024
    target.per_log = f"RSS {rss:.1f} KiB"
    if target.redis_nodes:
        target.per_log += f", Redis {(redis_memory(target.redis_nodes) - before[1]) / logs / 1024:.1f} KiB"


def redis_memory(nodes: list[str]) -> int:
    total = 0
    for node in nodes:
        with redis.Redis.from_url(node) as client:
            total += int(client.info("memory")["used_memory"])
    return total


async def open_subscriber(port: int, path: str) -> asyncio.StreamWriter:
    """A raw SSE reader on ``path``, returned once its first chunk arrived (so the gateway holds it live)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode())
    seen = b""
    async with asyncio.timeout(60):
        while b"event: chunk" not in seen:
            data = await reader.read(65536)
            if not data:
                raise StreamFailed(f"subscriber closed early: {seen[-200:]!r}")
            seen = seen[-100:] + data
    return writer


def gateway_connections(nodes: list[str]) -> int:
    """Connections to the Redis nodes other than this one's (the bench's gateway is Redis' only other client)."""
    total = 0
    for node in nodes:
        with redis.Redis.from_url(node) as client:
            total += len(client.client_list()) - 1
    return total


async def memory_per_subscriber(target: Target, subscribers: int) -> None:
    """RSS per live SSE subscriber of one running task; on Redis, the replica's connections with and without."""
    port = int(target.url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=target.url, timeout=60) as client:
        long = "subscribers [emu:deltas=2000] [emu:delay_ms=100]"
        task_id = (await client.post("/api/claude/prompt/async", json={"prompt": long})).json()["task_id"]
        first = await open_subscriber(port, f"/api/claude/subscribe/{task_id}")  # the task streams
        idle_connections = gateway_connections(target.redis_nodes) if target.redis_nodes else None
        await asyncio.sleep(1)
        before = rss_bytes(target.pid)
        writers: list[asyncio.StreamWriter] = []
        for batch in range(0, subscribers, 100):
            count = min(100, subscribers - batch)
            opened = [open_subscriber(port, f"/api/claude/subscribe/{task_id}") for _ in range(count)]
            writers += await asyncio.gather(*opened)
        await asyncio.sleep(1)
        target.per_subscriber = f"{(rss_bytes(target.pid) - before) / subscribers / 1024:.1f} KiB"
        if idle_connections is not None:
            busy = gateway_connections(target.redis_nodes)
            target.connections = f"{idle_connections} → {busy} with {subscribers + 1} subscribers"
        for writer in [first, *writers]:
            writer.close()
        await client.delete(f"/api/claude/task/{task_id}")


def start_litellm(executable: str, emulator_url: str, workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = Path(workdir) / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: claude-bench\n    litellm_params:\n      model: anthropic/claude-bench\n"
        f"      api_base: {emulator_url}\n      api_key: bench\n"
    )
    env = {**os.environ, "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOG": "ERROR"}
    env |= {"ANTHROPIC_API_BASE": emulator_url, "ANTHROPIC_API_KEY": "bench"}  # for its pass-through route
    command = [executable, "--config", str(config), "--port", str(port), "--num_workers", "1"]
    process = spawn(command, env, SERVER_CPU, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health/liveliness", timeout=180)
    return process, url


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [redis_server_binary(), "--port", str(port), "--save", "", "--appendonly", "no"]
    return spawn(command, cwd=workdir), f"redis://127.0.0.1:{port}/0"


def start_redis_cluster() -> tuple[str, list[subprocess.Popen[bytes]], list[str]]:
    """Three Redis Cluster primaries on loopback, started as the tests start theirs; its URL and processes."""
    from tests.redis_cluster import LocalCluster, cannot_run, redis_server

    server = redis_server()
    reason = cannot_run(server)
    if server is None or reason:
        raise SystemExit(f"--redis-cluster: {reason}")
    cluster = LocalCluster(server)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    for process in cluster.processes:
        os.sched_setaffinity(process.pid, REST_CPUS)
    return cluster.url, cluster.processes, [f"redis://127.0.0.1:{port}/0" for port in cluster.ports]


def start_gateway(env: dict[str, str], emulator_url: str, redis_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    gateway_env = {
        **env,
        "ANTHROPIC_API_KEY": "bench",
        "ANTHROPIC_BASE_URL": emulator_url,
        "API_PORT": str(port),
        "API_HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
        "UPSTREAM_MAX_RETRIES": "0",
        "MAX_CONCURRENT_TASKS": "10000",
        **({"REDIS_URL": redis_url} if redis_url else {}),
    }
    process = spawn([*gateway_command(), "--env-file", "/dev/null"], gateway_env, SERVER_CPU)
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health")
    return process, url


def spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if f"{low:.{digits}f}" == f"{high:.{digits}f}" else f"{low:.{digits}f}–{high:.{digits}f}"


def table(targets: list[Target], direct: Target, args: argparse.Namespace) -> str:
    peer = next((t for t in targets if t.name.startswith("LiteLLM /v1/messages")), None)
    rows = [
        f"{args.streams} streams of {args.deltas} deltas per run, {args.concurrency} at a time, {args.runs} runs; "
        f"gateway path: {args.path}; server pinned to CPU {sorted(SERVER_CPU)}",
        "",
        f"| | CPU ms/stream at c={args.concurrency} | CPU ms/stream at c=1 | streams/s at c={args.concurrency} "
        "| first event added at c=1, p50 ms | × LiteLLM CPU | Redis CPU ms/stream | per finished log "
        "| per live SSE subscriber | Redis connections |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for target in [direct, *targets]:
        added = [t - d for t, d in zip(target.ttfe, direct.ttfe, strict=True)] if target is not direct else []
        ratio = "–"
        if peer and target is not direct and target.cpu:
            ratio = f"{statistics.median(peer.cpu) / statistics.median(target.cpu):.1f}×"
        rows.append(
            f"| {target.name} | {spread(target.cpu)} | {spread(target.cpu_alone)} | {spread(target.rate, 0)} "
            f"| {spread(added) if added else f'(TTFE {spread(target.ttfe)})'} | {ratio} "
            f"| {spread(target.redis_cpu) if target.redis_pids else '–'} | {target.per_log} "
            f"| {target.per_subscriber} | {target.connections} |"
        )
    for target in [direct, *targets]:
        if target.failures:
            rows.append(f"\n{target.name}: {target.failures} streams failed at c={args.concurrency} ({target.failure})")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--deltas", type=int, default=50)
    parser.add_argument("--logs", type=int, default=2000, help="answers for the RSS per finished log")
    parser.add_argument("--subscribers", type=int, default=1000, help="live SSE subscribers of one task")
    parser.add_argument("--redis", action="store_true", help="also the gateway on a real redis-server")
    parser.add_argument("--redis-cluster", action="store_true", help="also the gateway on a 3-node Redis Cluster")
    parser.add_argument("--litellm", metavar="PATH", help="a litellm executable (pip install 'litellm[proxy]')")
    parser.add_argument("--path", choices=sorted(GATEWAY_PATHS), default="query")
    args = parser.parse_args()
    if not (1 <= args.streams <= 20_000 and 1 <= args.runs <= 10 and 1 <= args.subscribers <= 5_000):
        parser.error("--streams within 1..20000, --runs within 1..10, --subscribers within 1..5000")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.subscribers * 2 + 1024)), hard))

    os.sched_setaffinity(0, set(os.sched_getaffinity(0)) - SERVER_CPU or SERVER_CPU)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    processes: list[subprocess.Popen[bytes]] = []
    workdir = tempfile.mkdtemp(prefix="bench-streams-")
    try:
        emulator_port = free_port()
        emulator = spawn([*gateway_command(), "emulator", "--port", str(emulator_port), "--deltas", "50"], env)
        processes.append(emulator)
        emulator_url = f"http://127.0.0.1:{emulator_port}"
        wait_for(emulator_url)
        direct = Target("Claude alone (emulated)", emulator_url, emulator.pid, messages_client("/v1/messages", {}))
        targets: list[Target] = []
        stores: list[tuple[str, str | None, list[int], list[str]]] = [("embedded", None, [], [])]
        if args.redis:
            redis_process, redis_url = start_redis(workdir)
            processes.append(redis_process)
            stores.append(("Redis", redis_url, [redis_process.pid], [redis_url]))
        if args.redis_cluster:
            cluster_url, cluster_processes, nodes = start_redis_cluster()
            processes.extend(cluster_processes)
            pids = [process.pid for process in cluster_processes]
            stores.append(("Redis Cluster (3 nodes)", cluster_url, pids, nodes))
        for store_name, store_url, redis_pids, nodes in stores:
            gateway, url = start_gateway(env, emulator_url, store_url)
            processes.append(gateway)
            one = GATEWAY_PATHS[args.path]
            targets.append(Target(f"llm_gateway, {store_name}", url, gateway.pid, one, redis_pids, nodes, True))
        if args.litellm:
            litellm, url = start_litellm(args.litellm, emulator_url, workdir)
            processes.append(litellm)
            key = {"x-api-key": MASTER_KEY}
            targets.append(Target("LiteLLM /v1/messages", url, litellm.pid, messages_client("/v1/messages", key)))
            passthrough = messages_client("/anthropic/v1/messages", key)
            targets.append(Target("LiteLLM pass-through", url, litellm.pid, passthrough))

        for run in range(args.runs):
            for target in [direct, *targets]:
                asyncio.run(measure(target, args.streams, args.concurrency, args.deltas))
            print(f"run {run + 1}: " + ", ".join(f"{t.name} {t.cpu[-1]:.2f} ms" for t in [direct, *targets]))
        for target in targets:
            if target.gateway:
                asyncio.run(memory_per_log(target, args.logs, args.deltas))
                try:
                    asyncio.run(memory_per_subscriber(target, args.subscribers))
                except (StreamFailed, TimeoutError, OSError) as exc:
                    target.per_subscriber = f"failed: {type(exc).__name__} {exc}"[:80]
        print()
        print(table(targets, direct, args))
    finally:
        stop(processes)


if __name__ == "__main__":
    main()
