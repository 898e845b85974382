"""The embedded default (`tiny`) is the shipped demo bundle and it edits held-out video as prompted."""

from __future__ import annotations

import pytest
import torch

from lipar_core.bundle import bundle_train_config, bundle_vocabulary
from lipar_core.editor import StreamEditor
from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.config import LiparConfig
from lipar_core.presets import bundle_path, get_preset_config, load_preset
from lipar_core.train.data import heldout_streams
from lipar_core.train.demo import to_float_frames
from lipar_core.train.evaluate import edge_references, run_stream
from lipar_core.train.styles import edge_similarity, nearest_style


def test_tiny_preset_is_the_shipped_bundle_with_its_training_settings() -> None:
    cfg = get_preset_config("tiny")
    assert cfg.model.bundle is not None
    path = bundle_path(cfg.model.bundle)
    assert path.stat().st_size <= 16 * 2**20
    train = bundle_train_config(path)
    # The preset runs the model as it was trained: same steps, shift, size and block structure.
    assert cfg.scheduler.denoising_steps == train["denoising_steps"] and cfg.scheduler.shift == train["shift"]
    s = cfg.stream
    assert (s.height, s.width, s.latent_frames_per_block) == (
        train["height"],
        train["width"],
        train["latent_frames_per_block"],
    )
    assert (s.sink_frames, s.window_frames, s.train_frames) == (
        train["sink_frames"],
        train["window_frames"],
        train["train_frames"],
    )
    assert len(bundle_vocabulary(path)) == 8


@pytest.fixture(scope="module")
def carphone() -> torch.Tensor:
    cfg = get_preset_config("tiny")
    geo = StreamGeometry(
        cfg.stream.height, cfg.stream.width, latent_frames_per_block=cfg.stream.latent_frames_per_block
    )
    streams = heldout_streams(2, geo.height, geo.width, geo.pixel_frames_per_block)
    return streams["carphone_pristine.mp4"]  # held out from training


@pytest.mark.parametrize(
    ("prompt", "style"),
    [("a pencil drawing", "pencil_sketch"), ("inverted colors", "negative"), ("thermal camera", "thermal")],
)
def test_shipped_model_does_the_prompted_edit_and_keeps_structure(
    carphone: torch.Tensor, prompt: str, style: str
) -> None:
    models = load_preset("tiny")
    res = run_stream(models, prompt, carphone, LiparConfig.model_validate(models.config.lipar))
    out = to_float_frames(res["frames"], torch.device("cpu"))
    inp = to_float_frames(carphone, torch.device("cpu"))
    picks = nearest_style(out, inp)
    assert picks.count(style) >= 0.8 * len(picks), picks
    unrelated = edge_references({"a": carphone, "b": carphone.flip(0).roll(37, dims=1)})["unrelated_frames"]
    assert float(edge_similarity(out, inp).mean()) > unrelated + 0.1


def test_an_unknown_prompt_passes_the_video_through_unchanged(carphone: torch.Tensor) -> None:
    """The demo model knows eight edits; any other prompt gives the input back exactly (no model work), and the
    stream restarts when a known prompt follows (the model did not see the frames it skipped)."""
    models = load_preset("tiny")
    ed = StreamEditor(models, "a cat riding a bicycle on the moon")
    n = ed.frames_per_block
    out, st = ed.process_block(carphone[:n])
    assert ed.passing_through and torch.equal(out, carphone[:n])
    assert "passthrough" in st.ms and "dit" not in st.ms
    ed.set_prompt("thermal camera", "smooth")
    out, st = ed.process_block(carphone[n : 2 * n])
    assert not ed.passing_through and st.index == 0 and "dit" in st.ms, "a fresh stream after pass-through"
    assert not torch.equal(out, carphone[n : 2 * n])
    ed.set_prompt("something the demo never learned", "smooth")
    out, _ = ed.process_block(carphone[:n])
    assert torch.equal(out, carphone[:n])
    # the model's own pass-through edit still runs when asked for
    ed2 = StreamEditor(models, "a cat riding a bicycle on the moon", pass_unknown=False)
    out2, st2 = ed2.process_block(carphone[:n])
    assert not ed2.passing_through and "dit" in st2.ms and not torch.equal(out2, carphone[:n])


def test_shipped_autoencoder_reconstructs_held_out_video(carphone: torch.Tensor) -> None:
    """The shipped autoencoder alone, streaming as live, on the held-out real clip: the evaluator's measure
    (:func:`heldout_autoencoder_psnr`) is where the bundle was trained to (run 11: 28.6 dB on this 2-block
    window, 29.7 on the evaluator's 12 blocks; run 10: 28.4 and 29.5; run 8: 27.6 and 28.1; an untrained or
    mismatched autoencoder gives under 15), and the style targets decode too (run 11: 25.7 dB here, 27.8 on
    average over the 12 blocks)."""
    from lipar_core.train.evaluate import heldout_autoencoder_psnr

    db = heldout_autoencoder_psnr(load_preset("tiny"), {"carphone": carphone})
    assert db["carphone"] > 27.0, db
    assert db["styled"] > 24.0, db


def test_shipped_autoencoder_memory_does_not_hurt(carphone: torch.Tensor) -> None:
    """Streaming the held-out clip (each block sees the previous one through the MemBlocks) is about as good as
    coding each block alone (run 11: +0.53 dB on this 2-block window, +0.25 on the evaluator's 12 blocks; run 10:
    +0.25 and +0.06). Run 8 lost 0.7 dB here (1.6 on 6 blocks): the memory of its one-frame stages had never
    trained (:func:`~lipar_core.train.demo.clear_untrained_memory`)."""
    from lipar_core.train.evaluate import heldout_memory_gain

    gain = heldout_memory_gain(load_preset("tiny"), {"carphone": carphone})
    assert gain["carphone"] > -0.3, gain
