"""Schemathesis over /openapi.json of a live gateway (uvicorn, against the emulator): no server errors, every
answer as the document says, every error in the contract's shape (API.md §5).

Each operation gets a bounded, derandomized Hypothesis run of generated requests: valid ones (positive, after
the cases that name tasks which exist) and invalid ones (negative). Twice: open on the in-memory store, and with
GATEWAY_API_KEYS on Redis. The gateway runs in the test's event loop; the cases are generated and sent by
worker processes (schemathesis' client is synchronous, and generating is most of the work).
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, strategies as st
from schemathesis import APIOperation, BaseSchema, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from llm_gateway.dialects import DIALECTS
from llm_gateway.errors import STATUS_BY_TYPE
from tests.conftest import EMULATOR_KEY, Emulator, GatewayFactory

CLIENT_KEY = "fuzz-client-key-0123456789"
WEBHOOK_SECRET = "fuzz-webhook-secret"
EXAMPLES = 20  # per operation and generation mode
REQUEST_TIMEOUT = 5.0  # seconds, in total: schemathesis stops reading an event stream then
WORKERS = 2  # processes generating cases (the CI machine has 2 cores)
SEED_TASK = "fuzz-seed"  # a finished Claude task (and AG-UI run) that positive cases name


def status_and_error_shape(ctx: CheckContext, response: Response, case: Case[Any]) -> None:
    """What the schema cannot say, as every operation documents its errors as `default`: a success comes with
    a status the operation documents; an error's type fits its status (API.md §5), with Retry-After where
    promised, and no stack trace."""
    if response.status_code < 400:
        documented = [code for code in case.operation.responses.status_codes if code[0] in "123"]
        assert str(response.status_code) in documented, f"{response.status_code} is not among {documented}"
        return
    body = response.json()
    if case.operation.label == "POST /api/trellis/task" and "success" not in body:
        return  # PiAPI's own 4xx to a create, passed through (API.md §4)
    if case.operation.path.startswith("/v1/"):
        # The drop-in APIs answer errors in their vendor's shape (API.md §4), so the vendors' SDKs raise theirs.
        assert isinstance(body["error"], dict) and body["error"]["message"], body
        assert "Traceback" not in response.text
        return
    kind = body["type"]
    assert body["success"] is False and body["error"], body
    assert response.status_code == STATUS_BY_TYPE[kind] or (
        kind == "invalid_request" and response.status_code in {405, 422}
    ), f"{response.status_code} with type {kind}"
    if kind in ("rate_limited", "upstream_rate_limited", "upstream_overloaded"):
        assert "Retry-After" in response.headers, f"{kind} without Retry-After"
    datetime.fromisoformat(body["timestamp"])
    assert "Traceback" not in response.text


# Which checks, and why:
# - not_a_server_error: the point of the fuzz; every 5xx is a bug (the emulator is up and healthy).
# - content_type_conformance: JSON where JSON is documented, text/event-stream where a stream is.
# - response_schema_conformance: success bodies match their msgspec types, each SSE event matches the
#   documented event shape, and every error body (the `default` response) is ErrorBody: the contract's shape.
# - status_and_error_shape (above) instead of status_code_conformance, which passes any status at all where a
#   `default` response is documented, as it is on every operation here.
# - negative_data_rejection (negative mode only): a request the document calls invalid is refused with a 4xx.
# Not run: positive_data_acceptance (a valid-looking id of an unknown task is rightly a 404, and the document
# cannot say that a prompt needs `prompt` or `messages`), the header, method and stateful checks (no response
# headers or links are documented) and max_response_time (timing on a shared CI machine).
POSITIVE_CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance, status_and_error_shape]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]


async def seed(client: httpx.AsyncClient) -> dict[str, str]:
    """Things that exist, for the positive cases to name: a finished Claude task, a finished Trellis task."""
    done = await client.post("/api/claude/prompt", json={"prompt": "fuzz seed [emu:deltas=5]", "task_id": SEED_TASK})
    trellis = await client.post(
        "/api/trellis/task",
        json={
            "model": "Qubico/trellis",
            "task_type": "image-to-3d",
            "input": {"image": "https://example.com/chair.png"},
            "emulator": {"pending_s": 0, "processing_s": 0},
        },
    )
    assert done.status_code == 200 and trellis.status_code == 200, (done.text, trellis.text)
    return {"claude": SEED_TASK, "trellis": trellis.json()["data"]["task_id"]}


async def operations(client: httpx.AsyncClient) -> list[str]:
    """Every operation of the document, those with a body first: generating bodies is the slow part."""
    document = (await client.get("/openapi.json")).json()
    labels = [
        (0 if "requestBody" in operation else 1, f"{method.upper()} {path}")
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]
    return [label for _, label in sorted(labels)]


def named_cases(operation: APIOperation[Any, Any, Any, Any], known: dict[str, str]) -> list[Case[Any]]:
    """Cases that name what exists, as random ids never do: each dialect of each stream of a finished task, its
    status and cancel, a webhook for it."""
    claude, trellis = {"task_id": known["claude"]}, {"task_id": known["trellis"]}
    formats = [{"format": name} for name in DIALECTS]
    match operation.label:
        case "GET /api/claude/task/{task_id}" | "DELETE /api/claude/task/{task_id}":
            return [operation.Case(path_parameters=claude)]
        case "GET /api/claude/subscribe/{task_id}":
            return [operation.Case(path_parameters=claude, query=query) for query in formats]
        case "GET /chat":
            return [operation.Case(query={"runId": known["claude"], "offset": "-1", **query}) for query in formats]
        case "GET /api/trellis/task/{task_id}":
            return [operation.Case(path_parameters=trellis)]
        case "GET /api/trellis/task/{task_id}/events":
            return [operation.Case(path_parameters=trellis, query=query) for query in formats]
        case "POST /api/trellis/webhook":
            body: dict[str, Any] = {"data": {**trellis, "status": "completed"}}
            return [operation.Case(body=body, media_type="application/json")]
    return []


@functools.cache
def load_schema(base_url: str) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=REQUEST_TIMEOUT)


def fuzz(base_url: str, headers: dict[str, str], known: dict[str, str], label: str) -> list[str]:
    """One operation (``METHOD /path``), in both generation modes; the report of each mode that failed."""
    method, path = label.split(" ", 1)
    operation = load_schema(base_url)[path][method]
    failures: list[str] = []
    for mode, checks in ((GenerationMode.POSITIVE, POSITIVE_CHECKS), (GenerationMode.NEGATIVE, NEGATIVE_CHECKS)):
        named = named_cases(operation, known) if mode is GenerationMode.POSITIVE else []
        test = operation_test(operation.as_strategy(mode), named, base_url, headers, checks)
        try:
            test()
        except hypothesis.errors.Unsatisfiable as exc:
            if mode is GenerationMode.POSITIVE:
                failures.append(f"{label} ({mode.value}): {exc}")
            # else nothing of this operation can be made invalid (no parameters, or path strings of any shape)
        except FailureGroup as exc:  # what the checks found, with a curl line to reproduce it
            failures.append(f"{label} ({mode.value}): {exc}")
        except Exception as exc:  # the report of this failure, then the next mode or operation
            failures.append(f"{label} ({mode.value}): " + "".join(traceback.format_exception(exc)))
    return failures


def operation_test(
    cases: st.SearchStrategy[Case[Any]],
    named: list[Case[Any]],
    base_url: str,
    headers: dict[str, str],
    checks: list[Any],
) -> Callable[[], None]:
    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, in bounded time
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=cases)
    def run(case: Case[Any]) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT)
        case.validate_response(response, checks=checks, headers=headers)

    for case in named:  # run first, as Hypothesis' explicit examples
        run = hypothesis.example(case=case)(run)
    return run


@pytest.fixture(scope="module")
def workers() -> Iterator[ProcessPoolExecutor]:
    """Processes that generate and send the cases (generating is most of the work), one per core; they import
    schemathesis once for every fuzz run of the module."""
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["open-memory", "client-keys-redis"])
async def test_fuzz_finds_no_server_error_and_every_answer_conforms(
    gateway_factory: GatewayFactory,
    emulator: Emulator,
    workers: ProcessPoolExecutor,
    request: pytest.FixtureRequest,
    mode: str,
) -> None:
    settings: dict[str, Any] = {
        "trellis_api_key": EMULATOR_KEY,
        "trellis_base_url": emulator.url,
        "trellis_webhook_secret": WEBHOOK_SECRET,
    }
    headers = {"x-webhook-secret": WEBHOOK_SECRET}
    if mode == "client-keys-redis":
        settings["gateway_api_keys"] = f"fuzz={CLIENT_KEY}"
        settings["redis_url"] = request.getfixturevalue("redis_url")
        settings["redis_key_prefix"] = f"fuzz:{uuid.uuid4().hex[:8]}:"
        headers["Authorization"] = f"Bearer {CLIENT_KEY}"
    loop = asyncio.get_running_loop()
    async with (
        gateway_factory(**settings) as url,
        httpx.AsyncClient(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT) as client,
    ):
        known = await seed(client)
        labels = await operations(client)
        started = time.monotonic()
        runs = [loop.run_in_executor(workers, fuzz, url, headers, known, label) for label in labels]
        failures = [failure for found in await asyncio.gather(*runs) for failure in found]
        elapsed = time.monotonic() - started
    print(f"fuzzed {len(labels)} operations in {elapsed:.1f}s")
    assert len(labels) >= 19, "the fuzz must see every operation (19 when it was written)"
    assert not failures, "\n\n".join(failures)


# What the fuzz found, each pinned down on its own.


def conforms(base_url: str, label: str, **case: Any) -> None:
    """Send one case of the operation; raise what schemathesis' schema checks find in the answer."""
    method, path = label.split(" ", 1)
    operation = load_schema(base_url)[path][method]
    built = operation.Case(**case)
    response = built.call(base_url=base_url, timeout=REQUEST_TIMEOUT)
    built.validate_response(
        response, checks=[content_type_conformance, response_schema_conformance, status_and_error_shape]
    )


@pytest.mark.parametrize("dialect", list(DIALECTS))
async def test_every_sse_event_is_as_documented(gateway: str, dialect: str) -> None:
    """The document said an event stream was a string; OpenAPI 3.1 has its schema describe each event."""
    async with httpx.AsyncClient(base_url=gateway) as client:
        done = await client.post("/api/claude/prompt", json={"prompt": "x [emu:deltas=3] [emu:tool=lookup]"})
    task_id = done.json()["task_id"]
    query = {"format": dialect}
    await asyncio.to_thread(
        conforms, gateway, "GET /api/claude/subscribe/{task_id}", path_parameters={"task_id": task_id}, query=query
    )


async def test_a_resume_after_the_last_event_is_as_documented(gateway: str) -> None:
    """The 204 that stops EventSource once a finished task has nothing more was not in the document."""
    async with httpx.AsyncClient(base_url=gateway) as client:
        done = await client.post("/api/claude/prompt", json={"prompt": "x [emu:deltas=1]"})
    case = {"path_parameters": {"task_id": done.json()["task_id"]}, "headers": {"Last-Event-ID": "99999999999999-0"}}
    await asyncio.to_thread(conforms, gateway, "GET /api/claude/subscribe/{task_id}", **case)


async def test_piapi_4xx_to_a_create_is_as_documented(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    """PiAPI's 4xx to a create pass through (API.md §4): the document said every 4xx was the error shape."""
    settings = {"trellis_api_key": EMULATOR_KEY, "trellis_base_url": emulator.url}
    body = {"model": "Qubico/trellis", "task_type": "image-to-3d", "input": {"image": "https://example.com/a.png"}}
    async with gateway_factory(**settings) as url:
        for options in ({"create_fault": "400"}, {"pending_s": 0}):
            case = {"body": {**body, "emulator": options}, "media_type": "application/json"}
            await asyncio.to_thread(conforms, url, "POST /api/trellis/task", **case)


async def test_a_405_names_every_method_of_the_path(gateway: str) -> None:
    """RFC 9110: a 405 carries Allow, listing every method of the resource, not only one route's."""
    async with httpx.AsyncClient(base_url=gateway) as client:
        chat = await client.request("TRACE", "/chat")
        task = await client.put("/api/claude/task/some-task")
        prompt = await client.get("/api/claude/prompt")
    assert chat.status_code == 405 and chat.headers["allow"] == "GET, HEAD, POST"
    assert task.status_code == 405 and task.headers["allow"] == "DELETE, GET, HEAD"
    assert prompt.status_code == 405 and prompt.headers["allow"] == "POST"
    assert prompt.json()["type"] == "invalid_request"
