"""The worker's heap trimming: freed memory goes back to the OS, at most once per interval."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from server.worker.memory import HeapTrimmer


def test_trims_at_most_once_per_interval() -> None:
    now = [100.0]
    t = HeapTrimmer(1.0, clock=lambda: now[0])
    if not t.available:
        pytest.skip("no glibc malloc_trim on this platform")
    assert t.maybe_trim()
    now[0] += 0.4
    assert not t.maybe_trim()
    now[0] += 0.7
    assert t.maybe_trim()
    assert t.trims == 2


def test_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        HeapTrimmer(0)


def test_freed_fragmented_heap_returns_to_the_os() -> None:
    """~200 MB of small heap blocks freed with every 64th kept (so plain free() cannot shrink the heap):
    the resident size falls back by most of it only after a trim."""
    script = textwrap.dedent(
        """
        from pathlib import Path
        from server.worker.memory import HeapTrimmer

        def rss_mb():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

        trimmer = HeapTrimmer(1.0)
        if not trimmer.available:
            print("unavailable")
            raise SystemExit(0)
        base = rss_mb()
        chunks = [bytearray(2000) for _ in range(100_000)]
        keep = chunks[::64]
        del chunks
        freed = rss_mb()
        trimmer.maybe_trim()
        print(base, freed, rss_mb(), len(keep))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    if out.strip() == "unavailable":
        pytest.skip("no glibc malloc_trim on this platform")
    base, freed, trimmed, _ = (float(x) for x in out.split())
    assert freed - base > 150, (base, freed)  # free() alone kept the fragmented heap resident
    assert freed - trimmed > 120, (base, freed, trimmed)
    assert trimmed - base < 40, (base, freed, trimmed)
