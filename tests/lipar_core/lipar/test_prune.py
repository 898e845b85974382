"""KeepSet: the kept-token index set, padded to buckets, built with the count's host wait deferred."""

from __future__ import annotations

import pytest
import torch

from lipar_core.lipar.prune import KeepSet, kept_order


@pytest.mark.parametrize("p_keep", [0.0, 0.03, 0.5, 0.97, 1.0])
def test_index_set_matches_the_mask(p_keep: float) -> None:
    gen = torch.Generator().manual_seed(int(p_keep * 100))
    mask = torch.rand(3, 10, 13, generator=gen) < p_keep  # 390 tokens
    ks = KeepSet.from_mask(mask, bucket=32)
    kept = mask.reshape(-1).nonzero().flatten()
    assert ks.n_total == 390 and ks.n_keep == kept.numel()
    expected_pad = min(390, -(-kept.numel() // 32) * 32)
    assert ks.n_pad == expected_pad and ks.idx.dtype == torch.int64
    assert torch.equal(ks.idx[: ks.n_keep], kept)  # ascending kept indices first
    if ks.n_keep:
        assert (ks.idx[ks.n_keep :] == kept[-1]).all()  # padding repeats the last kept index
    assert ks.full == (kept.numel() == 390)
    assert ks.prune_ratio == pytest.approx(1 - kept.numel() / 390)


def test_begin_then_result_equals_from_mask() -> None:
    mask = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5)) < 0.4
    pending = KeepSet.begin(mask, bucket=16)
    assert pending.ready is None  # on the CPU the count is already on the host
    a, b = pending.result(), KeepSet.from_mask(mask, bucket=16)
    assert (a.n_keep, a.n_pad, a.n_total) == (b.n_keep, b.n_pad, b.n_total)
    assert torch.equal(a.idx, b.idx) and torch.equal(a.mask, b.mask)


@pytest.mark.parametrize("n", [1, 7, 390])
@pytest.mark.parametrize("p_keep", [0.0, 0.05, 0.5, 1.0])
def test_kept_order_is_the_stable_sort_of_the_mask(n: int, p_keep: float) -> None:
    """The scatter-based order equals a stable argsort (kept first, each part ascending) with its tail replaced
    by the last kept index, and the count is the mask's sum."""
    flat = torch.rand(n, generator=torch.Generator().manual_seed(n + int(p_keep * 100))) < p_keep
    count, padded = kept_order(flat)
    order = torch.argsort((~flat).to(torch.int8), stable=True)
    k = int(flat.sum())
    expected = order.clone()
    expected[k:] = order[k - 1] if k else 0
    assert int(count) == k and padded.dtype == torch.int64
    assert torch.equal(padded, expected)


def test_begin_takes_a_precomputed_order() -> None:
    mask = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(6)) < 0.3
    a = KeepSet.begin(mask, bucket=16, order=kept_order(mask.reshape(-1))).result()
    b = KeepSet.from_mask(mask, bucket=16)
    assert (a.n_keep, a.n_pad) == (b.n_keep, b.n_pad) and torch.equal(a.idx, b.idx)
