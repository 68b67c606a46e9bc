"""A Redis outage under live streams (API.md §2 "Store outage"): two replica processes on a redis-server of the
test's own, which the test stops (SIGSTOP) or kills and starts again empty on the same port. Every subscriber
(half on the replica running its task, half on the other) must end with ``complete`` and the exact text, or
with the ``unavailable`` error frame (retryable) — never a silent end or a cut response; the first requests
after the recovery succeed; each replica logs the outage once, with no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import httpx
import openai

from llm_gateway.emulator import emulated_text
from tests.conftest import OwnRedis
from tests.servers import replica_process
from tests.sse_client import Frame, frames
from tests.test_anthropic_api import MODEL
from tests.test_replicas import assert_ids_strictly_increase, chunk_text

STREAMS = 10
REQUESTS_AFTER = 64


@dataclass
class Stream:
    prompt: str
    deltas: int
    local: bool
    got: list[Frame] = field(default_factory=list)
    ended_at: float = 0.0

    @property
    def text(self) -> str:
        return chunk_text(self.got)

    def assert_ended_unavailable(self) -> None:
        """The error frame, retryable, after a gapless prefix of the answer."""
        last = self.got[-1] if self.got else None
        assert last is not None and last.event == "error", f"no error frame (local={self.local}): {last}"
        assert last.json()["type"] == "unavailable" and last.json()["retryable"] is True, last.data
        assert emulated_text(self.prompt, self.deltas).startswith(self.text), "a gap or a repeat"
        assert_ids_strictly_increase([f.id for f in self.got[:-1]])

    def assert_complete(self) -> None:
        assert self.got and self.got[-1].event == "complete", f"not complete (local={self.local}): {self.got[-1:]}"
        assert self.text == emulated_text(self.prompt, self.deltas)
        assert self.got[-1].json()["response"] == self.text
        assert_ids_strictly_increase([f.id for f in self.got])


@dataclass
class Cluster:
    urls: list[str]
    logs: list[Path]
    client: httpx.AsyncClient
    followers: list[asyncio.Task[None]] = field(default_factory=list)

    async def start_streams(self, deltas: int) -> list[Stream]:
        """STREAMS tasks across both replicas, each followed over SSE: half on the replica running it."""
        streams = []
        for i in range(STREAMS):
            owner, reader = self.urls[i % 2], self.urls[(i // 2) % 2]
            stream = Stream(f"outage {i} [emu:deltas={deltas}] [emu:delay_ms=50]", deltas, owner == reader)
            accepted = await self.client.post(f"{owner}/api/claude/prompt/async", json={"prompt": stream.prompt})
            self.followers.append(asyncio.create_task(self._follow(reader, accepted.json()["task_id"], stream)))
            streams.append(stream)
        async with asyncio.timeout(10):
            while not all(len(s.got) > 3 for s in streams):  # every stream is live
                await asyncio.sleep(0.05)
        return streams

    async def _follow(self, url: str, task_id: str, stream: Stream) -> None:
        async with self.client.stream("GET", f"{url}/api/claude/subscribe/{task_id}") as response:
            assert response.status_code == 200
            async for frame in frames(response):  # a cut response raises here
                stream.got.append(frame)
        stream.ended_at = time.monotonic()

    async def streams_end(self, within: float) -> None:
        async with asyncio.timeout(within):
            await asyncio.gather(*self.followers)

    async def requests_after_recovery(self) -> list[int]:
        """Once both replicas say /health 200: REQUESTS_AFTER concurrent requests, each a whole generation."""
        async with asyncio.timeout(15):
            for url in self.urls:
                while (await self.client.get(f"{url}/health")).status_code != 200:
                    await asyncio.sleep(0.1)
        answers = await asyncio.gather(
            *(
                self.client.post(f"{self.urls[i % 2]}/api/claude/prompt", json={"prompt": f"after {i} [emu:deltas=5]"})
                for i in range(REQUESTS_AFTER)
            )
        )
        return [answer.status_code for answer in answers]

    def assert_outage_logged_once(self) -> None:
        """Each replica: the outage in one line, its end in another, nothing else (no line or traceback per task)."""
        for log in self.logs:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            assert len(lines) == 2 and "store down: " in lines[0] and "store back after " in lines[1], lines


@asynccontextmanager
async def cluster(env: dict[str, str], tmp_path: Path) -> AsyncIterator[Cluster]:
    logs = [tmp_path / "replica-a.log", tmp_path / "replica-b.log"]
    async with contextlib.AsyncExitStack() as stack:
        # Both start at once (each takes seconds on a busy machine); both are stopped, whichever failed.
        started = await asyncio.gather(
            *(stack.enter_async_context(replica_process(env, log=log)) for log in logs), return_exceptions=True
        )
        urls = []
        for replica in started:
            if isinstance(replica, BaseException):
                raise replica
            urls.append(replica[0])
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            running = Cluster(urls, logs, client)
            try:
                yield running
            finally:
                for follower in running.followers:
                    follower.cancel()
                await asyncio.gather(*running.followers, return_exceptions=True)


def outage_env(replica_env: dict[str, str], redis: OwnRedis, **settings: str) -> dict[str, str]:
    return {**replica_env, "REDIS_URL": redis.url, **settings}


async def test_a_5s_stall_loses_nothing(replica_env: dict[str, str], own_redis: OwnRedis, tmp_path: Path) -> None:
    # The default lease: it lapses during the stall, yet no replica may reap the others' tasks for it.
    env = outage_env(replica_env, own_redis, TASK_LEASE_SECONDS="5")
    async with cluster(env, tmp_path) as gateways:
        streams = await gateways.start_streams(deltas=160)
        own_redis.pause()
        await asyncio.sleep(5)
        own_redis.resume()
        await gateways.streams_end(within=20)
        statuses = await gateways.requests_after_recovery()
    for stream in streams:
        stream.assert_complete()
    assert statuses == [200] * REQUESTS_AFTER
    gateways.assert_outage_logged_once()


async def test_a_stall_past_the_grace_ends_every_stream_unavailable(
    replica_env: dict[str, str], own_redis: OwnRedis, tmp_path: Path
) -> None:
    grace = 10
    async with cluster(outage_env(replica_env, own_redis, STORE_OUTAGE_GRACE=str(grace)), tmp_path) as gateways:
        streams = await gateways.start_streams(deltas=300)
        own_redis.pause()
        stalled_at = time.monotonic()
        try:
            await gateways.streams_end(within=12)  # while Redis is still stopped: the grace ends them, not Redis
        finally:
            own_redis.resume()
        statuses = await gateways.requests_after_recovery()
    for stream in streams:
        stream.assert_ended_unavailable()
        assert grace - 1.5 < stream.ended_at - stalled_at < grace + 2, stream.ended_at - stalled_at
    assert statuses == [200] * REQUESTS_AFTER
    gateways.assert_outage_logged_once()


async def test_redis_back_empty_ends_every_stream_unavailable(
    replica_env: dict[str, str], own_redis: OwnRedis, tmp_path: Path
) -> None:
    async with cluster(outage_env(replica_env, own_redis), tmp_path) as gateways:
        streams = await gateways.start_streams(deltas=200)
        await own_redis.kill()
        await asyncio.sleep(3)
        await own_redis.start()
        back_at = time.monotonic()
        await gateways.streams_end(within=10)
        statuses = await gateways.requests_after_recovery()
    for stream in streams:
        stream.assert_ended_unavailable()
        assert stream.ended_at - back_at < 4, "ended soon after Redis came back without the tasks"
    assert statuses == [200] * REQUESTS_AFTER, "no stale pooled connection fails a request after the recovery"
    gateways.assert_outage_logged_once()


async def test_redis_down_past_the_grace_ends_every_stream_unavailable(
    replica_env: dict[str, str], own_redis: OwnRedis, tmp_path: Path
) -> None:
    grace = 4
    async with cluster(outage_env(replica_env, own_redis, STORE_OUTAGE_GRACE=str(grace)), tmp_path) as gateways:
        streams = await gateways.start_streams(deltas=300)
        await own_redis.kill()
        killed_at = time.monotonic()
        try:
            await gateways.streams_end(within=grace + 3)  # while Redis is still down
            health = [(await gateways.client.get(f"{url}/health")).status_code for url in gateways.urls]
            refused = await gateways.client.post(f"{gateways.urls[0]}/api/claude/prompt", json={"prompt": "down"})
        finally:
            await own_redis.start()
        statuses = await gateways.requests_after_recovery()
    for stream in streams:
        stream.assert_ended_unavailable()
        assert stream.ended_at - killed_at < grace + 2, stream.ended_at - killed_at
    assert health == [503, 503]
    assert refused.status_code == 503 and refused.json()["type"] == "unavailable" and refused.headers["retry-after"]
    assert statuses == [200] * REQUESTS_AFTER
    gateways.assert_outage_logged_once()


async def test_sdk_streams_end_with_their_own_error_when_the_store_is_gone(
    replica_env: dict[str, str], own_redis: OwnRedis, tmp_path: Path
) -> None:
    """The drop-in APIs' live streams, read by the official SDKs: the text up to the outage, then the SDK's own
    error from the dialect's error frame (retryable) — not a cut connection."""
    grace = 4
    prompt = "sdk outage [emu:deltas=300] [emu:delay_ms=50]"
    async with cluster(outage_env(replica_env, own_redis, STORE_OUTAGE_GRACE=str(grace)), tmp_path) as gateways:
        url = gateways.urls[0]
        claude = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        gpt = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        async with claude, gpt:
            claude_stream = await claude.messages.create(
                model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": prompt}], stream=True
            )
            gpt_stream = await gpt.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
            )
            claude_text: list[str] = []
            gpt_text: list[str] = []

            async def read_claude() -> None:
                async for event in claude_stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        claude_text.append(event.delta.text)

            async def read_gpt() -> None:
                async for chunk in gpt_stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        gpt_text.append(chunk.choices[0].delta.content)

            readers = [asyncio.create_task(read_claude()), asyncio.create_task(read_gpt())]
            async with asyncio.timeout(10):
                while len(claude_text) < 3 or len(gpt_text) < 3:
                    await asyncio.sleep(0.05)
            await own_redis.kill()
            try:
                async with asyncio.timeout(grace + 4):
                    results = await asyncio.gather(*readers, return_exceptions=True)
            finally:
                await own_redis.start()
    claude_error, gpt_error = results
    assert isinstance(claude_error, anthropic.APIStatusError), repr(claude_error)
    assert claude_error.body["error"]["type"] == "overloaded_error", claude_error.body  # type: ignore[index]
    assert isinstance(gpt_error, openai.APIError) and not isinstance(gpt_error, openai.APIConnectionError), gpt_error
    assert gpt_error.code == "unavailable" and gpt_error.body["retryable"] is True, gpt_error.body  # type: ignore[index]
    expected = emulated_text(prompt, 300)
    assert expected.startswith("".join(claude_text)) and expected.startswith("".join(gpt_text)), "a gap or a repeat"
