"""A restart cuts no client off (API.md §2 "Shutdown"): real replica processes, behind deploy/nginx.conf.

At SIGTERM a replica on a shared Redis releases its clients at once (SSE ends with ``retry:``, WebSockets close
1012); they come back through nginx, reach the other replica and read on from their last id, while the stopping
replica's generations run on. With the embedded store they stay attached until their generation ends.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from llm_gateway.emulator import emulated_text
from llm_gateway.events import Error
from llm_gateway.store import parse_event_id
from llm_gateway.store.redis import RedisStore
from tests.servers import nginx_in_front, replica_process

RELEASED_WITHIN = 1.5  # seconds from SIGTERM to a client's retry: or close 1012
EXIT_MARGIN = 2.0  # the process exits within SHUTDOWN_GRACE_SECONDS plus this


@dataclass
class Message:
    id: str
    event: str
    data: Any


@dataclass
class Client:
    """What one client saw, over all its connections."""

    messages: list[Message] = field(default_factory=list)
    released_at: list[float] = field(default_factory=list)  # when a connection ended with retry: or 1012
    ended_at: float = 0.0  # when the terminal event came

    @property
    def ended(self) -> bool:
        return bool(self.messages) and self.messages[-1].event in ("complete", "error")


async def read_sse(response: httpx.Response, client: Client) -> int | None:
    """One response's frames into ``client``; the ``retry:`` it ended with, checked to sit between frames."""
    event, event_id, data = "message", None, list[str]()
    retry = None
    async for line in response.aiter_lines():
        assert retry is None or line == "", f"{line!r} after retry:"
        if line.startswith("retry:"):
            assert (event, event_id, data) == ("message", None, []), "retry: inside a frame"
            retry = int(line.removeprefix("retry:"))
            client.released_at.append(time.monotonic())
        elif line == "":
            if data:
                assert event_id is not None
                client.messages.append(Message(event_id, event, json.loads("\n".join(data))))
            event, event_id, data = "message", None, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)
    return retry


async def event_source(http: httpx.AsyncClient, url: str, client: Client) -> None:
    """As a browser's EventSource: after a retry: it comes back with Last-Event-ID."""
    for _ in range(3):
        headers = {"Last-Event-ID": client.messages[-1].id} if client.messages else {}
        async with http.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            retry = await read_sse(response, client)
        if client.ended:
            client.ended_at = time.monotonic()
            return
        assert retry is not None, "the stream ended with neither a terminal event nor retry:"
        await asyncio.sleep(retry / 1000)
    raise AssertionError("released three times")


async def replay_socket(base: str, task_id: str, client: Client) -> None:
    """A WebSocket replay client: after a close 1012 it reconnects with ``?after=`` its last id."""
    for _ in range(3):
        after = f"?after={client.messages[-1].id}" if client.messages else ""
        async with websockets.connect(f"{base}/api/claude/ws/{task_id}{after}") as ws:
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    client.messages.append(Message(message["id"], message["event"], message["data"]))
            except websockets.ConnectionClosedError:
                pass
        if client.ended:
            client.ended_at = time.monotonic()
            assert ws.close_code == 1000
            return
        assert ws.close_code == 1012, f"closed {ws.close_code} before the terminal event"
        client.released_at.append(time.monotonic())
    raise AssertionError("released three times")


def assert_whole_answer(client: Client, prompt: str, deltas: int) -> None:
    assert client.messages[0].event == "start" and client.messages[-1].event == "complete"
    assert "".join(m.data["chunk"] for m in client.messages if m.event == "chunk") == emulated_text(prompt, deltas)
    keys = [parse_event_id(m.id) for m in client.messages]
    assert keys == sorted(set(keys)), "ids strictly increase, none twice"


async def wait_for_messages(clients: list[Client], count: int) -> None:
    async with asyncio.timeout(10):
        while min(len(c.messages) for c in clients) < count:
            await asyncio.sleep(0.02)


async def seconds_to_exit(process: subprocess.Popen[bytes], since: float, limit: float) -> float:
    while process.poll() is None:
        assert time.monotonic() - since < limit, f"still running {limit:.1f}s after SIGTERM"
        await asyncio.sleep(0.02)
    return time.monotonic() - since


async def start_task(http: httpx.AsyncClient, url: str, prompt: str) -> str:
    accepted = await http.post(f"{url}/api/claude/prompt/async", json={"prompt": prompt})
    assert accepted.status_code == 202, accepted.text
    task_id: str = accepted.json()["task_id"]
    return task_id


async def test_a_stopping_replica_hands_its_clients_to_the_other_through_nginx(
    replica_env: dict[str, str], nginx_binary: str, tmp_path: Path
) -> None:
    grace, deltas = 10.0, 200
    env = {**replica_env, "SHUTDOWN_GRACE_SECONDS": str(grace)}
    prompts = [f"restart {i} [emu:deltas={deltas}] [emu:delay_ms=30]" for i in range(9)]
    sse, sockets = [Client() for _ in range(6)], [Client() for _ in range(3)]
    async with (
        replica_process(env) as (a, stopping),
        replica_process(env) as (b, _),
        nginx_in_front(nginx_binary, tmp_path, a, b) as proxy,
        httpx.AsyncClient(timeout=30) as http,
        asyncio.timeout(30 + grace),
        asyncio.TaskGroup() as readers,
    ):
        # Replica a gets every POST, so it owns every generation; nginx spreads the streams over a and b.
        task_ids = [await start_task(http, a, prompt) for prompt in prompts]
        for task_id, client in zip(task_ids, sse, strict=False):
            readers.create_task(event_source(http, f"{proxy}/api/claude/subscribe/{task_id}", client))
        await wait_for_messages(sse, 5)
        ws_base = proxy.replace("http://", "ws://")
        # One at a time: each nginx worker alternates a, b, so some socket lands on a.
        for task_id, client in zip(task_ids[len(sse) :], sockets, strict=True):
            readers.create_task(replay_socket(ws_base, task_id, client))
            await wait_for_messages([client], 5)

        stopping.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        exited_after = await seconds_to_exit(stopping, signalled, grace + 10)

    released = [
        (client, kind) for kind, group in (("sse", sse), ("ws", sockets)) for client in group if client.released_at
    ]
    print(
        f"\nreplica exited {exited_after:.2f}s after SIGTERM (grace {grace:.0f}s); released: "
        + ", ".join(f"{kind} after {client.released_at[0] - signalled:.2f}s" for client, kind in released)
    )
    assert {kind for _, kind in released} == {"sse", "ws"}, "some SSE and some WebSocket clients were on a"
    for client, _ in released:
        assert client.released_at[0] - signalled < RELEASED_WITHIN
    for client, prompt in zip(sse + sockets, prompts, strict=True):
        assert_whole_answer(client, prompt, deltas)
    assert exited_after < grace + EXIT_MARGIN


async def test_a_generation_past_the_grace_ends_interrupted_and_the_process_exits_within_it(
    replica_env: dict[str, str], redis_url: str
) -> None:
    grace = 3.0
    env = {**replica_env, "SHUTDOWN_GRACE_SECONDS": str(grace)}
    short = "answered during the grace [emu:deltas=60] [emu:delay_ms=25]"
    follower = Client()

    async def follow(http: httpx.AsyncClient, url: str) -> int | None:
        # Alone on its Redis, the follower has nowhere to come back to once released: one connection.
        async with http.stream("GET", url) as response:
            return await read_sse(response, follower)

    async with (
        replica_process(env) as (url, stopping),
        httpx.AsyncClient(timeout=30) as http,
        asyncio.timeout(30 + grace),
        asyncio.TaskGroup() as requests,
    ):
        long_id = await start_task(http, url, "too long [emu:deltas=1000] [emu:delay_ms=20]")
        following = requests.create_task(follow(http, f"{url}/api/claude/subscribe/{long_id}"))
        waiting = requests.create_task(http.post(f"{url}/api/claude/prompt", json={"prompt": short}))
        await wait_for_messages([follower], 5)

        stopping.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        exited_after = await seconds_to_exit(stopping, signalled, 2 * grace + 5)
    store = RedisStore.from_url(redis_url, prefix=env["REDIS_KEY_PREFIX"])
    try:
        info, log = await store.get_task(long_id), await store.read(long_id)
    finally:
        await store.close()

    print(f"\nreplica exited {exited_after:.2f}s after SIGTERM (grace {grace:.0f}s)")
    assert following.result() == 500 and follower.released_at[0] - signalled < RELEASED_WITHIN
    answered = waiting.result()
    assert answered.status_code == 200 and answered.json()["response"] == emulated_text(short, 60)
    assert info is not None and info.status == "interrupted"
    assert isinstance(log[-1][1], Error) and log[-1][1].type == "interrupted"
    assert grace - 0.5 < exited_after < grace + EXIT_MARGIN


async def test_with_the_embedded_store_clients_stay_attached_until_their_generation_ends(
    replica_env: dict[str, str],
) -> None:
    grace, deltas = 4.0, 100
    env = {k: v for k, v in replica_env.items() if not k.startswith("REDIS_")}
    env["SHUTDOWN_GRACE_SECONDS"] = str(grace)
    short = f"finishes in the grace [emu:deltas={deltas}] [emu:delay_ms=25]"
    sse, socket, cut = Client(), Client(), Client()
    async with (
        replica_process(env) as (url, stopping),
        httpx.AsyncClient(timeout=30) as http,
        asyncio.timeout(30 + grace),
        asyncio.TaskGroup() as readers,
    ):
        short_id = await start_task(http, url, short)
        long_id = await start_task(http, url, "outlasts the grace [emu:deltas=1000] [emu:delay_ms=20]")
        readers.create_task(event_source(http, f"{url}/api/claude/subscribe/{short_id}", sse))
        readers.create_task(replay_socket(url.replace("http://", "ws://"), short_id, socket))
        readers.create_task(event_source(http, f"{url}/api/claude/subscribe/{long_id}", cut))
        await wait_for_messages([sse, socket, cut], 5)

        stopping.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.3)
        refused = await http.post(f"{url}/api/claude/prompt/async", json={"prompt": f"new {uuid.uuid4()}"})
        exited_after = await seconds_to_exit(stopping, signalled, grace + 5)

    cut_after = cut.ended_at - signalled
    print(
        f"\nreplica exited {exited_after:.2f}s after SIGTERM (grace {grace:.0f}s); long one ended at {cut_after:.2f}s"
    )
    assert refused.status_code == 503 and refused.json()["type"] == "unavailable"
    assert refused.headers["retry-after"]
    for client in (sse, socket, cut):
        assert not client.released_at
    assert_whole_answer(sse, short, deltas)
    assert_whole_answer(socket, short, deltas)
    assert cut.messages[-1].event == "error" and cut.messages[-1].data["type"] == "interrupted"
    assert grace - 0.5 < cut_after < grace + EXIT_MARGIN
    assert exited_after < grace + EXIT_MARGIN
