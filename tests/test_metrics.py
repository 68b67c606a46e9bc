"""GET /metrics: the Prometheus text format, parsed with prometheus_client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory
from tests.sse_client import read_all


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_requests_tasks_tokens_and_errors(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(gateway_api_keys="ka=key-a") as url, httpx.AsyncClient(base_url=url) as client:
        before = samples((await client.get("/metrics")).text)  # open, like /health
        key = {"X-API-Key": "key-a"}
        ok = await client.post("/api/claude/prompt", json={"prompt": "Hi [emu:deltas=5]"}, headers=key)
        failed = await client.post("/api/claude/prompt", json={"prompt": "[emu:fault=429]"}, headers=key)
        task_id = ok.json()["task_id"]
        await read_all(client, f"/api/claude/subscribe/{task_id}", headers=key)
        await client.get("/api/claude/task/nope", headers=key)
        response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert ok.status_code == 200 and failed.status_code == 429
    assert delta("llmgw_requests_total", route="/api/claude/prompt", method="POST", status="200") == 1
    assert delta("llmgw_requests_total", route="/api/claude/prompt", method="POST", status="429") == 1
    assert delta("llmgw_requests_total", route="/api/claude/task/{task_id}", method="GET", status="404") == 1
    assert delta("llmgw_tasks_ended_total", status="completed", error_type="") == 1
    assert delta("llmgw_tasks_ended_total", status="failed", error_type="upstream_rate_limited") == 1
    assert delta("llmgw_upstream_errors_total", type="upstream_rate_limited") == 1
    usage = ok.json()["usage"]
    model = ok.json()["model"]
    assert delta("llmgw_tokens_total", model=model, direction="output") == usage["output_tokens"]
    assert delta("llmgw_time_to_first_token_seconds_count") == 1
    assert delta("llmgw_stream_duration_seconds_count") == 2
    assert value(after, "llmgw_running_tasks") == 0 and value(after, "llmgw_open_streams") == 0
