"""KVCache.save_block / restore_block undo any DiT pass over the block (CUDA-graph warm-ups rely on it)."""

from __future__ import annotations

import pytest
import torch

from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.prune import KeepSet
from lipar_core.models.kv_cache import KVCache
from tests.lipar_core.models.test_transformer import TINY, _model


def _state(cache: KVCache) -> list[torch.Tensor]:
    return [t.clone() for t in cache.k + cache.v + cache.prev_k_raw + cache.prev_v + [cache.present]]


@pytest.mark.parametrize(
    ("recovery", "memory", "prefill"),
    [("full", True, False), ("full", False, True), ("m_degree", False, False), ("none", True, False)],
)
@torch.no_grad()
def test_restore_undoes_a_pass(recovery: str, memory: bool, prefill: bool) -> None:
    dit = _model(5)
    geo = StreamGeometry(height=64, width=96)
    cache = dit.new_cache(geo, sink_frames=1, window_frames=5, train_frames=21)
    cross = dit.text_kv(torch.randn(1, 7, TINY["text_dim"]))
    x = lambda: torch.randn(1, 3, 16, geo.latent_height, geo.latent_width)  # noqa: E731
    for b in range(3):  # a stream with history (the ring has wrapped)
        ctx = dit.begin_block(cache, 3 * b)
        dit.forward_block(x(), [0.0] * 3, cache, cross, ctx, memory=True)
    ctx = dit.begin_block(cache, 9)
    keep = KeepSet.from_mask(torch.rand(geo.tokens_per_block) < 0.5, bucket=8)
    before, has_prev = _state(cache), cache.has_prev
    snap = cache.save_block(ctx.token_index)
    dit.forward_block(x(), [700.0] * 3, cache, cross, ctx, keep, recovery, memory, prefill)
    changed = [not torch.equal(a, b) for a, b in zip(before, _state(cache), strict=True)]
    assert any(changed)  # the pass did write something
    cache.restore_block(snap)
    after = _state(cache)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert cache.has_prev == has_prev


@pytest.mark.parametrize(
    ("dtype", "heads", "dim"), [(torch.bfloat16, 3, 8), (torch.float32, 2, 6), (torch.bfloat16, 1, 3)]
)
def test_write_rows_equals_index_copy(dtype: torch.dtype, heads: int, dim: int) -> None:
    """The word-wise row copy (rows of 8-byte multiples) and its fallback (odd rows) both equal index_copy_."""
    from lipar_core.models.kv_cache import write_rows

    g = torch.Generator().manual_seed(heads * dim)
    dst = torch.randn(1, 20, heads, dim, generator=g).to(dtype)
    src = torch.randn(1, 7, heads, dim, generator=g).to(dtype)
    index = torch.tensor([3, 0, 19, 7, 8, 12, 5])
    ref = dst.clone().index_copy_(1, index, src)
    write_rows(dst, index, src)
    assert torch.equal(dst, ref)
