"""GPU checks run by bench/gpu_run.sh: correctness of the streaming DiT on CUDA, and micro-timings
(ms per DiT pass at several kept fractions, mask ms) at 832x480 with the 1.3B architecture (random weights)."""

from __future__ import annotations

import json
import os
import statistics

import torch
from diffusers import WanTransformer3DModel

from lipar_core.bench import WAN_1_3B
from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.config import LiparConfig
from lipar_core.lipar.mask import PruneMasker
from lipar_core.lipar.prune import KeepSet
from lipar_core.models.transformer import CausalWanDiT
from lipar_core.presets import _cast_transformer

dev = torch.device("cuda")
out = {}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def timed(fn, reps: int = 10) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


with torch.no_grad():
    # 1. First block equals diffusers' forward on CUDA: tiny fp32 and 1.3B bf16.
    for name, cfg, dt, size in [
        (
            "tiny_fp32",
            {
                **WAN_1_3B,
                "num_attention_heads": 2,
                "attention_head_dim": 16,
                "num_layers": 2,
                "ffn_dim": 64,
                "text_dim": 32,
                "freq_dim": 32,
            },
            torch.float32,
            (64, 96),
        ),
        ("1.3b_bf16", WAN_1_3B, torch.bfloat16, (480, 832)),
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
        ours = dit.forward_block(x, [700.0] * 3, cache, dit.text_kv(text), ctx)
        ref = wan(x.permute(0, 2, 1, 3, 4), torch.tensor([700.0], device=dev), text, return_dict=False)[0]
        out[f"first_block_vs_diffusers_rel_err_{name}"] = rel(ours, ref.permute(0, 2, 1, 3, 4))
        if name == "1.3b_bf16":
            # 2. ms per DiT pass in steady state (window full: 9 frames of keys), unpruned and pruned.
            cross = dit.text_kv(text)
            for b in range(4):  # fill the window
                ctx = dit.begin_block(cache, 3 * b)
                dit.forward_block(x, [0.0] * 3, cache, cross, ctx, memory=True)
            ctx = dit.begin_block(cache, 12)
            out["dit_pass_ms_unpruned"] = timed(lambda: dit.forward_block(x, [700.0] * 3, cache, cross, ctx))
            out["diffusers_forward_ms_no_cache"] = timed(
                lambda: wan(
                    x.permute(0, 2, 1, 3, 4), torch.tensor([700.0], device=dev), text, return_dict=False
                )
            )
            n = geo.tokens_per_block
            for frac in (0.75, 0.5, 0.25, 0.1):
                g = torch.Generator(device=dev).manual_seed(1)
                mask = torch.rand(n, device=dev, generator=g) < frac
                ks = KeepSet.from_mask(mask, 128)
                out[f"dit_pass_ms_keep_{frac}"] = timed(
                    lambda ks=ks: dit.forward_block(x, [700.0] * 3, cache, cross, ctx, ks, "full")
                )
            out["peak_memory_gib_dit_only"] = torch.cuda.max_memory_allocated() / 2**30
        del wan, dit, cache

    # 3. Mask time per block at 480x832 (latent criterion and pixel source), no host sync inside.
    geo = StreamGeometry(480, 832)
    lat = torch.randn(1, 3, 16, 60, 104, device=dev)
    pix = torch.rand(1, 12, 3, 480, 832, device=dev)
    for src in ("latent", "pixel"):
        m = PruneMasker(LiparConfig(mask_source=src), geo)
        m(lat, pixels=pix, force_full=True)
        out[f"mask_ms_{src}"] = timed(lambda m=m: m(lat, pixels=pix))
        out[f"mask_plus_keepset_ms_{src}"] = timed(lambda m=m: KeepSet.from_mask(m(lat, pixels=pix), 128))

print(json.dumps(out, indent=2))
with open(os.path.join(os.environ.get("OUT", "."), "checks.json"), "w") as f:
    json.dump(out, f, indent=2)
