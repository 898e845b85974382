"""Flow-matching scheduler of Self-Forcing (LIPAR.md §2.5).

Sigmas: sigma_lin[i] = 1 - i/N for i = 0..N-1 (``extra_one_step``), shifted
sigma = shift * s / (1 + (shift - 1) * s), timestep t = N * sigma. A configured step value d is *warped* to
the timestep at index N - d, so the default step list [400, 350, 250] gives t = 769.23, 729.17, 625.0.

Noising: x_t = (1 - sigma) x0 + sigma * eps. The model predicts the flow v = eps - x0, so
x0 = x_t - sigma * v.

Everything the host needs (timesteps, sigmas) is plain Python floats: no device round trips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lipar_core.protocol import MAX_STEPS


@dataclass(frozen=True)
class FlowMatchScheduler:
    """Shifted flow-matching schedule with step warping.

    Attributes:
        num_train_timesteps: N, the number of training timesteps (1000).
        shift: the timestep shift (5.0 for Wan 2.1 / Self-Forcing).
    """

    num_train_timesteps: int = 1000
    shift: float = 5.0

    def sigma_at_index(self, index: int) -> float:
        """Shifted sigma at training index ``index`` (0 = the noisiest)."""
        n = self.num_train_timesteps
        if not 0 <= index < n:
            raise ValueError(f"index must be in [0, {n}), got {index}")
        s = 1.0 - index / n
        return self.shift * s / (1.0 + (self.shift - 1.0) * s)

    def warp(self, step: int) -> float:
        """The timestep (0..N) of a configured step value ``step`` (1..N): t = timesteps[N - step]."""
        n = self.num_train_timesteps
        if not 1 <= step <= n:
            raise ValueError(f"denoising step must be in [1, {n}], got {step}")
        return n * self.sigma_at_index(n - step)

    def timesteps(self, steps: Sequence[int]) -> list[float]:
        """Warped timesteps of a step list, e.g. [400, 350, 250] -> [769.23, 729.17, 625.0]."""
        return [self.warp(s) for s in steps]

    def sigma(self, timestep: float) -> float:
        """Sigma of a timestep (t / N)."""
        return timestep / self.num_train_timesteps

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """x_t = (1 - sigma) * x0 + sigma * noise, same shape and dtype as ``x0``."""
        return ((1.0 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype)

    @staticmethod
    def x0_from_flow(x_t: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
        """x0 = x_t - sigma * flow (computed in float32), same dtype as ``x_t``."""
        return (x_t.float() - sigma * flow.float()).to(x_t.dtype)


def make_step_list(strength: float, steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """Denoising step values from an edit strength and a number of steps.

    ``strength`` in (0, 1] is the first step value over N (0.4 -> step 400 -> t = 769 with shift 5): higher
    edits more and keeps less of the input. The last step is ``0.625 * first`` (400 -> 250, as Self-Forcing's
    LIPAR config); steps in between are evenly spaced.

    Raises:
        ValueError: strength outside (0, 1], steps outside [1, :data:`~lipar_core.protocol.MAX_STEPS`], or too
            few distinct step values.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
    first = max(1, round(strength * num_train_timesteps))
    if steps == 1:
        return [first]
    last = max(1, round(first * 0.625))
    values = [round(first + (last - first) * i / (steps - 1)) for i in range(steps)]
    if len(set(values)) != steps:
        raise ValueError(f"strength {strength} is too low for {steps} distinct steps")
    return values
