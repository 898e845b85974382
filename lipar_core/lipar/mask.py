"""The streaming prune mask, entirely on the device (torch ops only, no host synchronisation).

True = keep (recompute the token), False = prune (copy it from its temporal predecessor). The mask lives on
the DiT token grid, [B, F, grid_h, grid_w] per block (one token = one latent patch, 16x16 pixels for Wan).

Latent-difference criterion (the paper's, LIPAR.md §3.2), per latent frame t:

1. D[t] = trimmed mean of |x[t] - x[t-1]| over the token's patch (2x2x16 = 64 values), dropping the lowest
   and highest 20 % (the sorted slice [12, 51) for 64 values).
2. Median filter 3x3x3 over (t, h, w). 3. Gaussian 3x3x3 (sigma 1.5) with the future slice removed.
4. keep = D > tau. 5. Long-term drift: keep |= trimmedL1(x[t] - ref) > tau2, where ref is a per-token
   reference latent updated once per block with the input the output was last computed from.
6. Majority filter 3x3x3 (>= 14 of 27). 7. Opening, then closing, 3x3 per frame.
8. Dilation by (2r+1)x(2r+1) spreading forward in time: out[t] = dilate(m[t]) | dilate(m[t-1]).
9. Optional minimum kept ratio per frame with any kept token (iterative 3x3 dilation, vectorised).
10. Hard "changed" floor: out |= dilate(peak change > floor, FLOOR_MARGIN), whatever steps 2-9 decided.

The floor (:func:`peak_change`) exists because the paper's filters are tuned for large regions: the median of
distances, the majority vote and the 3x3 opening each erase anything smaller than about 2x2 tokens, so a small
mover (a ball, a finger) was pruned and froze in the output (issue 14). Unlike the filtered distance, the floor
takes the *largest* change within the token's patch (of a cell mean for pixels), so an object of half a token
moving through is caught; its level sits well above camera noise and codec artefacts. A token over the floor
against its predecessor or against the drift reference is kept, with a margin of one token.

Truly causal, unlike the reference (§8.2 bug 3): every temporal window is [t-2, t] (median, majority) or
[t-1, t] (Gaussian, dilation), never t+1, so a frame's mask never waits for future frames. Histories (the
last two distance and mask frames, the last latent, the drift reference) are carried between blocks. At the
very start of a stream, missing history is the first frame replicated ("nearest" boundary), and the first
frame's distance is its successor's. Spatial boundaries are "nearest" for the median, Gaussian, majority and
morphology, and zero (no spread beyond the border) for the dilation.

Other sources: ``pixel`` uses the mean absolute pixel difference per token patch (last pixel frame of each
latent frame's group) through the same filters with ``tau_pixel`` (and the drift check at
``tau2 * tau_pixel / tau``, the same strictness relative to tau) and the floor ``floor_pixel`` over every pixel
frame of the group; ``external`` takes a per-pixel-frame mask (no filters, no floor).

Note the filters' latency, inherited from the paper's design: a one-frame step change is invisible to the
median of frame differences; it is caught by the drift check, and the majority filter passes it once it has
persisted for two frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.config import LiparConfig
from lipar_core.lipar.prune import kept_order


def patch_vectors(x: torch.Tensor, patch_hw: tuple[int, int]) -> torch.Tensor:
    """[B, F, C, h, w] -> [B, F, gh, gw, C * ph * pw] (each token's latent values)."""
    b, f, c, h, w = x.shape
    ph, pw = patch_hw
    v = x.reshape(b, f, c, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4, 6)
    return v.reshape(b, f, h // ph, w // pw, c * ph * pw)


def trimmed_l1(
    a: torch.Tensor, b: torch.Tensor, patch_hw: tuple[int, int], lo: float = 0.2, hi: float = 0.8
) -> torch.Tensor:
    """Trimmed mean absolute difference per token: [B, F, C, h, w] x2 -> [B, F, gh, gw] float32."""
    d = patch_vectors((a.float() - b.float()).abs(), patch_hw)
    n = d.shape[-1]
    i0, i1 = int(lo * n), int(hi * n)
    return d.sort(dim=-1).values[..., i0:i1].mean(dim=-1)


def floor_cell(token_hw: tuple[int, int]) -> tuple[int, int]:
    """The averaging cell of the floor for a token of ``token_hw`` elements: per axis, the largest divisor of
    the token's side that is at most a quarter of it (at least 1). An object of half a token or more then covers
    at least one whole cell wherever it lies (a side of 2s - 1 always holds an aligned cell of side s).
    16-pixel tokens: 4x4 pixel cells; latent tokens (2x2): single latent values."""

    def one(side: int) -> int:
        return next(s for s in range(max(1, side // 4), 0, -1) if side % s == 0)

    return one(token_hw[0]), one(token_hw[1])


def cell_means(x: torch.Tensor, token_hw: tuple[int, int]) -> torch.Tensor:
    """Mean over each :func:`floor_cell` of a token's patch: [..., C, H, W] -> [..., C, H / cell_h, W / cell_w]
    (float32). The floor compares these: a mean is linear, so the means of a difference are the differences of
    the means, and each frame is pooled once."""
    x = x.float()
    cell = floor_cell(token_hw)
    if cell == (1, 1):
        return x
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    return F.avg_pool2d(x.reshape(-1, c, h, w), cell).reshape(*lead, c, h // cell[0], w // cell[1])


def peak_of_cells(d: torch.Tensor, token_hw: tuple[int, int]) -> torch.Tensor:
    """Per token, the largest |value| over channels and over the token's cells: a difference of
    :func:`cell_means` [..., C, h', w'] -> [..., gh, gw] float32."""
    cell = floor_cell(token_hw)
    lead, (c, h, w) = d.shape[:-3], d.shape[-3:]
    a = d.reshape(-1, c, h, w).abs().amax(dim=1, keepdim=True)
    k = (token_hw[0] // cell[0], token_hw[1] // cell[1])
    return F.max_pool2d(a, k).reshape(*lead, h // k[0], w // k[1])


def peak_change(a: torch.Tensor, b: torch.Tensor, token_hw: tuple[int, int]) -> torch.Tensor:
    """The floor's measure: per token, the largest absolute change of a cell mean over channels and cells.

    Args:
        a, b: [..., C, H, W] (``b`` broadcastable to ``a``), in the source's units (pixels in [0, 1], or latents).
        token_hw: a token's size in elements of H and W (16x16 pixels, 2x2 latent values for Wan).
    Returns:
        [..., H / token_h, W / token_w] float32: max over channels and over the token's cells
        (:func:`floor_cell`) of |mean over the cell of (a - b)|. The mean is signed, so noise averages out
        while a coherent change (an object) keeps its full size.
    """
    return peak_of_cells(cell_means(a, token_hw) - cell_means(b, token_hw), token_hw)


def group_peak_change(
    pixels: torch.Tensor, before: torch.Tensor, stride: int, token_hw: tuple[int, int]
) -> torch.Tensor:
    """How much each token's input changed over each latent frame's group of pixel frames (pixel units).

    Args:
        pixels: a block's pixel frames [B, F * stride, 3, H, W] in [0, 1].
        before: the last pixel frame before the block [B, 1, 3, H, W] (at a stream's start: the first frame).
        stride: pixel frames per latent frame (the autoencoder's temporal stride).
        token_hw: a token's size in pixels, e.g. (16, 16).
    Returns:
        [B, F, gh, gw] float32: for latent frame t, the largest :func:`peak_change` of any pixel frame of its
        group against the last frame of the previous group (so an object that only passes through the group's
        middle frames counts too).
    """
    return group_peak_of_cells(cell_means(pixels, token_hw), cell_means(before, token_hw), stride, token_hw)


def group_peak_of_cells(
    cells: torch.Tensor, before: torch.Tensor, stride: int, token_hw: tuple[int, int]
) -> torch.Tensor:
    """:func:`group_peak_change` on frames already pooled by :func:`cell_means`: ``cells`` [B, T, 3, h', w'] (each
    frame pooled once), ``before`` [B, 1, 3, h', w'] -> [B, F, gh, gw] float32."""
    b, t = cells.shape[:2]
    group = cells.reshape(b, t // stride, stride, *cells.shape[2:])  # [B, F, stride, 3, h', w']
    prev = torch.cat([before, cells[:, stride - 1 : t - 1 : stride]], dim=1)
    return peak_of_cells(group - prev[:, :, None], token_hw).amax(dim=2)


def input_changed(
    pixels: torch.Tensor, before: torch.Tensor | None, geometry: StreamGeometry, level: float
) -> torch.Tensor:
    """Tokens whose input changed clearly: :func:`group_peak_change` above ``level`` (pixel units, in [0, 1]).

    The ground truth of the mask's recall (the fidelity tests, ``lipar-bench``): torch ops on the frames'
    device, no host synchronisation.

    Args:
        pixels: a block's pixel frames [B, T, 3, H, W] in [0, 1] at the model's resolution.
        before: the last pixel frame before the block [B, 1, 3, H, W], or None at a stream's start.
        geometry: the stream geometry (temporal stride, token size in pixels).
        level: the change that counts, e.g. the ``floor_pixel`` setting.
    Returns:
        [B, F, gh, gw] bool.
    """
    st, sh, sw = geometry.vae_stride
    token = (sh * geometry.patch[1], sw * geometry.patch[2])
    first = before if before is not None else pixels[:, :1]
    return group_peak_change(pixels.float(), first.float(), st, token) > level


def latest_kept(
    cur: torch.Tensor, keep: torch.Tensor, token_hw: tuple[int, int], ref: torch.Tensor
) -> torch.Tensor:
    """Per token, its values in the block's last frame that kept it, else ``ref``'s: the drift reference after
    the block. A few whole-tensor kernels (the token grid is never upsampled: frames are viewed token by token).

    Args:
        cur: the block's frames [B, F, C, H, W] (latents, or each group's last pixel frame).
        keep: [B, F, gh, gw] bool, gh = H / token_h, gw = W / token_w.
        token_hw: a token's size in elements of H and W.
        ref: the reference before the block [B, 1, C, H, W].
    Returns:
        [B, 1, C, H, W], contiguous.
    """
    b, f, c, h, w = cur.shape
    th, tw = token_hw
    gh, gw = h // th, w // tw
    order = torch.arange(1, f + 1, device=keep.device).view(1, f, 1, 1)
    last = (keep.long() * order).amax(dim=1)  # [B, gh, gw]: 1 + the last frame that kept the token, 0 if none
    index = (last - 1).clamp(min=0).view(b, 1, 1, gh, 1, gw, 1).expand(b, 1, c, gh, th, gw, tw)
    picked = cur.reshape(b, f, c, gh, th, gw, tw).gather(1, index)
    kept = (last > 0).view(b, 1, 1, gh, 1, gw, 1)
    out = torch.where(kept, picked, ref.reshape(b, 1, c, gh, th, gw, tw))
    return out.reshape(b, 1, c, h, w)


def _pad_hw(x: torch.Tensor, r: int, mode: str = "replicate") -> torch.Tensor:
    """Pad the last two dims of [B, T, H, W] by r."""
    if r == 0:
        return x
    b, t, h, w = x.shape
    return F.pad(x.reshape(b * t, 1, h, w), (r, r, r, r), mode=mode).reshape(b, t, h + 2 * r, w + 2 * r)


def causal_window3(seq: torch.Tensor, frames: int) -> torch.Tensor:
    """3x3x3 neighbourhoods with time window [t-2, t]: [B, frames + 2, H, W] -> [B, frames, H, W, 27]."""
    p = _pad_hw(seq, 1)
    win = p.unfold(1, 3, 1).unfold(2, 3, 1).unfold(3, 3, 1)  # [B, frames, H, W, 3, 3, 3]
    return win.reshape(*win.shape[:4], 27)[:, :frames]


def gaussian_causal_kernel(sigma: float = 1.5, device: torch.device | None = None) -> torch.Tensor:
    """3x3x3 Gaussian with the future time slice removed, renormalised: [2, 3, 3] for times (t-1, t)."""
    z = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    g = torch.exp(-(z**2) / (2 * sigma**2))
    k = g[:, None, None] * g[None, :, None] * g[None, None, :]
    k = k[:2] / k[:2].sum()
    return k.float().to(device)


def dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation of [B, T, H, W] float {0,1} by a (2r+1)^2 square, zero border."""
    if r == 0:
        return m
    b, t, h, w = m.shape
    return F.max_pool2d(m.reshape(b * t, 1, h, w), 2 * r + 1, 1, r).reshape(b, t, h, w)


def _erode3_nearest(m: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-_pad_hw(m, 1).flatten(0, 1).unsqueeze(1), 3, 1).squeeze(1).reshape(m.shape)


def _dilate3_nearest(m: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(_pad_hw(m, 1).flatten(0, 1).unsqueeze(1), 3, 1).squeeze(1).reshape(m.shape)


def open_close(m: torch.Tensor) -> torch.Tensor:
    """Opening then closing with a 3x3 square per frame ("nearest" border): [B, T, H, W] float {0,1}."""
    opened = _dilate3_nearest(_erode3_nearest(m))
    return _erode3_nearest(_dilate3_nearest(opened))


def enforce_min_ratio(m: torch.Tensor, ratio: float | torch.Tensor) -> torch.Tensor:
    """Grow frames with any kept token (3x3 dilation steps) until >= ``ratio`` of tokens are kept.

    Vectorised over frames with a fixed number of steps (enough to fill a frame from one token), selecting
    per frame with ``torch.where``: no host synchronisation.
    """
    _b, _t, h, w = m.shape
    steps = math.ceil(max(h, w) / 2)
    out = m
    need = h * w * ratio
    for _ in range(steps):
        count = out.sum(dim=(2, 3), keepdim=True)
        grow = (count < need) & (count > 0)
        out = torch.where(grow, dilate(out, 1), out)
    return out


FLOOR_MARGIN = 1
"""Tokens kept around each token over the floor (at most ``dilation``): one token of margin covers the edge of
an object that reaches into a neighbour by less than a cell and the autoencoder's spread into neighbouring
latents (without it, recall on the fidelity set fell to 98.5 %). The paper's (3, 5, 5) dilation is not applied
to the floor: on real clips (carphone, bigbuckbunny, bikes at 256x256 and 832x480) it kept 85-96 % of the
tokens where this margin keeps 69-93 % (the paper's criterion alone: 42-89 %)."""


@dataclass(frozen=True)
class MaskParams:
    """The structure of one stream's mask computation (:func:`mask_block`): what a compiled mask specialises on.
    The thresholds are not here but in a tensor (:func:`mask_levels`), so that streams whose settings differ only
    in thresholds (a session's ``tau`` override) share one compiled graph instead of compiling their own while
    streaming.

    Attributes:
        pixel: the ``pixel`` source (else ``latent``).
        stride: pixel frames per latent frame (the autoencoder's temporal stride).
        token: a token's size in the compared tensor's H and W (pixels, or latent values).
        patch: the DiT patch (latent values per token side), for the latent source's trimmed distance.
        dilation: radius of the forward-causal dilation.
        drift: the drift check is on (``tau2`` set).
        floor: the hard floor is on (the source's floor set).
        min_ratio: a minimum kept ratio is set (``min_keep_ratio`` > 0).
    """

    pixel: bool
    stride: int
    token: tuple[int, int]
    patch: tuple[int, int]
    dilation: int
    drift: bool
    floor: bool
    min_ratio: bool

    @classmethod
    def of(cls, config: LiparConfig, geometry: StreamGeometry) -> MaskParams:
        """The structure of ``config``'s latent or pixel source on ``geometry``."""
        pixel = config.mask_source == "pixel"
        patch = (geometry.patch[1], geometry.patch[2])
        token = (geometry.vae_stride[1] * patch[0], geometry.vae_stride[2] * patch[1]) if pixel else patch
        return cls(
            pixel=pixel,
            stride=geometry.vae_stride[0],
            token=token,
            patch=patch,
            dilation=config.dilation,
            drift=config.tau2 is not None,
            floor=(config.floor_pixel if pixel else config.floor) is not None,
            min_ratio=bool(config.min_keep_ratio),
        )


def mask_levels(config: LiparConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """The thresholds of ``config``'s source as a float32 tensor [4] on ``device``: the short-term threshold,
    the drift threshold (scaled for the pixel source: the same strictness relative to tau), the hard floor and
    the minimum kept ratio (0 where :class:`MaskParams` turns a check off)."""
    pixel = config.mask_source == "pixel"
    tau = config.tau_pixel if pixel else config.tau
    tau2 = config.tau2 or 0.0
    if pixel and config.tau > 0:
        tau2 = tau2 * config.tau_pixel / config.tau
    floor = (config.floor_pixel if pixel else config.floor) or 0.0
    return torch.tensor([tau, tau2, floor, config.min_keep_ratio or 0.0], dtype=torch.float32, device=device)


class MaskHistory(NamedTuple):
    """What a stream's mask carries from one block to the next (all None at a stream's start).

    Attributes:
        d: [B, 2, gh, gw] raw distances of the last 2 frames.
        g: [B, 1, gh, gw] median-filtered distance of the last frame.
        k: [B, 2, gh, gw] thresholded masks of the last 2 frames (float {0, 1}).
        o: [B, 1, gh, gw] opened/closed mask of the last frame.
        last: [B, 1, C, h, w] the last input frame (latent, or the last pixel frame).
        ref: [B, 1, C, h, w] the drift reference: per token, the input its output was last computed from.
    """

    d: torch.Tensor | None = None
    g: torch.Tensor | None = None
    k: torch.Tensor | None = None
    o: torch.Tensor | None = None
    last: torch.Tensor | None = None
    ref: torch.Tensor | None = None


class MaskOutput(NamedTuple):
    """One block's mask and its kept-token order (:func:`~lipar_core.lipar.prune.kept_order`), on the device.

    Attributes:
        keep: [B, F, gh, gw] bool.
        n_kept: int64 [] kept tokens of ``keep[0]``.
        order: [F * gh * gw] int64 kept indices of ``keep[0]`` first (ascending), the rest repeating the last.
    """

    keep: torch.Tensor
    n_kept: torch.Tensor
    order: torch.Tensor


def _dist(a: torch.Tensor, b: torch.Tensor, p: MaskParams) -> torch.Tensor:
    """Per-token distance [B, F, gh, gw] of two [B, F, C, H, W] tensors: the trimmed L1 of latents, or the mean
    absolute pixel difference over the token's patch and channels."""
    if not p.pixel:
        return trimmed_l1(a, b, p.patch)
    d = (a - b).abs().mean(dim=2)
    n, t, h, w = d.shape
    return F.avg_pool2d(d.reshape(n * t, 1, h, w), p.token).reshape(n, t, h // p.token[0], w // p.token[1])


def _distances(cur: torch.Tensor, last: torch.Tensor | None, p: MaskParams) -> torch.Tensor:
    """Raw per-token distance of each frame to its predecessor: [B, F, gh, gw]."""
    if last is not None:
        return _dist(cur, torch.cat([last, cur[:, :-1]], dim=1), p)
    if cur.shape[1] == 1:
        b, _f, _c, h, w = cur.shape
        return cur.new_zeros(b, 1, h // p.token[0], w // p.token[1])
    d = _dist(cur[:, 1:], cur[:, :-1], p)
    return torch.cat([d[:, :1], d], dim=1)  # stream start: frame 0 takes its successor's distance


def _floor_changed(
    src: torch.Tensor, cur: torch.Tensor, h: MaskHistory, p: MaskParams, level: torch.Tensor
) -> torch.Tensor | None:
    """The hard floor: tokens whose input changed clearly, with their margin (:data:`FLOOR_MARGIN`),
    [B, F, gh, gw] float {0, 1}, or None when it is off.

    Latent source: the latent frame against its predecessor and against the drift reference. Pixel source:
    every pixel frame of each latent frame's group (``src`` [B, F * stride, 3, H, W]) against the previous
    group's last frame, and the group's last frame against the drift reference.
    """
    if not p.floor:
        return None
    tok = p.token
    first = h.last if h.last is not None else cur[:, :1]  # stream start: no change before it
    if p.pixel:
        cells = cell_means(src, tok)  # every pixel frame pooled once, the groups' last frames reused below
        peak = group_peak_of_cells(cells, cell_means(first, tok), p.stride, tok)
        if h.ref is not None:
            ref_change = cells[:, p.stride - 1 :: p.stride] - cell_means(h.ref, tok)
            peak = torch.maximum(peak, peak_of_cells(ref_change, tok))
    else:
        peak = peak_change(cur, torch.cat([first, cur[:, :-1]], dim=1), tok)
        if h.ref is not None:
            peak = torch.maximum(peak, peak_change(cur, h.ref, tok))
    return dilate((peak > level).float(), FLOOR_MARGIN)


def mask_block(
    src: torch.Tensor,
    h: MaskHistory,
    p: MaskParams,
    gauss: torch.Tensor,
    levels: torch.Tensor,
    force_full: bool = False,
) -> tuple[MaskOutput, MaskHistory]:
    """One block's keep mask and the history after it: a pure function (it never writes ``h``), torch ops only,
    no host synchronisation (the branches depend on ``p`` and on which history exists, never on data), so it can
    be compiled (``torch.compile``) and captured in a CUDA graph.

    Args:
        src: the block's latents [B, F, C, h, w], or for the pixel source its pixel frames
            [B, F * stride, 3, H, W] in [0, 1] (the filters compare the last frame of each group), float32.
        h: the history before the block.
        p: the source's structure.
        gauss: :func:`gaussian_causal_kernel` on ``src``'s device.
        levels: :func:`mask_levels` on ``src``'s device.
        force_full: keep everything (the history still advances).
    Returns:
        (the mask and the kept order of its first stream, the history after the block).
    """
    cur = src[:, p.stride - 1 :: p.stride] if p.pixel else src
    f = cur.shape[1]
    d = _distances(cur, h.last, p)  # [B, F, gh, gw]
    d_hist = h.d if h.d is not None else d[:, :1].expand(-1, 2, -1, -1)
    med = causal_window3(torch.cat([d_hist, d], dim=1), f).median(dim=-1).values
    g_hist = h.g if h.g is not None else med[:, :1]
    seq = _pad_hw(torch.cat([g_hist, med], dim=1), 1)  # [B, F + 1, gh + 2, gw + 2]
    g = F.conv3d(seq.unsqueeze(1), gauss[None, None]).squeeze(1)  # [B, F, gh, gw]
    keep = g > levels[0]
    if p.drift and h.ref is not None:
        keep = keep | (_dist(cur, h.ref.expand_as(cur), p) > levels[1])
    kf = keep.float()
    k_hist = h.k if h.k is not None else kf[:, :1].expand(-1, 2, -1, -1)
    maj = (causal_window3(torch.cat([k_hist, kf], dim=1), f).sum(dim=-1) >= 14).float()
    oc = open_close(maj)
    o_hist = h.o if h.o is not None else oc[:, :1]
    r = p.dilation
    dil = torch.maximum(dilate(oc, r), dilate(torch.cat([o_hist, oc[:, :-1]], dim=1), r))
    if p.min_ratio:
        dil = enforce_min_ratio(dil, levels[3])
    changed = _floor_changed(src, cur, h, p, levels[2])
    if changed is not None:  # the floor overrides whatever the filters made of the neighbourhood
        dil = torch.maximum(dil, changed)
    out = dil > 0.5
    if force_full:
        out = torch.ones_like(out)
    # The drift reference takes, per token, the input the output was last computed from.
    ref = latest_kept(cur, out, p.token, cur[:, :1] if h.ref is None else h.ref)
    count, order = kept_order(out[0].reshape(-1))
    new = MaskHistory(
        d=torch.cat([d_hist, d], dim=1)[:, -2:].contiguous(),
        g=med[:, -1:].contiguous(),
        k=torch.cat([k_hist, kf], dim=1)[:, -2:].contiguous(),
        o=oc[:, -1:].contiguous(),
        last=cur[:, -1:].clone(),
        ref=ref.clone(),
    )
    return MaskOutput(out, count, order), new


_compiled_mask_block: Callable[..., tuple[MaskOutput, MaskHistory]] | None = None


def compiled_mask_block() -> Callable[..., tuple[MaskOutput, MaskHistory]]:
    """:func:`mask_block` through ``torch.compile`` (Inductor; one process-wide function, so streams of the same
    settings and shapes share its compiled graphs): the ~100 small kernels of the eager mask, each reading and
    writing full-resolution intermediates for the pixel source, become a few fused ones. Fixed shapes; the
    recompile limit is raised so that a process holding several settings (a bench) keeps compiled graphs."""
    global _compiled_mask_block
    if _compiled_mask_block is None:
        dyn = torch._dynamo.config
        dyn.cache_size_limit = max(dyn.cache_size_limit, 64)
        _compiled_mask_block = torch.compile(mask_block, fullgraph=True, dynamic=False)
    return _compiled_mask_block


class PruneMasker:
    """Per-stream mask state and computation (one per :class:`~lipar_core.editor.StreamEditor`).

    Steady-state blocks on CUDA replay a CUDA graph of :func:`mask_block` (compiled first with ``compile``);
    other blocks (a stream's first, the CPU) run it eagerly.

    Args:
        config: LIPAR settings.
        geometry: stream geometry (patch, token grid, strides).
        use_cuda_graph: replay steady-state blocks from a CUDA graph on CUDA.
        compile: on CUDA, capture the graph of the compiled :func:`mask_block` (:func:`compiled_mask_block`);
            compilation happens at the first steady block.
    """

    def __init__(
        self,
        config: LiparConfig,
        geometry: StreamGeometry,
        use_cuda_graph: bool = True,
        compile: bool = False,
    ) -> None:
        self.config = config
        self.geometry = geometry
        self.params = MaskParams.of(config, geometry)
        self.use_cuda_graph = use_cuda_graph
        self.compile = compile
        self._consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # per device: gauss, levels
        self._graph: torch.cuda.CUDAGraph | None = None
        self._src_static: torch.Tensor | None = None  # the graph's input (latents or pixel frames)
        self._out_static: MaskOutput | None = None
        self._spare: MaskHistory | None = None
        self._hist = MaskHistory()
        self.reset()

    def reset(self) -> None:
        """Forget all history (a new stream or a cut).

        The history buffers and the CUDA graph that reads and writes them are kept: the next stream's first
        block copies its history into them, so the graph is not captured again (a capture synchronises the
        device and costs milliseconds: once per stream start, it used to cost every stream's second block)."""
        if self._hist.last is not None:
            self._spare = self._hist
        self._hist = MaskHistory()

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian kernel and the thresholds on ``device``, built once per device: no host-to-device copy
        per block (nor inside a CUDA graph)."""
        if device not in self._consts:
            self._consts[device] = (gaussian_causal_kernel(1.5, device), mask_levels(self.config, device))
        return self._consts[device]

    @torch.no_grad()
    def __call__(
        self,
        latents: torch.Tensor,
        pixels: torch.Tensor | None = None,
        external: torch.Tensor | None = None,
        force_full: bool = False,
    ) -> torch.Tensor:
        """The keep mask [B, F, gh, gw] bool of the next block (:meth:`block`'s ``keep``); updates the history."""
        return self.block(latents, pixels, external, force_full).keep

    @torch.no_grad()
    def block(
        self,
        latents: torch.Tensor,
        pixels: torch.Tensor | None = None,
        external: torch.Tensor | None = None,
        force_full: bool = False,
    ) -> MaskOutput:
        """The next block's mask and its kept order; updates the history.

        Args:
            latents: clean input latents [B, F, C, h, w] of the block.
            pixels: the block's pixel frames [B, T, 3, H, W] in [0, 1] (``pixel`` source only).
            external: a supplied mask [B, T, H, W] or [T, H, W] (``external`` source only), nonzero = changed.
            force_full: keep everything (the first block of a stream or after a cut); history still updates.
        Returns:
            :class:`MaskOutput` (tensors of the caller's: later blocks never overwrite them).
        """
        cfg = self.config
        if cfg.mask_source == "external":
            keep = self._grid_ones(latents) if force_full else self._external(external, latents)
            return MaskOutput(keep, *kept_order(keep[0].reshape(-1)))
        if self.params.pixel:
            if pixels is None:
                raise ValueError("mask_source 'pixel' needs the block's pixel frames")
            src = pixels.float()
        else:
            src = latents.float()
        steady = self._hist.ref is not None and not force_full
        if steady and src.is_cuda and self.use_cuda_graph:
            return self._replay(src)
        out, state = mask_block(src, self._hist, self.params, *self._constants(src.device), force_full)
        spare, self._spare = self._spare, None
        if spare is not None and all(
            a is not None and b is not None and (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)
            for a, b in zip(spare, state, strict=True)
        ):
            for dst, new in zip(spare, state, strict=True):
                assert dst is not None and new is not None
                dst.copy_(new)
            state = spare  # same tensors as before the reset: a captured graph stays valid
        else:
            self._graph = None  # the state tensors changed identity: recapture on the next steady call
        self._hist = state
        return out

    def _replay(self, src: torch.Tensor) -> MaskOutput:
        """Steady-state block from a CUDA graph (the eager mask is ~100 small kernels: launch-bound).

        The graph reads the history buffers and writes the new history into them in place, so each replay
        advances the stream exactly as the eager path does. Captured on the first steady call; with ``compile``,
        the compiled function runs once before the capture (outside it: compilation and Triton's first launches
        must not happen while capturing; it is pure, so that run leaves the history as it was).
        """
        if self._graph is None or self._src_static is None or self._src_static.shape != src.shape:
            self._src_static = src.clone()
            fn = compiled_mask_block() if self.compile else mask_block
            consts = self._constants(src.device)
            if self.compile:
                fn(self._src_static, self._hist, self.params, *consts)
                torch.cuda.current_stream(src.device).synchronize()
            g = torch.cuda.CUDAGraph()
            # captured on the source's device and a stream of it, whatever the current device is (see
            # GraphedDiT._capture)
            side = torch.cuda.Stream(src.device)
            with torch.cuda.device(src.device), torch.cuda.graph(g, stream=side):
                out, state = fn(self._src_static, self._hist, self.params, *consts)
                for dst, new in zip(self._hist, state, strict=True):
                    assert dst is not None and new is not None
                    dst.copy_(new)
            self._graph, self._out_static = g, out
        self._src_static.copy_(src)
        self._graph.replay()
        assert self._out_static is not None
        return MaskOutput(*(t.clone() for t in self._out_static))

    def _state_buffers(self) -> tuple[torch.Tensor, ...]:
        """The history tensors (a steady stream's graph reads and writes these)."""
        assert all(t is not None for t in self._hist)
        return tuple(t for t in self._hist if t is not None)

    def _grid_ones(self, latents: torch.Tensor) -> torch.Tensor:
        gh, gw = self.geometry.token_grid
        return torch.ones(latents.shape[0], latents.shape[1], gh, gw, dtype=torch.bool, device=latents.device)

    def _external(self, external: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
        if external is None:
            raise ValueError("mask_source 'external' needs a mask with the frames")
        m = external.float()
        if m.ndim == 3:
            m = m.unsqueeze(0)
        b, t, h, w = m.shape
        st = self.geometry.vae_stride[0]
        f = latents.shape[1]
        if t != f * st:
            raise ValueError(f"external mask has {t} frames, the block has {f * st}")
        m = m.reshape(b, f, st, h, w).amax(dim=2)
        gh, gw = self.geometry.token_grid
        return F.adaptive_max_pool2d(m.reshape(b * f, 1, h, w), (gh, gw)).reshape(b, f, gh, gw) > 0
