"""Real servers for tests: an ASGI app on uvicorn over a real loopback socket, a gateway process, nginx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from tests.processes import free_port, stop_processes


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, *, lifespan: str = "on") -> AsyncIterator[str]:
    """Run ``app`` on uvicorn in this event loop; yield its base URL (``http://127.0.0.1:PORT``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,  # type: ignore[arg-type]
        log_level="warning",
        timeout_graceful_shutdown=1,
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
        sock.close()


@contextlib.asynccontextmanager
async def replica_process(
    env: dict[str, str], *, log: Path | None = None
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """A gateway process (``python -m llm_gateway``) configured by ``env``; yields its base URL and process.

    Its log (stderr) goes to ``log`` if given."""
    port = free_port()
    log_file = None if log is None else log.open("wb")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "llm_gateway", "--env-file", os.devnull],
            env={**env, "API_HOST": "127.0.0.1", "API_PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=log_file or subprocess.DEVNULL,
        )
    finally:
        if log_file is not None:
            log_file.close()  # the process has its own copy
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if (await client.get(f"{url}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, "replica exited at start-up"
                assert time.monotonic() < deadline, "replica did not start"
                await asyncio.sleep(0.1)
        yield url, process
    finally:
        stop_processes([process])


DEPLOYED_NGINX_CONF = Path(__file__).parents[1] / "deploy" / "nginx.conf"
# deploy/nginx.conf's upstream servers: the replicas of deploy/compose.yaml.
NGINX_UPSTREAMS = ("gateway-1:8000", "gateway-2:8000")


def render_nginx_conf(listen: int, replicas: tuple[int, int]) -> str:
    """deploy/nginx.conf as shipped, with only its listen port and its two upstream servers replaced."""
    text = DEPLOYED_NGINX_CONF.read_text()
    replacements = {
        "listen 8080;": f"listen 127.0.0.1:{listen};",
        f"server {NGINX_UPSTREAMS[0]} ": f"server 127.0.0.1:{replicas[0]} ",
        f"server {NGINX_UPSTREAMS[1]} ": f"server 127.0.0.1:{replicas[1]} ",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"deploy/nginx.conf changed: {old!r} is not there once"
        text = text.replace(old, new)
    return text


@contextlib.asynccontextmanager
async def nginx_in_front(binary: str, workdir: Path, a: str, b: str) -> AsyncIterator[str]:
    """nginx, not a daemon, in ``workdir`` (its prefix: temp files, pid, log), in front of replicas a and b."""
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(render_nginx_conf(port, (urlsplit(a).port or 0, urlsplit(b).port or 0)))
    log_path = workdir / "nginx.log"
    with log_path.open("wb") as log:
        command = [binary, "-p", f"{workdir}/", "-c", str(conf), "-g", f"daemon off; pid {workdir}/nginx.pid;"]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            async with asyncio.timeout(10):
                while True:  # a bare TCP connect: no request reaches (and moves round-robin past) a replica
                    assert process.poll() is None, log_path.read_text()
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", port)
                    except OSError:
                        await asyncio.sleep(0.05)
                        continue
                    writer.close()
                    await writer.wait_closed()
                    break
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_processes([process], timeout=10)


NODE_DIR = Path(__file__).parent / "node"


@dataclass
class NodeRun:
    returncode: int
    result: dict[str, Any]  # the JSON object on the script's last line of output
    stderr: str


async def run_node(script: str, *args: str, needs: str, timeout: float = 30) -> NodeRun:
    """Run ``tests/node/<script>`` (the gateway under test serves from this event loop, so not blocking it).

    ``needs``: a package under node_modules that must be installed (scripts/install runs ``npm ci``)."""
    node = shutil.which("node")
    assert node is not None
    if not (NODE_DIR / "node_modules" / needs / "package.json").exists():
        pytest.fail("tests/node/node_modules is missing: run scripts/install (it runs `npm ci` in tests/node)")
    process = await asyncio.create_subprocess_exec(
        node,
        str(NODE_DIR / script),
        *args,
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"node {script} {args[:2]} did not finish in {timeout:.0f} s")
    lines = stdout.decode().strip().splitlines()
    if not lines:
        pytest.fail(f"node printed nothing (exit {process.returncode}); stderr:\n{stderr.decode()}")
    return NodeRun(process.returncode or 0, json.loads(lines[-1]), stderr.decode())
