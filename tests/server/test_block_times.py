"""The per-session block times behind ``stats.block_ms`` (server/sessions/live.py)."""

from __future__ import annotations

from server.sessions.live import BlockTimes


def test_block_times_keep_the_first_apart_from_the_median_and_the_slowest() -> None:
    t = BlockTimes()
    assert t.summary() == {"first": None, "p50": None, "max_after_first": None, "slowest": None, "n": 0}
    t.add(900.0)  # a fresh stream's first block: never counted as a stall
    assert t.summary() == {"first": 900.0, "p50": None, "max_after_first": None, "slowest": None, "n": 1}
    for ms, pruned in ((70.0, 0.9), (80.0, 0.85), (75.0, 0.9), (210.0, 0.0), (72.0, 0.9)):
        t.add(ms, pruned)
    # the slowest later block is the 5th, one LIPAR could not prune (a prompt cut restarts the stream)
    assert t.summary() == {
        "first": 900.0,
        "p50": 75.0,
        "max_after_first": 210.0,
        "slowest": {"block": 5, "prune_ratio": 0.0},
        "n": 6,
    }


def test_the_median_covers_the_recent_blocks_and_the_slowest_all_of_them() -> None:
    t = BlockTimes()
    t.add(500.0)
    t.add(400.0)  # the slowest later block, long before the window below
    for _ in range(5000):
        t.add(60.0)
    s = t.summary()
    assert s["p50"] == 60.0 and s["max_after_first"] == 400.0 and s["n"] == 5002
