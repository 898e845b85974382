"""ICE configuration: ICE servers, host-candidate addresses and a pinned UDP port range. Server process.

No public STUN server is used unless configured (``LIPAR_ICE_SERVERS``). aioice (under aiortc) has no
option for which interfaces to gather host candidates on nor for a UDP port range, both of which deployments
need (Docker publishes a fixed UDP range; loopback-only test networks need 127.0.0.1). :func:`configure_ice`
installs both process-wide, once, from settings.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import types
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from server.settings import IceServer

log = logging.getLogger(__name__)


def rtc_configuration(servers: list[IceServer]) -> RTCConfiguration:
    """An aiortc configuration with exactly these ICE servers (an empty list: none, not aiortc's default)."""
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers]
    )


class _PortRangeLoop:
    """Proxy of the running loop that binds UDP endpoints asked for port 0 to a port in ``[lo, hi]``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: itertools.cycle[int], n: int) -> None:
        self._loop, self._ports, self._n = loop, ports, n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory: Any, local_addr: Any = None, **kw: Any) -> Any:
        if local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(factory, local_addr=local_addr, **kw)
        for _ in range(self._n):
            port = next(self._ports)
            try:
                return await self._loop.create_datagram_endpoint(
                    factory, local_addr=(local_addr[0], port), **kw
                )
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free UDP port in the pinned media range ({self._n} ports)")


class _AsyncioWithPortRange(types.ModuleType):
    """``asyncio`` as seen by ``aioice.ice``: identical except ``get_running_loop`` (see :func:`configure_ice`)."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__("asyncio")
        self._ports = itertools.cycle(range(lo, hi + 1))
        self._n = hi - lo + 1

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> Any:
        return _PortRangeLoop(asyncio.get_running_loop(), self._ports, self._n)


_original_get_host_addresses = aioice.ice.get_host_addresses


def configure_ice(host_addresses: list[str], port_range: tuple[int, int] | None) -> None:
    """Install the host-address choice and the UDP port range for every ICE connection of this process.

    Why: aioice 0.10 gathers host candidates on every non-loopback interface and binds ephemeral ports, with
    no option for either. We replace ``aioice.ice.get_host_addresses`` (when addresses are configured) and the
    ``asyncio`` module seen by ``aioice.ice`` (when a port range is configured, so that the host-candidate
    sockets bind inside it). Remove when aioice accepts interface and port-range options.
    Idempotent: calling it again replaces the previous choice.
    """
    if host_addresses:
        addrs = list(host_addresses)

        def _hosts(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return [a for a in addrs if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

        aioice.ice.get_host_addresses = _hosts
    else:
        aioice.ice.get_host_addresses = _original_get_host_addresses
    if port_range is not None:
        aioice.ice.asyncio = _AsyncioWithPortRange(*port_range)  # type: ignore[attr-defined]
        log.info("ICE host candidates bind UDP ports %d-%d", *port_range)
    else:
        aioice.ice.asyncio = asyncio  # type: ignore[attr-defined]
