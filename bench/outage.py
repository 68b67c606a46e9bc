"""What every client sees when Redis fails under 20 live streams, and right after it is back.

    .venv/bin/python -m bench.outage [--scenarios kill3,kill20,stop5,stop12] [--grace 30]

Per scenario, fresh: a redis-server of its own, the emulator, and two gateway replicas (processes) on it.
20 tasks are started across both replicas and each is followed over SSE (``native``) from one of them, half
on the replica that runs it, half on the other. Two seconds in, Redis is SIGKILLed and restarted empty on the
same port N seconds later (``killN``), or SIGSTOPped for N seconds (``stopN``). Printed: how each stream ended
(complete with the exact text, the terminal error frame, a silent end, a cut response, or a hang), when after
the fault, whether the text it got has a gap; then, as soon as both replicas' /health says 200, how 64
concurrent requests fared; and the replicas' log lines (tracebacks, "Exception in ASGI application").
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llm_gateway.emulator import emulated_text
from tests.processes import free_port

STREAMS = 20
DELTAS = 400  # at 50 ms each: 20 s of answer, so every stream is mid-answer when Redis fails
PROMPT = "outage {i} [emu:deltas=" + str(DELTAS) + "] [emu:delay_ms=50]"
FAULT_AFTER = 2.0
REQUESTS_AFTER = 64


class Redis:
    def __init__(self, port: int) -> None:
        self.port = port
        self.workdir = tempfile.mkdtemp(prefix="outage-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(args, cwd=self.workdir, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        if sig == signal.SIGKILL:
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def spawn(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=out)


async def wait_healthy(client: httpx.AsyncClient, url: str, timeout: float) -> float:
    """Seconds until ``url``/health answers 200."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if (await client.get(f"{url}/health", timeout=3)).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not healthy within {timeout}s")


def answered(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "200"
    try:
        return f"{response.status_code} {response.json().get('type')}"
    except ValueError:
        return f"{response.status_code} (not JSON)"


@dataclass
class Stream:
    prompt: str
    local: bool
    chunks: list[str] = field(default_factory=list)
    outcome: str = "hang"
    ended_at: float = 0.0

    def text_ok(self) -> bool:
        """The text is a prefix of the answer (no gap, no repeat), or all of it."""
        return emulated_text(self.prompt, DELTAS).startswith("".join(self.chunks))


async def follow(client: httpx.AsyncClient, url: str, task_id: str, stream: Stream) -> None:
    event = "message"
    try:
        async with client.stream("GET", f"{url}/api/claude/subscribe/{task_id}") as response:
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:].strip())
                    if event == "chunk":
                        stream.chunks.append(data["chunk"])
                    elif event == "complete":
                        exact = data["response"] == emulated_text(stream.prompt, DELTAS)
                        stream.outcome = "complete, exact text" if exact else "complete, WRONG text"
                    elif event == "error":
                        stream.outcome = f"error {data['type']} retryable={data.get('retryable')}"
        if stream.outcome == "hang":
            stream.outcome = "SILENT END (no complete, no error)"
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        stream.outcome = f"CUT ({type(exc).__name__})"
    stream.ended_at = time.monotonic()


async def scenario(name: str, grace: float | None, work: Path) -> list[str]:
    kind, seconds = re.fullmatch(r"(kill|stop)(\d+)", name).groups()  # type: ignore[union-attr]
    down = float(seconds)
    redis = Redis(free_port())
    redis.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_", "STORE_"))}
    emu_port = free_port()
    processes = [spawn([sys.executable, "-m", "llm_gateway", "emulator", "--port", str(emu_port)], env)]
    replica_env = {
        **env,
        "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "ANTHROPIC_API_KEY": "bench",
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{emu_port}",
        "UPSTREAM_MAX_RETRIES": "0",
        "LOG_LEVEL": "warning",
        "API_HOST": "127.0.0.1",
    }
    if grace is not None:
        replica_env["STORE_OUTAGE_GRACE"] = str(grace)
    urls, logs = [], []
    for i in range(2):
        port = free_port()
        logs.append(work / f"{name}-replica{i}.log")
        processes.append(
            spawn(
                [sys.executable, "-m", "llm_gateway", "--env-file", os.devnull],
                {**replica_env, "API_PORT": str(port)},
                logs[-1],
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    report = [f"== {name}: Redis {'killed, back empty' if kind == 'kill' else 'stopped (SIGSTOP)'} after {down:g}s"]
    try:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=httpx.Timeout(90, connect=5), limits=limits) as client:
            for url in urls:
                await wait_healthy(client, url, 30)
            streams, followers = [], []
            for i in range(STREAMS):
                owner, reader = urls[i % 2], urls[(i // 2) % 2]
                stream = Stream(PROMPT.format(i=i), local=owner == reader)
                accepted = await client.post(f"{owner}/api/claude/prompt/async", json={"prompt": stream.prompt})
                task_id = accepted.json()["task_id"]
                streams.append(stream)
                followers.append(asyncio.create_task(follow(client, reader, task_id, stream)))
            await asyncio.sleep(FAULT_AFTER)
            fault_at = time.monotonic()
            redis.signal(signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
            await asyncio.sleep(down)
            if kind == "kill":
                await asyncio.to_thread(redis.start)  # the streams are read on this loop meanwhile
            else:
                redis.signal(signal.SIGCONT)
            healthy = [await wait_healthy(client, url, 60) for url in urls]
            answers = await asyncio.gather(
                *(
                    client.post(f"{urls[i % 2]}/api/claude/prompt", json={"prompt": f"after {i} [emu:deltas=5]"})
                    for i in range(REQUESTS_AFTER)
                )
            )
            _, hung = await asyncio.wait(followers, timeout=90)
            for task in hung:
                task.cancel()
            await asyncio.gather(*hung, return_exceptions=True)
            outcomes = collections.Counter(s.outcome for s in streams)
            report.append(f"  {STREAMS} streams (10 followed on the replica running them, 10 on the other):")
            for outcome, count in outcomes.most_common():
                ended = [s.ended_at - fault_at for s in streams if s.outcome == outcome and s.ended_at]
                when = f", ended {min(ended):.1f}-{max(ended):.1f}s after the fault" if ended else ""
                local = sum(s.local for s in streams if s.outcome == outcome)
                report.append(f"    {count:2d} x {outcome}{when} ({local} local)")
            bad_text = sum(not s.text_ok() for s in streams)
            report.append(f"    text with a gap or a repeat: {bad_text}")
            codes = collections.Counter(answered(r) for r in answers)
            report.append(
                f"  /health 200 on both {sum(healthy):.1f}s after Redis was back; then {REQUESTS_AFTER} concurrent "
                "POST /api/claude/prompt: " + ", ".join(f"{n} x {code}" for code, n in sorted(codes.items()))
            )
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.stop()
    text = "".join(log.read_text(errors="replace") for log in logs)
    lines = [line for line in text.splitlines() if line.strip()]
    report.append(
        f"  replica logs: {len(lines)} lines, {text.count('Traceback')} tracebacks, "
        f"{text.count('Exception in ASGI application')} 'Exception in ASGI application', "
        f"{sum('store down' in line for line in lines)} 'store down', {sum('store back' in line for line in lines)} "
        f"'store back'"
    )
    for line in [line for line in lines if "store down" in line or "store back" in line][:4]:
        report.append(f"    {line}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="kill3,kill20,stop5,stop12")
    parser.add_argument("--grace", type=float, help="STORE_OUTAGE_GRACE of the replicas (default: theirs)")
    parser.add_argument("--logs", type=Path, help="keep the replicas' logs here")
    args = parser.parse_args()
    work = args.logs or Path(tempfile.mkdtemp(prefix="outage-logs-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"STORE_OUTAGE_GRACE={args.grace if args.grace is not None else 'default'}; logs in {work}", flush=True)
    for name in args.scenarios.split(","):
        if not re.fullmatch(r"(kill|stop)\d+", name):
            parser.error(f"unknown scenario {name!r}: killN or stopN")
        print("\n".join(asyncio.run(scenario(name, args.grace, work))), flush=True)


if __name__ == "__main__":
    main()
