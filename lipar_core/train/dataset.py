"""Training streams: :func:`make_stream` (one stream of a source), :class:`StreamDataset` (a split's streams,
seeded) and :func:`heldout_streams` (the fixed evaluation streams).

Streams are uint8 [T, H, W, 3] RGB with T = blocks * frames_per_block, H and W multiples of
:data:`~lipar_core.train.sources.SIZE_MULTIPLE` pixels; the same arguments give the same stream bit for bit.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import NamedTuple

import torch
from torch.utils.data import IterableDataset, get_worker_info

from lipar_core.train.motion import SyntheticMotion
from lipar_core.train.seeding import bernoulli, randint, source_generator
from lipar_core.train.sources import (
    REAL_CLIPS,
    Split,
    check_positive,
    check_size,
    check_source,
    decoded_clip,
    donor_sources,
    load_still,
    real_clip_window,
    split_sources,
)

logger = logging.getLogger(__name__)

HELDOUT_EVAL_SEED = 20_240_601
"""Seed of the fixed held-out evaluation streams (:func:`heldout_streams`)."""

HELDOUT_EVAL_MOTION: Mapping[str, tuple[bool, int]] = MappingProxyType(
    {"coffee": (False, 2), "camera": (True, 2)}
)
"""(static camera, object count) of each held-out still's evaluation stream: one moving camera, one static
camera with moving objects (static background for the pruning path)."""


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
    check_source(source)
    check_positive("blocks", blocks)
    check_positive("frames_per_block", frames_per_block)
    check_size(height, width)
    frames = blocks * frames_per_block
    g = source_generator(seed, source)
    if source in REAL_CLIPS:
        if static_camera is not None or num_objects is not None:
            raise ValueError(
                f"static_camera / num_objects apply to stills only, not to the real clip {source}"
            )
        length = len(decoded_clip(source, height, width))
        start = randint(g, 0, max(length - frames, 0))
        reverse = bernoulli(g, 0.5)
        hflip = bernoulli(g, 0.5)
        logger.debug(
            "stream %s seed %d: window %d+%d reverse=%s hflip=%s", source, seed, start, frames, reverse, hflip
        )
        return real_clip_window(source, start, frames, height, width, reverse=reverse, hflip=hflip)
    donors = donor_sources(source)
    donor = load_still(donors[randint(g, 0, len(donors) - 1)]) if donors else None
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
        check_positive("blocks", blocks)
        check_positive("frames_per_block", frames_per_block)
        check_size(height, width)
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
        order = torch.randperm(n, generator=source_generator(self.seed, f"cycle:{cycle}"))
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
