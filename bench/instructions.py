"""Instructions per streamed answer, counted by valgrind's callgrind: a before/after figure that noise can't move.

    .venv/bin/python -m bench.instructions [--streams 50] [--redis] [--src PATH-TO-ANOTHER-CHECKOUT/src]

Runs the gateway under callgrind (slow: about two minutes to start), warms it up with 20 answers, zeroes the
counters, streams N answers of 50 deltas through POST /llm/query (10 at a time), dumps the counters and prints
the instructions per answer. ``--src`` measures another checkout's package (say, a ``git worktree`` of an older
commit) with the same load. Needs valgrind (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.procs import gateway_command, redis_server_binary, spawn, stop, wait_for
from bench.streams import one_query
from tests.processes import free_port


async def answers(url: str, count: int, concurrency: int) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded() -> float:
            async with semaphore:
                return await one_query(client, url, 50)  # raises unless every delta and the end arrived

        await asyncio.gather(*(bounded() for _ in range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--redis", action="store_true", help="the gateway on a real redis-server")
    parser.add_argument("--src", help="measure the llm_gateway package under this directory instead")
    args = parser.parse_args()
    if not 1 <= args.streams <= 1000:
        parser.error("--streams within 1..1000")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    workdir = tempfile.mkdtemp(prefix="bench-instructions-")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        emulator_port, port = free_port(), free_port()
        processes.append(spawn([*gateway_command(), "emulator", "--port", str(emulator_port), "--deltas", "50"], env))
        gateway_env = {
            **env,
            "ANTHROPIC_API_KEY": "bench",
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{emulator_port}",
            "API_PORT": str(port),
            "API_HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
            "UPSTREAM_MAX_RETRIES": "0",
            "TASK_LEASE_SECONDS": "60",  # callgrind slows it ~50×: no lease may lapse
        }
        if args.redis:
            redis_port = free_port()
            command = [redis_server_binary(), "--port", str(redis_port), "--save", "", "--appendonly", "no"]
            processes.append(spawn(command, cwd=workdir))
            gateway_env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        out = Path(workdir) / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        gateway = spawn([*valgrind, *gateway_command(), "--env-file", "/dev/null"], gateway_env)
        processes.append(gateway)
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health", timeout=600)
        asyncio.run(answers(url, 20, 5))
        subprocess.run(["callgrind_control", "-z", str(gateway.pid)], check=True, capture_output=True)
        asyncio.run(answers(url, args.streams, 10))
        subprocess.run(["callgrind_control", "-d", str(gateway.pid)], check=True, capture_output=True)
        dump = Path(f"{out}.1")
        deadline = time.monotonic() + 60
        while not re.search(r"^summary: \d+", dump.read_text() if dump.exists() else "", re.M):
            if time.monotonic() > deadline:
                raise SystemExit("callgrind wrote no dump")
            time.sleep(0.5)
        summary = re.search(r"^summary: (\d+)", dump.read_text(), re.M)
        assert summary is not None
        store = "Redis" if args.redis else "embedded"
        print(f"{int(summary[1]) / args.streams / 1e6:.2f} M instructions per answer ({store}, {args.streams} answers)")
    finally:
        stop(processes)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
