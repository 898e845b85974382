"""The compiled layer functions compute what the eager ones compute (pruned and unpruned passes)."""

from __future__ import annotations

import time

import pytest
import torch

from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.prune import KeepSet
from lipar_core.models.layer_ops import LayerOps
from tests.lipar_core.models.test_transformer import TINY, _model, _rel
from tests.markers import needs_cxx


def _stream(
    compiled: bool, keep_mask: torch.Tensor, timesteps: list[list[float]], recovery: str
) -> list[torch.Tensor]:
    """Three blocks: unpruned, then two pruned with ``keep_mask``, each pass of ``timesteps`` + the clean pass."""
    dit = _model(3)
    if compiled:
        dit.use_compiled_layers()
    geo = StreamGeometry(height=64, width=96)
    cache = dit.new_cache(geo, sink_frames=1, window_frames=5, train_frames=21)
    cross = dit.text_kv(torch.randn(1, 7, TINY["text_dim"], generator=torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(2)
    outs = []
    for b in range(3):
        x = torch.randn(1, 3, 16, geo.latent_height, geo.latent_width, generator=g)
        ctx = dit.begin_block(cache, 3 * b)
        keep = None if b == 0 else KeepSet.from_mask(keep_mask, bucket=8)
        for i, ts in enumerate(timesteps):
            outs.append(dit.forward_block(x, ts, cache, cross, ctx, keep, recovery, prefill=i == 0))
        outs.append(dit.forward_block(x, [0.0] * 3, cache, cross, ctx, keep, recovery, memory=True))
    return outs


@needs_cxx
@torch.no_grad()
@pytest.mark.parametrize("recovery", ["full", "m_degree", "none"])
def test_compiled_layers_equal_eager(recovery: str) -> None:
    geo = StreamGeometry(height=64, width=96)
    keep_mask = torch.rand(geo.tokens_per_block, generator=torch.Generator().manual_seed(4)) < 0.5
    timesteps = [[700.0] * 3, [700.0, 500.0, 300.0]]  # uniform and per-frame modulation
    t0 = time.perf_counter()
    compiled = _stream(True, keep_mask, timesteps, recovery)
    compile_s = time.perf_counter() - t0
    eager = _stream(False, keep_mask, timesteps, recovery)
    assert len(compiled) == len(eager) == 9
    for i, (c, e) in enumerate(zip(compiled, eager, strict=True)):
        assert _rel(c, e) <= 1e-5, (i, _rel(c, e))
    print(f"compiled stream incl. compilation: {compile_s:.1f} s")


def test_eager_ops_are_the_plain_functions() -> None:
    from lipar_core.models import layer_ops

    ops = LayerOps.eager()
    assert not ops.compiled and ops.pre_attention is layer_ops.pre_attention
    dit = _model()
    assert dit.ops.compiled is False
    dit.use_compiled_layers()
    assert dit.ops.compiled is True
