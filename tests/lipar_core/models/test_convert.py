"""Tests for lipar_core.models.convert: original Wan / Self-Forcing names → diffusers WanTransformer3DModel.

The mapping is checked three independent ways:

1. a hand-written inverse table (below) from diffusers names back to the original ones: round trip;
2. a from-scratch forward pass of the ORIGINAL Wan architecture written here on the original names
   (LIPAR.md §2.1), compared with diffusers' forward after loading the converted weights;
3. at full 1.3B size on the meta device: the original key set converts exactly to diffusers' key set.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from torch import Tensor

from lipar_core.models.configs import tiny_transformer_config, wan_1_3b_transformer_config
from lipar_core.models.convert import (
    convert_wan_to_diffusers,
    load_self_forcing_generator,
    original_wan_key_shapes,
    strip_wrapper_prefixes,
)

# The tiny test DiT with 4 latent channels instead of 16 (the inputs below are sized from TINY).
TINY: dict[str, Any] = {**tiny_transformer_config(), "in_channels": 4, "out_channels": 4}
FULL_1_3B: dict[str, Any] = wan_1_3b_transformer_config()

# diffusers name → original name, written independently of the code under test
_DIFFUSERS_TO_ORIGINAL = [
    (r"patch_embedding\.(weight|bias)", r"patch_embedding.\1"),
    (r"condition_embedder\.text_embedder\.linear_1\.(weight|bias)", r"text_embedding.0.\1"),
    (r"condition_embedder\.text_embedder\.linear_2\.(weight|bias)", r"text_embedding.2.\1"),
    (r"condition_embedder\.time_embedder\.linear_1\.(weight|bias)", r"time_embedding.0.\1"),
    (r"condition_embedder\.time_embedder\.linear_2\.(weight|bias)", r"time_embedding.2.\1"),
    (r"condition_embedder\.time_proj\.(weight|bias)", r"time_projection.1.\1"),
    (r"blocks\.(\d+)\.attn1\.to_q\.(weight|bias)", r"blocks.\1.self_attn.q.\2"),
    (r"blocks\.(\d+)\.attn1\.to_k\.(weight|bias)", r"blocks.\1.self_attn.k.\2"),
    (r"blocks\.(\d+)\.attn1\.to_v\.(weight|bias)", r"blocks.\1.self_attn.v.\2"),
    (r"blocks\.(\d+)\.attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.self_attn.o.\2"),
    (r"blocks\.(\d+)\.attn1\.norm_q\.weight", r"blocks.\1.self_attn.norm_q.weight"),
    (r"blocks\.(\d+)\.attn1\.norm_k\.weight", r"blocks.\1.self_attn.norm_k.weight"),
    (r"blocks\.(\d+)\.attn2\.to_q\.(weight|bias)", r"blocks.\1.cross_attn.q.\2"),
    (r"blocks\.(\d+)\.attn2\.to_k\.(weight|bias)", r"blocks.\1.cross_attn.k.\2"),
    (r"blocks\.(\d+)\.attn2\.to_v\.(weight|bias)", r"blocks.\1.cross_attn.v.\2"),
    (r"blocks\.(\d+)\.attn2\.to_out\.0\.(weight|bias)", r"blocks.\1.cross_attn.o.\2"),
    (r"blocks\.(\d+)\.attn2\.norm_q\.weight", r"blocks.\1.cross_attn.norm_q.weight"),
    (r"blocks\.(\d+)\.attn2\.norm_k\.weight", r"blocks.\1.cross_attn.norm_k.weight"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"blocks.\1.norm3.\2"),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj\.(weight|bias)", r"blocks.\1.ffn.0.\2"),
    (r"blocks\.(\d+)\.ffn\.net\.2\.(weight|bias)", r"blocks.\1.ffn.2.\2"),
    (r"blocks\.(\d+)\.scale_shift_table", r"blocks.\1.modulation"),
    (r"proj_out\.(weight|bias)", r"head.head.\1"),
    (r"scale_shift_table", r"head.modulation"),
]


def to_original_name(name: str) -> str:
    matches = [re.fullmatch(pat, name) for pat, _ in _DIFFUSERS_TO_ORIGINAL]
    hits = [(m, repl) for m, (_, repl) in zip(matches, _DIFFUSERS_TO_ORIGINAL, strict=True) if m]
    assert len(hits) == 1, f"{name}: {len(hits)} inverse rules match"
    m, repl = hits[0]
    return m.expand(repl)


def tiny_model(seed: int) -> WanTransformer3DModel:
    model = WanTransformer3DModel(**TINY).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def random_original_sd(seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in original_wan_key_shapes(TINY).items():
        t = torch.randn(shape, generator=gen) * 0.3
        if re.search(r"norm_[qk]\.weight$|norm3\.weight$", name):
            t = 1.0 + t
        out[name] = t
    return out


def inputs() -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(1, TINY["in_channels"], 2, 4, 6, generator=gen)  # [B, C, F, H, W] → 2×2×3 tokens
    t = torch.tensor([700.0])
    ctx = torch.randn(1, 5, TINY["text_dim"], generator=gen)  # [B, L, text_dim]
    return x, t, ctx


def diffusers_forward(model: WanTransformer3DModel) -> Tensor:
    x, t, ctx = inputs()
    with torch.no_grad():
        return model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]


# ---------------------------------------------------------------- reference forward on ORIGINAL names


def _lin(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _ln(x: Tensor, eps: float, w: Tensor | None = None, b: Tensor | None = None) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope_freqs(f: int, h: int, w: int, head_dim: int) -> Tensor:
    """Complex [f*h*w, head_dim/2]: Wan's 3-D RoPE, pairs split over (time, height, width)."""
    c = head_dim // 2
    angles = []
    for pairs, n in zip((c - 2 * (c // 3), c // 3, c // 3), (f, h, w), strict=True):
        inv = 1.0 / (10000.0 ** (torch.arange(0, 2 * pairs, 2, dtype=torch.float64) / (2 * pairs)))
        angles.append(torch.outer(torch.arange(n, dtype=torch.float64), inv))
    grid = torch.cat(
        [
            angles[0][:, None, None, :].expand(f, h, w, -1),
            angles[1][None, :, None, :].expand(f, h, w, -1),
            angles[2][None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, c)
    return torch.polar(torch.ones_like(grid), grid)


def _rope(x: Tensor, freqs: Tensor) -> Tensor:  # x [B, S, H, D]
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs[None, :, None, :]).flatten(-2).to(x.dtype)


def _attention(
    sd: dict[str, Tensor], p: str, xq: Tensor, xkv: Tensor, heads: int, eps: float, freqs: Tensor | None
) -> Tensor:
    b, s, d = xq.shape
    q = _rms(_lin(xq, sd, f"{p}.q"), sd[f"{p}.norm_q.weight"], eps).view(b, s, heads, -1)
    k = _rms(_lin(xkv, sd, f"{p}.k"), sd[f"{p}.norm_k.weight"], eps).view(b, xkv.shape[1], heads, -1)
    v = _lin(xkv, sd, f"{p}.v").view(b, xkv.shape[1], heads, -1)
    if freqs is not None:
        q, k = _rope(q, freqs), _rope(k, freqs)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return _lin(o.transpose(1, 2).reshape(b, s, d), sd, f"{p}.o")


def reference_forward(sd: dict[str, Tensor]) -> Tensor:
    """The original Wan2.1 T2V forward (LIPAR.md §2.1) on original parameter names."""
    x, t, ctx = inputs()
    heads, eps, patch = TINY["num_attention_heads"], TINY["eps"], TINY["patch_size"]
    dim = heads * TINY["attention_head_dim"]
    h = F.conv3d(x, sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=patch)
    bsz, _, f, hh, ww = h.shape
    h = h.flatten(2).transpose(1, 2)  # [B, S, dim]
    half = TINY["freq_dim"] // 2
    arg = t.double()[:, None] * torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)[None]
    sinusoid = torch.cat([arg.cos(), arg.sin()], dim=1).float()
    e = _lin(F.silu(_lin(sinusoid, sd, "time_embedding.0")), sd, "time_embedding.2")  # [B, dim]
    e0 = _lin(F.silu(e), sd, "time_projection.1").unflatten(1, (6, dim))  # [B, 6, dim]
    context = _lin(F.gelu(_lin(ctx, sd, "text_embedding.0"), approximate="tanh"), sd, "text_embedding.2")
    freqs = _rope_freqs(f, hh, ww, TINY["attention_head_dim"])
    for i in range(TINY["num_layers"]):
        b = f"blocks.{i}"
        shift1, scale1, gate1, shift2, scale2, gate2 = (sd[f"{b}.modulation"] + e0).chunk(6, dim=1)
        y = _ln(h, eps) * (1 + scale1) + shift1
        h = h + _attention(sd, f"{b}.self_attn", y, y, heads, eps, freqs) * gate1
        y = _ln(h, eps, sd[f"{b}.norm3.weight"], sd[f"{b}.norm3.bias"])
        h = h + _attention(sd, f"{b}.cross_attn", y, context, heads, eps, None)
        y = _ln(h, eps) * (1 + scale2) + shift2
        h = h + _lin(F.gelu(_lin(y, sd, f"{b}.ffn.0"), approximate="tanh"), sd, f"{b}.ffn.2") * gate2
    shift, scale = (sd["head.modulation"] + e[:, None]).chunk(2, dim=1)
    out = _lin(_ln(h, eps) * (1 + scale) + shift, sd, "head.head")  # [B, S, C·pt·ph·pw]
    pt, ph, pw = patch
    c = out.shape[-1] // (pt * ph * pw)
    out = out.view(bsz, f, hh, ww, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(bsz, c, f * pt, hh * ph, ww * pw)


# ---------------------------------------------------------------- tests


def test_original_key_shapes_match_diffusers_tiny() -> None:
    model = WanTransformer3DModel(**TINY)
    expected = {to_original_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert original_wan_key_shapes(TINY) == expected


def test_generator_checkpoint_loads_and_matches_original_forward(tmp_path: Path) -> None:
    ema, raw = random_original_sd(1), random_original_sd(2)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save(
        {
            "generator": {f"model.{k}": v for k, v in raw.items()},
            "generator_ema": {f"model.{k}": v for k, v in ema.items()},
        },
        path,
    )
    model = WanTransformer3DModel(**TINY).eval()
    model.load_state_dict(load_self_forcing_generator(path), strict=True)
    out_ema = diffusers_forward(model)
    ref_ema = reference_forward(ema)
    assert out_ema.shape == (1, TINY["out_channels"], 2, 4, 6)
    torch.testing.assert_close(out_ema, ref_ema, rtol=1e-4, atol=1e-4)

    model.load_state_dict(load_self_forcing_generator(path, key="generator"), strict=True)
    out_raw = diffusers_forward(model)
    torch.testing.assert_close(out_raw, reference_forward(raw), rtol=1e-4, atol=1e-4)
    assert (out_raw - out_ema).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("blocks.1.cross_attn.q.weight", "blocks.1.cross_attn.k.weight"),
        ("blocks.0.self_attn.norm_q.weight", "blocks.0.self_attn.norm_k.weight"),
        ("text_embedding.2.weight", "time_embedding.2.weight"),
    ],
)
def test_reference_forward_detects_a_wrong_mapping(a: str, b: str) -> None:
    """Negative control: the forward comparison above does catch a swapped pair of weights."""
    sd = random_original_sd(1)
    converted = convert_wan_to_diffusers(sd)
    swapped = dict(sd)
    swapped[a], swapped[b] = sd[b], sd[a]
    bad = convert_wan_to_diffusers(swapped)
    model = WanTransformer3DModel(**TINY).eval()
    model.load_state_dict(bad, strict=True)
    assert (diffusers_forward(model) - reference_forward(sd)).abs().max() > 1e-3
    model.load_state_dict(converted, strict=True)
    torch.testing.assert_close(diffusers_forward(model), reference_forward(sd), rtol=1e-4, atol=1e-4)


def test_round_trip_from_a_diffusers_model(tmp_path: Path) -> None:
    model_a = tiny_model(seed=3)
    original = {f"model._orig_mod.{to_original_name(k)}": v.clone() for k, v in model_a.state_dict().items()}
    path = tmp_path / "gen.pt"
    torch.save({"generator_ema": original, "step": 1000}, path)
    converted = load_self_forcing_generator(path)
    sd_a = model_a.state_dict()
    assert set(converted) == set(sd_a)
    for k, v in sd_a.items():
        assert torch.equal(converted[k], v), k
    model_b = WanTransformer3DModel(**TINY).eval()
    model_b.load_state_dict(converted, strict=True)
    torch.testing.assert_close(diffusers_forward(model_b), diffusers_forward(model_a), rtol=0, atol=0)


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "model.",
        "module.model.",
        "model._orig_mod.",
        "_fsdp_wrapped_module.model.",
        "model.diffusion_model.",
    ],
)
def test_wrapper_prefixes_are_stripped(prefix: str) -> None:
    sd = random_original_sd(4)
    converted = convert_wan_to_diffusers({prefix + k: v for k, v in sd.items()})
    assert set(converted) == set(WanTransformer3DModel(**TINY).state_dict())
    assert converted["blocks.1.attn2.to_out.0.weight"] is sd["blocks.1.cross_attn.o.weight"]
    assert converted["scale_shift_table"] is sd["head.modulation"]
    assert converted["blocks.0.norm2.bias"] is sd["blocks.0.norm3.bias"]
    assert (
        strip_wrapper_prefixes("model.blocks.0._fsdp_wrapped_module.ffn.0.weight") == "blocks.0.ffn.0.weight"
    )


def test_diffusers_keys_pass_through_unchanged() -> None:
    sd = tiny_model(seed=5).state_dict()
    converted = convert_wan_to_diffusers({f"_orig_mod.{k}": v for k, v in sd.items()})
    assert list(converted) == list(sd)
    assert all(converted[k] is v for k, v in sd.items())


def test_input_is_not_modified() -> None:
    sd = {f"model.{k}": v for k, v in random_original_sd(6).items()}
    before = dict(sd)
    convert_wan_to_diffusers(sd)
    assert sd == before and list(sd) == list(before)


def test_unknown_keys_raise_and_are_listed() -> None:
    sd = random_original_sd(7)
    sd["model.blocks.0.self_attn.extra.weight"] = torch.zeros(1)
    sd["img_emb.proj.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"blocks\.0\.self_attn\.extra\.weight") as info:
        convert_wan_to_diffusers(sd)
    assert "img_emb.proj.0.weight" in str(info.value) and "2 key(s)" in str(info.value)

    many = dict(random_original_sd(7), **{f"blocks.0.junk{i}": torch.zeros(1) for i in range(15)})
    with pytest.raises(ValueError, match="and 5 more") as info:
        convert_wan_to_diffusers(many)
    assert str(info.value).count("junk") == 10

    diff = tiny_model(seed=8).state_dict()
    diff["blocks.0.attn1.processor.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"attn1\.processor\.weight"):
        convert_wan_to_diffusers(diff)


def test_mixed_layouts_raise() -> None:
    sd: dict[str, Tensor] = dict(random_original_sd(9))
    sd["blocks.0.attn1.to_q.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="mixes"):
        convert_wan_to_diffusers(sd)


def test_missing_key_lists_available_keys(tmp_path: Path) -> None:
    path = tmp_path / "gen.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in random_original_sd(10).items()}, "step": 5}, path)
    with pytest.raises(KeyError) as info:
        load_self_forcing_generator(path, key="generator_ema")
    msg = str(info.value)
    assert "'generator_ema'" in msg and "'generator'" in msg and "'step'" in msg and str(path) in msg


def test_bare_state_dict_and_legacy_format(tmp_path: Path) -> None:
    sd = random_original_sd(11)
    bare = tmp_path / "bare.pt"
    torch.save({f"model.{k}": v for k, v in sd.items()}, bare)
    got = load_self_forcing_generator(bare)
    assert torch.equal(got["blocks.1.ffn.net.2.weight"], sd["blocks.1.ffn.2.weight"])

    legacy = tmp_path / "legacy.pt"  # pre-zip serialization: cannot be memory-mapped
    torch.save({"generator_ema": sd}, legacy, _use_new_zipfile_serialization=False)
    got = load_self_forcing_generator(legacy)
    assert torch.equal(got["proj_out.weight"], sd["head.head.weight"])


class _NotAllowed:
    pass


def test_non_weights_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"generator_ema": random_original_sd(12), "extra": _NotAllowed()}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_self_forcing_generator(path)
    with pytest.raises(FileNotFoundError):
        load_self_forcing_generator(tmp_path / "missing.pt")


def test_full_size_1_3b_on_meta_device() -> None:
    with torch.device("meta"):
        model = WanTransformer3DModel(**FULL_1_3B)
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = original_wan_key_shapes(FULL_1_3B)
    with torch.device("meta"):
        original = {f"model.{k}": torch.empty(s) for k, s in shapes.items()}
    converted = convert_wan_to_diffusers(original)
    assert {k: tuple(v.shape) for k, v in converted.items()} == target
    assert all(v.is_meta for v in converted.values())
    assert len(shapes) == 825
    assert shapes["blocks.29.modulation"] == (1, 6, 1536)
    assert shapes["head.head.weight"] == (64, 1536)
    assert shapes["text_embedding.0.weight"] == (1536, 4096)
    n_params = sum(math.prod(s) for s in shapes.values())
    assert 1.3e9 < n_params < 1.5e9  # "1.3B" (≈2.84 GB in bf16, LIPAR.md §2.1)
