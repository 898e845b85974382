"""Video file input and output through PyAV, one frame at a time (nothing holds a whole clip in memory)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import cast

import av
import numpy as np
import torch


def fit_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop float frames [..., C, H, W] to the target aspect ratio, then resize (bilinear, antialiased)
    to [..., C, height, width]. Frames already at the target size are returned as they are."""
    h, w = frames.shape[-2:]
    if (h, w) == (height, width):
        return frames
    target = width / height
    if w / h > target:
        cw = round(h * target)
        frames = frames[..., (w - cw) // 2 : (w - cw) // 2 + cw]
    elif w / h < target:
        ch = round(w / target)
        frames = frames[..., (h - ch) // 2 : (h - ch) // 2 + ch, :]
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = torch.nn.functional.interpolate(
        flat, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    return out.reshape(*lead, *out.shape[-3:])


def fit_uint8_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, height, width, 3] through :func:`fit_frames`."""
    x = fit_frames(frames.permute(0, 3, 1, 2).float(), height, width)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class VideoInputError(ValueError):
    """The input cannot be read as a video (missing, unreadable, no video stream, corrupt)."""


class VideoOutputError(OSError):
    """The output cannot be written."""


def probe_video(path: str | Path) -> tuple[int | None, Fraction]:
    """(frame count if the container knows it, frame rate) of a video file.

    Raises:
        VideoInputError: with a one-line reason.
    """
    p = Path(path)
    if not p.exists():
        raise VideoInputError(f"input {p} does not exist")
    if not p.is_file():
        raise VideoInputError(f"input {p} is not a file")
    if not os.access(p, os.R_OK):
        raise VideoInputError(f"input {p} is not readable (permission denied)")
    try:
        with av.open(str(p)) as c:
            if not c.streams.video:
                raise VideoInputError(f"input {p} has no video stream")
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate or Fraction(30, 1)
            return (s.frames or None), Fraction(rate)
    except VideoInputError:
        raise
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoInputError(f"input {p} is not a readable video: {e}") from None


def read_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decode RGB frames, each uint8 [H, W, 3].

    Raises:
        VideoInputError: the file is not a decodable video.
    """
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in c.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError) as e:
        raise VideoInputError(f"input {path} could not be decoded: {e}") from None


class VideoWriter:
    """Writes an H.264 MP4 atomically: frames go to a temporary file in the target directory, which is renamed
    to the target on a clean :meth:`close` and deleted on error, so no partial output is ever left behind.

    Args:
        path: target .mp4 path.
        fps: frame rate.
        width, height: frame size in pixels (even numbers for yuv420p).
    Raises:
        VideoOutputError: the directory does not exist or is not writable.
    """

    def __init__(self, path: str | Path, fps: Fraction, width: int, height: int, crf: int = 18) -> None:
        self.path = Path(path)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if self.path.exists() and self.path.is_dir():
            raise VideoOutputError(f"output {self.path} is a directory")
        if not parent.is_dir():
            raise VideoOutputError(f"output directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise VideoOutputError(f"output directory {parent} is not writable (permission denied)")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".mp4.part", dir=parent)
        except OSError as e:
            raise VideoOutputError(f"cannot write to {parent}: {e.strerror or e}") from None
        os.close(fd)
        self._tmp = Path(tmp)
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = cast(av.VideoStream, self._container.add_stream(codec, rate=fps))
        self._stream.width = width
        self._stream.height = height
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.frames_written = 0
        self._closed = False

    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        """Append frames, uint8 [T, H, W, 3] RGB."""
        arr = frames.numpy() if isinstance(frames, torch.Tensor) else frames
        for f in arr:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            for pkt in self._stream.encode(vf):
                self._container.mux(pkt)
            self.frames_written += 1

    def close(self) -> None:
        """Flush and move the file into place."""
        if self._closed:
            return
        self._closed = True
        try:
            for pkt in self._stream.encode():
                self._container.mux(pkt)
            self._container.close()
            os.replace(self._tmp, self.path)
        except (av.FFmpegError, OSError) as e:
            self._tmp.unlink(missing_ok=True)
            raise VideoOutputError(f"cannot write {self.path}: {e}") from None

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(av.FFmpegError, OSError):
            self._container.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
