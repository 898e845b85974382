"""LIPAR fidelity (issue 14): what moved is recomputed, what stood still is pruned, small movers stay visible.

The fidelity set, on the ``tiny`` preset's geometry (a token covers autoencoder stride x patch pixels, derived):

- movers: a flat square of 0.5 to 8 tokens, moving 1 to 16 pixels per frame (bouncing between the borders), of
  low or high contrast (its colour is the background's mean colour offset by 0.2 or 0.6 per channel), over
  real stills (scikit-image ``astronaut`` and ``coffee``);
- a still scene of each background;
- each clean, with webcam-level noise (Gaussian, sigma 3/255, every frame), and after camera noise (sigma
  2/255) and a VP8 round trip (PyAV ``libvpx``) at the server's default bitrate scaled to the scene's pixel
  count from the 832x480 stream the page captures (the same bits per pixel; harsher than the real path, which
  downscales the decoded camera frames to the model and averages artefacts away).

Measured: the mask's recall (tokens whose clean input changed above the preset's ``floor_pixel`` level,
:func:`~lipar_core.lipar.mask.input_changed`, that the mask kept) for both mask sources, the prune ratio of
the still scenes, and, with the real :class:`~lipar_core.editor.StreamEditor`, how much the output changes
where a mover passes with LIPAR against without (a frozen mover changes the output by a fraction of it).
With the floor off (the masker without it) the recall falls to 37-76 % and every editor case fails (the mover
freezes: 12-34 % less change per frame, ~96 % less per latent frame): the tests fail when the behaviour breaks.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import av
import numpy as np
import pytest
import torch

from lipar_core.editor import StreamEditor
from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.config import LiparConfig, MaskSource
from lipar_core.lipar.mask import PruneMasker, input_changed
from lipar_core.presets import EditorModels, get_preset_config, load_preset
from lipar_core.video_io import fit_frames
from server.settings import Settings

log = logging.getLogger(__name__)

PRESET = "tiny"
CAPTURE_PRESET = "self-forcing-1.3b"  # its stream size, 832x480, is also what the page captures (rtc.js)
CAMERA_FPS = 30  # the page's capture rate (client_web/rtc.js CAPTURE)
BACKGROUNDS = ("astronaut", "coffee")
SIZES = (0.5, 1, 2, 4, 8)  # tokens
SPEEDS = (1, 4, 16)  # model pixels per frame
CONTRASTS = (0.2, 0.6)  # per channel, from the background's mean colour
NOISE_SIGMA = 3 / 255  # webcam-level sensor noise
CAMERA_SIGMA = 2 / 255  # sensor noise under the VP8 round trip
BLOCKS = 3  # per scene of the mask tests; the first block is computed whole, the others are measured
# per scene of the editor tests: the first block is unpruned, so the output change is measured over the 3 pruned
# blocks after it (with 1 pruned block, one block's chance decided it: the fast faint mover on the run 8 model
# gave +25 % over 4 frames and +8.5 % over 12)
EDIT_BLOCKS = 4
MIN_RECALL = 0.99
MIN_STILL_PRUNE = {"noise": 0.8, "vp8": 0.7}
OUTPUT_TOLERANCE = 0.1  # output change where a mover passes: within 10 % of the unpruned output's
MIN_SAME_PHASE_CHANGE = 0.5  # the same over one latent frame: at least half of it (a frozen mover: ~4 %)


@dataclass(frozen=True)
class Mover:
    """A flat square crossing a still background."""

    size: float  # side in tokens
    speed: int  # model pixels per frame
    contrast: float  # colour offset from the background's mean, per channel, in [0, 1]
    background: str

    def __str__(self) -> str:
        return f"{self.size:g}tok-{self.speed}px-c{self.contrast:g}-{self.background}"


@pytest.fixture(scope="module")
def models() -> EditorModels:
    return load_preset(PRESET)


def token_pixels(geo: StreamGeometry) -> int:
    """A token's side in model pixels (autoencoder spatial stride x DiT patch)."""
    return geo.vae_stride[1] * geo.patch[1]


@cache
def background(name: str, geo: StreamGeometry) -> torch.Tensor:
    """A scikit-image still centre-cropped and resized to the model: [3, H, W] float in [0, 1] (shared: do not
    modify)."""
    from skimage import data

    img = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1).float() / 255
    return fit_frames(img, geo.height, geo.width)


def mover_boxes(mover: Mover, geo: StreamGeometry, frames: int) -> list[tuple[int, int, int]]:
    """(top, left, side) of the square in each frame, model pixels: it crosses the frame's middle row
    left-right and back, starting a third of the way (side 0: no square)."""
    side = round(mover.size * token_pixels(geo))
    travel = geo.width - side
    top = (geo.height - side) // 2
    boxes = []
    for i in range(frames):
        p = (travel // 3 + mover.speed * i) % (2 * travel) if travel > 0 else 0
        boxes.append((top, p if p <= travel else 2 * travel - p, side))
    return boxes


def render(mover: Mover, geo: StreamGeometry, frames: int) -> torch.Tensor:
    """The clean scene: [T, 3, H, W] float in [0, 1]."""
    bg = background(mover.background, geo)
    mean = bg.mean(dim=(1, 2))
    colour = torch.where(mean < 0.5, mean + mover.contrast, mean - mover.contrast).clamp(0, 1)
    out = bg.expand(frames, -1, -1, -1).clone()
    for i, (top, left, side) in enumerate(mover_boxes(mover, geo, frames)):
        out[i, :, top : top + side, left : left + side] = colour[:, None, None]
    return out


def add_noise(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Independent Gaussian noise per pixel and frame, clipped to [0, 1] and quantised to 8 bits."""
    g = torch.Generator().manual_seed(seed)
    return ((x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1) * 255).round() / 255


def vp8_bitrate(geo: StreamGeometry) -> int:
    """The server's default bitrate at the bits per pixel it has for the captured stream."""
    cap = _preset_stream(CAPTURE_PRESET)
    default = int(Settings.model_fields["video_bitrate"].default)
    return round(default * geo.height * geo.width / (cap[0] * cap[1]))


@cache
def _preset_stream(name: str) -> tuple[int, int]:
    s = get_preset_config(name).stream
    return s.height, s.width


def vp8_round_trip(x: torch.Tensor, bitrate: int) -> torch.Tensor:
    """Encode [T, 3, H, W] in [0, 1] with libvpx (real-time settings, as a browser does) and decode it."""
    if "libvpx" not in av.codecs_available:
        pytest.skip("PyAV has no libvpx encoder")
    frames = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as c:
        s = c.add_stream("libvpx", rate=CAMERA_FPS)
        s.width, s.height, s.pix_fmt, s.bit_rate = x.shape[-1], x.shape[-2], "yuv420p", bitrate
        s.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    buf.seek(0)
    with av.open(buf) as c:
        out = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert out.shape[0] == x.shape[0]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


def degrade(x: torch.Tensor, kind: str, geo: StreamGeometry) -> torch.Tensor:
    if kind == "clean":
        return x
    if kind == "noise":
        return add_noise(x, NOISE_SIGMA)
    return vp8_round_trip(add_noise(x, CAMERA_SIGMA), vp8_bitrate(geo))


def block_masks(models: EditorModels, cfg: LiparConfig, frames: torch.Tensor) -> torch.Tensor:
    """The masker of a stream (first block forced whole, as the editor does): [L, gh, gw] bool."""
    geo = models.geometry
    n = geo.pixel_frames_per_block
    masker = PruneMasker(cfg, geo)
    enc = models.autoencoder.encoder_stream() if cfg.mask_source == "latent" else None
    out = []
    with torch.no_grad():
        for b in range(frames.shape[0] // n):
            px = frames[None, b * n : (b + 1) * n]
            lat = (
                enc(px.to(models.autoencoder_dtype)).float()
                if enc
                else torch.zeros(1, *geo.latent_block_shape)
            )
            out.append(masker(lat, pixels=px, force_full=b == 0)[0])
    return torch.cat(out)


def changed_truth(geo: StreamGeometry, clean: torch.Tensor, level: float) -> torch.Tensor:
    """Tokens whose clean input changed above ``level``: [L, gh, gw] bool."""
    n = geo.pixel_frames_per_block
    out = []
    for b in range(clean.shape[0] // n):
        before = clean[None, b * n - 1 : b * n] if b else None
        out.append(input_changed(clean[None, b * n : (b + 1) * n], before, geo, level)[0])
    return torch.cat(out)


def _movers(step: int = 1, start: int = 0) -> list[Mover]:
    """Every ``step``-th mover of the grid sizes x speeds x contrasts x backgrounds (a step prime to 2 and 3
    visits every size, speed, contrast and background)."""
    grid = itertools.product(SIZES, SPEEDS, CONTRASTS, BACKGROUNDS)
    return [Mover(*m) for m in grid][start::step]


# Which movers each mask source is measured on (plus the still scenes): the pixel source (cheap) on all 60
# clean, a third noisy and a seventh after VP8; the latent source (the autoencoder costs ~0.5 s per block on
# a 2-core CPU) on a seventh clean and three others for each degradation (the half-token fast mover included).
SCENES: dict[MaskSource, dict[str, list[Mover]]] = {
    "pixel": {"clean": _movers(), "noise": _movers(3, 1), "vp8": _movers(7, 2)},
    "latent": {"clean": _movers(7), "noise": _movers(19, 3), "vp8": _movers(23, 10)},
}


@cache
def _scene(mover: Mover | str, kind: str, geo: StreamGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, degraded) frames [T, 3, H, W] of a mover or a still background (by name)."""
    t = BLOCKS * geo.pixel_frames_per_block
    if isinstance(mover, str):
        clean = background(mover, geo).expand(t, -1, -1, -1).contiguous()
    else:
        clean = render(mover, geo, t)
    return clean, degrade(clean, kind, geo)


@pytest.mark.parametrize("source", ["pixel", "latent"])
def test_mask_recalls_every_change_and_prunes_still_scenes(models: EditorModels, source: MaskSource) -> None:
    """Recall >= 99 % of changed tokens on every degradation; still scenes prune >= 80 % (noise) / 70 % (VP8)."""
    geo = models.geometry
    cfg = LiparConfig.model_validate({**models.config.lipar, "mask_source": source})
    level = models.config.lipar.floor_pixel  # the stated level of "changed clearly", pixel units
    assert level is not None
    first = geo.latent_frames_per_block  # the first block is computed whole: not measured
    failures = []
    for kind, movers in SCENES[source].items():
        hits = total = 0
        missed: list[str] = []
        for mover in movers:
            clean, seen = _scene(mover, kind, geo)
            keep = block_masks(models, cfg, seen)[first:]
            truth = changed_truth(geo, clean, level)[first:]
            h, t = int((keep & truth).sum()), int(truth.sum())
            assert t > 0, f"{mover}: nothing changed above {level}: the scene lost its point"
            hits, total = hits + h, total + t
            if h < t:
                missed.append(f"{mover} {t - h}/{t}")
        recall = hits / total
        prune = {}
        for name in BACKGROUNDS:
            _, seen = _scene(name, kind, geo)
            prune[name] = 1.0 - float(block_masks(models, cfg, seen)[first:].float().mean())
        log.info(
            "%s source, %s: recall %.4f (%d of %d changed tokens), still-scene prune ratio %s; missed: %s",
            source,
            kind,
            recall,
            hits,
            total,
            {k: round(v, 3) for k, v in prune.items()},
            missed or "none",
        )
        if recall < MIN_RECALL:
            failures.append(f"{kind}: recall {recall:.4f} < {MIN_RECALL}; missed {missed}")
        low = {k: v for k, v in prune.items() if v < MIN_STILL_PRUNE.get(kind, 0.0)}
        if low:
            failures.append(f"{kind}: still scenes prune only {low}")
    assert not failures, "; ".join(failures)


def _box_mask(shape: tuple[int, int], *boxes: tuple[int, int, int]) -> torch.Tensor:
    where = torch.zeros(shape, dtype=torch.bool)
    for top, left, side in boxes:
        where[top : top + side, left : left + side] = True
    return where


def output_change(frames: torch.Tensor, boxes: list[tuple[int, int, int]], start: int, lag: int = 1) -> float:
    """How much the output changes where the mover passes: mean |frame_i - frame_(i-lag)| (0-255) over the
    pixels the mover covers in frame i or i - lag, frames i from ``start`` on. frames: uint8 [T, H, W, 3].

    ``lag`` 1 is the issue's measure. The demo model's decoder also changes every frame a little with a period
    of its temporal stride (each latent frame becomes that many pixel frames), mover or not, which hides part of
    a frozen mover from it; ``lag`` = the stride compares frames at the same phase of that pattern, where a
    frozen mover leaves almost no change at all."""
    x = frames.float()
    total, count = 0.0, 0
    for i in range(max(start, lag), x.shape[0]):
        d = (x[i] - x[i - lag]).abs().mean(dim=-1)[_box_mask(x.shape[1:3], boxes[i], boxes[i - lag])]
        total, count = total + float(d.sum()), count + d.numel()
    return total / count


PROMPT = "thermal camera"  # a style the demo model knows (the case)


EditRun = Callable[[Mover, LiparConfig], tuple[torch.Tensor, float]]


@pytest.fixture(scope="module")
def edited(models: EditorModels) -> EditRun:
    """(mover, settings) -> the editor's output of the mover scene, uint8 [T, H, W, 3], and its mean prune ratio
    after the first block; each run once per module (the unpruned runs serve every mask source)."""
    runs: dict[tuple[Mover, LiparConfig], tuple[torch.Tensor, float]] = {}

    def run(mover: Mover, lipar: LiparConfig) -> tuple[torch.Tensor, float]:
        if (mover, lipar) not in runs:
            runs[mover, lipar] = _run_editor(models, mover, lipar)
        return runs[mover, lipar]

    return run


def _run_editor(models: EditorModels, mover: Mover, lipar: LiparConfig) -> tuple[torch.Tensor, float]:
    geo = models.geometry
    scene = render(mover, geo, EDIT_BLOCKS * geo.pixel_frames_per_block)
    frames = (scene * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    ed = StreamEditor(models, PROMPT, seed=0, lipar=lipar)
    n = ed.frames_per_block
    outs, ratios = [], []
    for b in range(frames.shape[0] // n):
        out, st = ed.process_block(frames[b * n : (b + 1) * n])
        outs.append(out)
        ratios.append(st.prune_ratio)
    return torch.cat(outs), float(np.mean(ratios[1:]))


@pytest.mark.parametrize(
    ("mover", "source"),
    [
        (Mover(1, 4, 0.6, "coffee"), "pixel"),
        (Mover(1, 16, 0.2, "astronaut"), "pixel"),
        (Mover(1, 1, 0.2, "astronaut"), "pixel"),
        (Mover(2, 4, 0.6, "coffee"), "pixel"),  # the 60-pixel square at 832x480, on the model's scale
        (Mover(1, 4, 0.6, "coffee"), "latent"),
    ],
    ids=str,
)
def test_small_mover_stays_visible_in_the_output(
    models: EditorModels, edited: EditRun, mover: Mover, source: MaskSource
) -> None:
    """The real editor on the tiny preset: where a mover of a token or more passes, the output changes from frame
    to frame within 10 % as much with LIPAR as without, and over one latent frame at least half as much (a frozen
    mover: 12-34 % and ~96 % less, measured with the floor off), while LIPAR still prunes the rest."""
    geo = models.geometry
    n = geo.pixel_frames_per_block
    base = models.config.lipar
    on, pruned = edited(mover, LiparConfig.model_validate({**base, "mask_source": source}))
    off, _ = edited(mover, LiparConfig.model_validate({**base, "enabled": False}))
    boxes = mover_boxes(mover, geo, EDIT_BLOCKS * n)
    c_on, c_off = output_change(on, boxes, n), output_change(off, boxes, n)
    stride = geo.vae_stride[0]
    s_on, s_off = output_change(on, boxes, n, stride), output_change(off, boxes, n, stride)
    log.info(
        "%s, %s source: where it passes, the output changes %.2f/255 per frame with LIPAR (prune ratio %.3f), "
        "%.2f without; %.2f and %.2f per %d frames",
        mover,
        source,
        c_on,
        pruned,
        c_off,
        s_on,
        s_off,
        stride,
    )
    assert s_off > 2.0, "the unpruned edit hardly changes where the mover passes: the test lost its point"
    assert abs(c_on - c_off) <= OUTPUT_TOLERANCE * c_off, (c_on, c_off)
    assert s_on >= MIN_SAME_PHASE_CHANGE * s_off, (s_on, s_off)  # frozen: a few % of it
    assert pruned > 0.3, pruned  # the rest of the still scene is still pruned
