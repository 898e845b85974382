"""On a CUDA GPU: the code paths that only run there agree with their plain versions. The mask's CUDA graph
gives the eager mask; compiled layer functions stay within bf16 rounding of the eager ones. Skipped without
CUDA (``pytest -m gpu`` on the GPU machine; bench/gpu_loadtest.sh runs it)."""

from __future__ import annotations

import pytest
import torch

from lipar_core.bench import RandomTextEncoder, bench_config
from lipar_core.editor import StreamEditor
from lipar_core.lipar.config import LiparConfig
from lipar_core.lipar.mask import PruneMasker
from lipar_core.lipar.prune import kept_order
from lipar_core.presets import load_preset
from tests.markers import gpu
from tests.media import real_frames

pytestmark = [*gpu, pytest.mark.timeout(900)]

HEIGHT, WIDTH = 480, 832


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("source", ["pixel", "latent"])
def test_mask_graph_equals_eager_mask(source: str, compiled: bool) -> None:
    """The steady-state mask from its CUDA graph (of the compiled mask with ``compiled``) gives the eager masks
    and kept orders on a real clip at 832x480. Compiled reductions may sum in another order than eager ones, so
    with ``compiled`` a token whose measure sits within rounding of a threshold may differ: at most 0.1 %."""
    cfg = bench_config(HEIGHT, WIDTH, "tiny", "cuda", "bfloat16")
    models = load_preset(cfg)
    lip = LiparConfig.model_validate({**cfg.lipar, "mask_source": source})
    geo = models.geometry
    n = geo.pixel_frames_per_block
    clip = real_frames("bigbuckbunny.mp4", 6 * n, HEIGHT, WIDTH).cuda()
    graphed = PruneMasker(lip, geo, use_cuda_graph=True, compile=compiled)
    eager = PruneMasker(lip, geo, use_cuda_graph=False)
    enc = models.autoencoder.encoder_stream()
    differ = 0
    with torch.inference_mode():
        for b in range(6):
            x = clip[b * n : (b + 1) * n].permute(0, 3, 1, 2).float().div(255).unsqueeze(0)
            lat = enc(x.to(models.autoencoder_dtype)).to(models.dtype)
            px = x if source == "pixel" else None
            a = graphed.block(lat, pixels=px, force_full=b == 0)
            e = eager.block(lat, pixels=px, force_full=b == 0)
            count, order = kept_order(a.keep[0].reshape(-1))
            assert int(a.n_kept) == int(count) and torch.equal(a.order, order), f"block {b}: order"
            if compiled:
                differ += int((a.keep != e.keep).sum())
            else:
                assert torch.equal(a.keep, e.keep), f"block {b}"
    assert differ <= 0.001 * 6 * geo.tokens_per_block, f"{differ} tokens differ"
    assert graphed._graph is not None  # the steady blocks did replay a graph


def test_compiled_layers_stay_within_bf16_rounding_of_eager() -> None:
    cfg = bench_config(HEIGHT, WIDTH, "tiny", "cuda", "bfloat16")
    outs = []
    for compiled in (False, True):
        c = cfg.with_overrides(
            runtime={**cfg.runtime.model_dump(), "compile_layers": compiled, "cuda_graphs": False}
        )
        models = load_preset(c)
        models.text = RandomTextEncoder.for_models(models)
        ed = StreamEditor(models, "a knight", seed=5)
        n = ed.frames_per_block
        clip = real_frames("bikes.mp4", 4 * n, HEIGHT, WIDTH)
        lat = []
        with torch.inference_mode():
            for b in range(4):
                ed.process_block(clip[b * n : (b + 1) * n])
                assert ed.last_latents is not None
                lat.append(ed.last_latents.float())
        outs.append(torch.cat(lat))
    rel = float((outs[1] - outs[0]).norm() / outs[0].norm())
    assert rel < 3e-2, rel
