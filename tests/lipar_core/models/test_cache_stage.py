"""CacheStage: several streams' KV caches take turns in one set of buffers (the ones the shared CUDA graphs are
bound to) without ever seeing each other's data; and two editors sharing one graph runner, interleaved block
by block, edit exactly as two editors with caches of their own."""

from __future__ import annotations

import gc

import pytest
import torch

from lipar_core.editor import StreamEditor
from lipar_core.geometry import StreamGeometry
from lipar_core.models.kv_cache import CacheStage, KVCache
from lipar_core.presets import EditorModels, load_preset
from tests.media import real_frames


def _geometry() -> StreamGeometry:
    return StreamGeometry(
        height=64,
        width=64,
        vae_stride=(4, 8, 8),
        patch=(1, 2, 2),
        latent_frames_per_block=3,
        latent_channels=16,
    )


def _cache(window: int = 8) -> KVCache:
    return KVCache(2, 2, 8, _geometry(), sink_frames=1, window_frames=window, train_frames=21)


def _fill(cache: KVCache, seed: int) -> list[torch.Tensor]:
    """Write random data through the cache's fields (wherever they point now); returns a copy of it."""
    g = torch.Generator().manual_seed(seed)
    for t in cache.storage().tensors():
        if t.dtype == torch.bool:
            t.copy_(torch.rand(t.shape, generator=g) < 0.5)
        else:
            t.copy_(torch.randn(t.shape, generator=g))
    return [t.clone() for t in cache.storage().tensors()]


def _same(cache: KVCache, data: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(cache.storage().tensors(), data, strict=True))


def test_streams_take_turns_without_seeing_each_other() -> None:
    a, b = _cache(), _cache()
    stage = CacheStage(a)
    stage.attach(a)
    assert stage.holds(a) and a.k[0] is stage.buffers.k[0]
    data_a = _fill(a, 1)  # written into the stage's buffers
    stage.attach(b)  # a's data goes back to a's own buffers; b (fresh) takes the stage
    assert not stage.holds(a) and stage.holds(b)
    assert a.k[0] is a.own.k[0] and _same(a, data_a)
    data_b = _fill(b, 2)
    stage.attach(a)
    assert _same(a, data_a)  # a's data came back into the stage
    assert all(torch.equal(x, y) for x, y in zip(b.own.tensors(), data_b, strict=True))
    stage.attach(a)  # already attached: nothing moves
    assert stage.switches == 3
    stage.detach(a)
    assert stage.owner is None and a.k[0] is a.own.k[0] and _same(a, data_a)


def test_a_reset_stream_carries_nothing_over_but_its_presence_flags() -> None:
    a, b = _cache(), _cache()
    stage = CacheStage(a)
    stage.attach(a)
    data_a = _fill(a, 1)
    b.reset()  # fresh: its own buffers hold nothing a later block reads
    stage.attach(b)
    assert torch.equal(stage.buffers.k[0], data_a[0])  # no copy of stale K/V into the stage
    assert bool(stage.buffers.present.all())  # but the presence flags of a reset stream are all set


def test_an_attached_stream_that_resets_keeps_what_it_writes_afterwards() -> None:
    a, b = _cache(), _cache()
    stage = CacheStage(a)
    stage.attach(a)
    _fill(a, 1)
    a.reset()
    data_a = _fill(a, 3)  # written after the reset, while attached
    stage.attach(b)
    stage.attach(a)  # a is no longer fresh: its data must come back
    assert _same(a, data_a)


def test_a_dropped_stream_is_not_copied_back() -> None:
    a, b = _cache(), _cache()
    stage = CacheStage(a)
    stage.attach(b)
    del b
    gc.collect()
    assert stage.owner is None
    stage.attach(a)
    assert stage.holds(a)


def test_a_cache_of_another_shape_is_refused() -> None:
    stage = CacheStage(_cache(window=8))
    with pytest.raises(ValueError, match="does not fit the stage"):
        stage.attach(_cache(window=6))


@pytest.fixture(scope="module")
def models() -> EditorModels:
    return load_preset("tiny-random")


def test_editors_sharing_one_runner_edit_as_if_alone(models: EditorModels) -> None:
    """Two sessions served block by block in turn through one shared runner and stage (the worker's layout)
    give bit-identical frames to two sessions with caches of their own. On the CPU the runner's passes run
    eagerly, so this checks the stage's turn-taking with real model passes; the graphs themselves are checked
    on a GPU (tests/gpu)."""
    n = 12
    clips = [real_frames("bikes.mp4", 4 * n, 128, 160), real_frames("carphone_pristine.mp4", 4 * n, 144, 176)]
    alone = [StreamEditor(models, p, seed=s) for p, s in (("a knight", 1), ("a watercolor", 2))]
    shared = [StreamEditor(models, p, seed=s) for p, s in (("a knight", 1), ("a watercolor", 2))]
    runner = models.graph_runner(shared[0].cache)
    for ed in shared:
        ed.graphs = runner
    assert models.graph_runner(shared[1].cache) is runner  # one runner per cache shape
    for b in range(4):
        for i in range(2):
            block = clips[i][b * n : (b + 1) * n]
            want, _ = alone[i].process_block(block)
            got, _ = shared[i].process_block(block)
            assert torch.equal(got, want), f"session {i}, block {b}"
            assert runner.stage.holds(shared[i].cache)
    assert runner.stage.switches >= 8
    models.graph_runners.clear()


def test_bucket_sizes_are_the_token_counts_pruned_passes_run_with(models: EditorModels) -> None:
    """prepare_graphs captures exactly the padded counts KeepSet produces for every partial kept count."""
    from lipar_core.lipar.prune import KeepSet

    ed = StreamEditor(models, "buckets")
    n, b = models.geometry.tokens_per_block, ed.lipar.bucket
    f, (gh, gw) = models.geometry.token_frames_per_block, models.geometry.token_grid
    seen = set()
    for k in range(1, n):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[:k] = True
        seen.add(KeepSet.from_mask(mask.view(f, gh, gw), b).n_pad)
    assert ed.bucket_sizes() == sorted(seen) and ed.bucket_sizes()[-1] == n
