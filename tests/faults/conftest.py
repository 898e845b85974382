"""Fixtures for the fault tests: a real redis-server that a test can pause (SIGSTOP), resume, kill and restart
empty on the same port (no persistence, as in docker-compose.yml), and the server fixtures of tests/server."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.server.conftest import loopback_ice, start_server  # noqa: F401 - fixtures the fault tests use
from tests.server.server_proc import free_port, wait_until

log = logging.getLogger(__name__)


class RedisServer:
    """One redis-server process on a fixed loopback port, without persistence (no RDB, no AOF)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0

    def start(self) -> None:
        """Start it (empty) and wait until it answers PING."""
        assert self.proc is None or self.proc.poll() is not None, "redis-server is already running"
        self.starts += 1
        log_file = open(self.workdir / f"redis{self.starts}.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        self.paused = False
        wait_until(self.answers, 10, "redis-server to answer PING")

    def answers(self) -> bool:
        """True when it answers PING within 0.5 s."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        """A synchronous client (decoded responses) for inspecting the keys."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets (connections are accepted) but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL: gone at once, its data with it (there is no persistence)."""
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Kill it and start an empty one on the same port."""
        self.kill()
        self.start()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server the module's tests may pause, kill and restart (skips only when the binary is absent).

    Every test gets it running and resumed (the function-scoped :func:`redis_up` makes sure of that)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI installs it")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_up(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The module's redis-server, running and resumed at the start and at the end of the test."""
    if redis_server.paused:
        redis_server.resume()
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    yield redis_server
    if redis_server.paused:
        redis_server.resume()
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
