"""Judge a trained demo bundle on held-out streams: does it do the edit the prompt asks for, keep the
structure, and what does LIPAR cost and gain on it?

``python -m lipar_core.train.evaluate BUNDLE --out FILE.json`` runs the live editor
(:class:`~lipar_core.editor.StreamEditor`, the same code the server runs) on the held-out streams of
:mod:`lipar_core.train.data` and reports:

- edit accuracy: for every held-out stream and every style, prompted with a paraphrase (not the canonical
  prompt), the share of output frames whose nearest procedural style target
  (:func:`~lipar_core.train.styles.nearest_style`, computed from the input frames) is the prompted style;
  frames of the first block are included (the first block is what a viewer sees first);
- structure: the mean edge-map similarity of output and input (:func:`~lipar_core.train.styles.edge_similarity`);
- unknown prompts: the editor passes the input through unchanged (PSNR against the input, inf when exact), and
  the model's own pass-through edit (``original``, run with ``pass_unknown=False``) is measured too;
- the autoencoder alone: reconstruction PSNR of the held-out streams' frames (and the mean over the style
  targets), block by block as live;
- LIPAR: for naive pruning (recovery ``none``), M-degree only and full recovery, the output PSNR against the
  unpruned output at the streams' natural prune rate, the prune ratio, and ms per block on this machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lipar_core.autoencoders.taehv import TAEHV
from lipar_core.bench import psnr
from lipar_core.bundle import bundle_train_config
from lipar_core.config import PresetConfig
from lipar_core.editor import StreamEditor
from lipar_core.lipar.config import LiparConfig
from lipar_core.presets import EditorModels, get_preset_config, load_preset
from lipar_core.train.data import heldout_streams
from lipar_core.train.demo import autoencoder_psnr, memory_gain_db, to_float_frames
from lipar_core.train.styles import STYLE_PROMPTS, apply_style, edge_similarity, nearest_style
from lipar_core.video_io import write_png

log = logging.getLogger(__name__)


def run_stream(
    models: EditorModels, prompt: str, frames: torch.Tensor, lipar: LiparConfig, pass_unknown: bool = True
) -> dict[str, Any]:
    """Edit ``frames`` (uint8 [T, H, W, 3]) as one stream; output frames and per-block stats.
    ``pass_unknown=False``: run the model's own pass-through edit for an unknown prompt (see
    :class:`~lipar_core.editor.StreamEditor`)."""
    ed = StreamEditor(models, prompt, seed=0, lipar=lipar, pass_unknown=pass_unknown)
    n = ed.frames_per_block
    outs, ms, prune = [], [], []
    with torch.inference_mode():
        for b in range(frames.shape[0] // n):
            t0 = time.perf_counter()
            out, st = ed.process_block(frames[b * n : (b + 1) * n])
            ms.append((time.perf_counter() - t0) * 1e3)
            outs.append(out)
            prune.append(st.prune_ratio)
    return {"frames": torch.cat(outs), "ms": ms, "prune": prune}


def trained_preset(bundle: Path) -> PresetConfig:
    """The ``tiny`` preset on ``bundle``, with the denoising steps and shift the bundle was trained for (a
    model trained at one noise level edits poorly at another)."""
    train = bundle_train_config(bundle)
    cfg = get_preset_config("tiny").with_bundle(bundle)
    sched = {
        **cfg.scheduler.model_dump(),
        "denoising_steps": train["denoising_steps"],
        "shift": train["shift"],
    }
    return cfg.with_overrides(scheduler=sched)


def contact_sheet(rows: dict[str, list[torch.Tensor]], scale: int = 2) -> torch.Tensor:
    """Tiles of frames in a grid, one row per stream, for a look at every edit at once.

    Args:
        rows: stream name -> its tiles, each uint8 [H, W, 3] of one size (every row the same count).
        scale: tiles are shrunk by this factor (area averaging).
    Returns:
        uint8 [rows * h + gaps, columns * w + gaps, 3] with 4-pixel white gaps between tiles.
    """
    gap = 4
    lines = []
    for tiles in rows.values():
        small = [
            F.avg_pool2d(t.permute(2, 0, 1)[None].float(), scale)[0].round().to(torch.uint8).permute(1, 2, 0)
            for t in tiles
        ]
        white = torch.full((small[0].shape[0], gap, 3), 255, dtype=torch.uint8)
        line = [x for tile in small for x in (tile, white)][:-1]
        lines.append(torch.cat(line, dim=1))
    white_row = torch.full((gap, lines[0].shape[1], 3), 255, dtype=torch.uint8)
    return torch.cat([x for line in lines for x in (line, white_row)][:-1], dim=0)


def evaluate(
    bundle: Path,
    blocks: int = 4,
    paraphrase_index: int = 1,
    sheet: Path | None = None,
    lipar_variants: bool = True,
) -> dict[str, Any]:
    """The report described in the module docstring (a JSON-able dict). ``sheet``: also write a contact sheet
    PNG there (:func:`contact_sheet`: per held-out stream, the input, then the output of each style in
    :data:`STYLE_PROMPTS` order, then the output of an unknown prompt; the last frame of each output)."""
    cfg = trained_preset(bundle)
    models = load_preset(cfg)
    streams = heldout_streams(
        blocks, cfg.stream.height, cfg.stream.width, models.geometry.pixel_frames_per_block
    )
    lipar = LiparConfig.model_validate(cfg.lipar)
    report: dict[str, Any] = {"bundle": str(bundle), "streams": list(streams), "blocks": blocks, "styles": {}}
    correct = total = 0
    edge_scores: list[float] = []
    tiles: dict[str, list[torch.Tensor]] = {name: [frames[-1]] for name, frames in streams.items()}
    for style, prompts in STYLE_PROMPTS.items():
        prompt = prompts[min(paraphrase_index, len(prompts) - 1)]
        per: dict[str, Any] = {"prompt": prompt}
        for name, frames in streams.items():
            res = run_stream(models, prompt, frames, lipar)
            tiles[name].append(res["frames"][-1])
            out = to_float_frames(res["frames"], torch.device("cpu"))
            inp = to_float_frames(frames, torch.device("cpu"))
            picks = nearest_style(out, inp)
            hits = sum(p == style for p in picks)
            correct += hits
            total += len(picks)
            edge = float(edge_similarity(out, inp).mean())
            edge_scores.append(edge)
            per[name] = {
                "accuracy": hits / len(picks),
                "edge_similarity": edge,
                "picked": max(set(picks), key=picks.count),
            }
        report["styles"][style] = per
        log.info("%s: %s", style, per)
    report["edit_accuracy"] = correct / max(total, 1)
    report["edge_similarity_mean"] = sum(edge_scores) / max(len(edge_scores), 1)
    report["edge_similarity_references"] = edge_references(streams)
    # Unknown prompt: the editor passes the input through (exact: inf dB); the model's own pass-through edit
    # (what a cross-fade from a style to an unknown prompt shows) is measured too and shown in the sheet.
    unknown, model_edit = {}, {}
    for name, frames in streams.items():
        res = run_stream(models, "a cat riding a bicycle on the moon", frames, lipar)
        unknown[name] = psnr(res["frames"].float(), frames.float(), 255.0)
        res = run_stream(models, "a cat riding a bicycle on the moon", frames, lipar, pass_unknown=False)
        tiles[name].append(res["frames"][-1])
        model_edit[name] = psnr(res["frames"].float(), frames.float(), 255.0)
    report["model_passthrough_edit_psnr_vs_input_db"] = model_edit
    if sheet is not None:
        write_png(sheet, contact_sheet(tiles).numpy())
        report["contact_sheet"] = str(sheet)
    report["unknown_prompt_psnr_vs_input_db"] = unknown
    report["autoencoder_psnr_db"] = heldout_autoencoder_psnr(models, streams)
    report["autoencoder_memory_gain_db"] = heldout_memory_gain(models, streams)
    if lipar_variants:
        report["lipar"] = lipar_comparison(models, streams, lipar)
    return report


def heldout_autoencoder_psnr(models: EditorModels, streams: dict[str, torch.Tensor]) -> dict[str, float]:
    """The loaded model's autoencoder alone on the held-out streams (uint8 [T, H, W, 3]), block by block through
    one encoder and one decoder stream as live, on the models' device and layout: PSNR (dB) of each stream's
    frames and ``styled``, the mean over every style target of every stream
    (:func:`~lipar_core.train.demo.autoencoder_psnr`).

    Raises:
        TypeError: the autoencoder is not a TAEHV (the demo bundles' kind).
    """
    return autoencoder_psnr(
        _demo_autoencoder(models), streams, models.geometry.pixel_frames_per_block, models.device
    )


def heldout_memory_gain(models: EditorModels, streams: dict[str, torch.Tensor]) -> dict[str, float]:
    """What the loaded autoencoder's stream memory is worth on the held-out streams, dB per stream
    (:func:`~lipar_core.train.demo.memory_gain_db`: streamed minus each block coded alone, after the first).

    Raises:
        TypeError: the autoencoder is not a TAEHV (the demo bundles' kind).
    """
    return memory_gain_db(
        _demo_autoencoder(models), streams, models.geometry.pixel_frames_per_block, models.device
    )


def _demo_autoencoder(models: EditorModels) -> TAEHV:
    """The loaded models' autoencoder; TypeError unless it is a TAEHV (the demo bundles' kind)."""
    ae = models.autoencoder
    if not isinstance(ae, TAEHV):
        raise TypeError(f"expected the demo bundle's TAEHV autoencoder, got {type(ae).__name__}")
    return ae


def edge_references(streams: dict[str, torch.Tensor]) -> dict[str, float]:
    """What the edge similarity of an output means: the procedural style targets' own similarity to their
    input (what a perfect edit scores, mean over styles and streams), and that of unrelated frames (each
    stream's input against the next stream's: structure not kept)."""
    cpu = torch.device("cpu")
    frames = [to_float_frames(f, cpu) for f in streams.values()]
    targets = [
        float(edge_similarity(apply_style(style, x), x).mean()) for style in STYLE_PROMPTS for x in frames
    ]
    unrelated = [
        float(edge_similarity(a, b).mean()) for a, b in zip(frames, frames[1:] + frames[:1], strict=True)
    ]
    return {"style_targets": sum(targets) / len(targets), "unrelated_frames": sum(unrelated) / len(unrelated)}


def lipar_comparison(
    models: EditorModels, streams: dict[str, torch.Tensor], base: LiparConfig, prompt: str | None = None
) -> dict[str, Any]:
    """Naive / M-degree / full recovery against the unpruned output (PSNR dB), prune ratio, ms per block."""
    prompt = prompt or next(iter(STYLE_PROMPTS.values()))[0]
    variants = {
        "unpruned": base.model_copy(update={"enabled": False}),
        "naive": base.model_copy(update={"recovery": "none"}),
        "m_degree": base.model_copy(update={"recovery": "m_degree"}),
        "full": base.model_copy(update={"recovery": "full"}),
    }
    out: dict[str, Any] = {"prompt": prompt}
    ref: dict[str, torch.Tensor] = {}
    for vname, lip in variants.items():
        rows: dict[str, Any] = {}
        for sname, frames in streams.items():
            run_stream(models, prompt, frames, lip)  # warm-up (allocator, kernels)
            res = run_stream(models, prompt, frames, lip)
            if vname == "unpruned":
                ref[sname] = res["frames"]
            steady_ms = res["ms"][1:] or res["ms"]
            rows[sname] = {
                "psnr_vs_unpruned_db": psnr(res["frames"].float(), ref[sname].float(), 255.0),
                "prune_ratio": sum(res["prune"][1:]) / max(len(res["prune"]) - 1, 1),
                "ms_per_block": sum(steady_ms) / len(steady_ms),
                "fps": models.geometry.pixel_frames_per_block * 1e3 / (sum(steady_ms) / len(steady_ms)),
            }
        out[vname] = rows
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(
        prog="python -m lipar_core.train.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sheet", type=Path, default=None, help="write a contact sheet PNG here")
    p.add_argument("--no-lipar-comparison", action="store_true", help="skip the LIPAR variants (faster)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = evaluate(args.bundle, args.blocks, sheet=args.sheet, lipar_variants=not args.no_lipar_comparison)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    log.info(
        "edit accuracy %.3f, edge similarity %.3f", report["edit_accuracy"], report["edge_similarity_mean"]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
