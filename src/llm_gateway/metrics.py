"""Prometheus metrics (API.md §4 "Operations"): ``GET /metrics`` in the text format, via prometheus-client.

prometheus-client is the reference implementation of the format and of its multiprocess mode (one mmap file
per process, summed at scrape time): with ``PROMETHEUS_MULTIPROC_DIR`` set, ``/metrics`` reports every worker.
Metrics are module-level, as prometheus-client intends: one set per process, whatever the number of apps.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .events import Complete, Error, Terminal, terminal_outcome

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DURATION = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

REQUESTS = Counter("llmgw_requests", "HTTP requests and WebSocket sessions", ["route", "method", "status"])
RUNNING = Gauge("llmgw_running_tasks", "Generations running on this replica", multiprocess_mode="livesum")
STREAMS = Gauge("llmgw_open_streams", "Open SSE responses", multiprocess_mode="livesum")
SOCKETS = Gauge("llmgw_open_websockets", "Open WebSockets", multiprocess_mode="livesum")
ENDED = Counter("llmgw_tasks_ended", "Tasks ended on this replica, by status and error type", ["status", "error_type"])
FIRST_TOKEN = Histogram("llmgw_time_to_first_token_seconds", "Task start to its first text", buckets=_LATENCY)
DURATION = Histogram("llmgw_stream_duration_seconds", "Task start to its terminal event", buckets=_DURATION)
TOKENS = Counter("llmgw_tokens", "Tokens by model and direction", ["model", "direction"])
UPSTREAM_ERRORS = Counter("llmgw_upstream_errors", "Generations ended by an upstream failure", ["type"])
STORE_ERRORS = Counter("llmgw_store_errors", "Requests answered 503 because the store failed")
STORE_OUTAGE = Counter("llmgw_store_outage_seconds", "Seconds the store was unreachable")


class GenerationClock:
    """Times one generation: its first text and its end."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first_text = False
        RUNNING.inc()

    def text(self) -> None:
        if not self.first_text:
            self.first_text = True
            FIRST_TOKEN.observe(time.monotonic() - self.started)

    def ended(self, terminal: Terminal | None) -> None:
        RUNNING.dec()
        DURATION.observe(time.monotonic() - self.started)
        if terminal is None:
            return
        status, _, _ = terminal_outcome(terminal)
        ENDED.labels(status, terminal.type if isinstance(terminal, Error) else "").inc()
        if isinstance(terminal, Complete):
            TOKENS.labels(terminal.model, "input").inc(terminal.usage.input_tokens)
            TOKENS.labels(terminal.model, "output").inc(terminal.usage.output_tokens)
        elif terminal.type.startswith("upstream_"):
            UPSTREAM_ERRORS.labels(terminal.type).inc()


class RequestMetrics:
    """Counts each request (and WebSocket session) by its route template, method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        status = 500 if scope["type"] == "http" else 1000

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
            elif message["type"] == "websocket.close":
                status = message.get("code", 1000)
            await send(message)

        if scope["type"] == "websocket":
            SOCKETS.inc()
        try:
            await self.app(scope, receive, watch)
        finally:
            if scope["type"] == "websocket":
                SOCKETS.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(route, scope.get("method", "WS"), str(status)).inc()


async def metrics_endpoint(request: Request) -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
