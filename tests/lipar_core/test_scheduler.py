"""The flow-matching scheduler reproduces LIPAR.md §2.5 exactly."""

from __future__ import annotations

import pytest
import torch

from lipar_core.scheduler import FlowMatchScheduler, make_step_list


def test_warped_step_list_matches_self_forcing() -> None:
    s = FlowMatchScheduler(1000, 5.0)
    assert s.timesteps([400, 350, 250]) == pytest.approx([769.2307692, 729.1666667, 625.0], abs=1e-6)
    # The distilled 4-step training list [1000, 750, 500, 250] -> [1000, 937.5, 833.33, 625].
    assert s.timesteps([1000, 750, 500, 250]) == pytest.approx([1000.0, 937.5, 833.3333333, 625.0], abs=1e-6)
    assert s.sigma(625.0) == pytest.approx(0.625)


def test_shift_changes_the_schedule() -> None:
    assert FlowMatchScheduler(1000, 1.0).warp(400) == pytest.approx(400.0)
    assert FlowMatchScheduler(1000, 3.0).warp(400) != pytest.approx(FlowMatchScheduler(1000, 5.0).warp(400))


def test_noise_and_x0_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, generator=g)
    eps = torch.randn(2, 3, 4, generator=g)
    sigma = 0.7692307
    xt = FlowMatchScheduler.add_noise(x0, eps, sigma)
    torch.testing.assert_close(xt, (1 - sigma) * x0 + sigma * eps)
    # The model predicts the flow eps - x0; x0 is recovered exactly.
    torch.testing.assert_close(FlowMatchScheduler.x0_from_flow(xt, eps - x0, sigma), x0, atol=1e-6, rtol=0)


def test_bad_steps_rejected() -> None:
    s = FlowMatchScheduler()
    with pytest.raises(ValueError):
        s.warp(0)
    with pytest.raises(ValueError):
        s.warp(1001)


def test_make_step_list() -> None:
    assert make_step_list(0.4, 3) == [400, 325, 250]
    assert make_step_list(0.4, 1) == [400]
    assert make_step_list(1.0, 2) == [1000, 625]
    for bad in ((0.0, 3), (1.5, 3), (0.4, 0), (0.4, 9), (0.002, 3)):
        with pytest.raises(ValueError):
            make_step_list(*bad)
