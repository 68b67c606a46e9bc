"""The OpenAPI 3.1 document, generated from the route table and the msgspec types the routes declare.

Each endpoint carries a ``Doc`` (set with ``@doc``): its request and response types, or the SSE dialect it
streams. ``msgspec.json.schema_components`` turns the types into JSON Schema 2020-12, which OpenAPI 3.1 uses
as it is. WebSocket routes cannot be described in OpenAPI; the document's description lists them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from starlette.routing import BaseRoute, Route, WebSocketRoute

from . import __version__
from .dialects import DIALECTS
from .errors import ErrorBody

F = TypeVar("F", bound=Callable[..., Any])

QUERY = {
    "format": ("SSE dialect (API.md §3): " + ", ".join(DIALECTS), {"type": "string", "enum": list(DIALECTS)}),
    "last_event_id": ("resume after this event id (as the Last-Event-ID header)", {"type": "string"}),
    "runId": ("the AG-UI run (= task id) to join", {"type": "string"}),
    "offset": ("-1 joins from the start; an event id resumes after it", {"type": "string"}),
    "threadId": ("the AG-UI thread, echoed in RUN_* events", {"type": "string"}),
}
LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "resume after this event id (sent by EventSource on reconnect)",
    "schema": {"type": "string"},
}
# OpenAPI 3.1 (no ``itemSchema`` yet) has a text/event-stream ``schema`` describe one event, as an EventSource
# parser reads it: the frame's ``event`` (``message`` when the frame names none), its ``data`` lines (joined by
# newlines; JSON in every dialect but ``text``) and the last ``id`` seen, which the closing ``data: [DONE]``
# of the text and tanstack dialects does not carry (a stream of nothing else has none).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "id": {"type": "string"},
        "data": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
    "required": ["event", "data"],
}
SSE_DESCRIPTION = (
    "Server-sent events. Every frame but the closing `data: [DONE]` carries `id:`; `Last-Event-ID` (or "
    "`?last_event_id=`) resumes after it. `?format=` picks the dialect (API.md §3)."
)


@dataclass(frozen=True)
class Doc:
    summary: str
    body: Sequence[type[Any]] = ()  # several: any one of them (oneOf)
    response: type[Any] | None = None
    status: int = 200
    stream: str | None = None  # the default SSE dialect, for event streams
    query: Sequence[str] = ()
    tag: str = ""
    error: type[Any] = ErrorBody  # a drop-in API answers errors in its vendor's shape
    invalid_status: int = 422
    # Answers beside the success and the error shape: status (or "4XX") -> (description, any of these types)
    others: Mapping[str, tuple[str, Sequence[type[Any]]]] = field(default_factory=dict)


def doc(summary: str, **details: Any) -> Callable[[F], F]:
    def attach(endpoint: F) -> F:
        endpoint.__openapi__ = Doc(summary, **details)  # type: ignore[attr-defined]
        return endpoint

    return attach


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _template(path: str) -> str:
    """Starlette's ``/v1/models/{model:path}`` as OpenAPI's ``/v1/models/{model}``."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def build(routes: Sequence[BaseRoute], *, title: str = "llm-gateway") -> dict[str, Any]:
    documented = [
        (route, method, route.endpoint.__openapi__)
        for route in routes
        if isinstance(route, Route) and hasattr(route.endpoint, "__openapi__")
        for method in sorted((route.methods or set()) - {"HEAD"})
    ]
    types: list[Any] = [ErrorBody]
    for _, _, spec in documented:
        types.extend([*spec.body, spec.error])
        if spec.response is not None:
            types.append(spec.response)
        types.extend(t for _, alternatives in spec.others.values() for t in alternatives)
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(unique, ref_template="#/components/schemas/{name}")
    components["ServerSentEvent"] = {"title": "ServerSentEvent", **SSE_EVENT}
    ref = dict(zip(unique, schemas, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    for route, method, spec in documented:
        operation: dict[str, Any] = {
            "summary": spec.summary,
            "operationId": method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", route.path).rstrip("_"),
            "tags": [spec.tag] if spec.tag else [],
            "responses": {"default": {"description": "Error (API.md §5)", "content": _json(ref[spec.error])}},
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.param_convertors
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "description": QUERY[name][0], "schema": QUERY[name][1]}
            for name in spec.query
        ]
        if spec.stream and spec.response is None:  # a drop-in API streams only what it was asked, no resume
            parameters.append(LAST_EVENT_ID)
        if parameters:
            operation["parameters"] = parameters
        if spec.body:
            body_schema = ref[spec.body[0]] if len(spec.body) == 1 else {"oneOf": [ref[t] for t in spec.body]}
            operation["requestBody"] = {"required": True, "content": _json(body_schema)}
            invalid = {"description": "Invalid body", "content": _json(ref[spec.error])}
            operation["responses"][str(spec.invalid_status)] = invalid
        if spec.stream:
            description = f"{SSE_DESCRIPTION} Default here: `{spec.stream}`."
            content = {"text/event-stream": {"schema": {"$ref": "#/components/schemas/ServerSentEvent"}}}
            if spec.response is not None:  # a drop-in API answers in JSON, or streams when asked to
                description = f"JSON, or with `stream: true` an event stream ({spec.stream})."
                content = {**_json(ref[spec.response]), **content}
            operation["responses"][str(spec.status)] = {"description": description, "content": content}
        elif spec.response is not None:
            operation["responses"][str(spec.status)] = {"description": "OK", "content": _json(ref[spec.response])}
        else:
            operation["responses"][str(spec.status)] = {"description": "OK"}
        for status, (description, alternatives) in spec.others.items():
            operation["responses"][status] = {"description": description}
            if alternatives:
                schema = ref[alternatives[0]] if len(alternatives) == 1 else {"anyOf": [ref[t] for t in alternatives]}
                operation["responses"][status]["content"] = _json(schema)
        paths.setdefault(_template(route.path), {})[method.lower()] = operation

    sockets = ", ".join(f"`{r.path}`" for r in routes if isinstance(r, WebSocketRoute))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": __version__,
            "description": "Durable, resumable Claude streams. WebSockets (not describable here): " + sockets,
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


SWAGGER_UI = """<!doctype html>
<html><head><meta charset="utf-8"><title>llm-gateway — API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script></body></html>
"""

REDOC = """<!doctype html>
<html><head><meta charset="utf-8"><title>llm-gateway — API</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"></script></body></html>
"""
