"""WORKERS=2: two worker processes on one socket and one Redis; /metrics reports both (multiprocess mode)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import free_port


def health_requests(exposition: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "llmgw_requests_total" and sample.labels.get("route") == "/health"
    )


async def test_two_workers_share_a_port_and_their_metrics(replica_env: dict[str, str]) -> None:
    port = free_port()
    env = {**replica_env, "WORKERS": "2", "API_HOST": "127.0.0.1", "API_PORT": str(port)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen([sys.executable, "-m", "llm_gateway", "--env-file", os.devnull], env=env)
    url = f"http://127.0.0.1:{port}"
    replicas: set[str] = set()
    made = 0
    try:
        async with asyncio.timeout(30):
            while len(replicas) < 2:
                try:  # a new connection each time, so either worker may accept it
                    async with httpx.AsyncClient() as client:
                        health = await client.get(f"{url}/health")
                    made += 1
                    replicas.add(health.json()["replica"])
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        async with httpx.AsyncClient() as client:
            before = health_requests((await client.get(f"{url}/metrics")).text)
        for _ in range(10):
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{url}/health")).status_code == 200
        async with httpx.AsyncClient() as client:
            after = health_requests((await client.get(f"{url}/metrics")).text)
    finally:
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        process.wait(timeout=20)
    assert len(replicas) == 2, "both workers answered"
    assert after - before == 10 and before >= made, "one scrape counts every worker's requests"
    assert process.returncode == 0 and time.monotonic() - started < 5
