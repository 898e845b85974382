"""GPU checks run by bench/gpu_run.sh: correctness of the streaming DiT on CUDA (against diffusers, and CUDA
graphs against eager), and micro-timings (ms per DiT pass at several kept fractions, eager and graphed; mask
ms) at 832x480 with the 1.3B architecture (random weights)."""

from __future__ import annotations

import json
import logging
import os
import statistics
from typing import Any

import torch
from diffusers import WanTransformer3DModel

from lipar_core.bench import RandomTextEncoder, bench_config
from lipar_core.editor import StreamEditor
from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.config import LiparConfig
from lipar_core.lipar.mask import PruneMasker
from lipar_core.lipar.prune import KeepSet
from lipar_core.models.configs import tiny_transformer_config, wan_1_3b_transformer_config
from lipar_core.models.graphs import GraphedDiT
from lipar_core.models.kv_cache import CacheStage
from lipar_core.models.transformer import CausalWanDiT
from lipar_core.presets import _cast_transformer, load_preset
from lipar_core.timing import cuda_median_ms as timed

log = logging.getLogger("gpu_checks")
dev = torch.device("cuda")
out: dict[str, Any] = {}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def check_first_block() -> None:
    for name, cfg, dt, size in [
        ("tiny_fp32", tiny_transformer_config(), torch.float32, (64, 96)),
        ("1.3b_bf16", wan_1_3b_transformer_config(), torch.bfloat16, (480, 832)),
    ]:
        torch.manual_seed(0)
        wan = WanTransformer3DModel(**cfg).eval()
        _cast_transformer(wan, dev, dt)
        dit = CausalWanDiT(wan)
        geo = StreamGeometry(*size)
        x = torch.randn(1, 3, 16, geo.latent_height, geo.latent_width, device=dev, dtype=dt)
        text = torch.randn(1, 512, cfg["text_dim"], device=dev, dtype=dt) * 0.2
        cache = dit.new_cache(geo, 1, 8, 21)
        ctx = dit.begin_block(cache, 0)
        with torch.no_grad():
            ours = dit.forward_block(x, [700.0] * 3, cache, dit.text_kv(text), ctx)
            ref = wan(x.permute(0, 2, 1, 3, 4), torch.tensor([700.0], device=dev), text, return_dict=False)[0]
        out[f"first_block_vs_diffusers_rel_err_{name}"] = rel(ours, ref.permute(0, 2, 1, 3, 4))
        if name == "1.3b_bf16":
            check_compiled_equals_eager(dit, geo, x, text)
            pass_timings(dit, geo, x, text, "")
            for epilogue in (False, True) if os.environ.get("EPILOGUE_AB") else (True,):
                dit.use_compiled_layers(True, gelu_epilogue=epilogue)
                pass_timings(dit, geo, x, text, "compiled_epilogue_" if epilogue else "compiled_")
            dit.use_compiled_layers(False)
            ffn_epilogue_check(dit, geo)
        del wan, dit, cache


@torch.no_grad()
def check_compiled_equals_eager(
    dit: CausalWanDiT, geo: StreamGeometry, x: torch.Tensor, text: torch.Tensor
) -> None:
    """Compiled layer functions vs eager on the 1.3B in bf16: four blocks, unpruned then pruned, per recovery."""
    import time

    res: dict[str, Any] = {}
    for rec in ("full", "m_degree", "none"):
        outs: dict[bool, list[torch.Tensor]] = {}
        for compiled in (False, True):
            dit.use_compiled_layers(compiled)
            cache = dit.new_cache(geo, 1, 8, 21)
            cross = dit.text_kv(text)
            gen = torch.Generator(device=dev).manual_seed(3)
            ks = KeepSet.from_mask(torch.rand(geo.tokens_per_block, device=dev, generator=gen) < 0.5, 128)
            t0 = time.perf_counter()
            got = []
            for b in range(4):
                ctx = dit.begin_block(cache, 3 * b)
                keep = None if b < 2 else ks
                got.append(dit.forward_block(x, [700.0] * 3, cache, cross, ctx, keep, rec, prefill=True))
                got.append(dit.forward_block(x, [500.0] * 3, cache, cross, ctx, keep, rec))
                got.append(dit.forward_block(x, [0.0] * 3, cache, cross, ctx, keep, rec, memory=True))
            torch.cuda.synchronize()
            res[f"{rec}_first_run_s_{'compiled' if compiled else 'eager'}"] = time.perf_counter() - t0
            outs[compiled] = got
        res[f"{rec}_rel_err_per_pass"] = [rel(c, e) for c, e in zip(outs[True], outs[False], strict=True)]
    dit.use_compiled_layers(False)
    out["compiled_vs_eager_1.3b_bf16"] = res


@torch.no_grad()
def ffn_epilogue_check(dit: CausalWanDiT, geo: StreamGeometry) -> None:
    """The feed-forward's first product + bias + tanh-GELU: separate kernels vs the cuBLASLt epilogue, on one
    block's tokens (time and relative difference)."""
    from lipar_core.models.layer_ops import ffn_in, ffn_in_epilogue, layer_weights

    lw, c = layer_weights(dit.wan.blocks[0]), dit._consts
    res = {}
    for n in (geo.tokens_per_block, geo.tokens_per_block // 2):
        nx = torch.randn(1, n, dit.dim, device=dev, dtype=torch.bfloat16)
        res[f"ms_separate_{n}"] = timed(lambda nx=nx: ffn_in(nx, lw, c), reps=50)
        res[f"ms_epilogue_{n}"] = timed(lambda nx=nx: ffn_in_epilogue(nx, lw, c), reps=50)
        res[f"rel_err_{n}"] = rel(ffn_in_epilogue(nx, lw, c), ffn_in(nx, lw, c))
    out["ffn_epilogue"] = res


@torch.no_grad()
def pass_timings(
    dit: CausalWanDiT, geo: StreamGeometry, x: torch.Tensor, text: torch.Tensor, tag: str
) -> None:
    cache = dit.new_cache(geo, 1, 8, 21)
    cross = dit.text_kv(text)
    for b in range(4):  # fill the window: steady state
        ctx = dit.begin_block(cache, 3 * b)
        dit.forward_block(x, [0.0] * 3, cache, cross, ctx, memory=True)
    ctx = dit.begin_block(cache, 12)
    g = GraphedDiT(dit, CacheStage(cache))
    g.stage.attach(cache)
    out[f"{tag}dit_pass_ms_unpruned_eager"] = timed(
        lambda: dit.forward_block(x, [700.0] * 3, cache, cross, ctx)
    )
    out[f"{tag}dit_pass_ms_unpruned_graph"] = timed(
        lambda: g.forward_block(x, [700.0] * 3, cache, cross, ctx)
    )
    n = geo.tokens_per_block
    for frac in (0.75, 0.5, 0.25, 0.1):
        gen = torch.Generator(device=dev).manual_seed(1)
        ks = KeepSet.from_mask(torch.rand(n, device=dev, generator=gen) < frac, 128)
        out[f"{tag}dit_pass_ms_keep_{frac}_eager"] = timed(
            lambda ks=ks: dit.forward_block(x, [700.0] * 3, cache, cross, ctx, ks, "full")
        )
        out[f"{tag}dit_pass_ms_keep_{frac}_graph"] = timed(
            lambda ks=ks: g.forward_block(x, [700.0] * 3, cache, cross, ctx, ks, "full")
        )
    out[f"{tag}graphs_captured"] = g.captures


@torch.no_grad()
def check_graphs_equal_eager() -> None:
    """The editor with CUDA graphs gives the same frames as without, block by block, with pruning."""
    cfg = bench_config(480, 832, "1.3b", "cuda", "bfloat16")
    models = load_preset(cfg)
    models.text = RandomTextEncoder.for_models(models)
    from lipar_core.bench import load_clips

    clip = load_clips(__import__("pathlib").Path(".clips"), 96, 480, 832)["bigbuckbunny"]
    res = {}
    for rec in ("full", "none", "m_degree"):
        lip = LiparConfig(**{**cfg.lipar, "recovery": rec})
        a = StreamEditor(models, "a knight", seed=1, lipar=lip, cuda_graphs=False)
        b = StreamEditor(models, "a knight", seed=1, lipar=lip, cuda_graphs=True)
        worst = 0.0
        exact = True
        for i in range(8):
            fa, _ = a.process_block(clip[i * 12 : (i + 1) * 12])
            fb, _ = b.process_block(clip[i * 12 : (i + 1) * 12])
            exact &= torch.equal(fa, fb)
            worst = max(worst, rel(b.last_latents, a.last_latents))
        assert b.graphs is not None
        res[rec] = {
            "frames_bit_exact": exact,
            "max_rel_latent_diff": worst,
            "replays": b.graphs.replays,
            "captures": b.graphs.captures,
        }
    out["graphs_vs_eager"] = res


@torch.no_grad()
def autoencoder_timings() -> None:
    """TAEHV (full size, random weights, fp16) encode + decode of 12-frame 832x480 blocks in a stream, steady
    state: eager vs ``compile_streams``; the compiled stream's latents and frames compared with eager's over
    three consecutive blocks (state carried)."""
    from lipar_core.autoencoders.taehv import TAEHV

    frames = torch.rand(3, 1, 12, 3, 480, 832, device=dev, dtype=torch.float16)
    res: dict[str, Any] = {}
    outs: dict[bool, list[torch.Tensor]] = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        ae = TAEHV().to(device=dev, dtype=torch.float16).eval()
        ae.compile_streams(compiled)
        enc, decs = ae.encoder_stream(), ae.decoder_stream()
        got = []
        for i in range(3):
            z = enc(frames[i])
            got += [z, decs(z)]
        outs[compiled] = got
        tag = "compiled" if compiled else "eager"
        res[f"encode_ms_{tag}"] = timed(lambda enc=enc: enc(frames[0]))
        res[f"decode_ms_{tag}"] = timed(lambda decs=decs, z=z: decs(z))
        del ae
    res["rel_err_per_output"] = [rel(c, e) for c, e in zip(outs[True], outs[False], strict=True)]
    out["autoencoder"] = res


@torch.no_grad()
def fp8_check() -> None:
    """``runtime.fp8`` against bf16 on the same clip (bigbuckbunny, 8 blocks, LIPAR, graphs and compiled layers
    on): DiT and total ms per block (median of the blocks after the first, second run of the clip) and the
    difference of the edited frames and latents (PSNR, fp8 against bf16)."""
    from pathlib import Path

    from lipar_core.bench import PROMPT, load_clips, psnr, run_clip

    base = bench_config(480, 832, "1.3b", "cuda", "bfloat16")
    clip = load_clips(Path(".clips"), 96, 480, 832)["bigbuckbunny"]
    res: dict[str, Any] = {}
    runs = {}
    for tag in ("bf16", "fp8", "fp8_tensor"):
        fp8, scales = tag != "bf16", "tensor" if tag == "fp8_tensor" else "row"
        cfg = base.with_overrides(runtime={**base.runtime.model_dump(), "fp8": fp8, "fp8_scales": scales})
        models = load_preset(cfg)
        models.text = RandomTextEncoder.for_models(models)
        ed = StreamEditor(models, PROMPT, seed=0, lipar=LiparConfig(**cfg.lipar))
        run_clip(ed, clip)  # compilation and graph captures
        r = run_clip(ed, clip)
        runs[tag] = r
        for stage in ("dit", "total"):
            res[f"{tag}_{stage}_ms_per_block"] = statistics.median(b["ms"][stage] for b in r.blocks[1:])
        del ed, models
        torch.cuda.empty_cache()
    ref = runs["bf16"]
    peak = float(ref.latents.abs().max())
    for tag in ("fp8", "fp8_tensor"):
        res[f"psnr_frames_{tag}_vs_bf16_db"] = psnr(runs[tag].frames.float(), ref.frames.float(), 255.0)
        res[f"psnr_latents_{tag}_vs_bf16_db"] = psnr(runs[tag].latents, ref.latents, peak)
    res["prune_ratio"] = [b["prune_ratio"] for b in ref.blocks]
    out["fp8"] = res


def mask_timings() -> None:
    geo = StreamGeometry(480, 832)
    lat = torch.randn(1, 3, 16, 60, 104, device=dev)
    pix = torch.rand(1, 12, 3, 480, 832, device=dev)
    for src in ("latent", "pixel"):
        for graph in (False, True):
            m = PruneMasker(LiparConfig(mask_source=src), geo, use_cuda_graph=graph)
            m(lat, pixels=pix, force_full=True)
            tag = f"{src}_{'graph' if graph else 'eager'}"
            out[f"mask_ms_{tag}"] = timed(lambda m=m: m(lat, pixels=pix))
            out[f"mask_plus_keepset_ms_{tag}"] = timed(lambda m=m: KeepSet.from_mask(m(lat, pixels=pix), 128))
    # The graphed mask equals the eager one, block after block, on a moving sequence (state carried).
    g = torch.Generator(device=dev).manual_seed(0)
    seq = torch.cumsum(torch.randn(1, 30, 16, 60, 104, device=dev, generator=g) * 0.08, dim=1)
    for src in ("latent",):
        a = PruneMasker(LiparConfig(mask_source=src, tau=0.05), geo, use_cuda_graph=False)
        b = PruneMasker(LiparConfig(mask_source=src, tau=0.05), geo, use_cuda_graph=True)
        same, frac = True, []
        for i in range(10):
            x = seq[:, 3 * i : 3 * i + 3]
            ka, kb = a(x, force_full=i == 0), b(x, force_full=i == 0)
            same &= torch.equal(ka, kb)
            frac.append(float(ka.float().mean()))
        out[f"mask_graph_equals_eager_{src}"] = same
        out[f"mask_kept_fraction_{src}"] = frac


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    steps = {
        f.__name__: f
        for f in (check_first_block, autoencoder_timings, check_graphs_equal_eager, mask_timings, fp8_check)
    }
    only = os.environ.get("CHECKS")  # comma list of step names; default: all
    for step in [steps[n] for n in only.split(",")] if only else steps.values():
        try:
            step()
        except Exception as e:  # report and go on: one call measures everything
            log.exception("%s failed", step.__name__)
            out[f"{step.__name__}_error"] = repr(e)
    log.info("%s", json.dumps(out, indent=2))
    with open(os.path.join(os.environ.get("OUT", "."), "checks.json"), "w") as f:
        json.dump(out, f, indent=2)
