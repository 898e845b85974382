"""The streaming GPU-style prune mask equals an independent slow reference of the same filters (scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.config import LiparConfig
from lipar_core.lipar.mask import (
    FLOOR_MARGIN,
    MaskHistory,
    MaskParams,
    PruneMasker,
    compiled_mask_block,
    gaussian_causal_kernel,
    latest_kept,
    mask_block,
    mask_levels,
)
from tests.markers import needs_cxx


def _trimmed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[C, h, w] x2 -> [gh, gw] trimmed mean of |a - b| over each 2x2xC patch (drop 20 % at each end)."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    c, h, w = d.shape
    v = d.reshape(c, h // 2, 2, w // 2, 2).transpose(1, 3, 0, 2, 4).reshape(h // 2, w // 2, -1)
    n = v.shape[-1]
    return np.sort(v, axis=-1)[..., int(0.2 * n) : int(0.8 * n)].mean(-1)


def _peak(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[C, h, w] x2 -> [gh, gw] largest |a - b| over each 2x2xC patch (the latent floor's measure)."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    c, h, w = d.shape
    return d.reshape(c, h // 2, 2, w // 2, 2).max(axis=(0, 2, 4))


def reference_mask(lat: np.ndarray, f: int, cfg: LiparConfig) -> np.ndarray:
    """Frame-by-frame reference. lat: [T, C, h, w]; returns keep [T, gh, gw] bool (block 0 forced kept)."""
    t_total = lat.shape[0]
    d = [None] * t_total
    for t in range(1, t_total):
        d[t] = _trimmed(lat[t], lat[t - 1])
    d[0] = d[1]
    gk = gaussian_causal_kernel(1.5).double().numpy()
    k3 = np.concatenate([gk, np.zeros((1, 3, 3))], axis=0)  # times t-1, t, (t+1 zeroed)
    med, keep, oc, out = [], [], [], []
    ref = None
    r = cfg.dilation
    box = np.ones((2 * r + 1, 2 * r + 1), bool)
    for t in range(t_total):
        w = np.stack([d[max(t - 2, 0)], d[max(t - 1, 0)], d[t]])
        med.append(ndimage.median_filter(w, size=3, mode="nearest")[1])
        gw = np.stack([med[max(t - 1, 0)], med[t], med[t]])
        g = ndimage.correlate(gw, k3, mode="nearest")[1]
        k = g > cfg.tau
        if cfg.tau2 is not None and ref is not None:
            k |= _trimmed(lat[t], ref) > cfg.tau2
        keep.append(k.astype(np.float64))
        kw = np.stack([keep[max(t - 2, 0)], keep[max(t - 1, 0)], keep[t]])
        maj = ndimage.median_filter(kw, size=3, mode="nearest")[1]
        o = ndimage.grey_closing(
            ndimage.grey_opening(maj, size=(3, 3), mode="nearest"), size=(3, 3), mode="nearest"
        )
        oc.append(o > 0.5)
        m = ndimage.binary_dilation(oc[t], structure=box) | ndimage.binary_dilation(
            oc[max(t - 1, 0)], structure=box
        )
        if cfg.min_keep_ratio:
            while 0 < m.sum() < cfg.min_keep_ratio * m.size:
                m = ndimage.binary_dilation(m, structure=np.ones((3, 3), bool))
        if cfg.floor is not None:  # the hard floor: against the predecessor and the drift reference
            changed = _peak(lat[t], lat[max(t - 1, 0)]) > cfg.floor
            if ref is not None:
                changed |= _peak(lat[t], ref) > cfg.floor
            margin = min(FLOOR_MARGIN, r)
            m |= (
                ndimage.binary_dilation(changed, structure=np.ones((2 * margin + 1,) * 2, bool))
                if margin
                else changed
            )
        if t < f:
            m = np.ones_like(m)
        out.append(m)
        if t % f == f - 1:  # end of block: the drift reference takes the inputs the output was computed from
            cur_ref = lat[0] if ref is None else ref
            for j in range(t - f + 1, t + 1):
                up = np.repeat(np.repeat(out[j], 2, 0), 2, 1)[None]
                cur_ref = np.where(up, lat[j], cur_ref)
            ref = cur_ref
    return np.stack(out)


def _moving_latents(t: int, seed: int = 0) -> torch.Tensor:
    """[T, 16, 16, 24] smooth background, a moving bright square, a flickering region and slow global drift."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.randn(16, 20, 28, generator=g)[None], 5, 1)[0] * 2
    frames = []
    for i in range(t):
        x = base.clone() + 0.01 * i  # slow drift (caught by tau2 over time)
        c = 2 + i
        x[:, 4:10, c : c + 6] += 1.5
        x[:, 10:16, 2:8] += torch.randn(16, 6, 6, generator=g)  # flicker: changes every frame
        x += 0.02 * torch.randn(x.shape, generator=g)
        frames.append(x)
    return torch.stack(frames)


@pytest.mark.parametrize(
    "cfg",
    [
        LiparConfig(tau=0.1, tau2=0.3),
        LiparConfig(tau=0.1, tau2=0.3, floor=None),
        LiparConfig(tau=0.05, tau2=None, dilation=1, floor=1.0),
        LiparConfig(tau=0.1, tau2=0.15, min_keep_ratio=0.35),
    ],
)
def test_streaming_mask_equals_reference(cfg: LiparConfig) -> None:
    geo = StreamGeometry(height=128, width=192)
    f = geo.latent_frames_per_block
    lat = _moving_latents(5 * f)
    masker = PruneMasker(cfg, geo)
    got = [masker(lat[None, b * f : (b + 1) * f], force_full=b == 0)[0] for b in range(5)]
    ours = torch.cat(got).numpy()
    ref = reference_mask(lat.numpy(), f, cfg)
    assert ours.shape == ref.shape == (15, 8, 12)
    assert np.array_equal(ours, ref), f"{(ours != ref).sum()} tokens differ"
    # Not a degenerate mask: some tokens are pruned and some kept after the first block.
    later = ours[f:]
    assert 0 < later.mean() < 1


def test_static_content_is_pruned_and_moving_kept() -> None:
    geo = StreamGeometry(height=128, width=192)
    f = geo.latent_frames_per_block
    lat = _moving_latents(4 * f)
    masker = PruneMasker(LiparConfig(tau=0.1, tau2=None, dilation=0), geo)
    blocks = [masker(lat[None, b * f : (b + 1) * f], force_full=b == 0)[0] for b in range(4)]
    last = blocks[-1][-1]  # frame 11
    assert last[5:8, 1:4].all()  # the flickering region (latent rows 10..15, cols 2..7)
    assert not last[6:, 6:].any()  # static background: pruned


def test_reset_forgets_history() -> None:
    geo = StreamGeometry(height=128, width=192)
    lat = _moving_latents(6)
    a = PruneMasker(LiparConfig(), geo)
    a(lat[None, :3], force_full=True)
    a.reset()
    fresh = PruneMasker(LiparConfig(), geo)
    torch.testing.assert_close(a(lat[None, 3:], force_full=False), fresh(lat[None, 3:], force_full=False))


def test_reset_keeps_history_buffers_for_the_next_stream() -> None:
    """After a reset the next stream's masks equal a fresh masker's, and its history lives in the same tensors
    as before (a CUDA graph captured over them stays valid: no capture per stream start)."""
    geo = StreamGeometry(height=128, width=192)
    f = geo.latent_frames_per_block
    lat = _moving_latents(4 * f)
    other = torch.flip(lat, dims=[-1]) * 0.5
    m = PruneMasker(LiparConfig(), geo)
    for b in range(2):
        m(lat[None, b * f : (b + 1) * f], force_full=b == 0)
    before = [t.data_ptr() for t in m._state_buffers()]
    m.reset()
    fresh = PruneMasker(LiparConfig(), geo)
    for b in range(4):
        blk = other[None, b * f : (b + 1) * f]
        assert torch.equal(m(blk, force_full=b == 0), fresh(blk, force_full=b == 0))
        if b == 0:
            assert [t.data_ptr() for t in m._state_buffers()] == before


def test_external_and_pixel_sources() -> None:
    geo = StreamGeometry(height=64, width=64)
    masker = PruneMasker(LiparConfig(mask_source="external"), geo)
    ext = torch.zeros(12, 64, 64)
    ext[5, 20:24, 40:44] = 1  # pixel frame 5 -> latent frame 1, token rows 20//16 = 1, cols 40//16 = 2
    keep = masker(torch.zeros(1, 3, 16, 8, 8), external=ext)[0]
    assert keep.sum() == 1 and keep[1, 1, 2]
    with pytest.raises(ValueError, match="external"):
        masker(torch.zeros(1, 3, 16, 8, 8))
    geo = StreamGeometry(height=128, width=128)
    pix = PruneMasker(LiparConfig(mask_source="pixel", tau_pixel=0.05, tau2=0.3, dilation=0), geo)
    frames = torch.zeros(1, 12, 3, 128, 128)
    pix(torch.zeros(1, 3, 16, 16, 16), pixels=frames, force_full=True)
    moved = frames.clone()
    moved[:, :, :, 64:, 64:] = (
        1.0  # bottom-right quadrant (tokens 4..7) changes at the next block's first frame
    )
    keep = pix(torch.zeros(1, 3, 16, 16, 16), pixels=moved)[0]
    # A step change is caught at once by the floor (tokens 4..7) with its one-token margin (3..7), whatever the
    # dilation; the paper's filters alone catch it by the drift check once it persisted 2 frames.
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[3:, 3:] = True
    assert torch.equal(keep[0], expected) and torch.equal(keep[2], expected)
    paper = PruneMasker(
        LiparConfig(mask_source="pixel", tau_pixel=0.05, tau2=0.3, dilation=0, floor_pixel=None), geo
    )
    paper(torch.zeros(1, 3, 16, 16, 16), pixels=frames, force_full=True)
    keep = paper(torch.zeros(1, 3, 16, 16, 16), pixels=moved)[0]
    assert keep[2, 5:, 5:].all() and not keep[2, :4, :4].any() and not keep[0].any()


def _blip_latents(t: int, seed: int = 0) -> torch.Tensor:
    """[T, 16, 16, 24] still smooth background with a one-latent-cell blip (half a token) moving one cell per
    frame along row 7, plus noise well below the floor."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.randn(16, 20, 28, generator=g)[None], 5, 1)[0] * 2
    frames = []
    for i in range(t):
        x = base + 0.01 * torch.randn(base.shape, generator=g)
        x[:, 7, 2 + i] += 1.5
        frames.append(x)
    return torch.stack(frames)


@pytest.mark.parametrize("source", ["latent", "pixel"])
def test_floor_keeps_a_small_mover_the_filters_erase(source: str) -> None:
    """An object of half a token is erased by the median / majority / opening filters; the floor keeps every
    token it touches, in every frame, and nothing else than the dilated neighbourhood of it."""
    geo = StreamGeometry(height=128, width=192)
    f, st = geo.latent_frames_per_block, geo.vae_stride[0]
    blocks = 4
    if source == "latent":
        lat = _blip_latents(blocks * f)
        pixels = None
        where = [(7 // 2, (2 + t) // 2) for t in range(blocks * f)]  # token of the blip in latent frame t
    else:
        lat = torch.zeros(blocks * f, 16, 16, 24)
        g = torch.Generator().manual_seed(0)
        pixels = torch.rand(1, 3, 128, 192, generator=g).expand(blocks * f * st, -1, -1, -1).clone()
        side = 8  # half a token: 16 pixels
        for i in range(blocks * f * st):
            x0 = 20 + 2 * i
            pixels[i, :, 60 : 60 + side, x0 : x0 + side] = 1.0
        where = [(60 // 16, (20 + 2 * (t * st + st - 1)) // 16) for t in range(blocks * f)]

    def run(cfg: LiparConfig) -> torch.Tensor:
        m = PruneMasker(cfg, geo)
        out = []
        for b in range(blocks):
            px = pixels[None, b * f * st : (b + 1) * f * st] if pixels is not None else None
            out.append(m(lat[None, b * f : (b + 1) * f], pixels=px, force_full=b == 0)[0])
        return torch.cat(out)

    on = run(LiparConfig(mask_source=source, tau2=None))  # type: ignore[arg-type]
    off = run(LiparConfig(mask_source=source, tau2=None, floor=None, floor_pixel=None))  # type: ignore[arg-type]
    later = range(f, blocks * f)
    assert not off[f:].any(), "the filters alone keep the small mover: the test lost its point"
    assert all(on[t][where[t]] for t in later), [bool(on[t][where[t]]) for t in later]
    # Only the mover's neighbourhood is kept (dilation radius 2 around this and the previous position).
    assert all(on[t].sum() <= 2 * (2 * 2 + 2) ** 2 for t in later), [int(on[t].sum()) for t in later]


@pytest.mark.parametrize("token_hw", [(2, 2), (16, 16)])
def test_latest_kept_equals_the_frame_by_frame_update(token_hw: tuple[int, int]) -> None:
    """The drift reference after a block: per token, the last frame that kept it, else the old reference; the
    same as updating it frame by frame (the straightforward rule), bit for bit."""
    g = torch.Generator().manual_seed(0)
    th, tw = token_hw
    cur = torch.randn(2, 4, 3, 5 * th, 7 * tw, generator=g)
    ref = torch.randn(2, 1, 3, 5 * th, 7 * tw, generator=g)
    keep = torch.rand(2, 4, 5, 7, generator=g) > 0.6
    keep[:, :, 0, 0] = False  # a token no frame kept keeps the old reference
    want = ref
    for t in range(4):
        kt = keep[:, t].repeat_interleave(th, 1).repeat_interleave(tw, 2)[:, None, None]
        want = torch.where(kt, cur[:, t : t + 1], want)
    got = latest_kept(cur, keep, token_hw, ref)
    assert got.is_contiguous() and torch.equal(got, want)
    assert torch.equal(got[..., :th, :tw], ref[..., :th, :tw])


@needs_cxx
@torch.no_grad()
@pytest.mark.parametrize("source", ["latent", "pixel"])
def test_compiled_mask_block_equals_eager(source: str) -> None:
    """The compiled mask (what the GPU's mask graph captures, ``compile_mask``) compiles as one graph
    (``fullgraph``: no break that a CUDA graph capture would trip on) and gives the eager masks, kept orders and
    history, block after block (steady-state blocks, as on the GPU). Other thresholds (a session's override) reuse
    the compiled graph: no compilation while a stream runs."""
    from torch._dynamo.utils import counters

    geo = StreamGeometry(height=128, width=192)
    cfg = LiparConfig(mask_source=source, floor_pixel=0.2, floor=0.25)
    other = LiparConfig(mask_source=source, floor_pixel=0.3, floor=0.5, tau=0.2, tau_pixel=0.05, tau2=0.2)
    params = MaskParams.of(cfg, geo)
    assert MaskParams.of(other, geo) == params  # thresholds are not structure
    gauss = gaussian_causal_kernel(1.5)
    f, n = geo.latent_frames_per_block, geo.pixel_frames_per_block
    frames = _pixel_blips(5 * n) if source == "pixel" else _moving_latents(5 * f)
    step = n if source == "pixel" else f
    compiled = compiled_mask_block()
    kept = []
    graphs: list[int] = []
    for levels in (mask_levels(cfg), mask_levels(other)):
        hist_e = hist_c = MaskHistory()
        for b in range(5):
            src = frames[None, b * step : (b + 1) * step]
            fn = compiled if b >= 2 else mask_block  # a stream's first two blocks run eagerly on the GPU too
            out_c, hist_c = fn(src, hist_c, params, gauss, levels)
            out_e, hist_e = mask_block(src, hist_e, params, gauss, levels)
            assert torch.equal(out_c.keep, out_e.keep), f"block {b}"
            assert torch.equal(out_c.order, out_e.order) and int(out_c.n_kept) == int(out_e.keep[0].sum())
            for c, e in zip(hist_c, hist_e, strict=True):
                assert c is not None and e is not None
                torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)
            kept.append(float(out_e.keep.float().mean()))
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[0], "the other thresholds compiled again"
    assert 0 < sum(kept[1:5]) / 4 < 1  # not a degenerate mask
    assert kept[5:] != kept[:5]  # the other thresholds did change the masks


def _pixel_blips(t: int) -> torch.Tensor:
    """[T, 3, 128, 192] pixel frames in [0, 1]: a noisy still, a moving 12-pixel square and a flicker."""
    g = torch.Generator().manual_seed(3)
    base = torch.nn.functional.avg_pool2d(torch.rand(3, 136, 200, generator=g)[None], 9, 1)[0]
    frames = []
    for i in range(t):
        x = base.clone() + 0.01 * torch.randn(base.shape, generator=g)
        x[:, 40:52, 8 + 6 * i : 20 + 6 * i] = 0.95
        if i % 3 == 0:
            x[:, 96:128, 150:190] += 0.3
        frames.append(x.clamp(0, 1))
    return torch.stack(frames)
