"""The demo-model trainer: both stages learn, the rollout keeps the live editor's structure, bundles round-trip."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from lipar_core.bundle import load_bundle, save_bundle
from lipar_core.text.style_encoder import StyleTextEncoder
from lipar_core.train.demo import (
    DemoConfig,
    build_models,
    build_pool,
    edit_names,
    train_autoencoder,
    train_editor,
    vocabulary,
)


def _cfg(**kw: object) -> DemoConfig:
    base = DemoConfig(
        height=64,
        width=64,
        ae_crop=32,
        dit_size=64,
        ae_batch=1,
        dit_batch=2,
        dit_blocks=2,
        pool_streams=2,
        transformer={**DemoConfig().transformer, "num_layers": 1, "ffn_dim": 64},
        autoencoder={"encoder_width": 8, "decoder_widths": [16, 8, 8, 8]},
    )
    for k, v in kw.items():
        setattr(base, k, v)
    return base


@pytest.fixture(scope="module")
def pool() -> torch.Tensor:
    return build_pool(_cfg(), 2, 2, seed=0)


def test_pool_shape(pool: torch.Tensor) -> None:
    fpb = _cfg().geometry.pixel_frames_per_block  # 2 blocks of 4 frames per latent frame
    assert pool.shape == (2, 2 * fpb, 64, 64, 3) and pool.dtype == torch.uint8


def test_autoencoder_stage_lowers_its_loss(pool: torch.Tensor) -> None:
    cfg = _cfg(ae_lr=3e-3)
    _, ae, _ = build_models(cfg, torch.device("cpu"))
    losses = train_autoencoder(cfg, ae, pool, torch.device("cpu"), steps=40)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert not ae.training


def test_editor_stage_trains_dit_and_embeddings(pool: torch.Tensor) -> None:
    cfg = _cfg(dit_lr=3e-3, original_fraction=1.0)  # identity target: learnable in a few steps
    dit, ae, emb = build_models(cfg, torch.device("cpu"))
    ae.requires_grad_(False)
    w0 = [p.detach().clone() for p in dit.parameters()]
    e0 = emb.detach().clone()
    losses = train_editor(cfg, dit, ae, emb, pool, torch.device("cpu"), steps=25)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    changed = sum(not torch.equal(a, b) for a, b in zip(w0, dit.parameters(), strict=True))
    assert changed >= 0.9 * len(w0)  # gradients reach (almost) every weight, time embedder included
    original = edit_names().index("original")
    assert not torch.equal(emb[original], e0[original])  # the trained edit's embedding moved
    others = [i for i in range(len(edit_names())) if i != original]
    assert torch.equal(emb[others].detach(), e0[others])  # untrained edits did not


def test_bundle_round_trip(tmp_path: Path) -> None:
    cfg = _cfg()
    dit, ae, emb = build_models(cfg, torch.device("cpu"))
    text = StyleTextEncoder(vocabulary(), emb.detach())
    size = save_bundle(tmp_path / "demo.safetensors", dit.wan, ae, text, {"seed": cfg.seed})
    assert size == (tmp_path / "demo.safetensors").stat().st_size
    b = load_bundle(tmp_path / "demo.safetensors")
    for k, v in dit.wan.state_dict().items():
        assert torch.equal(b.transformer.state_dict()[k], v.half().float()), k
    for k, v in ae.state_dict().items():
        assert torch.equal(b.autoencoder.state_dict()[k], v.half().float()), k
    assert b.text.match("a pencil drawing").style == "pencil_sketch"
    assert torch.equal(b.text.embeddings, emb.detach().half().float())


def test_load_rejects_other_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a model bundle"):
        load_bundle(tmp_path / "x.safetensors")


def test_resume_copies_a_bundles_weights(tmp_path: Path) -> None:
    from lipar_core.train.demo import resume_from

    cfg = _cfg()
    dit, ae, emb = build_models(cfg, torch.device("cpu"))
    save_bundle(tmp_path / "a.safetensors", dit.wan, ae, StyleTextEncoder(vocabulary(), emb.detach()), {})
    cfg2 = _cfg(seed=7)
    dit2, ae2, emb2 = build_models(cfg2, torch.device("cpu"))
    assert not torch.equal(emb2, emb)
    resume_from(tmp_path / "a.safetensors", dit2, ae2, emb2)
    assert torch.equal(emb2.detach(), emb.detach().half().float())
    for (k, a), b in zip(dit.wan.state_dict().items(), dit2.wan.state_dict().values(), strict=True):
        assert torch.equal(a.half().float(), b), k
    for (k, a), b in zip(ae.state_dict().items(), ae2.state_dict().values(), strict=True):
        assert torch.equal(a.half().float(), b), k


def test_stage_clock_ends_on_steps_or_seconds_and_shapes_the_rate() -> None:
    from lipar_core.train.demo import StageClock

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    clock = StageClock(20, None, warmup=0.1)
    rates = []
    for _ in clock.steps_of(opt, [2.0]):
        rates.append(opt.param_groups[0]["lr"])
    assert len(rates) == 20
    assert rates[0] < rates[2] == pytest.approx(2.0)  # warm-up to the peak over the first 10 %
    assert rates[-1] < 0.1 * 2.0 and all(a >= b for a, b in itertools.pairwise(rates[2:]))  # then decays
    assert list(StageClock(1000, 0.0).steps_of(opt, [1.0])) == []  # no time left: no step
    with pytest.raises(ValueError):
        StageClock(-1, None)
