"""Several sessions on one GPU (round-robin, as the worker serves them) and a profile of one LIPAR block.

Run on the device machine after bench/gpu_run.sh's install step (see bench/NOTES.md); writes
``$OUT/sessions.json`` and ``$OUT/profile_lipar_block.txt``."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lipar_core.bench import PROMPT, RandomTextEncoder, bench_config, load_clips
from lipar_core.editor import BlockTicket, StreamEditor
from lipar_core.lipar.config import LiparConfig
from lipar_core.presets import EditorModels, load_preset

log = logging.getLogger("gpu_profile")
OUT = Path(os.environ.get("OUT", "."))
BLOCKS = 8


def serve_round_robin(eds: list[StreamEditor], clips: list[torch.Tensor], overlap: bool) -> float:
    """One block of each session in turn for BLOCKS rounds; returns the wall seconds. With ``overlap`` a
    session's block is collected only after the next session's block was submitted (its decode overlaps)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    prev: BlockTicket | None = None
    for b in range(BLOCKS):
        for e, c in zip(eds, clips, strict=True):
            ticket = e.submit_block(c[b * 12 : (b + 1) * 12])
            if not overlap:
                ticket.result()
                continue
            if prev is not None:
                prev.result()
            prev = ticket
    if prev is not None:
        prev.result()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def sessions(models: EditorModels, lip: LiparConfig, clips: dict[str, torch.Tensor]) -> dict[str, object]:
    """1-3 sessions: aggregate and per-session fps (overlapped and not), time to first frame of a new
    session joining a warm worker (its first block: computed whole)."""
    res: dict[str, object] = {}
    names = list(clips)
    for n in (1, 2, 3):
        eds = [StreamEditor(models, f"{PROMPT} {i}", seed=i, lipar=lip) for i in range(n)]
        cl = [clips[names[i % len(names)]] for i in range(n)]
        torch.cuda.synchronize()
        ttff = []
        for e, c in zip(eds, cl, strict=True):
            t0 = time.perf_counter()
            e.process_block(c[:12])
            ttff.append((time.perf_counter() - t0) * 1e3)
        row: dict[str, object] = {"clips": [names[i % len(names)] for i in range(n)], "ttff_ms": ttff}
        for overlap in (False, True):
            for _rep in range(2):  # the first round captures the graphs of new buckets
                for e in eds:
                    e.reset()
                wall = serve_round_robin(eds, cl, overlap)
            key = "overlapped" if overlap else "sequential"
            row[f"aggregate_fps_{key}"] = n * BLOCKS * 12 / wall
            row[f"per_session_fps_{key}"] = BLOCKS * 12 / wall
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res[f"sessions_{n}"] = row
        log.info("%d sessions: %s", n, row)
        del eds
        torch.cuda.empty_cache()
    return res


@torch.no_grad()
def main() -> None:
    logging.basicConfig(level=logging.INFO)
    cfg = bench_config(480, 832, "1.3b", "cuda", "bfloat16")
    models = load_preset(cfg)
    models.text = RandomTextEncoder.for_models(models)
    clips = load_clips(Path(".clips"), BLOCKS * 12, 480, 832)
    lip = LiparConfig(**cfg.lipar)

    # Time to first frame of the very first session of a fresh worker process (compiles the layers: the
    # server does this once at start-up, before it reports ready).
    t0 = time.perf_counter()
    StreamEditor(models, PROMPT, lipar=lip).process_block(clips["bigbuckbunny"][:12])
    cold_ms = (time.perf_counter() - t0) * 1e3

    parts = os.environ.get("PARTS", "trace,sessions")
    if "trace" in parts:
        trace_blocks(models, lip, clips["bigbuckbunny"])
    if "sessions" not in parts:
        return
    res: dict[str, object] = {"device": torch.cuda.get_device_name(), "first_block_cold_process_ms": cold_ms}
    res.update(sessions(models, lip, clips))
    (OUT / "sessions.json").write_text(json.dumps(res, indent=2))
    log.info("%s", json.dumps(res, indent=1))


def trace_blocks(models: EditorModels, lip: LiparConfig, clip: torch.Tensor) -> None:
    """Per-op profile and timeline of two steady LIPAR blocks: the clip once through (graph captures for its
    buckets), then again from the start, profiling blocks 4 and 5 (same buckets: graph replays only)."""
    ed = StreamEditor(models, PROMPT, lipar=lip)
    for b in range(BLOCKS):
        ed.process_block(clip[b * 12 : (b + 1) * 12])
    ed.reset()
    for b in range(4):
        ed.process_block(clip[b * 12 : (b + 1) * 12])
    stage_ms = []
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for b in range(4, 6):
            stage_ms.append(ed.process_block(clip[b * 12 : (b + 1) * 12])[1].ms)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40)
    (OUT / "profile_lipar_block.txt").write_text(json.dumps(stage_ms, indent=1) + "\n" + table)
    trace = Path("/tmp/trace_lipar_blocks.json")
    prof.export_chrome_trace(str(trace))
    with trace.open("rb") as src, gzip.open(OUT / "trace_lipar_blocks.json.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)


if __name__ == "__main__":
    main()
