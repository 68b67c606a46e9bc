"""The playground (API.md §4) in a real browser: Debian's Chromium, driven by Playwright.

Through deploy/nginx.conf in front of two replica processes on one Redis, the replica serving the page's stream
is killed (SIGKILL) mid-answer while the other one runs the generation: the browser's EventSource comes back
through nginx to the survivor with Last-Event-ID, and the page shows the whole answer, exactly, and the reconnect
in its state line. (Killing the replica that runs a generation loses the generation: its task ends
``interrupted`` within two leases, as tests/test_replicas.py shows.) The same page then makes a Trellis task
against the emulated PiAPI and watches it to ``completed`` over a WebSocket.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect

from llm_gateway.anthropic_errors import anthropic_type
from llm_gateway.emulator import emulated_text, piapi_model_url
from tests.conftest import EMULATOR_KEY, Emulator, GatewayFactory
from tests.servers import nginx_in_front, replica_process
from tests.sse_client import read_all

ARTIFACTS = Path(__file__).parent / "artifacts"  # git-ignored: what a run of the browser tests leaves to look at
CLIENT_KEY = "sk-gw-playground-0123456789abcdef"
# Chromium on a machine with no network: nothing in the background (the probe of this machine found these needed).
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EVENT_ID = r"\d+-\d+"


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed (scripts/install installs Debian's package where apt is available)")
    return found


@asynccontextmanager
async def playground(chromium: str, base: str) -> AsyncIterator[Page]:
    """A fresh headless Chromium on ``base``/playground (Playwright drives it; it downloads no browser)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = await browser.new_page(viewport={"width": 1000, "height": 820})
            page.set_default_timeout(10_000)
            await page.goto(f"{base}/playground")
            yield page
        finally:
            await browser.close()


async def state_log(page: Page) -> list[str]:
    """Every line the state line showed since the last send, in order."""
    states: list[str] = await page.eval_on_selector_all("#state-log li", "items => items.map(i => i.dataset.state)")
    return states


async def send(page: Page, prompt: str, dialect: str = "native") -> None:
    await page.select_option("#format", dialect)
    await page.fill("#prompt", prompt)
    await page.click("#send")


async def health(http: httpx.AsyncClient, replica: str) -> int:
    """The generations running on ``replica``."""
    running: int = (await http.get(f"{replica}/health")).json()["running_tasks"]
    return running


async def open_streams(http: httpx.AsyncClient, replica: str) -> float:
    metrics = (await http.get(f"{replica}/metrics")).text
    found = re.search(r"^llmgw_open_streams (\S+)$", metrics, re.MULTILINE)
    assert found is not None, "no llmgw_open_streams in /metrics"
    return float(found[1])


async def serving_the_stream(http: httpx.AsyncClient, replicas: list[str]) -> str:
    """The replica holding the page's one SSE stream, once the others have let go of any older one."""
    async with asyncio.timeout(10):
        while True:
            counts = [await open_streams(http, replica) for replica in replicas]
            if sorted(counts) == [0, 1]:
                return replicas[counts.index(1)]
            await asyncio.sleep(0.05)


@pytest.mark.timeout(120)  # two replicas, nginx, a browser and an 8 s answer on a loaded machine
async def test_the_playground_through_nginx_keeps_the_whole_answer_when_its_replica_is_killed(
    replica_env: dict[str, str], emulator: Emulator, nginx_binary: str, chromium: str, tmp_path: Path
) -> None:
    deltas = 200
    prompt = f"Explain how a load balancer hands a stream on [emu:deltas={deltas}] [emu:delay_ms=40]"  # 8 s
    expected = emulated_text(prompt, deltas)
    env = {
        **replica_env,
        "GATEWAY_API_KEYS": f"playground={CLIENT_KEY}",
        "TRELLIS_API_KEY": EMULATOR_KEY,
        "TRELLIS_BASE_URL": emulator.url,
        "TRELLIS_POLL_INTERVAL": "0.3",
    }
    async with (
        replica_process(env) as (a, process_a),
        replica_process(env) as (b, process_b),
        nginx_in_front(nginx_binary, tmp_path, a, b) as proxy,
        httpx.AsyncClient(timeout=10, headers={"X-API-Key": CLIENT_KEY}) as http,
        playground(chromium, proxy) as page,
        asyncio.timeout(90),
    ):
        processes = {a: process_a, b: process_b}
        state, answer = page.locator("#state"), page.locator("#answer")
        await page.fill("#api-key", CLIENT_KEY)
        await send(page, prompt)
        await expect(state).to_have_text("live")
        await expect(answer).not_to_be_empty()
        task_id = await page.text_content("#task-id")
        running = [replica for replica in processes if await health(http, replica) == 1]
        assert len(running) == 1, "one replica runs the generation"
        # "Reconnect now" until the stream is on the other replica: each nginx worker takes its replicas in turn.
        for _ in range(8):  # each worker alternates, so the owner comes at most once a worker in a row
            await page.click("#reconnect")
            await expect(state).to_have_text(re.compile(f"^resumed at {EVENT_ID}$"))
            serving = await serving_the_stream(http, list(processes))
            if serving != running[0]:
                break
        else:
            pytest.fail("every reconnect reached the replica running the generation")

        before = await answer.text_content() or ""
        assert 0 < len(before) < len(expected) and expected.startswith(before), "killed mid-answer"
        seen = len(await state_log(page))
        processes[serving].send_signal(signal.SIGKILL)
        await expect(state).to_have_text("done", timeout=30_000)
        assert await answer.text_content() == expected
        after_kill = await state_log(page)
        finished = await read_all(http, f"{proxy}/api/claude/subscribe/{task_id}")
        status = (await http.get(f"{proxy}/api/claude/task/{task_id}")).json()

        await page.fill("#trellis-image", "https://example.com/chair.png")
        await page.click("#trellis-create")
        await expect(page.locator("#trellis-status")).to_have_text("completed", timeout=20_000)
        await expect(page.locator("#trellis-model")).to_be_visible()
        trellis_id = await page.text_content("#trellis-task-id") or ""
        model_link = await page.get_attribute("#trellis-model", "href")

        await page.evaluate("document.querySelector('details').open = true")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "playground.png", full_page=True)
        print(f"\nscreenshot: {ARTIFACTS / 'playground.png'}; states after the kill: {after_kill[seen:]}")

    assert processes[serving].returncode == -signal.SIGKILL
    assert after_kill[seen] == "reconnecting" and after_kill[-1] == "done"
    resumed = after_kill[seen + 1 : -1]
    assert len(resumed) == 1 and re.fullmatch(f"resumed at {EVENT_ID}", resumed[0]), resumed
    assert resumed[0].removeprefix("resumed at ") in [frame.id for frame in finished], "an id the stream sent"
    assert status["status"] == "completed" and status["result"]["response"] == expected
    assert model_link == piapi_model_url(trellis_id)
    assert trellis_id in emulator.stats.piapi_gets_by_task, "the gateway polled the emulated PiAPI"


def expected_error(dialect: str) -> str:
    """The state line of an answer ended by the upstream's 529, as each dialect names it."""
    return f"error: {anthropic_type('upstream_overloaded') if dialect == 'anthropic' else 'upstream_overloaded'}"


async def test_the_playground_shows_each_dialect_s_answer_exactly_its_errors_and_a_stop(
    gateway_factory: GatewayFactory, chromium: str
) -> None:
    async with gateway_factory() as url, playground(chromium, url) as page:
        state, answer = page.locator("#state"), page.locator("#answer")
        assert not await page.locator("#api-key").is_visible(), "no keys: the page asks for none"
        dialects = await page.eval_on_selector_all("#format option", "options => options.map(o => o.value)")
        assert len(dialects) == 8
        for dialect in dialects:
            prompt = f"the {dialect} dialect [emu:deltas=30]"
            await send(page, prompt, dialect)
            await expect(state).to_have_text("done")
            assert await answer.text_content() == emulated_text(prompt, 30), dialect
            assert await state_log(page) == ["live", "done"], dialect

            await send(page, f"the {dialect} dialect fails [emu:fault=529]", dialect)
            await expect(state).to_have_text(expected_error(dialect))
            assert await state_log(page) == ["live", expected_error(dialect)], dialect

        await send(page, "stopped [emu:deltas=1000] [emu:delay_ms=20]")
        await expect(answer).not_to_be_empty()
        await page.click("#stop")
        await expect(state).to_have_text("error: cancelled")
        assert await state_log(page) == ["live", "error: cancelled"]


def test_chromium_is_there_wherever_scripts_install_can_install_it() -> None:
    """Where scripts/install runs apt as root, the browser tests run: a skip would hide a missing install step."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("no apt-get as root here: scripts/install cannot install chromium")
    assert shutil.which("chromium"), "no chromium: scripts/install installs Debian's package"
