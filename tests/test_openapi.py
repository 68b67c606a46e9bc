"""/openapi.json: generated from the msgspec types and the route table, valid OpenAPI 3.1, every route in it."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from openapi_spec_validator import validate
from starlette.routing import Route

from llm_gateway.app import create_app
from tests.conftest import gateway_settings


async def spec(gateway: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


async def test_the_document_is_valid_openapi(gateway: str) -> None:
    validate(await spec(gateway))  # raises on any violation of the OpenAPI 3.1 schema


async def test_every_http_route_is_described(gateway: str) -> None:
    document = await spec(gateway)
    app = create_app(gateway_settings(None))
    expected = {
        (re.sub(r":\w+}", "}", route.path), method.lower())  # OpenAPI's template has no convertors
        for route in app.routes
        if isinstance(route, Route) and route.include_in_schema
        for method in (route.methods or set()) - {"HEAD"}
    }
    described = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert described == expected
    operation_ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids)), "a client generator needs unique operation ids"
    assert (
        "/ws/generate" in document["info"]["description"]
        and "/api/claude/ws/{task_id}" in document["info"]["description"]
    )


async def test_bodies_and_answers_match_the_types(gateway: str) -> None:
    document = await spec(gateway)
    schemas = document["components"]["schemas"]
    prompt = schemas["PromptRequest"]["properties"]
    assert prompt["max_tokens"]["minimum"] == 1 and prompt["temperature"]["anyOf"][0]["maximum"] == 1
    generate = schemas["GenerateRequest"]
    assert generate["required"] == ["prompt"] and generate["properties"]["prompt"]["maxLength"] == 10_000
    post_prompt = document["paths"]["/api/claude/prompt"]["post"]
    assert post_prompt["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PromptRequest"
    }
    assert post_prompt["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("PromptResponse")
    assert post_prompt["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
    chat = document["paths"]["/chat"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in chat["oneOf"]] == [
        "QuestionRequest",
        "RunAgentInput",
        "MessagesRequest",
    ]
    subscribe = document["paths"]["/api/claude/subscribe/{task_id}"]["get"]
    # OpenAPI 3.1: the schema of an event stream describes one event, as an EventSource reads it.
    assert subscribe["responses"]["200"]["content"]["text/event-stream"]["schema"] == {
        "$ref": "#/components/schemas/ServerSentEvent"
    }
    assert schemas["ServerSentEvent"]["required"] == ["event", "data"]
    assert next(p for p in subscribe["parameters"] if p["name"] == "format")["schema"]["enum"][:2] == ["native", "text"]
    health = document["paths"]["/health"]["get"]["responses"]
    assert health["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Health"}
    assert {p["name"] for p in subscribe["parameters"]} == {"task_id", "format", "last_event_id", "Last-Event-ID"}
    references = {ref for ref in json.dumps(document).split('"') if ref.startswith("#/components/schemas/")}
    assert {ref.rsplit("/", 1)[1] for ref in references} <= set(schemas)


async def test_swagger_ui_and_redoc(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        for path in ("/docs", "/redoc"):
            page = await client.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "/openapi.json" in page.text
