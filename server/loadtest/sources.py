"""Video sources of ``lipar-loadtest``: what each client session sends. Client worker processes.

- A **clip folder** (``--clips DIR``): every video file in it (:data:`VIDEO_SUFFIXES`), in name order; session
  ``i`` sends clip ``i mod (number of clips)``, looped. Each clip is decoded with PyAV once per process,
  centre-cropped to the send size's aspect ratio and then resized (no distortion).
- The **synthetic** source (no ``--clips``): a deterministic textured still background with a disc moving on
  an ellipse, so that the stream has both still regions (LIPAR prunes them) and moving ones.

Frames are precomputed as packed ``yuv420p`` planes (the format aiortc's VP8 and H.264 encoders take), so
sending a frame costs one small ``av.VideoFrame`` construction and no colour conversion.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".y4m")
SYNTHETIC = "synthetic"  #: the clip name of the synthetic source
SYNTHETIC_PERIOD_S = 4.0  #: the moving disc goes once round its ellipse in this many seconds
YUV = "yuv420p"


class SourceError(ValueError):
    """A clip folder or clip that cannot be used (message says why)."""


@dataclass(frozen=True)
class Clip:
    """A looped clip at the send size: ``frames[i]`` are packed yuv420p planes ``[height * 3 // 2, width]``."""

    name: str
    width: int
    height: int
    frames: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.frames)

    def video_frame(self, k: int) -> av.VideoFrame:
        """Frame ``k`` of the loop as a fresh ``av.VideoFrame`` (pts unset)."""
        return av.VideoFrame.from_ndarray(self.frames[k % len(self.frames)], format=YUV)

    def rgb(self, k: int) -> np.ndarray:
        """Frame ``k`` of the loop as uint8 RGB ``[height, width, 3]`` (for inspection; not used to send)."""
        return self.video_frame(k).to_ndarray(format="rgb24")


def list_clips(folder: Path) -> list[Path]:
    """The video files of ``folder`` (by suffix, case-insensitive), sorted by name.

    Raises:
        SourceError: not a folder, or no video file in it.
    """
    if not folder.is_dir():
        raise SourceError(f"--clips {folder}: not a folder")
    clips = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise SourceError(f"--clips {folder}: no video file ({', '.join(VIDEO_SUFFIXES)}) in it")
    return clips


def crop_box(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The centred ``(x0, y0, w, h)`` of a ``src_w × src_h`` picture with the aspect ratio of ``width × height``
    (the largest such box)."""
    if src_w * height > width * src_h:  # source is wider: crop the sides
        w = max(1, round(src_h * width / height))
        return (src_w - w) // 2, 0, w, src_h
    h = max(1, round(src_w * height / width))
    return 0, (src_h - h) // 2, src_w, h


def fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop uint8 RGB ``[H, W, 3]`` to the aspect of ``width × height``, resize to it, return yuv420p
    planes ``[height * 3 // 2, width]``."""
    x0, y0, w, h = crop_box(rgb.shape[1], rgb.shape[0], width, height)
    crop = np.ascontiguousarray(rgb[y0 : y0 + h, x0 : x0 + w])
    frame = av.VideoFrame.from_ndarray(crop, format="rgb24")
    return frame.reformat(width=width, height=height, format=YUV).to_ndarray()


def load_clip(path: Path, width: int, height: int, max_frames: int) -> Clip:
    """Decode up to ``max_frames`` frames of the first video stream of ``path`` at ``width × height``
    (:func:`fit`).

    Raises:
        SourceError: the file cannot be decoded or has no frame.
    """
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(fit(frame.to_ndarray(format="rgb24"), width, height))
                if len(frames) >= max_frames:
                    break
    except (av.FFmpegError, OSError, IndexError) as e:
        raise SourceError(f"cannot decode {path}: {e}") from e
    if not frames:
        raise SourceError(f"{path}: no video frame")
    log.info("clip %s: %d frames at %dx%d", path.name, len(frames), width, height)
    return Clip(path.name, width, height, frames)


def _texture(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth, detailed still background: float RGB in [0, 1], ``[height, width, 3]``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(width, height)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):  # a few random gratings per channel: texture at several scales
        for _ in range(4):
            freq = rng.uniform(2.0, 24.0) / scale
            theta = rng.uniform(0.0, math.pi)
            phase = rng.uniform(0.0, 2 * math.pi)
            img[..., c] += np.sin(2 * math.pi * freq * (x * math.cos(theta) + y * math.sin(theta)) + phase)
    img = (img - img.min()) / (img.max() - img.min())
    return 0.15 + 0.7 * img


def synthetic_clip(width: int, height: int, fps: float, seed: int) -> Clip:
    """The synthetic source at ``width × height``: one loop of :data:`SYNTHETIC_PERIOD_S` at ``fps``."""
    rng = np.random.default_rng(seed)
    background = _texture(width, height, rng)
    n = max(1, round(SYNTHETIC_PERIOD_S * fps))
    radius = min(width, height) / 8
    cell = max(1.0, radius / 2)  # the disc carries a checkerboard that moves with it
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    frames = []
    for k in range(n):
        phase = 2 * math.pi * k / n
        cx = width / 2 + (width / 2 - 1.5 * radius) * math.cos(phase)
        cy = height / 2 + (height / 2 - 1.5 * radius) * math.sin(phase)
        disc = ((x - cx) ** 2 + (y - cy) ** 2 <= radius**2)[..., None]
        checker = ((x - cx) // cell + (y - cy) // cell) % 2
        obj = colour * (0.5 + 0.5 * checker[..., None])
        rgb = np.where(disc, obj, background)
        frames.append(fit((rgb * 255).round().astype(np.uint8), width, height))
    return Clip(SYNTHETIC, width, height, frames)
