"""On a CUDA GPU: the worker's shared CUDA graphs (captured once at warm-up, one set for every session) give
exactly the frames of eager passes, first blocks included, for sessions served block by block in turn, and
nothing is captured while streaming. Skipped without CUDA (run ``pytest -m gpu`` on the GPU machine; bench/gpu_loadtest.sh does)."""

from __future__ import annotations

import pytest
import torch

from lipar_core.bench import RandomTextEncoder, bench_config
from lipar_core.editor import BlockTicket, StreamEditor
from lipar_core.lipar.config import LiparConfig
from lipar_core.presets import EditorModels, load_preset
from tests.markers import gpu
from tests.media import real_frames

pytestmark = [*gpu, pytest.mark.timeout(900)]

HEIGHT, WIDTH = 480, 832


@pytest.fixture(scope="module")
def models() -> EditorModels:
    """A small DiT of the Wan family at the real resolution (the 1.3B's geometry and buckets, little compute),
    bf16, the full-size random tiny autoencoder, compiled layers off (the graphs are what is under test)."""
    cfg = bench_config(HEIGHT, WIDTH, "tiny", "cuda", "bfloat16")
    cfg = cfg.with_overrides(runtime={**cfg.runtime.model_dump(), "compile_layers": False})
    m = load_preset(cfg)
    m.text = RandomTextEncoder.for_models(m)
    return m


@pytest.mark.parametrize("recovery", ["full", "m_degree", "none"])
def test_shared_graphs_equal_eager_across_sessions(models: EditorModels, recovery: str) -> None:
    models.graph_runners.clear()
    lip = LiparConfig.model_validate({**models.config.lipar, "recovery": recovery})
    n = models.geometry.pixel_frames_per_block
    clips = [real_frames(c, 6 * n, HEIGHT, WIDTH) for c in ("bikes.mp4", "bigbuckbunny.mp4")]
    prompts = [("a knight", 1), ("a watercolor", 2)]
    probe = StreamEditor(models, "warm-up", lipar=lip)
    captured = probe.prepare_graphs()
    assert probe.graphs is not None and captured == probe.graphs.graphs > 0
    del probe
    eager = [StreamEditor(models, p, seed=s, lipar=lip, cuda_graphs=False) for p, s in prompts]
    shared = [StreamEditor(models, p, seed=s, lipar=lip) for p, s in prompts]
    runner = shared[0].graphs
    assert runner is not None and shared[1].graphs is runner
    before = runner.captures
    pruned = 0
    # As the worker serves them: the next block (the other session's) is submitted before the previous one's
    # frames are collected, so encode, mask and decode of one block overlap the other's DiT passes.
    queued: list[tuple[int, int, torch.Tensor, BlockTicket]] = []
    for b in range(6):
        for i in range(2):
            block = clips[i][b * n : (b + 1) * n]
            want, _ = eager[i].process_block(block)
            replays = runner.replays
            queued.append((i, b, want, shared[i].submit_block(block)))
            # every block replays, a session's first (it writes the attention sink) included
            assert runner.replays > replays, f"session {i}, block {b} ran eagerly"
            while len(queued) > 1 or (b == 5 and i == 1 and queued):
                qi, qb, qwant, ticket = queued.pop(0)
                got, st = ticket.result()
                pruned += st.prune_ratio > 0
                assert torch.equal(got, qwant), f"{recovery}: session {qi}, block {qb}"
    assert pruned >= 4  # pruned passes were exercised
    assert runner.captures == before, "a graph was captured while streaming"
    assert runner.replays > 0 and runner.stage.switches >= 12


def test_a_strength_change_replays_the_same_graphs(models: EditorModels) -> None:
    """Timesteps live in buffers, not in the graphs: a new strength and step count capture nothing."""
    models.graph_runners.clear()
    n = models.geometry.pixel_frames_per_block
    clip = real_frames("bikes.mp4", 4 * n, HEIGHT, WIDTH)
    ed = StreamEditor(models, "a knight", seed=3)
    ed.prepare_graphs()
    ref = StreamEditor(models, "a knight", seed=3, cuda_graphs=False)
    assert ed.graphs is not None
    before = ed.graphs.captures
    for e in (ed, ref):
        e.set_params(strength=0.55, steps=2)
    for b in range(4):
        block = clip[b * n : (b + 1) * n]
        assert torch.equal(ed.process_block(block)[0], ref.process_block(block)[0]), f"block {b}"
    assert ed.graphs.captures == before
