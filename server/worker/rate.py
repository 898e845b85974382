"""The input frame rate a worker's model sustains for one session, measured at warm-up. Pure functions.

A worker times a few steady blocks before it takes sessions (:class:`server.worker.editors.LiparEditorFactory`);
from their wall times this module derives the camera rate the page should ask for (``GET /v1/model``
``input_fps``): a camera faster than the model only makes the server decode frames it then throws away (issue 16:
on the 2-core CPU default a 30 fps camera gave fewer frames and more latency than a 15 fps one).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

#: the share of the measured rate the page asks for: room for the codecs, the network and block-time jitter
HEADROOM = 0.9
#: no camera is asked for more (the page's rate before this was measured, and the usual webcam maximum), fps
MAX_INPUT_FPS = 30.0
#: nor less: below this a live edit is a slide show anyway, and a stall in the warm-up must not drive the rate
#: to nothing, fps
MIN_INPUT_FPS = 5.0


def input_rate(
    frames_per_block: int,
    block_seconds: Sequence[float],
    *,
    headroom: float = HEADROOM,
    floor_fps: float = MIN_INPUT_FPS,
    cap_fps: float = MAX_INPUT_FPS,
) -> float:
    """The input frame rate one session's blocks sustain, fps: ``frames_per_block`` pixel frames per median
    block time, times ``headroom``, then limited to ``[floor_fps, cap_fps]``; rounded to 0.1 fps.

    Args:
        frames_per_block: pixel frames one block consumes.
        block_seconds: wall times of steady blocks (not a first block, which compiles or fills caches), s. The
            median is used, so one stalled block (a page fault, a garbage collection) does not move the rate.
        headroom: the share of the measured rate to ask for, 0 < headroom <= 1.
        floor_fps: the lowest rate returned, fps.
        cap_fps: the highest rate returned, fps.

    Raises:
        ValueError: no block time, a non-positive one, a non-positive ``frames_per_block``, or bad limits.
    """
    if frames_per_block <= 0:
        raise ValueError(f"frames_per_block must be positive, got {frames_per_block}")
    if not block_seconds:
        raise ValueError("no block times to derive an input rate from")
    if any(not s > 0 for s in block_seconds):
        raise ValueError(f"block times must be positive seconds, got {list(block_seconds)}")
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom}")
    if not 0 < floor_fps <= cap_fps:
        raise ValueError(f"need 0 < floor_fps <= cap_fps, got {floor_fps} and {cap_fps}")
    sustained = frames_per_block / statistics.median(block_seconds)
    return round(min(cap_fps, max(floor_fps, headroom * sustained)), 1)


def slowest_rate(rates: Sequence[float | None]) -> float | None:
    """The rate every worker sustains: the minimum of those measured, fps; None when none is measured yet."""
    known = [r for r in rates if r is not None]
    return min(known) if known else None
