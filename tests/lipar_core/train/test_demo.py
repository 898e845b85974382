"""The demo-model trainer: both stages learn, the rollout keeps the live editor's structure, bundles round-trip."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from lipar_core.autoencoders.taehv import TAEHV, MemBlock, tiny_taehv
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


def test_autoencoder_batch_styles_each_crop_as_alone(pool: torch.Tensor) -> None:
    """The batched stage-1 sampler equals cutting each crop and styling it on its own (the same draws)."""
    import random

    from lipar_core.train.demo import autoencoder_batch, target_frames

    cfg = _cfg(ae_crop=32)
    edits = ["negative", "original", "comic_posterize", "negative", "sepia_film", "original"]
    x = autoencoder_batch(cfg, pool, 4, edits, random.Random(3), torch.device("cpu"))
    assert x.shape == (len(edits), 4, 3, 32, 32) and x.dtype == torch.float32
    rng = random.Random(3)
    for k, name in enumerate(edits):
        stream = pool[rng.randrange(pool.shape[0])]
        start = rng.randrange(stream.shape[0] // 4) * 4
        top, left = rng.randrange(0, 64 - 32 + 1, 8), rng.randrange(0, 64 - 32 + 1, 8)
        crop = stream[start : start + 4, top : top + 32, left : left + 32].permute(0, 3, 1, 2).float() / 255.0
        torch.testing.assert_close(x[k], target_frames(name, crop), rtol=0, atol=1e-6)
    assert not torch.equal(x[0], x[3]) or not torch.equal(x[1], x[5])  # different crops were drawn


def test_edit_weights_steer_the_draws_and_bad_weights_fail() -> None:
    import random
    from collections import Counter

    from lipar_core.train.demo import edit_sampler, main

    names = edit_names()
    counts = Counter(edit_sampler(_cfg(edit_weights={"comic_posterize": 4.0}), names, random.Random(0))(9000))
    # 4 of 12 weight units for comic, 1 of 12 for each other edit
    assert 2700 < counts["comic_posterize"] < 3300
    assert all(600 < counts[n] < 900 for n in names if n != "comic_posterize")
    only = edit_sampler(
        _cfg(edit_weights={n: 0.0 for n in names if n != "original"}), names, random.Random(0)
    )
    assert set(only(50)) == {"original"}
    for bad in ({"cubism": 2.0}, {"negative": -1.0}, {"negative": float("inf")}, {n: 0.0 for n in names}):
        with pytest.raises(ValueError):
            edit_sampler(_cfg(edit_weights=bad), names, random.Random(0))
    for arg in ("cubism=2", "negative", "negative=x", "negative=-1"):
        with pytest.raises(SystemExit) as err:
            main(["--out", "/nonexistent/never-written", "--edit-weight", arg])
        assert err.value.code == 2


def test_a_widened_decoder_decodes_as_before_and_its_new_channels_learn(pool: torch.Tensor) -> None:
    """widen_autoencoder on the decoder keeps the encoder and the decoded frames (block after block, with the
    stream memory), and a training step on the decoder alone changes the decoded frames but no latent."""
    from lipar_core.train.demo import widen_autoencoder

    _, ae, _ = build_models(_cfg(), torch.device("cpu"))
    wide = widen_autoencoder(ae, decoder_widths=[24, 12, 8, 10])
    assert wide.decoder_widths == (24, 12, 8, 10) and ae.decoder_widths == (16, 8, 8, 8)
    assert wide.encoder_widths == ae.encoder_widths
    frames = torch.rand(1, 8, 3, 32, 48)
    _assert_same_stream(ae, wide, frames)
    with pytest.raises(ValueError, match="must be 4 values"):
        widen_autoencoder(ae, decoder_widths=[8, 8, 8, 8])
    # decoder-only training: the encoder stays, the decoder moves away from the old one
    enc0 = {k: v.clone() for k, v in wide.encoder.state_dict().items()}
    train_autoencoder(
        _cfg(train_encoder=False, ae_mse=10.0, ae_lr=3e-3), wide, pool, torch.device("cpu"), steps=3
    )
    assert all(torch.equal(v, enc0[k]) for k, v in wide.encoder.state_dict().items())
    with torch.no_grad():
        za = ae.encoder_stream()(frames[:, :4])
        ya, yb = ae.decoder_stream(trainable=True)(za), wide.decoder_stream(trainable=True)(za)
    assert float((ya - yb).abs().max()) > 1e-3


def test_a_widened_encoder_encodes_as_before_and_its_new_channels_learn(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    """widen_autoencoder on the encoder's stages (per-stage widths): the same latents and frames, block after
    block; the grown model round-trips through a bundle; a joint training step moves the latents, and the new
    channels' weights into the old ones leave 0 (they take part)."""
    from lipar_core.train.demo import widen_autoencoder

    _, ae, _ = build_models(_cfg(), torch.device("cpu"))
    wide = widen_autoencoder(ae, encoder_widths=[12, 16, 20], decoder_widths=[20, 8, 8, 8])
    assert wide.encoder_widths == (12, 16, 20) and wide.encoder_width == [12, 16, 20]
    assert ae.encoder_width == 8  # uniform widths keep the published single-int form
    frames = torch.rand(1, 8, 3, 32, 48)
    _assert_same_stream(ae, wide, frames)
    with pytest.raises(ValueError, match=r"encoder widths .* must be 3 values"):
        widen_autoencoder(ae, encoder_widths=[8, 8])
    with pytest.raises(ValueError, match=r"encoder widths .* must be 3 values"):
        widen_autoencoder(ae, encoder_widths=[4, 8, 8])
    # the bundle stores the per-stage widths and rebuilds the same model
    dit, _, emb = build_models(_cfg(), torch.device("cpu"))
    path = tmp_path / "wide.safetensors"
    save_bundle(path, dit.wan, wide, StyleTextEncoder(vocabulary(), emb.detach()), {})
    again = load_bundle(path).autoencoder
    assert again.encoder_widths == (12, 16, 20) and again.decoder_widths == (20, 8, 8, 8)
    # joint training: the latents move, and the last stage's new channels now feed the old latent channels
    last = wide.encoder[-1]
    assert isinstance(last, torch.nn.Conv2d) and float(last.weight.detach()[:, 8:].abs().max()) == 0.0
    train_autoencoder(_cfg(ae_lr=3e-3), wide, pool, torch.device("cpu"), steps=3)
    assert float(last.weight.detach()[:, 8:].abs().max()) > 0.0
    with torch.no_grad():
        za, zb = ae.encoder_stream()(frames[:, :4]), wide.encoder_stream()(frames[:, :4])
    assert float((za - zb).abs().max()) > 1e-4


def _assert_same_stream(a: TAEHV, b: TAEHV, frames: torch.Tensor) -> None:
    """``a`` and ``b`` give the same latents and decoded frames on ``frames`` [1, T, 3, H, W], 4 frames a block,
    with their stream memory carried from block to block."""
    # trainable decoder streams: no clamp to [0, 1] that could hide a difference (a random decoder's pixels are
    # < 0)
    enc_a, enc_b = a.encoder_stream(), b.encoder_stream()
    dec_a, dec_b = a.decoder_stream(trainable=True), b.decoder_stream(trainable=True)
    with torch.no_grad():
        for start in range(0, frames.shape[1], 4):
            block = frames[:, start : start + 4]
            za, zb = enc_a(block), enc_b(block)
            assert float(za.std()) > 1e-3
            torch.testing.assert_close(zb, za, rtol=0, atol=1e-5)
            ya = dec_a(za)
            assert float(ya.std()) > 1e-3
            torch.testing.assert_close(dec_b(za), ya, rtol=0, atol=1e-5)


def _past_weights(ae: TAEHV, name: str) -> torch.Tensor:
    """The past half of MemBlock ``name``'s first conv (its input is cat([x, past]))."""
    part, index = name.split(".")
    first = getattr(ae, part)[int(index)].conv[0]
    return first.weight.detach()[:, first.in_channels // 2 :].clone()


def test_memory_blocks_on_one_frame_train_their_past_only_on_longer_samples(pool: torch.Tensor) -> None:
    """With one latent frame per sample (runs 1-9), the MemBlocks that run on one frame (encoder stages 2-3,
    decoder stages 1-2) never see a past, so their past weights stay as initialised; the default of two latent
    frames per sample trains them."""
    from lipar_core.train.demo import memory_frames

    _, ae, _ = build_models(_cfg(), torch.device("cpu"))
    frames4 = memory_frames(ae, 4)
    assert sorted(set(frames4.values())) == [1, 2]
    assert [frames4[f"encoder.{i}"] for i in (4, 9, 14)] == [2, 1, 1]  # first MemBlock of each stage
    assert [frames4[f"decoder.{i}"] for i in (3, 9, 15)] == [1, 1, 2]
    assert memory_frames(ae, 8) == {k: 2 * v for k, v in frames4.items()}
    with pytest.raises(ValueError, match="multiple of 4"):
        memory_frames(ae, 6)
    one_frame = [k for k, v in frames4.items() if v == 1]
    assert _cfg().ae_frames == 8
    for ae_frames, trains in ((4, False), (8, True)):
        _, ae, _ = build_models(_cfg(), torch.device("cpu"))
        before = {k: _past_weights(ae, k) for k in one_frame}
        train_autoencoder(_cfg(ae_frames=ae_frames, ae_lr=3e-3), ae, pool, torch.device("cpu"), steps=2)
        moved = [not torch.equal(_past_weights(ae, k), before[k]) for k in one_frame]
        assert moved == [trains] * len(one_frame), (ae_frames, moved)


def test_clearing_untrained_memory_makes_those_blocks_ignore_the_past(tmp_path: Path) -> None:
    """clear_untrained_memory zeroes exactly the past weights of the one-frame MemBlocks (nothing else), so
    their output no longer depends on the past; the trainer's --clear-untrained-memory does it on a resumed
    bundle and refuses without one."""
    from lipar_core.train.demo import clear_untrained_memory, main

    _, ae, _ = build_models(_cfg(), torch.device("cpu"))
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    cleared = clear_untrained_memory(ae)
    assert cleared == [f"encoder.{i}" for i in (9, 10, 11, 14, 15, 16)] + [
        f"decoder.{i}" for i in (3, 4, 5, 9, 10, 11)
    ]
    changed = {k.rsplit(".", 3)[0] for k, v in ae.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(cleared)
    for name in cleared:
        assert float(_past_weights(ae, name).abs().max()) == 0.0
        part, index = name.split(".")
        block = getattr(ae, part)[int(index)]
        assert isinstance(block, MemBlock)
        x = torch.randn(2, block.conv[0].in_channels // 2, 8, 8)
        with torch.no_grad():
            assert torch.equal(block(x, torch.randn_like(x)), block(x, torch.zeros_like(x)))
    assert clear_untrained_memory(ae, trained_frames=8) == []  # two latents a sample: every past trained
    for args in (["--clear-untrained-memory"], ["--ae-frames", "6"]):
        with pytest.raises(SystemExit) as err:
            main(["--out", str(tmp_path / "never-written"), *args])
        assert err.value.code == 2


def test_memory_gain_is_zero_for_an_autoencoder_that_ignores_the_past() -> None:
    """memory_gain_db compares the streamed blocks after the first with the same blocks coded alone: exactly 0
    when no MemBlock looks at its past, not 0 when they do; a stream of one block is refused."""
    from lipar_core.train.demo import memory_gain_db

    ae = tiny_taehv(0, encoder_width=8, decoder_widths=[16, 8, 8, 8])  # decoded pixels mostly inside (0, 1)
    ae.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    streams = {"a": torch.randint(0, 256, (12, 32, 48, 3), dtype=torch.uint8, generator=gen)}
    with_memory = memory_gain_db(ae, streams, 4, torch.device("cpu"))
    assert abs(with_memory["a"]) > 1e-3
    for part in (ae.encoder, ae.decoder):
        for block in part:
            if isinstance(block, MemBlock):
                first = block.conv[0]
                first.weight[:, first.in_channels // 2 :] = 0.0
    assert memory_gain_db(ae, streams, 4, torch.device("cpu")) == {"a": 0.0}
    with pytest.raises(ValueError, match="two blocks"):
        memory_gain_db(ae, {"short": streams["a"][:4]}, 4, torch.device("cpu"))
