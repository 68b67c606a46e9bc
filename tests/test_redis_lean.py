"""store/redis_lean.py on real redis-servers: answers as redis-py's, one connection for any number of commands
in flight, and the pool's failure rules (a restarted server, a stalled one, a forgotten script)."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError, ResponseError

from llm_gateway.store.redis_lean import STALLED, LeanRedis, _out_of_reach
from tests.conftest import OwnRedis, redis_server_binary
from tests.processes import free_port

NESTED = "return {ARGV[1], tonumber(ARGV[2]), false, {KEYS[1], 'x'}, redis.call('INCR', KEYS[1])}"


@pytest.fixture
async def lean(redis_url: str) -> AsyncIterator[LeanRedis]:
    client = LeanRedis.from_url(redis_url)
    assert client is not None
    yield client
    await client.close()


async def test_replies_are_redis_pys(lean: LeanRedis, redis_url: str) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    script = admin.register_script(NESTED)
    key = f"lean:{time.monotonic_ns()}"
    ours = await lean.script(script, [key], ["a", 7])
    theirs = await script(keys=[key], args=["a", 7])
    assert ours == [b"a", 7, None, [key.encode(), b"x"], 1]
    assert theirs == [b"a", 7, None, [key.encode(), b"x"], 2]
    assert await lean.call("GET", key) == b"2" and await lean.call("GET", key + ":none") is None
    with pytest.raises(ResponseError, match="WRONGTYPE|not an integer"):
        await lean.call("HSET", key, "f", "v")  # a string key: Redis' error reply, raised as redis-py raises it
    assert await lean.call("PING") == b"PONG", "the connection goes on after an error reply"
    await admin.aclose()


async def test_a_forgotten_script_is_sent_again(lean: LeanRedis, redis_url: str) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    script = admin.register_script("return 'v1' .. ARGV[1]")
    assert await lean.script(script, [], ["!"]) == b"v1!"
    await admin.script_flush()
    assert await lean.script(script, [], ["?"]) == b"v1?"
    assert await admin.script_exists(script.sha) == [True], "EVAL loaded it again"
    await admin.aclose()


async def test_a_thousand_commands_in_flight_share_one_connection(lean: LeanRedis, redis_url: str) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    key = f"lean:{time.monotonic_ns()}"
    await lean.call("PING")
    before = len(await admin.client_list())
    results = await asyncio.gather(*(lean.call("INCR", key) for _ in range(1000)))
    after = len(await admin.client_list())
    assert sorted(results) == list(range(1, 1001)) and results == sorted(results), "replies matched in order"
    assert after == before
    await admin.aclose()


@pytest.fixture
async def own_lean(own_redis: OwnRedis) -> AsyncIterator[LeanRedis]:
    """A client of a redis-server of the test's own, to kill, stop and start again."""
    client = LeanRedis.from_url(own_redis.url)
    assert client is not None
    yield client
    own_redis.resume()
    await client.close()


async def test_a_restarted_server_is_reconnected_to(own_redis: OwnRedis, own_lean: LeanRedis) -> None:
    await own_lean.call("SET", "k", "before")
    await own_redis.kill()
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        await own_lean.call("GET", "k")
    assert time.monotonic() - started < 3, "down: told at once (after the retries), not after a timeout"
    await own_redis.start()
    assert await own_lean.call("GET", "k") is None, "the first command after the restart succeeds (empty server)"


async def test_a_stalled_connection_is_dropped_when_its_caller_gives_up(
    own_redis: OwnRedis, own_lean: LeanRedis
) -> None:
    await own_lean.call("SET", "k", "v")
    first = own_lean._connection
    own_redis.pause()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(STALLED + 0.5):
            await own_lean.call("GET", "k")
    assert first is not None and first.lost, "a connection that answered nothing is given up"
    own_redis.resume()
    assert await own_lean.call("GET", "k") == b"v"
    assert own_lean._connection is not first
    # A caller that gives up early, on a connection that answers, keeps it: its reply is dropped in order.
    second = own_lean._connection
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await own_lean.call("BLPOP", "nothing", 0.3)
    assert await own_lean.call("GET", "k") == b"v" and own_lean._connection is second


async def test_password_and_database_from_the_url() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="llmgw-lean-") as workdir:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--requirepass", "s3cret"]
        process = subprocess.Popen([redis_server_binary(), *args], cwd=workdir, stdout=subprocess.DEVNULL)
        try:
            admin = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/3")
            async with asyncio.timeout(10):
                while True:
                    try:
                        await admin.ping()
                        break
                    except RedisConnectionError:
                        await asyncio.sleep(0.05)
            lean = LeanRedis.from_url(f"redis://:s3cret@127.0.0.1:{port}/3")
            assert lean is not None
            await lean.call("SET", "k", "in db 3")
            assert await admin.get("k") == b"in db 3"
            await lean.close()
            wrong = LeanRedis.from_url(f"redis://:nope@127.0.0.1:{port}/3")
            assert wrong is not None
            with pytest.raises(RedisConnectionError, match="WRONGPASS"):  # the store out of reach, as redis-py says
                await wrong.call("GET", "k")
            await wrong.close()
            await admin.aclose()
        finally:
            process.kill()
            process.wait(timeout=10)


async def test_closed_means_closed(redis_url: str) -> None:
    """Commands in flight when the store closes fail; none opens a new connection afterwards."""
    lean = LeanRedis.from_url(redis_url)
    assert lean is not None
    waiting = asyncio.create_task(lean.call("BLPOP", f"lean:never:{time.monotonic_ns()}", 5))
    await asyncio.sleep(0.1)
    await lean.close()
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(waiting, timeout=2)
    with pytest.raises(RedisConnectionError):
        await lean.call("PING")
    assert lean._connection is None


def test_a_loading_server_counts_as_out_of_reach() -> None:
    """Redis answers LOADING while it reads its data at start: the store is unavailable (503), as with redis-py,
    not failing with an error of its own."""
    loading = _out_of_reach(ResponseError("LOADING Redis is loading the dataset in memory"))
    other = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert isinstance(loading, RedisConnectionError) and _out_of_reach(other) is other


def test_tls_urls_stay_on_redis_py() -> None:
    assert LeanRedis.from_url("rediss://127.0.0.1:6380/0") is None
    assert LeanRedis.from_url("unix:///tmp/redis.sock?db=2") is not None


def test_on_uvloop(redis_url: str) -> None:
    """The service runs on uvloop (whose transports are not asyncio's classes); the tests above on asyncio's."""

    async def round_trips() -> list[object]:
        lean = LeanRedis.from_url(redis_url)
        assert lean is not None
        try:
            key = f"lean:uv:{time.monotonic_ns()}"
            return [await lean.call("PING"), *await asyncio.gather(*(lean.call("INCR", key) for _ in range(100)))]
        finally:
            await lean.close()

    assert uvloop.run(round_trips()) == [b"PONG", *range(1, 101)]
