"""Settings: read once from the environment over .env, each bad value named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm_gateway.config import ConfigError, from_env, parse_env_file
from tests.conftest import subprocess_env


def test_defaults() -> None:
    settings = from_env({}, env_file=None)
    assert (settings.api_host, settings.api_port, settings.workers) == ("0.0.0.0", 8000, 1)
    assert settings.max_body_bytes == 1024 * 1024 and settings.task_lease_seconds == 5
    assert settings.upstream_idle_timeout == 60 and settings.cache_ttl_seconds == 900
    assert settings.trellis_base_url == "https://api.piapi.ai" and settings.trellis_poll_interval == 2
    assert settings.redis_url is None and settings.cors_origin_list == ["*"] and settings.client_api_keys == []


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\nexport API_PORT=9000\nCLAUDE_MODEL='claude-opus-4-6'\nLOG_LEVEL=debug # inline comment\n"
        "GATEWAY_API_KEYS= a, b ,,c\nANTHROPIC_API_KEY=\n"
    )
    settings = from_env({"API_PORT": "9100"}, env_file=env_file)
    assert settings.api_port == 9100
    assert settings.claude_model == "claude-opus-4-6" and settings.log_level == "debug"
    assert settings.client_api_keys == ["a", "b", "c"]
    assert settings.anthropic_api_key is None, "an empty value means unset"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"API_PORT": "eighty"}, "API_PORT"),
        ({"API_PORT": "70000"}, "API_PORT"),
        ({"WORKERS": "0"}, "WORKERS"),
        ({"MAX_BODY_BYTES": "-1"}, "MAX_BODY_BYTES"),
        ({"TASK_LEASE_SECONDS": "0"}, "TASK_LEASE_SECONDS"),
        ({"UPSTREAM_IDLE_TIMEOUT": "soon"}, "UPSTREAM_IDLE_TIMEOUT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"WORKERS": "4"}, "REDIS_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"REDIS_CLUSTER": "1"}, "REDIS_CLUSTER"),
        ({"REDIS_CLUSTER": "1", "REDIS_URL": "unix:///tmp/redis.sock"}, "REDIS_CLUSTER"),
    ],
)
def test_bad_values_are_named(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        from_env(environ, env_file=None)


def test_several_workers_with_redis_are_fine() -> None:
    assert from_env({"WORKERS": "4", "REDIS_URL": "redis://r:6379/0"}, env_file=None).workers == 4


def test_a_redis_cluster_by_url_or_flag() -> None:
    assert from_env({"REDIS_URL": "redis+cluster://r:7000"}, env_file=None).redis_url == "redis+cluster://r:7000"
    assert from_env({"REDIS_URL": "redis://r:7000", "REDIS_CLUSTER": "1"}, env_file=None).redis_cluster


def test_parse_env_file_keeps_hashes_inside_quotes() -> None:
    assert parse_env_file('A="x # y"\nB=z') == {"A": "x # y", "B": "z"}


def test_cli_refuses_bad_settings_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llm_gateway", "--env-file", "/dev/null"],
        env=subprocess_env(WORKERS="3"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "WORKERS=3 needs REDIS_URL" in result.stderr and "Traceback" not in result.stderr


def test_cli_reads_the_env_file_it_is_given(tmp_path: Path) -> None:
    env_file = tmp_path / "prod.env"
    env_file.write_text("WORKERS=4\n")
    result = subprocess.run(
        [sys.executable, "-m", "llm_gateway", "--env-file", str(env_file)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "WORKERS=4 needs REDIS_URL" in result.stderr
