"""The embedded default (`tiny`) is the shipped demo bundle and it edits held-out video as prompted."""

from __future__ import annotations

import pytest
import torch

from lipar_core.bundle import bundle_train_config, bundle_vocabulary
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
