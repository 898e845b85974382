"""Profile one unpruned DiT pass (per-op CUDA time) and measure several sessions round-robin on one GPU.

Run on the device machine after bench/gpu_run.sh's install step (see bench/NOTES.md)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lipar_core.bench import PROMPT, RandomTextEncoder, bench_config, load_clips
from lipar_core.editor import StreamEditor
from lipar_core.lipar.config import LiparConfig
from lipar_core.presets import load_preset

log = logging.getLogger("gpu_profile")
OUT = Path(os.environ.get("OUT", "."))


@torch.no_grad()
def main() -> None:
    logging.basicConfig(level=logging.INFO)
    cfg = bench_config(480, 832, "1.3b", "cuda", "bfloat16")
    models = load_preset(cfg)
    models.text = RandomTextEncoder(4096, 512, models.device, models.dtype)
    clips = load_clips(Path(".clips"), 96, 480, 832)
    res: dict[str, object] = {}

    # 1. Per-op profile of steady-state unpruned passes (eager, so ops are visible).
    ed = StreamEditor(models, PROMPT, lipar=LiparConfig(**{**cfg.lipar, "enabled": False}), cuda_graphs=False)
    clip = clips["bigbuckbunny"]
    for b in range(4):
        ed.process_block(clip[b * 12 : (b + 1) * 12])
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        ed.process_block(clip[48:60])
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    (OUT / "profile_unpruned_block.txt").write_text(table)
    log.info("\n%s", table)

    # 2. N sessions round-robin (one block each in turn), LIPAR on, CUDA graphs: aggregate and per-session fps,
    #    time to first frame of a fresh session (first block, which is computed whole and eagerly).
    lip = LiparConfig(**cfg.lipar)
    names = list(clips)
    for n in (1, 2, 3):
        eds = [StreamEditor(models, f"{PROMPT} {i}", seed=i, lipar=lip) for i in range(n)]
        torch.cuda.synchronize()
        ttff = []
        for i, e in enumerate(eds):
            t0 = time.perf_counter()
            e.process_block(clips[names[i % len(names)]][:12])
            ttff.append((time.perf_counter() - t0) * 1e3)
        # warm pass over the clip (graph captures), then timed pass
        for _rep in range(2):
            for e in eds:
                e.reset()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for b in range(8):
                for i, e in enumerate(eds):
                    c = clips[names[i % len(names)]]
                    e.process_block(c[b * 12 : (b + 1) * 12])
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        res[f"sessions_{n}"] = {
            "aggregate_fps": n * 96 / wall,
            "per_session_fps": 96 / wall,
            "ttff_ms_first_block": ttff,
            "clips": [names[i % len(names)] for i in range(n)],
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        log.info("%d sessions: %s", n, res[f"sessions_{n}"])
        del eds
        torch.cuda.empty_cache()
    (OUT / "sessions.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
