"""Waiting on a condition in async tests: poll it until it holds, fail with what was awaited (never a bare
sleep standing in for synchronisation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def poll(cond: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Await ``cond()`` every ``interval`` s until it returns something truthy (returned), or fail naming
    ``what`` and the last value after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)
