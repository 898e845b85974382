"""3-D rotary position embedding of Wan 2.1, computed from integer positions.

The head dimension is split into time / height / width parts (44 / 42 / 42 for head_dim 128, i.e.
22 / 21 / 21 rotation pairs), pairs are interleaved (x[2i], x[2i+1]) exactly as diffusers' and the original
Wan implementation. Angles are computed in float64 from integer positions and reduced modulo 2*pi before the
cast to float32, so positions can grow without bound in a long stream (no 1024-entry table limit, no precision
loss), and the tables are built once per block and shared by all layers and passes.
"""

from __future__ import annotations

import math

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) sizes of the head dimension used by each axis (must be even), as Wan: h = w = 2*(d//6)."""
    hw = 2 * (head_dim // 6)
    t = head_dim - 2 * hw
    if head_dim % 2 or t <= 0 or t % 2:
        raise ValueError(f"head_dim {head_dim} cannot be split into even RoPE parts")
    return t, hw, hw


class Rope3D:
    """Builds cos/sin tables for tokens at given (t, h, w) integer positions.

    Args:
        head_dim: attention head dimension (128 for Wan 2.1 1.3B).
        theta: RoPE base (10000).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        self.head_dim = head_dim
        self.theta = theta
        self.split = rope_split(head_dim)
        self._inv_freq: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _freqs(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._inv_freq:
            out = []
            for dim in self.split:
                exps = torch.arange(0, dim, 2, dtype=torch.float64, device=device)[: dim // 2] / dim
                out.append(1.0 / (self.theta**exps))
            self._inv_freq[device] = tuple(out)
        return self._inv_freq[device]

    def tables(
        self, t_pos: torch.Tensor, h_pos: torch.Tensor, w_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for tokens.

        Args:
            t_pos, h_pos, w_pos: integer positions, each [N], on the target device.
        Returns:
            (cos, sin): each [N, 1, head_dim // 2] float32 (one value per rotation pair, broadcast over heads).
        """
        ft, fh, fw = self._freqs(t_pos.device)
        ang = torch.cat(
            [
                t_pos.to(torch.float64)[:, None] * ft,
                h_pos.to(torch.float64)[:, None] * fh,
                w_pos.to(torch.float64)[:, None] * fw,
            ],
            dim=1,
        )
        ang = torch.remainder(ang, 2 * math.pi)
        return ang.cos().float()[:, None, :], ang.sin().float()[:, None, :]

    def grid_tables(
        self, frame_positions: torch.Tensor, grid_h: int, grid_w: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for whole frames in (t, h, w) token order.

        Args:
            frame_positions: [F] integer temporal positions of the frames.
            grid_h, grid_w: token grid of one frame.
        Returns:
            (cos, sin): each [F * grid_h * grid_w, 1, head_dim // 2] float32.
        """
        dev = frame_positions.device
        f = frame_positions.shape[0]
        t = frame_positions.view(f, 1, 1).expand(f, grid_h, grid_w).reshape(-1)
        h = torch.arange(grid_h, device=dev).view(1, grid_h, 1).expand(f, grid_h, grid_w).reshape(-1)
        w = torch.arange(grid_w, device=dev).view(1, 1, grid_w).expand(f, grid_h, grid_w).reshape(-1)
        return self.tables(t, h, w)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x``.

    Args:
        x: [B, N, H, D] (any float dtype).
        cos, sin: [N, 1, D // 2] float32.
    Returns:
        Rotated tensor [B, N, H, D] in ``x``'s dtype (computed in float32).
    """
    xf = x.float().unflatten(-1, (-1, 2))
    x1, x2 = xf[..., 0], xf[..., 1]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
