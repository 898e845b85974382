"""``lipar-edit``: edit a video file with the streaming editor.

    lipar-edit INPUT -p PROMPT -o OUTPUT [--preset NAME] [--config FILE] [--seed N] [--stats-json FILE]
               [--model-size]

The input is decoded with PyAV and edited block by block exactly as a live stream would be; the output is an
MP4 with exactly the input's frame count and frame rate (the last partial block is padded by repeating the
last frame, then trimmed). Errors (missing/unreadable/non-video input, unwritable output, missing model files)
print one line and exit non-zero, leaving no partial output file.

Output size: the model edits the centre crop of each frame that has its aspect ratio (the whole frame when the
aspects agree; stored non-square pixels are made square first). By default the edited frames are scaled back
to that crop's size at the input's resolution (rounded down to even numbers): the input's size when the
aspects agree, e.g. an 832x480 input to the 256x256 ``tiny`` model gives 480x480 (its centre square). Never a
squash, never padding. ``--model-size`` writes the model's frames as they are (256x256 for ``tiny``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from tqdm import tqdm

from lipar_core.checkpoints import CheckpointNotFoundError
from lipar_core.config import describe_validation_error, read_yaml_mapping
from lipar_core.lipar.config import LiparConfig
from lipar_core.video_io import (
    VideoInputError,
    VideoOutputError,
    VideoWriter,
    crop_size_at_input_scale,
    fit_uint8_frames,
    probe_video,
    read_frames,
)

log = logging.getLogger("lipar_core.cli.edit")
STAGES = ("encode", "mask", "dit", "decode", "total")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lipar-edit", description="Edit a video with the streaming LIPAR editor."
    )
    p.add_argument("input", help="input video file")
    p.add_argument("-p", "--prompt", required=True, help="the edit prompt")
    p.add_argument("-o", "--output", required=True, help="output .mp4 path")
    p.add_argument("--preset", default="tiny", help="built-in preset name (default: tiny)")
    p.add_argument("--config", help="YAML preset file (overrides --preset)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--device", help="override the preset's device, e.g. cuda:0")
    p.add_argument("--stats-json", help="write per-block statistics to this JSON file")
    p.add_argument("--no-lipar", action="store_true", help="no pruning (the baseline; same attention window)")
    p.add_argument(
        "--lipar-config", help="YAML file with LIPAR settings (overrides the preset's lipar section)"
    )
    p.add_argument(
        "--model-size",
        action="store_true",
        help="write the model's frames as they are (default: the edited centre crop at the input's resolution)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def _blocks(frames: Iterator[np.ndarray], size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Group frames into blocks of ``size``; the last one is padded with its last frame.

    Yields (block uint8 [size, H, W, 3], number of real frames in it).
    """
    buf: list[np.ndarray] = []
    for f in frames:
        buf.append(f)
        if len(buf) == size:
            yield np.stack(buf), size
            buf = []
    if buf:
        real = len(buf)
        buf.extend([buf[-1]] * (size - real))
        yield np.stack(buf), real


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Edit ``args.input`` into ``args.output``; returns the statistics dict.

    Stats JSON: ``{"blocks": [{"index", "ms": {"encode", "mask", "dit", "decode", "total"}, "prune_ratio",
    "frames_in", "frames_out"}], "fps": frames / sum of block totals, "size": [width, height] written, ...}``.
    """
    from lipar_core.editor import StreamEditor
    from lipar_core.presets import get_preset_config, load_preset

    info = probe_video(args.input)
    expected, fps = info.frames, info.rate
    cfg = get_preset_config(args.config or args.preset)
    lipar = _lipar_settings(cfg.lipar, args.lipar_config, args.no_lipar)
    models = load_preset(cfg, device=args.device)
    editor = StreamEditor(models, prompt=args.prompt, seed=args.seed, lipar=lipar)
    n = editor.frames_per_block
    in_w, in_h = info.display_size
    out_h, out_w = (
        (editor.height, editor.width)
        if args.model_size
        else crop_size_at_input_scale(in_h, in_w, editor.height, editor.width)
    )
    if (out_h, out_w) != (in_h, in_w):
        log.info(
            "input %dx%d, model %dx%d: writing %dx%d (%s)",
            in_w,
            in_h,
            editor.width,
            editor.height,
            out_w,
            out_h,
            "--model-size" if args.model_size else "the edited centre crop at the input's resolution",
        )
    blocks_stats: list[dict[str, Any]] = []
    frames_in = 0
    t0 = time.perf_counter()
    with VideoWriter(args.output, fps, out_w, out_h) as writer:
        written = 0  # output frame i edits input frame i; a causal autoencoder may lag a few frames behind

        def emit(out: torch.Tensor) -> None:
            """Write the frames of ``out`` that match real input frames, at the output size."""
            nonlocal written
            take = min(out.shape[0], frames_in - written)
            if take > 0:
                part = out[:take]
                if part.shape[1:3] != (out_h, out_w):  # the same aspect ratio: a plain resize
                    part = fit_uint8_frames(part, out_h, out_w)
                writer.write(part)
                written += take

        total_blocks = -(-expected // n) if expected else None
        bar = tqdm(total=total_blocks, unit="block", desc="lipar-edit", disable=args.quiet)
        last_block: np.ndarray | None = None
        for block, real in _blocks(read_frames(args.input, square_pixels=True), n):
            frames_in += real
            last_block = block
            out, st = editor.process_block(torch.from_numpy(block))
            blocks_stats.append(_block_json(st))
            emit(out)
            bar.update(1)
        bar.close()
        if frames_in == 0:
            raise VideoInputError(f"input {args.input} has no decodable frames")
        # A causal autoencoder may still hold frames: feed repeated last frames until the count is reached.
        flush = 0
        while written < frames_in and last_block is not None and flush < 3:
            pad = np.repeat(last_block[-1:], n, axis=0)
            out, st = editor.process_block(torch.from_numpy(pad))
            emit(out)
            flush += 1
    wall = time.perf_counter() - t0
    total_ms = sum(b["ms"]["total"] for b in blocks_stats)
    stats: dict[str, Any] = {
        "input": str(args.input),
        "output": str(args.output),
        "preset": cfg.name,
        "frames": frames_in,
        "size": [out_w, out_h],
        "blocks": blocks_stats,
        "fps": frames_in / (total_ms / 1e3) if total_ms > 0 else None,
        "wall_s": wall,
    }
    return stats


def _lipar_settings(base: LiparConfig, path: str | None, disable: bool) -> LiparConfig:
    """The preset's LIPAR settings, overridden by a YAML file and/or --no-lipar."""
    data = dict(base)
    if path:
        data.update(read_yaml_mapping(path, "LIPAR config"))
    if disable:
        data["enabled"] = False
    try:
        return LiparConfig.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"invalid LIPAR settings: {describe_validation_error(e)}") from None


def _block_json(st: Any) -> dict[str, Any]:
    return {
        "index": st.index,
        "ms": {k: round(float(st.ms.get(k, 0.0)), 3) for k in STAGES},
        "prune_ratio": float(st.prune_ratio),
        "frames_in": st.frames_in,
        "frames_out": st.frames_out,
    }


def _summary(stats: dict[str, Any]) -> str:
    blocks = stats["blocks"]
    if not blocks:
        return "no blocks"
    mean = {k: sum(b["ms"][k] for b in blocks) / len(blocks) for k in STAGES}
    parts = ", ".join(f"{k} {mean[k]:.1f} ms" for k in STAGES)
    return f"{stats['frames']} frames, {len(blocks)} blocks, {stats['fps']:.2f} fps; mean per block: {parts}"


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        stats = run(args)
        if args.stats_json:
            Path(args.stats_json).write_text(json.dumps(stats, indent=2))
    except ValidationError as e:
        sys.stderr.write(f"lipar-edit: error: invalid configuration: {describe_validation_error(e)}\n")
        return 2
    except (VideoInputError, VideoOutputError, CheckpointNotFoundError, ValueError) as e:
        msg = str(e).strip().splitlines()
        sys.stderr.write(f"lipar-edit: error: {' '.join(m.strip() for m in msg)}\n")
        return 2
    except OSError as e:
        sys.stderr.write(f"lipar-edit: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("lipar-edit: interrupted\n")
        return 130
    log.info("%s", _summary(stats))
    log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
