"""The gateway's uvicorn server."""

from __future__ import annotations

import asyncio
import socket
import time

import uvicorn

from .aio import cancel_and_wait
from .state import DRAIN


class GatewayServer(uvicorn.Server):
    """uvicorn that runs the app's drain (API.md §2 "Shutdown") as it begins to stop, before its own wait.

    uvicorn waits for open responses to end, and an SSE stream never ends by itself. The drain (from the
    lifespan state) refuses new generations and releases the streaming clients: at once with a shared store,
    after this replica's generations with the embedded one. uvicorn then closes the WebSockets still open
    with 1012 and waits what is left of the one grace for the responses still going.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = time.monotonic()
        drain = self.lifespan.state.get(DRAIN)  # what the app's lifespan yielded
        if drain is not None:
            draining = asyncio.ensure_future(drain())
            while not (draining.done() or self.force_exit):  # polled as uvicorn does: a second Ctrl+C quits
                await asyncio.wait({draining}, timeout=0.1)
            await cancel_and_wait(draining)
        # One grace in all: uvicorn's wait gets what the drain left of it (uvicorn annotates an int; a float works).
        budget = self.config.timeout_graceful_shutdown or 0.0
        self.config.timeout_graceful_shutdown = max(0.5, budget - (time.monotonic() - started))  # type: ignore[assignment]
        await super().shutdown(sockets)
