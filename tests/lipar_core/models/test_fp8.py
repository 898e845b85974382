"""The FP8 option: which layers it converts, its arithmetic against the plain layers (on the CPU, whose
``torch._scaled_mm`` computes the same scaled float8 product), and a clear error where it cannot run. Speed and
the quality cost on the real model are measured on the GPU machine (bench/gpu_checks.py ``fp8_check``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lipar_core.geometry import StreamGeometry
from lipar_core.models.fp8 import (
    FP8_LAYERS,
    FP8Unavailable,
    convert_fp8,
    fp8_layer,
    linear_fp8,
    quantize_rows,
)
from lipar_core.presets import get_preset_config, load_preset
from tests.lipar_core.models.test_transformer import TINY, _model, _rel


def test_fp8_converts_the_per_token_linear_layers_of_every_block() -> None:
    wan = _model().wan
    linear = [name for name, m in wan.named_modules() if isinstance(m, torch.nn.Linear)]
    chosen = [name for name in linear if fp8_layer(name)]
    assert len(chosen) == len(FP8_LAYERS) * len(wan.blocks)
    for i in range(len(wan.blocks)):
        assert {n for n in chosen if n.startswith(f"blocks.{i}.")} == {f"blocks.{i}.{n}" for n in FP8_LAYERS}
    # Prompt-time projections, embedders and the head stay in the model dtype.
    for kept in ("blocks.0.attn2.to_k", "blocks.0.attn2.to_v", "proj_out"):
        assert kept in linear and not fp8_layer(kept)
    assert not any(fp8_layer(n) for n in linear if n.startswith("condition_embedder"))
    assert convert_fp8(wan) == len(chosen)
    assert wan.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert wan.blocks[0].attn2.to_k.weight.dtype == torch.float32


@pytest.mark.parametrize("per_row", [True, False])
def test_linear_fp8_is_the_scaled_float8_product(per_row: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 64, generator=g)
    if per_row:
        x[0, 3] *= 50  # an outlier token: per-token scales keep the others precise
    w, b = torch.randn(48, 64, generator=g) * 0.1, torch.randn(48, generator=g)
    q, s = quantize_rows(w, per_row)
    assert q.dtype == torch.float8_e4m3fn and s.shape == ((48, 1) if per_row else (1, 1))
    assert _rel(q.float() * s, w) < 0.05  # e4m3 keeps 3 mantissa bits
    y = linear_fp8(x, q, s, b)
    ref = F.linear(x, w, b)
    assert y.shape == ref.shape
    for t in range(x.shape[1]):
        assert _rel(y[1, t], ref[1, t]) < 0.08
    assert _rel(y, ref) > 1e-4  # it is not the plain product


@torch.no_grad()
def test_fp8_dit_pass_stays_close_to_the_plain_one() -> None:
    geo = StreamGeometry(height=64, width=96)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 16, geo.latent_height, geo.latent_width, generator=g)
    text = torch.randn(1, 5, TINY["text_dim"], generator=g)
    outs = []
    for fp8 in (False, True):
        dit = _model(2)
        if fp8:
            convert_fp8(dit.wan)
        cache = dit.new_cache(geo, sink_frames=1, window_frames=5, train_frames=21)
        cross = dit.text_kv(text)
        for b in range(2):
            ctx = dit.begin_block(cache, 3 * b)
            out = dit.forward_block(x, [700.0] * 3, cache, cross, ctx)
            dit.forward_block(x, [0.0] * 3, cache, cross, ctx, memory=True)
        outs.append(out)
    err = _rel(outs[1], outs[0])
    assert 1e-4 < err < 0.1, err


def test_fp8_off_cuda_is_a_clear_error_and_changes_nothing() -> None:
    from lipar_core.models.fp8 import quantize_fp8

    wan = _model().wan
    before = {k: v.clone() for k, v in wan.state_dict().items()}
    with pytest.raises(FP8Unavailable, match="needs a CUDA device"):
        quantize_fp8(wan)
    assert all(torch.equal(before[k], v) for k, v in wan.state_dict().items())
    cfg = get_preset_config("tiny-random")
    cfg = cfg.with_overrides(runtime={**cfg.runtime.model_dump(), "fp8": True})
    with pytest.raises(FP8Unavailable, match=r"runtime\.fp8 needs a CUDA device"):
        load_preset(cfg)
