"""StageTimer: stages add up, and a stage may be opened and closed apart (spanning streams on CUDA)."""

from __future__ import annotations

import torch

from lipar_core.timing import StageTimer


def test_stage_timer_spans_and_repeats() -> None:
    t = StageTimer(torch.device("cpu"))
    outer = t.start("total")
    with t.stage("a"):
        torch.ones(1000).sum()
    after_one = t.finish()["a"]
    with t.stage("a"):
        torch.ones(1000).sum()
    t.stop(outer)
    ms = t.finish()
    assert set(ms) == {"total", "a"}
    assert ms["a"] > after_one > 0  # the second "a" added to the first
    assert ms["total"] >= ms["a"]
