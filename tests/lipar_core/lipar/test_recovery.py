"""Attention Recovery: where pruned positions take their K/V from, checked against literal definitions.

`fill_index` / `gather_rows` against loops over frames and positions; then, in the DiT's KV cache after real
pruned passes, the keys of pruned positions un-rotated equal the source the specification names (LIPAR.md
§4): the previous block's clean last frame during the noisy passes (noise-aware duplication) and the true
temporal predecessor after the clean pass (cascade).
"""

from __future__ import annotations

import pytest
import torch

from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.prune import KeepSet
from lipar_core.lipar.recovery import fill_index, gather_rows
from lipar_core.models.rope import apply_rope
from tests.lipar_core.models.test_transformer import TINY, _model


def _literal_fill(
    kept_rows: torch.Tensor, keep: torch.Tensor, prev: torch.Tensor, frames: int, cascade: bool
) -> torch.Tensor:
    """Fill a block position by position: kept -> its row; pruned -> predecessor (cascade) or ``prev``."""
    n = keep.shape[0]
    t = n // frames
    out = torch.empty(kept_rows.shape[0], n, *kept_rows.shape[2:])
    r = 0
    for i in range(n):
        if keep[i]:
            out[:, i] = kept_rows[:, r]
            r += 1
        elif cascade and i >= t:
            out[:, i] = out[:, i - t]
        else:
            out[:, i] = prev[:, i % t]
    return out


@pytest.mark.parametrize("cascade", [True, False])
@pytest.mark.parametrize("p_keep", [0.0, 0.3, 0.8, 1.0])
def test_fill_index_equals_the_literal_fill(cascade: bool, p_keep: float) -> None:
    frames, t = 3, 20
    g = torch.Generator().manual_seed(int(p_keep * 10) + cascade)
    keep = torch.rand(frames * t, generator=g) < p_keep
    ks = KeepSet.from_mask(keep, bucket=8)  # padded: rows past the kept count repeat the last kept row
    values = torch.randn(2, frames * t, 3, generator=g)
    kept_rows = values.index_select(1, ks.idx) if ks.n_pad else values[:, :0]
    prev = torch.randn(2, t, 3, generator=g)
    got = gather_rows(kept_rows, prev, fill_index(keep, frames, cascade))
    assert torch.equal(got, _literal_fill(kept_rows, keep, prev, frames, cascade))
    if 0 < ks.n_keep < frames * t:  # pruned positions really take the sources (the check can fail)
        assert not torch.equal(got, values)


@torch.no_grad()
@pytest.mark.parametrize("recovery", ["full", "m_degree"])
def test_pruned_keys_in_the_cache_come_from_the_named_source(recovery: str) -> None:
    """After a pruned block's passes, every pruned position of the cache holds, rotated to its own position,
    the un-rotated key/value the specification names."""
    dit = _model(1)
    geo = StreamGeometry(height=64, width=96)
    f, tpf = geo.token_frames_per_block, geo.tokens_per_frame
    cache = dit.new_cache(geo, sink_frames=1, window_frames=6, train_frames=21)
    g = torch.Generator().manual_seed(3)
    cross = dit.text_kv(torch.randn(1, 5, TINY["text_dim"], generator=g))
    x = torch.randn(1, 3, 16, geo.latent_height, geo.latent_width, generator=g)
    for b in range(2):  # two unpruned blocks, each closed by its clean pass
        ctx = dit.begin_block(cache, 3 * b)
        dit.forward_block(x, [0.0] * 3, cache, cross, ctx, memory=True)
    keep = torch.rand(f * tpf, generator=g) < 0.4
    keep[: tpf // 2] = False  # some positions pruned in frame 0 and (by chance) later frames too
    ks = KeepSet.from_mask(keep, bucket=8)
    ctx = dit.begin_block(cache, 6)
    prev_k = [p.clone() for p in cache.prev_k_raw]
    prev_v = [p.clone() for p in cache.prev_v]

    def unrotated(layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = cache.k[layer][0].index_select(0, ctx.token_index)  # [N, H, D], this block's slots
        v = cache.v[layer][0].index_select(0, ctx.token_index)
        return apply_rope(k.unsqueeze(0), ctx.cos, -ctx.sin)[0], v

    x2 = torch.randn(1, 3, 16, geo.latent_height, geo.latent_width, generator=g)
    dit.forward_block(x2, [700.0] * 3, cache, cross, ctx, ks, recovery, prefill=True)
    pruned = (~keep).nonzero().squeeze(1)
    for layer in range(dit.num_layers):
        k, v = unrotated(layer)
        if recovery == "full":  # noisy pass: duplicates of the previous block's clean last frame
            src_k, src_v = prev_k[layer][0], prev_v[layer][0]
            assert torch.allclose(k[pruned], src_k[pruned % tpf], atol=1e-5)
            assert torch.equal(v[pruned], src_v[pruned % tpf])
        else:  # M-degree: the true predecessor of this pass (the previous frame's position, already filled)
            later = pruned[pruned >= tpf]
            assert torch.allclose(k[later], k[later - tpf], atol=1e-5)
            assert torch.equal(v[later], v[later - tpf])
            first = pruned[pruned < tpf]
            assert torch.allclose(k[first], prev_k[layer][0][first], atol=1e-5)
            assert torch.equal(v[first], prev_v[layer][0][first])
    dit.forward_block(x2, [0.0] * 3, cache, cross, ctx, ks, recovery, memory=True)
    for layer in range(dit.num_layers):
        k, v = unrotated(layer)
        later = pruned[pruned >= tpf]
        assert torch.allclose(k[later], k[later - tpf], atol=1e-5)
        assert torch.equal(v[later], v[later - tpf])
        first = pruned[pruned < tpf]
        assert torch.allclose(k[first], prev_k[layer][0][first], atol=1e-5)
        # the next block's duplication source is this block's filled last frame
        assert torch.allclose(cache.prev_k_raw[layer][0], k[-tpf:], atol=1e-5)
        assert torch.equal(cache.prev_v[layer][0], v[-tpf:])
        assert not torch.equal(cache.prev_v[layer], prev_v[layer])
