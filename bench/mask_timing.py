"""The LIPAR mask stage alone on a GPU (issue 14's budget: <= 0.5 ms per block): milliseconds per steady block
of what the editor's mask stage runs (the mask, its kept order, the kept count on its way to the host and the
mask's host copy), for the mask's CUDA graph of the eager and of the compiled mask, and without a graph, at
832x480 on real clips (the bench preset: pixel source, floor 0.2, no dilation; and the latent source on the
random tiny autoencoder's latents). Also the kept order alone: the argsort it used to be against
:func:`~lipar_core.lipar.prune.kept_order`.

Run on the GPU machine (bench/gpu_run.sh style: carried wheels on PYTHONPATH, clips under .clips):
    python3 bench/mask_timing.py --clips .clips --out $OUT/mask-timing.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import torch

from lipar_core.bench import bench_config, device_name, load_clips
from lipar_core.editor import _to_host
from lipar_core.lipar.config import LiparConfig
from lipar_core.lipar.mask import PruneMasker
from lipar_core.lipar.prune import KeepSet, kept_order
from lipar_core.presets import load_preset
from lipar_core.timing import cuda_median_ms

log = logging.getLogger("mask_timing")


def _argsort_order(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept order as KeepSet.begin computed it before kept_order (a stable argsort)."""
    count = flat.sum()
    order = torch.argsort((~flat).to(torch.int8), stable=True)
    last = order.gather(0, (count - 1).clamp_(min=0).reshape(1))
    return count, torch.where(torch.arange(flat.shape[0], device=flat.device) < count, order, last)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=Path, default=Path(".clips"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--passes", type=int, default=4, help="passes over each clip (a stream restart each)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    h, w = 480, 832
    cfg = bench_config(h, w, "tiny", "cuda", "bfloat16")
    models = load_preset(cfg)
    geo = models.geometry
    n = geo.pixel_frames_per_block
    clips = load_clips(args.clips, 10 * n, h, w)
    enc = models.autoencoder.encoder_stream()
    blocks: list[
        tuple[torch.Tensor, torch.Tensor, int]
    ] = []  # (pixels [1, T, 3, H, W], latents, index in clip)
    with torch.inference_mode():
        for name, frames in clips.items():
            for b in range(frames.shape[0] // n):
                x = frames[b * n : (b + 1) * n].cuda().permute(0, 3, 1, 2).float().div(255).unsqueeze(0)
                blocks.append((x, enc(x.to(models.autoencoder_dtype)).to(models.dtype), b))
            log.info("clip %s: %d blocks", name, frames.shape[0] // n)
    result: dict[str, Any] = {
        "device": device_name(torch.device("cuda")),
        "torch": torch.__version__,
        "runs": {},
    }
    for source in ("pixel", "latent"):
        lip = LiparConfig.model_validate({**cfg.lipar, "mask_source": source})
        for variant, graph, compiled in (
            ("eager", False, False),
            ("graph", True, False),
            ("graph+compiled", True, True),
        ):
            masker = PruneMasker(lip, geo, use_cuda_graph=graph, compile=compiled)
            steady: list[float] = []
            pruned: list[float] = []
            with torch.inference_mode():
                for pas in range(args.passes):
                    for px, lat, i in blocks:
                        start = i == 0
                        if start:
                            masker.reset()

                        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        s.record()  # the editor's mask stage
                        made = masker.block(lat, pixels=px if source == "pixel" else None, force_full=start)
                        _to_host(made.keep[0])
                        pend = KeepSet.begin(made.keep, lip.bucket, (made.n_kept, made.order))
                        e.record()
                        ks = pend.result()
                        e.synchronize()
                        # the first two passes compile and capture; blocks 0 and 1 of a stream run eagerly
                        if pas >= 1 and i >= 2:
                            steady.append(s.elapsed_time(e))
                            pruned.append(ks.prune_ratio)
            key = f"{source}/{variant}"
            result["runs"][key] = {
                "ms_median": statistics.median(steady),
                "ms_mean": statistics.fmean(steady),
                "ms_p90": sorted(steady)[int(0.9 * (len(steady) - 1))],
                "blocks": len(steady),
                "prune_ratio": statistics.fmean(pruned),
            }
            log.info("%s: %s", key, result["runs"][key])
    flat = (torch.rand(geo.tokens_per_block, device="cuda") < 0.5).contiguous()
    for label, order_fn in (("argsort (before)", _argsort_order), ("kept_order", kept_order)):
        ms = cuda_median_ms(lambda f=order_fn: f(flat), reps=50, warmup=5)  # type: ignore[misc]
        result["runs"][f"order/{label}"] = {"ms_median": ms}
    args.out.write_text(json.dumps(result, indent=2))
    lines = [
        f"# LIPAR mask stage, {result['device']}, 832x480, {geo.tokens_per_block} tokens per block",
        "",
        "ms per steady block (CUDA events around the editor's mask stage: mask, kept order, count to host, "
        "host copy of the mask)",
        "",
        "| run | median ms | mean ms | p90 ms | blocks | prune ratio |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in result["runs"].items():
        if key.startswith("order/"):
            lines.append(f"| {key} | {r['ms_median']:.3f} | | | | |")
        else:
            lines.append(
                f"| {key} | {r['ms_median']:.3f} | {r['ms_mean']:.3f} | {r['ms_p90']:.3f} | {r['blocks']} | "
                f"{r['prune_ratio']:.3f} |"
            )
    md = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(md)
    log.info("\n%s", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
