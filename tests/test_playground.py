"""GET /playground (API.md §4): one static page from the package, open, loading nothing from another host.

The page itself is driven in a real browser in tests/test_playground_browser.py.
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

from llm_gateway.dialects import DIALECTS
from llm_gateway.routes.playground import CSP
from tests.conftest import GatewayFactory

REQUIRED_IDS = {
    "prompt",
    "format",
    "send",
    "stop",
    "reconnect",
    "answer",
    "state",
    "task-id",
    "trellis-image",
    "trellis-create",
    "trellis-status",
    "trellis-model",
    "api-key",
}


class Page(HTMLParser):
    """The ids, the URLs loaded (script src, link href), the dialect options and the key panel of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.loads: list[str] = []
        self.options: list[str] = []
        self.key_panel_hidden: bool | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(found["id"] or "")
        if found.get("id") == "key-panel":
            self.key_panel_hidden = "hidden" in found
        if tag == "script" or (tag == "link" and found.get("rel") == "stylesheet"):
            self.loads.append(found.get("src") or found.get("href") or "")
        if tag == "option":
            self.options.append(found.get("value") or "")


async def test_the_page_carries_the_contract_s_ids_and_loads_only_from_the_gateway(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as url, httpx.AsyncClient() as http:
        response = await http.get(f"{url}/playground")
        page = Page(response.text)
        loaded = {load: await http.get(urljoin(f"{url}/playground", load)) for load in page.loads}
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "http" not in CSP
    assert REQUIRED_IDS <= page.ids
    assert page.key_panel_hidden is True, "no keys: nothing to ask for"
    assert len(loaded) == 2
    for load, answer in loaded.items():
        assert not urlsplit(load).netloc and not load.startswith("/"), f"{load} is relative to the page"
        assert answer.status_code == 200, load
    types = sorted(answer.headers["content-type"].split(";")[0] for answer in loaded.values())
    assert types == ["text/css", "text/javascript"]


async def test_the_dialect_picker_offers_every_dialect_that_carries_text(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory() as url, httpx.AsyncClient() as http:
        page = Page((await http.get(f"{url}/playground")).text)
    assert sorted(page.options) == sorted(set(DIALECTS) - {"trellis"})


async def test_with_keys_the_page_is_open_and_asks_for_one(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(gateway_api_keys="me=sk-gw-playground-0123456789") as url, httpx.AsyncClient() as http:
        page = await http.get(f"{url}/playground")
        assets = [await http.get(f"{url}/playground/{name}") for name in ("app.js", "app.css")]
        closed = await http.get(f"{url}/api/claude/task/some-task")
    assert page.status_code == 200 and Page(page.text).key_panel_hidden is False
    assert [answer.status_code for answer in assets] == [200, 200]
    assert closed.status_code == 401


async def test_the_script_writes_no_markup(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory() as url, httpx.AsyncClient() as http:
        script = (await http.get(f"{url}/playground/app.js")).text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
