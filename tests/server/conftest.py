"""Fixtures for the server tests: real server processes and a real redis-server."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.rtc.ice import configure_ice
from tests.server.server_proc import ServerProcess, free_port, wait_until


@pytest.fixture
def loopback_ice() -> Iterator[None]:
    """ICE host candidates on loopback only for the in-process aiortc peers of a test (ENV.md)."""
    configure_ice(["127.0.0.1"], None)
    yield
    configure_ice([], None)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with extra env; all are stopped at the end of the test."""
    servers: list[ServerProcess] = []

    def start(wait: bool = True, **env: str) -> ServerProcess:
        s = ServerProcess(env, tmp_path / f"server{len(servers)}.log")
        servers.append(s)
        if wait:
            s.wait_ready()
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port (skips only when the binary is absent)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI installs it")
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(d),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)

    def pong() -> bool:
        try:
            return bool(r.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(pong, 10, "redis-server to answer PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        r.close()
        proc.terminate()
        proc.wait(10)
