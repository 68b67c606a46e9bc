"""Trellis image-to-3D: PiAPI's task API proxied, one poller per task for the cluster, WebSocket status anywhere."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import websockets

from llm_gateway.emulator import piapi_model_url
from llm_gateway.events import Error, Event, Progress, Start
from llm_gateway.trellis import PENDING, StatusRenderer, TrellisMessage, to_progress
from tests.conftest import EMULATOR_KEY, Emulator, GatewayFactory
from tests.servers import replica_process
from tests.sse_client import frames

SECRET = "whsec-test-0123456789"


def create_body(**emulator: Any) -> dict[str, Any]:
    return {
        "model": "Qubico/trellis",
        "task_type": "image-to-3d",
        "input": {"image": "https://example.test/chair.png", "seed": 0},
        "emulator": {"pending_s": 0.1, "processing_s": 0.4, **emulator},
    }


@asynccontextmanager
async def trellis_gateway(factory: GatewayFactory, emulator: Emulator, **settings: Any) -> AsyncIterator[str]:
    options = {
        "trellis_api_key": EMULATOR_KEY,
        "trellis_base_url": emulator.url,
        "trellis_poll_interval": 0.1,
        "trellis_webhook_secret": SECRET,
        **settings,
    }
    async with factory(**options) as url:
        yield url


async def ws_messages(url: str, task_id: str, *, limit: float = 10) -> list[dict[str, Any]]:
    ws_url = url.replace("http://", "ws://") + f"/api/trellis/task/ws/{task_id}"
    async with asyncio.timeout(limit), websockets.connect(ws_url) as ws:
        return [json.loads(message) async for message in ws]


async def create(client: httpx.AsyncClient, body: dict[str, Any], url: str = "") -> str:
    """Create a task through the gateway (at ``url``, or the client's base URL); its PiAPI task id."""
    response = await client.post(f"{url}/api/trellis/task", json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


def test_piapi_statuses_map_to_the_seed_messages() -> None:
    assert to_progress({"status": "Pending"}).status == "processing"
    assert to_progress({"status": "staged"}).message == "Task is staged"
    assert to_progress({"status": "processing", "meta": {"progress": 40}}).message == "Task is processing (40%)"
    done = {"status": "COMPLETED", "output": {"model_file": "https://x/m.glb"}}
    assert (to_progress(done).status, to_progress(done).data, to_progress(done).full_response) == (
        "completed",
        "https://x/m.glb",
        done,
    )
    failed = {"status": "failed", "error": {"message": "bad image", "raw_message": "raw"}}
    assert (to_progress(failed).status, to_progress(failed).message) == ("failed", "bad image")


def test_one_renderer_gives_the_seed_messages_of_a_log() -> None:
    renderer = StatusRenderer()
    log: list[Event] = [Start("trellis:t", "m"), PENDING, Progress("failed", "bad"), Error("upstream_error", "bad")]
    assert [m and m.status for m in map(renderer.render, log)] == [None, "processing", "failed", None]
    interrupted = StatusRenderer().render(Error("interrupted", "the replica went away"))
    assert interrupted == TrellisMessage("error", "the replica went away", None, None)


async def test_create_then_watch_over_websocket_sse_and_get(
    gateway_factory: GatewayFactory, emulator: Emulator
) -> None:
    async with trellis_gateway(gateway_factory, emulator) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/api/trellis/task", json=create_body())
        assert response.status_code == 200 and response.json()["code"] == 200, "PiAPI's answer, passed through"
        task_id = response.json()["data"]["task_id"]
        messages = await ws_messages(url, task_id)
        latest = (await client.get(f"/api/trellis/task/{task_id}")).json()
        async with client.stream("GET", f"/api/trellis/task/{task_id}/events") as sse:
            sse_frames = [f async for f in frames(sse)]
        updates = [json.loads(f.data) for f in sse_frames]
        resume = {"Last-Event-ID": sse_frames[0].id or ""}
        async with client.stream("GET", f"/api/trellis/task/{task_id}/events", headers=resume) as sse:
            resumed = [(f.id, f.data) async for f in frames(sse)]
    assert resumed == [(f.id, f.data) for f in sse_frames[1:]], "SSE resumes after Last-Event-ID"
    assert messages[0]["status"] == "processing"
    assert messages[-1]["status"] == "completed" and messages[-1]["data"] == piapi_model_url(task_id)
    assert messages[-1]["full_response"]["task_id"] == task_id
    assert all(set(m) == {"status", "message", "data", "full_response"} for m in messages)
    assert latest == messages[-1]
    assert updates[-1] == messages[-1] and [u["status"] for u in updates].count("completed") == 1


async def test_failed_task_and_unknown_task(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    async with trellis_gateway(gateway_factory, emulator) as url, httpx.AsyncClient(base_url=url) as client:
        task_id = await create(client, create_body(outcome="failed"))
        failed = await ws_messages(url, task_id)
        unknown = await ws_messages(url, "no-such-task")
        missing = await client.get("/api/trellis/task/no-such-task")
    assert failed[-1]["status"] == "failed" and failed[-1]["message"] == "bad image" and failed[-1]["data"] is None
    assert len(unknown) == 1 and unknown[0]["status"] == "error", "polled once and reported, not hung on"
    assert missing.status_code == 404 and missing.json()["type"] == "not_found"


async def test_client_close_ends_the_socket(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    async with trellis_gateway(gateway_factory, emulator) as url, httpx.AsyncClient(base_url=url) as client:
        task_id = await create(client, create_body(processing_s=30))
        ws_url = url.replace("http://", "ws://") + f"/api/trellis/task/ws/{task_id}"
        async with asyncio.timeout(5), websockets.connect(ws_url) as ws:
            first = json.loads(await ws.recv())
            await ws.send("close")
            with pytest.raises(websockets.ConnectionClosedOK):
                while True:
                    await ws.recv()
    assert first["status"] == "processing"


async def test_webhook(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    # A poll interval longer than the test: only the webhook can bring the news.
    async with trellis_gateway(gateway_factory, emulator, trellis_poll_interval=60) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            body = create_body(processing_s=0.2)
            body["config"] = {"webhook_config": {"endpoint": f"{url}/api/trellis/webhook", "secret": SECRET}}
            task_id = await create(client, body)
            await asyncio.sleep(0.5)  # PiAPI has finished by now; we have not polled since
            before = (await client.get(f"/api/trellis/task/{task_id}")).json()
            wrong = await client.post(
                "/api/trellis/webhook",
                headers={"x-webhook-secret": "nope"},
                json={"timestamp": 1, "data": {"task_id": task_id, "status": "failed"}},
            )
            after_wrong = (await client.get(f"/api/trellis/task/{task_id}")).json()
            sent = await client.post(f"{emulator.url}/_emulator/piapi/{task_id}/webhook")
            after = (await client.get(f"/api/trellis/task/{task_id}")).json()
    assert before["status"] == "processing"
    assert wrong.status_code == 401 and wrong.json()["type"] == "unauthorized" and after_wrong == before
    assert sent.json()["sent"] is True and sent.json()["status"] == 200
    assert after["status"] == "completed" and after["data"] == piapi_model_url(task_id)


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [("500", 502, "upstream_error"), ("garbage", 502, "upstream_error"), ("timeout", 504, "upstream_timeout")],
)
async def test_create_faults(
    gateway_factory: GatewayFactory, emulator: Emulator, fault: str, status: int, error_type: str
) -> None:
    async with trellis_gateway(gateway_factory, emulator, trellis_timeout=0.3) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post("/api/trellis/task", json=create_body(create_fault=fault))
    assert response.status_code == status and response.json()["type"] == error_type


async def test_poll_faults_back_off_and_recover(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    async with trellis_gateway(gateway_factory, emulator, trellis_timeout=0.3) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            task_id = await create(client, create_body(get_fault="500", get_fault_count=2))
            messages = await ws_messages(url, task_id)
    assert messages[-1]["status"] == "completed"


async def test_bad_create_bodies(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    async with trellis_gateway(gateway_factory, emulator) as url, httpx.AsyncClient(base_url=url) as client:
        no_image = await client.post("/api/trellis/task", json={"model": "m", "task_type": "image-to-3d", "input": {}})
        no_model = await client.post("/api/trellis/task", json={"task_type": "image-to-3d", "input": {"image": "x"}})
        not_json = await client.post("/api/trellis/task", content=b"{")
    assert no_image.status_code == 422 and ["body", "input", "image"] in [d["loc"] for d in no_image.json()["detail"]]
    assert no_model.status_code == 422 and not_json.status_code == 400
    assert emulator.stats.piapi_creates == 0


async def test_gives_up_after_max_wait(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    async with trellis_gateway(gateway_factory, emulator, trellis_max_wait=0.5) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            task_id = await create(client, create_body(processing_s=30))
            messages = await ws_messages(url, task_id)
    assert messages[-1]["status"] == "error" and "TRELLIS_MAX_WAIT" in messages[-1]["message"]


@pytest.fixture
def trellis_replica_env(replica_env: dict[str, str], emulator: Emulator) -> dict[str, str]:
    trellis = {"TRELLIS_API_KEY": EMULATOR_KEY, "TRELLIS_BASE_URL": emulator.url, "TRELLIS_POLL_INTERVAL": "0.3"}
    return {**replica_env, **trellis}


async def test_fifty_sockets_on_two_replicas_one_poller(
    trellis_replica_env: dict[str, str], emulator: Emulator
) -> None:
    async with replica_process(trellis_replica_env) as (a, _), replica_process(trellis_replica_env) as (b, _):
        async with httpx.AsyncClient(base_url=a) as client:
            task_id = await create(client, create_body(pending_s=0.3, processing_s=1.5, progress_steps=3))
        started = time.monotonic()
        results = await asyncio.gather(*(ws_messages(a if i % 2 else b, task_id, limit=20) for i in range(50)))
        elapsed = time.monotonic() - started
    gets = emulator.stats.piapi_gets_by_task[task_id]
    finals = {json.dumps(r[-1], sort_keys=True) for r in results}
    assert len(finals) == 1 and results[0][-1]["status"] == "completed"
    assert results[0][-1]["data"] == piapi_model_url(task_id)
    # Every socket saw the same ordered updates (each from the one it joined at).
    longest = max(results, key=len)
    for messages in results:
        assert messages == longest[len(longest) - len(messages) :]
    assert gets <= elapsed / 0.3 * 1.2 + 4, (
        f"{gets} GETs in {elapsed:.1f}s: one poller for the cluster, not one per socket"
    )


async def test_the_other_replica_finishes_when_the_poller_dies(
    trellis_replica_env: dict[str, str], emulator: Emulator, redis_url: str
) -> None:
    import redis.asyncio as aioredis

    prefix = trellis_replica_env["REDIS_KEY_PREFIX"]
    async with replica_process(trellis_replica_env) as (a, proc_a), replica_process(trellis_replica_env) as (b, proc_b):
        async with httpx.AsyncClient() as client:
            task_id = await create(client, url=a, body=create_body(processing_s=4))
            replica_of = {
                (await client.get(f"{url}/health")).json()["replica"]: (url, proc)
                for url, proc in ((a, proc_a), (b, proc_b))
            }
        admin = aioredis.Redis.from_url(redis_url)
        try:
            async with asyncio.timeout(5):
                while not (holder := await admin.get(f"{prefix}kv:trellis:poller:{task_id}")):
                    await asyncio.sleep(0.05)
        finally:
            await admin.aclose()
        poller_url, poller = replica_of[holder.decode() if isinstance(holder, bytes) else holder]
        survivor_url = b if poller_url == a else a
        watcher = asyncio.create_task(ws_messages(survivor_url, task_id, limit=20))
        await asyncio.sleep(0.5)
        poller.send_signal(signal.SIGKILL)
        messages = await watcher
    assert messages[-1]["status"] == "completed" and messages[-1]["data"] == piapi_model_url(task_id)


async def run_seed_example(url: str, task_id: str, *extra: str) -> list[list[str]]:
    import shutil

    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    node = await asyncio.create_subprocess_exec(
        "node",
        "--experimental-websocket",
        "--no-warnings",
        "tests/node/trellis_seed_example.mjs",
        url.replace("http://", "ws://"),
        task_id,
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await node.communicate()
    assert node.returncode == 0, err.decode()
    logged: list[list[str]] = json.loads(out.decode().strip().splitlines()[-1])
    return logged


async def test_the_seed_javascript_example_works_unchanged(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    async with trellis_gateway(gateway_factory, emulator) as url, httpx.AsyncClient(base_url=url) as client:
        task_id = await create(client, create_body())
        logged = await run_seed_example(url, task_id)
        slow_id = await create(client, create_body(processing_s=30))
        closed_early = await run_seed_example(url, slow_id, "close-early")
    assert logged[0][1].startswith("Status update: Task is")
    assert logged[-2] == ["log", f"3D model ready: {piapi_model_url(task_id)}"]
    assert logged[-1] == ["log", "Connection closed"]
    assert closed_early[-1] == ["log", "Connection closed"], "the client's 'close' ends it"


async def test_piapi_4xx_on_create_passes_through(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    async with trellis_gateway(gateway_factory, emulator) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/api/trellis/task", json=create_body(create_fault="400"))
    assert response.status_code == 400 and response.json()["code"] == 400, "PiAPI's own answer"


async def test_polling_stops_when_nobody_tracks_or_watches(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    async with trellis_gateway(gateway_factory, emulator) as url, httpx.AsyncClient() as client:
        # Created at PiAPI directly: the gateway never tracked it; a socket watches it for a moment only.
        created = await client.post(
            f"{emulator.url}/api/v1/task", json=create_body(processing_s=60), headers={"x-api-key": EMULATOR_KEY}
        )
        task_id = created.json()["data"]["task_id"]
        ws_url = url.replace("http://", "ws://") + f"/api/trellis/task/ws/{task_id}"
        async with asyncio.timeout(5), websockets.connect(ws_url) as ws:
            assert json.loads(await ws.recv())["status"] == "processing"
            await asyncio.sleep(0.5)
        polled_while_watched = emulator.stats.piapi_gets_by_task[task_id]
        await asyncio.sleep(2.5)  # the watched mark lapses (10 intervals, at least 2 s); the poller stops
        settled = emulator.stats.piapi_gets_by_task[task_id]
        await asyncio.sleep(0.6)
        assert emulator.stats.piapi_gets_by_task[task_id] == settled, "no more polls once nobody wants it"
    assert polled_while_watched >= 3


# --- found in review: each of these failed before its fix --------------------------------------------------


@asynccontextmanager
async def two_gateways_on_redis(
    factory: GatewayFactory, emulator: Emulator, redis_url: str, **settings: Any
) -> AsyncIterator[tuple[str, str]]:
    options = {"redis_url": redis_url, "redis_key_prefix": f"tr:{uuid.uuid4().hex[:8]}:", **settings}
    async with trellis_gateway(factory, emulator, **options) as a, trellis_gateway(factory, emulator, **options) as b:
        yield a, b


async def test_a_status_written_on_one_replica_reaches_watchers_on_another_at_once(
    gateway_factory: GatewayFactory, emulator: Emulator, redis_url: str
) -> None:
    async with two_gateways_on_redis(gateway_factory, emulator, redis_url, trellis_poll_interval=60) as (a, b):
        async with httpx.AsyncClient() as client:
            task_id = await create(client, url=a, body=create_body(processing_s=60))
            ws_url = a.replace("http://", "ws://") + f"/api/trellis/task/ws/{task_id}"
            async with asyncio.timeout(10), websockets.connect(ws_url) as ws:
                assert json.loads(await ws.recv())["status"] == "processing"
                sent = time.monotonic()
                done = {"task_id": task_id, "status": "completed", "output": {"model_file": "https://x/m.glb"}}
                hook = await client.post(
                    f"{b}/api/trellis/webhook",
                    headers={"x-webhook-secret": SECRET},
                    json={"timestamp": 1, "data": done},
                )
                assert hook.status_code == 200
                final = json.loads(await ws.recv())
                while final["status"] == "processing":  # a progress update (the poll watching starts) may come first
                    final = json.loads(await ws.recv())
                delay = time.monotonic() - sent
    assert final["status"] == "completed" and final["data"] == "https://x/m.glb"
    assert delay < 2, f"the socket on A saw B's webhook after {delay:.1f}s"


async def test_get_reports_the_status_of_a_task_created_elsewhere(
    gateway_factory: GatewayFactory, emulator: Emulator
) -> None:
    async with trellis_gateway(gateway_factory, emulator) as url, httpx.AsyncClient() as client:
        created = await client.post(
            f"{emulator.url}/api/v1/task",
            json=create_body(pending_s=0.05, processing_s=0.1),
            headers={"x-api-key": EMULATOR_KEY},
        )
        task_id = created.json()["data"]["task_id"]
        await asyncio.sleep(0.4)  # finished at PiAPI before the gateway ever heard of it
        status = (await client.get(f"{url}/api/trellis/task/{task_id}")).json()
    assert status["status"] == "completed" and status["data"] == piapi_model_url(task_id)


async def test_a_slow_piapi_never_gets_two_pollers(emulator: Emulator, redis_url: str) -> None:
    from llm_gateway.app import create_app
    from tests.conftest import gateway_settings
    from tests.servers import serve

    options = {
        "redis_url": redis_url,
        "redis_key_prefix": f"tp:{uuid.uuid4().hex[:8]}:",
        "trellis_poll_interval": 0.5,
        "trellis_api_key": EMULATOR_KEY,
        "trellis_base_url": emulator.url,
        "trellis_timeout": 10,
    }
    app_a, app_b = (
        create_app(gateway_settings(emulator.url, **options)),
        create_app(gateway_settings(emulator.url, **options)),
    )
    both = 0
    async with serve(app_a) as a, serve(app_b), httpx.AsyncClient() as client:
        # Every GET takes 4 s, longer than the 3 s poller lease.
        task_id = await create(client, url=a, body=create_body(get_fault="timeout", timeout_s=4, processing_s=60))
        for _ in range(60):
            await asyncio.sleep(0.1)
            pollers = [app.state.gateway.trellis._pollers for app in (app_a, app_b)]
            both += all(task_id in running for running in pollers)
    assert both == 0, f"{both} samples with a poller on both replicas"


async def test_a_status_reported_several_times_at_once_is_written_once(redis_url: str) -> None:
    from llm_gateway.events import Progress
    from llm_gateway.store.redis import RedisStore
    from llm_gateway.trellis import PiAPIClient, TrellisTracker, log_id

    store = RedisStore.from_url(redis_url, prefix=f"tw:{uuid.uuid4().hex[:8]}:")
    client = PiAPIClient("http://127.0.0.1:9", None)
    try:
        tracker = TrellisTracker(store, client, interval=1, max_wait=100, replica_id="r1")
        await tracker._ensure_log("t1", {"task_id": "t1", "status": "pending"})
        done = {"task_id": "t1", "status": "completed", "output": {"model_file": "https://x/m.glb"}}
        await asyncio.gather(*(store.read(log_id("t1")) for _ in range(8)))  # connections ready: a real race
        # A poller and repeated webhooks, reporting the same final status at the same moment.
        await asyncio.gather(*(tracker._record("t1", to_progress(done)) for _ in range(5)))
        events = [e for _, e in await store.read(log_id("t1"))]
    finally:
        await client.close()
        await store.close()
    assert [e.status for e in events if isinstance(e, Progress)].count("completed") == 1


async def test_sockets_coming_and_going_do_not_break_the_offer_loop(redis_url: str) -> None:
    from llm_gateway.store.redis import RedisStore
    from llm_gateway.trellis import PiAPIClient, TrellisTracker

    store = RedisStore.from_url(redis_url, prefix=f"to:{uuid.uuid4().hex[:8]}:")
    client = PiAPIClient("http://127.0.0.1:9", None)
    tracker = TrellisTracker(store, client, interval=100, max_wait=100, replica_id="r1")
    try:
        async with tracker.watching("a"), tracker.watching("b"):
            offer = asyncio.create_task(tracker._offer())
            await asyncio.sleep(0)
            async with tracker.watching("c"):  # while the loop awaits the store
                await offer
    finally:
        await tracker.stop()
        await client.close()
        await store.close()


async def test_without_a_key_every_trellis_endpoint_is_unavailable(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory() as url, httpx.AsyncClient(base_url=url) as client:
        answers = [
            await client.get("/api/trellis/task/x"),
            await client.get("/api/trellis/task/x/events"),
            await client.post("/api/trellis/task", json=create_body()),
        ]
    assert [(a.status_code, a.json()["type"]) for a in answers] == [(503, "unavailable")] * 3
