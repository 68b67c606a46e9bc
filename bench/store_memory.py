"""The embedded store's memory: bytes per finished log, and the gateway's RSS over many streams.

    .venv/bin/python -m bench.store_memory --logs 2000 --streams 20000 [--ttl 1500] [--max-bytes N]

First, in this process: N finished logs of a 50-delta answer (start, 50 text, usage, complete, as the emulator's
stream makes them) in a MemoryStore, measured with tracemalloc, beside what the store accounts for them. Then a
gateway process on the embedded store runs S streams (POST prompt/async + GET subscribe, 20 at a time) against
the emulator; its RSS is read after the streams and again once every log has expired (STREAM_TTL_SECONDS=--ttl).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import httpx

from bench.procs import SERVER_CPU, spawn, wait_for
from llm_gateway.emulator.words import emulated_deltas
from llm_gateway.events import Complete, Start, Text, TokenUsage, Usage
from llm_gateway.store.memory import MemoryStore
from tests.processes import free_port

DELTAS = 50
MODEL = "claude-sonnet-4-6"


async def fill(store: MemoryStore, logs: int) -> None:
    for i in range(logs):
        task_id = str(uuid.uuid4())
        fingerprint = hashlib.sha256(task_id.encode()).hexdigest()
        deltas = emulated_deltas(f"bench {i}", DELTAS)
        await store.create_task(task_id, fingerprint=fingerprint, model=MODEL, lease_seconds=5)
        await store.start_task(task_id, owner=uuid.uuid4().hex, lease_seconds=5, event=Start(task_id, MODEL))
        owner = (await store.get_task(task_id)).owner  # type: ignore[union-attr]
        await store.append(task_id, [Text(0, delta) for delta in deltas], owner=owner)
        await store.append(task_id, [Usage(12, DELTAS)], owner=owner)
        await store.finish(task_id, Complete("".join(deltas), "end_turn", TokenUsage(12, DELTAS), MODEL))


def bytes_per_log(logs: int) -> None:
    store = MemoryStore(stream_ttl=3600)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    asyncio.run(fill(store, logs))
    gc.collect()
    traced = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    accounted = getattr(store, "finished_bytes", None)
    line = f"{logs} finished {DELTAS}-delta logs: {traced / logs:,.0f} B each (tracemalloc)"
    if accounted is not None:
        line += f", {accounted / logs:,.0f} B each accounted by the store"
    print(line)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def one_stream(client: httpx.AsyncClient) -> str:
    accepted = await client.post("/api/claude/prompt/async", json={"prompt": f"bench [emu:deltas={DELTAS}]"})
    task_id: str = accepted.json()["task_id"]
    chunks = 0
    async with client.stream("GET", f"/api/claude/subscribe/{task_id}") as response:
        async for line in response.aiter_lines():
            chunks += line.startswith("event: chunk")
    if chunks != DELTAS:
        raise RuntimeError(f"stream {task_id}: {chunks}/{DELTAS} chunks")
    return task_id


async def streams(url: str, count: int, concurrency: int) -> list[str]:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded() -> str:
            async with semaphore:
                for _ in range(2):
                    try:
                        return await one_stream(client)
                    except httpx.TransportError:  # a kept-alive connection the server had just closed
                        continue
                return await one_stream(client)

        return await asyncio.gather(*(bounded() for _ in range(count)))


def gateway_rss(count: int, concurrency: int, ttl: int, max_bytes: int | None, wait: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_", "STORE_"))}
    emu_port, gw_port = free_port(), free_port()
    gw_env = {
        **env,
        "ANTHROPIC_API_KEY": "bench",
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{emu_port}",
        "API_HOST": "127.0.0.1",
        "API_PORT": str(gw_port),
        "LOG_LEVEL": "warning",
        "UPSTREAM_MAX_RETRIES": "0",
        "MAX_CONCURRENT_TASKS": "10000",
        "STREAM_TTL_SECONDS": str(ttl),
        **({"STORE_MAX_BYTES": str(max_bytes)} if max_bytes else {}),
    }
    cli = [sys.executable, "-m", "llm_gateway"]
    emulator = spawn([*cli, "emulator", "--port", str(emu_port), "--deltas", str(DELTAS)], env)
    gateway = spawn([*cli, "--env-file", "/dev/null"], gw_env, SERVER_CPU)
    try:
        url = f"http://127.0.0.1:{gw_port}"
        wait_for(f"http://127.0.0.1:{emu_port}")
        wait_for(f"{url}/health")
        idle = rss_mib(gateway.pid)
        started = time.perf_counter()
        task_ids = asyncio.run(streams(url, count, concurrency))
        wall = time.perf_counter() - started
        after = rss_mib(gateway.pid)
        kept = sum(httpx.get(f"{url}/api/claude/task/{t}").status_code == 200 for t in task_ids[:: count // 100 or 1])
        print(
            f"{count} streams of {DELTAS} deltas, {concurrency} at a time: {wall:.1f} s; gateway RSS {idle:.0f} MiB "
            f"idle, {after:.0f} MiB after them ({kept}% of a sample of their logs still there)"
        )
        if not wait:
            return
        time.sleep(max(0.0, ttl + 1 - (time.perf_counter() - started - wall)))
        httpx.get(f"{url}/api/claude/task/{task_ids[-1]}")  # expired logs go at the next access
        time.sleep(0.5)
        print(f"after STREAM_TTL_SECONDS={ttl}, every log expired: gateway RSS {rss_mib(gateway.pid):.0f} MiB")
    finally:
        for process in (gateway, emulator):
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=int, default=2000, help="logs measured in this process (0: skip)")
    parser.add_argument("--streams", type=int, default=20_000, help="streams through a gateway process (0: skip)")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--ttl", type=int, default=1500, help="the gateway's STREAM_TTL_SECONDS (longer than the run)")
    parser.add_argument("--max-bytes", type=int, default=None, help="the gateway's STORE_MAX_BYTES")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the logs to expire")
    args = parser.parse_args()
    if not 0 <= args.logs <= 100_000 or not 0 <= args.streams <= 20_000:
        parser.error("--logs within 0..100000, --streams within 0..20000")
    if args.logs:
        bytes_per_log(args.logs)
    if args.streams:
        gateway_rss(args.streams, args.concurrency, args.ttl, args.max_bytes, not args.no_wait)


if __name__ == "__main__":
    main()
