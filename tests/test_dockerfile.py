"""The Dockerfile, without a container engine: its first stage's install, then its CMD and HEALTHCHECK, for real.

The files it copies go to a fresh directory, its ``pip install --prefix`` builds the wheel from them (non-editable,
as in the image: the playground's page must be in it), and its CMD runs from that prefix, with the ENV it sets,
in an empty directory (no .env). Only ``--no-deps`` and ``--ignore-installed`` are added: the dependencies are this
test environment's, installed from the same pyproject.toml. ``hadolint`` lints the file in scripts/check.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import subprocess_env
from tests.processes import free_port

ROOT = Path(__file__).parents[1]
EXIT_MARGIN = 2.0  # the process exits within SHUTDOWN_GRACE_SECONDS plus this (API.md §2)


@dataclass
class Stage:
    copies: list[list[str]] = field(default_factory=list)  # COPY's arguments
    runs: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)


def stages(text: str) -> list[Stage]:
    """The Dockerfile's stages: the instructions this test replays (continuation lines joined)."""
    found: list[Stage] = []
    for line in text.replace("\\\n", " ").splitlines():
        instruction, _, rest = line.strip().partition(" ")
        match instruction.upper():
            case "FROM":
                found.append(Stage())
            case "COPY" if not rest.startswith("--from"):
                found[-1].copies.append(rest.split())
            case "RUN":
                found[-1].runs.append(rest)
            case "ENV":
                found[-1].env.update(pair.partition("=")[::2] for pair in shlex.split(rest))
            case "CMD":
                found[-1].cmd = json.loads(rest)
            case "HEALTHCHECK":
                found[-1].healthcheck = json.loads(rest[rest.index(" CMD ") + 5 :])
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return stages((ROOT / "Dockerfile").read_text())


def dockerignore() -> list[str]:
    """.dockerignore's patterns, as names (what this repository's patterns are)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().removeprefix("**/") for line in lines if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def prefix(dockerfile: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first stage: its COPYs into a fresh directory, then its pip install, into a prefix."""
    build = dockerfile[0]
    context = tmp_path_factory.mktemp("context")
    ignored = shutil.ignore_patterns(*dockerignore())
    for *sources, destination in build.copies:
        for source in map(ROOT.joinpath, sources):
            target = context / destination
            if source.is_dir():  # COPY copies a directory's contents
                shutil.copytree(source, target, ignore=ignored, dirs_exist_ok=True)
            else:
                target = target / source.name if destination.endswith("/") else target
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
    (install,) = [run for run in build.runs if run.startswith("pip install")]
    arguments = shlex.split(install)[2:]
    (prefix_option,) = [arg for arg in arguments if arg.startswith("--prefix=")]
    installed = tmp_path_factory.mktemp("install")
    arguments[arguments.index(prefix_option)] = f"--prefix={installed}"
    # --ignore-installed: else pip would uninstall this environment's own (editable) llm-gateway first.
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed", *arguments]
    done = subprocess.run(command, cwd=context, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return installed


def site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def image_env(stage: Stage, prefix: Path, port: int) -> dict[str, str]:
    """The ENV the image sets (the port moved to a free one), with the prefix as the image's /usr/local."""
    env = subprocess_env(**{**stage.env, "API_PORT": str(port)})
    env["PATH"] = f"{prefix / 'bin'}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(site_packages(prefix))
    return env


def test_the_image_s_cmd_serves_the_installed_package_and_its_healthcheck_passes(
    dockerfile: list[Stage], prefix: Path, tmp_path: Path
) -> None:
    image = dockerfile[-1]
    assert image.cmd and image.healthcheck and image.env["API_PORT"]
    port = free_port()
    env = image_env(image, prefix, port)
    locate = [sys.executable, "-c", "import llm_gateway; print(llm_gateway.__file__)"]
    where = subprocess.run(locate, env=env, capture_output=True, text=True)
    assert Path(where.stdout.strip()).is_relative_to(prefix), "the installed copy, not the source tree"
    log = tmp_path / "gateway.log"
    with log.open("wb") as output:
        process = subprocess.Popen(image.cmd, env=env, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while True:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the CMD did not answer /health in 30 s"
                try:
                    health = http.get("/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            page = http.get("/playground")
            script = http.get("/playground/app.js")
        check = subprocess.run(image.healthcheck, env=env, cwd=tmp_path, capture_output=True, timeout=10)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10 + EXIT_MARGIN)  # SHUTDOWN_GRACE_SECONDS' default, nothing running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert health.status_code == 200 and health.json()["store"]["backend"] == "embedded"
    assert page.status_code == 200 and 'id="answer"' in page.text, "the page is in the wheel"
    assert script.status_code == 200 and "EventSource" in script.text
    assert check.returncode == 0, check.stderr
    assert process.returncode == -signal.SIGTERM, log.read_text()  # uvicorn re-raises the signal it stopped at
