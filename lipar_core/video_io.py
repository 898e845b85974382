"""Video file input and output through PyAV, one frame at a time (nothing holds a whole clip in memory).

Geometry: nothing here distorts a picture. Frames of another aspect ratio than the model's are centre-cropped
to its aspect (:func:`centre_crop_box`) before they are resized; frames stored with non-square pixels (a sample
aspect ratio other than 1, e.g. CIF 176x144 at 128:117) can be read at their display shape
(``read_frames(..., square_pixels=True)``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import cast

import av
import numpy as np
import torch


def centre_crop_box(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The largest centred region of an h x w frame with the aspect ratio of width x height (pixels).

    Returns:
        (top, left, crop height, crop width) in pixels of the h x w frame; the whole frame when the aspects agree.
    """
    target = width / height
    if w / h > target:
        cw = round(h * target)
        return 0, (w - cw) // 2, h, cw
    if w / h < target:
        ch = round(w / target)
        return (h - ch) // 2, 0, ch, w
    return 0, 0, h, w


def crop_size_at_input_scale(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) in pixels of the part of an h x w frame a height x width model sees
    (:func:`centre_crop_box`), rounded down to even numbers (yuv420p video): the size at which that part is
    shown at the input's own resolution. The input's size when the aspects agree (up to that rounding)."""
    _, _, ch, cw = centre_crop_box(h, w, height, width)
    return max(2, ch - ch % 2), max(2, cw - cw % 2)


def fit_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop float frames [..., C, H, W] to the target aspect ratio (:func:`centre_crop_box`), then resize
    (bilinear, antialiased) to [..., C, height, width]: never a change of aspect ratio (beyond the rounding of
    the crop to whole pixels). Frames already at the target size are returned as they are."""
    h, w = frames.shape[-2:]
    if (h, w) == (height, width):
        return frames
    top, left, ch, cw = centre_crop_box(h, w, height, width)
    frames = frames[..., top : top + ch, left : left + cw]
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


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a file.

    Attributes:
        frames: frame count if the container knows it, else None.
        rate: frames per second.
        width, height: the frame size in pixels as stored.
        sample_aspect: the width of a stored pixel over its height (1 = square pixels).
    """

    frames: int | None
    rate: Fraction
    width: int
    height: int
    sample_aspect: Fraction = Fraction(1)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) of the frames with square pixels, as :func:`read_frames` with ``square_pixels``
        returns them (the stored width scaled by the sample aspect ratio)."""
        return _square_width(self.width, self.sample_aspect), self.height


def _square_width(width: int, sample_aspect: Fraction) -> int:
    return max(1, round(width * sample_aspect))


def _sample_aspect(stream: av.VideoStream) -> Fraction:
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return Fraction(sar) if sar else Fraction(1)  # 0/1 or None: unknown, taken as square


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count (if the container knows it), frame rate, size and pixel aspect of a video file.

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
            return VideoInfo((s.frames or None), Fraction(rate), s.width, s.height, _sample_aspect(s))
    except VideoInputError:
        raise
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoInputError(f"input {p} is not a readable video: {e}") from None


def read_frames(path: str | Path, square_pixels: bool = False) -> Iterator[np.ndarray]:
    """Decode RGB frames, each uint8 [H, W, 3].

    Args:
        path: the video file.
        square_pixels: for a stream with non-square pixels (sample aspect ratio s != 1), resize each frame's
            width by s (bicubic), so that shapes in the frame have their displayed proportions; otherwise the
            frames are returned as stored.
    Raises:
        VideoInputError: the file is not a decodable video.
    """
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            sar = _sample_aspect(stream) if square_pixels else Fraction(1)
            for frame in c.decode(stream):
                if sar != 1:
                    w = _square_width(frame.width, sar)
                    yield frame.reformat(w, frame.height, "rgb24", interpolation="BICUBIC").to_ndarray()
                else:
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


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB image (uint8 [H, W, 3], even H and W not needed) as a PNG file through PyAV (no imaging
    library needed)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height = image.shape[1], image.shape[0]
        stream.pix_fmt = "rgb24"
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
