"""LIPAR's pixel mask on real clips, per setting: prune ratio and recall of changed tokens at several levels.

The prune ratio decides LIPAR's speed (the DiT's time follows the kept tokens); the recall says what it costs in
fidelity: the share of tokens whose input changed by more than a level (the largest cell-mean pixel change in the
token, :func:`~lipar_core.lipar.mask.input_changed`) that the mask recomputed. Runs on the CPU with no model (the
pixel mask needs none) on ``lipar-bench``'s clips and geometry, blocks after each clip's first, so its prune
ratios are the ones ``lipar-bench`` reports for the same settings.

    python bench/mask_sweep.py [--out bench/results/cpu-mask-sweep.md] [--clips DIR] [--blocks 4]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lipar_core.bench import bench_config, load_clips
from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.config import LiparConfig
from lipar_core.lipar.mask import PruneMasker, input_changed

log = logging.getLogger("mask_sweep")

LEVELS = (0.05, 0.1, 0.15, 0.2, 0.3)  #: pixel units in [0, 1]
#: name -> overrides of the benchmark preset's ``lipar`` section
SETTINGS: dict[str, dict[str, Any]] = {
    "paper criterion (no floor, dilation 2)": {"floor_pixel": None, "dilation": 2},
    "floor 0.1, dilation 2": {"floor_pixel": 0.1, "dilation": 2},
    "floor 0.15, dilation 0": {"floor_pixel": 0.15, "dilation": 0},
    "floor 0.2, dilation 1": {"floor_pixel": 0.2, "dilation": 1},
    "floor 0.2, dilation 0": {"floor_pixel": 0.2, "dilation": 0},
}


def sweep(
    clips: dict[str, torch.Tensor], geo: StreamGeometry, base: LiparConfig
) -> dict[str, dict[str, Any]]:
    """Per setting: ``prune`` (mean over the clips' measured blocks) and ``recall`` per level."""
    n = geo.pixel_frames_per_block
    out: dict[str, dict[str, Any]] = {}
    for name, over in tqdm(SETTINGS.items(), desc="settings"):
        cfg = LiparConfig.model_validate({**base, **over})
        prunes: list[float] = []
        hits = dict.fromkeys(LEVELS, 0)
        totals = dict.fromkeys(LEVELS, 0)
        for frames in clips.values():
            px = frames.permute(0, 3, 1, 2).float().div(255)[None]  # [1, T, 3, H, W]
            masker = PruneMasker(cfg, geo, use_cuda_graph=False)
            latents = torch.zeros(1, *geo.latent_block_shape)  # the pixel source reads no latents
            for b in range(px.shape[1] // n):
                block = px[:, b * n : (b + 1) * n]
                keep = masker(latents, pixels=block, force_full=b == 0)
                if b == 0:
                    continue
                prunes.append(1.0 - float(keep.float().mean()))
                before = px[:, b * n - 1 : b * n]
                for level in LEVELS:
                    truth = input_changed(block, before, geo, level)
                    hits[level] += int((truth & keep).sum())
                    totals[level] += int(truth.sum())
        out[name] = {
            "prune": sum(prunes) / len(prunes),
            "recall": {lv: hits[lv] / totals[lv] if totals[lv] else None for lv in LEVELS},
        }
    return out


def markdown(results: dict[str, dict[str, Any]], clips: list[str], geo: StreamGeometry, blocks: int) -> str:
    """The table: one row per setting."""
    head = "| setting | prune ratio | " + " | ".join(f"recall > {lv:g}" for lv in LEVELS) + " |"
    lines = [
        "# LIPAR pixel mask: prune ratio and recall per setting (CPU, no model)",
        "",
        f"{geo.width}x{geo.height}, {blocks} blocks of {geo.pixel_frames_per_block} frames per clip (the first "
        f"computed whole, not counted), clips: {', '.join(clips)}. Recall > L: share of the tokens whose input "
        "changed by more than L (largest 4x4-cell mean change of a colour channel, pixel values in [0, 1]) that "
        "the mask recomputed. Produced by `python bench/mask_sweep.py`.",
        "",
        head,
        "|---|---|" + "---|" * len(LEVELS),
    ]
    for name, r in results.items():
        cells = " | ".join("–" if r["recall"][lv] is None else f"{r['recall'][lv]:.4f}" for lv in LEVELS)
        lines.append(f"| {name} | {r['prune']:.3f} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Command line: the sweep on lipar-bench's clips, written as markdown."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/cpu-mask-sweep.md"))
    p.add_argument("--clips", type=Path, default=None, help="folder of .mp4 clips (default: lipar-bench's)")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = bench_config(a.height, a.width, "tiny", "cpu", "float32")
    geo = StreamGeometry(a.height, a.width)
    clips = load_clips(a.clips, a.blocks * geo.pixel_frames_per_block, a.height, a.width)
    md = markdown(sweep(clips, geo, cfg.lipar), list(clips), geo, a.blocks)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(md)
    log.info("%s", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
