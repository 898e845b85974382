"""On a host of two or more CUDA GPUs: an editor on the second GPU captures and replays its CUDA graphs while
the process's current device is still the first (a worker owns one device, but the library must not depend on
the current device: ``torch.cuda.graph`` captures on a stream of the current device unless told otherwise, and
cuDNN refuses to run a capture across devices), and gives exactly the frames of eager passes there. Skipped with
fewer than two GPUs (bench/gpu_two.sh runs it on the device tool's nvidia-h200-x2)."""

from __future__ import annotations

import pytest
import torch

from lipar_core.bench import RandomTextEncoder, bench_config
from lipar_core.editor import StreamEditor
from lipar_core.presets import load_preset
from tests.markers import gpu

pytestmark = [
    *gpu,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"
    ),
]

HEIGHT, WIDTH = 480, 832


def _moving_frames(count: int) -> torch.Tensor:
    """A bright square sliding over a still gradient: uint8 [T, H, W, 3] (no clip files needed)."""
    ys = torch.linspace(0, 1, HEIGHT)[:, None, None]
    xs = torch.linspace(0, 1, WIDTH)[None, :, None]
    rgb = torch.tensor([0.3, 0.6, 0.9])[None, None, :]
    base = (ys * 0.5 + xs * 0.3 + rgb * 0.2).mul(255).to(torch.uint8)
    out = base.repeat(count, 1, 1, 1)
    side = HEIGHT // 6
    for t in range(count):
        x0 = (t * 9) % (WIDTH - side)
        out[t, HEIGHT // 3 : HEIGHT // 3 + side, x0 : x0 + side] = 250
    return out.contiguous()


def test_graphs_on_the_second_gpu_while_the_first_is_current() -> None:
    torch.cuda.set_device(0)
    cfg = bench_config(HEIGHT, WIDTH, "tiny", "cuda:1", "bfloat16")
    cfg = cfg.with_overrides(runtime={**cfg.runtime.model_dump(), "compile_layers": False})
    models = load_preset(cfg)
    models.text = RandomTextEncoder.for_models(models)
    n = models.geometry.pixel_frames_per_block
    frames = _moving_frames(4 * n)
    probe = StreamEditor(models, "warm-up")
    assert probe.prepare_graphs() > 0
    del probe
    eager = StreamEditor(models, "a knight", seed=1, cuda_graphs=False)
    graphed = StreamEditor(models, "a knight", seed=1)
    runner = graphed.graphs
    assert runner is not None
    for b in range(4):
        block = frames[b * n : (b + 1) * n]
        want, _ = eager.process_block(block)
        replays = runner.replays
        got, _ = graphed.process_block(block)
        assert runner.replays > replays, f"block {b} ran eagerly"
        assert torch.equal(got, want), f"block {b}"
    assert torch.cuda.current_device() == 0  # the editor left the process's current device alone
