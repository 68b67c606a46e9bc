"""``llm-gateway``: serve the gateway, run the emulator, or both (``--demo``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence

import uvicorn

from . import logs
from .config import ConfigError, Settings, from_env, parse_env_file

DEMO_KEY = "demo-key-not-a-secret"


def _uvicorn_config(app: object, settings: Settings, **overrides: object) -> uvicorn.Config:
    options: dict[str, object] = {
        "log_level": settings.log_level.lower(),
        # A request waiting for its generation's answer (POST /api/claude/prompt) gets it, or its interrupted
        # error, within the grace: one second more to send it.
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds + 1,
        "ws": "websockets-sansio",
        # Messages over MAX_BODY_BYTES get a payload_too_large reply from the route; far over it, close 1009.
        "ws_max_size": 4 * settings.max_body_bytes,
        "proxy_headers": True,
        # JSON logs: uvicorn's loggers hand their records to ours (its own config would print text).
        **({"log_config": None} if settings.log_format == "json" else {}),
        **overrides,
    }
    return uvicorn.Config(app, **options)  # type: ignore[arg-type]


def serve(settings: Settings, host: str, port: int, worker_fd: int | None = None) -> None:
    if settings.workers > 1 and worker_fd is None:
        from .workers import supervise

        supervise(settings.workers, host, port)
        return
    from .app import create_app
    from .server import GatewayServer

    server = GatewayServer(_uvicorn_config(create_app(settings), settings, host=host, port=port))
    server.run(sockets=None if worker_fd is None else [socket.socket(fileno=worker_fd)])


async def demo(settings: Settings, host: str, port: int) -> None:
    """The gateway with the emulator as its upstreams (Claude, PiAPI), in one process: no API key needed."""
    from .app import create_app
    from .emulator import create_emulator_app
    from .server import GatewayServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    emulator_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    emulator = uvicorn.Server(_uvicorn_config(create_emulator_app(delay=0.02), settings, log_level="warning"))
    settings = Settings(
        **{
            **{name: getattr(settings, name) for name in Settings.__struct_fields__},
            "anthropic_api_key": DEMO_KEY,
            "anthropic_auth_token": None,
            "anthropic_base_url": emulator_url,
            "trellis_api_key": DEMO_KEY,
            "trellis_base_url": emulator_url,
        }
    )
    gateway = GatewayServer(_uvicorn_config(create_app(settings), settings, host=host, port=port))
    print(f"llm-gateway demo: emulated Claude at {emulator_url}, gateway on http://{host}:{port}", file=sys.stderr)
    emulator_task = asyncio.create_task(emulator.serve(sockets=[sock]))
    try:
        await gateway.serve()
    finally:
        emulator.should_exit = True
        await asyncio.wait_for(emulator_task, timeout=10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__)
    parser.add_argument("--demo", action="store_true", help="use the built-in emulator as the Claude upstream")
    parser.add_argument("--host", help="listen address (default API_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default API_PORT)")
    parser.add_argument("--env-file", default=".env", help="settings file read under the environment (default .env)")
    parser.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # a worker of WORKERS > 1: its socket
    commands = parser.add_subparsers(dest="command")
    emu = commands.add_parser("emulator", help="serve the emulated Anthropic API")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8001)
    emu.add_argument("--deltas", type=int, default=50, help="text deltas per answer")
    emu.add_argument("--delay", type=float, default=0.0, help="seconds between deltas")
    emu.add_argument("--api-key", help="require this key")
    args = parser.parse_args(argv)

    if args.command == "emulator":
        from .emulator import create_emulator_app

        app = create_emulator_app(deltas=args.deltas, delay=args.delay, api_key=args.api_key)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0
    # The file goes into the environment (which wins over it), so every worker process sees it too.
    if args.env_file and os.path.isfile(args.env_file):
        with open(args.env_file, encoding="utf-8") as env_file:
            for key, value in parse_env_file(env_file.read()).items():
                os.environ.setdefault(key, value)
    try:
        settings = from_env(os.environ, env_file=None)
    except ConfigError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    if args.demo:
        if settings.workers > 1:
            print("llm-gateway: --demo runs one process; unset WORKERS", file=sys.stderr)
            return 2
        asyncio.run(demo(settings, host, port))
        return 0
    serve(settings, host, port, args.worker_fd)
    return 0
