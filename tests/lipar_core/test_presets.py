"""Presets: validated YAML, the tiny preset, and the real loading path on tiny checkpoints in real formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lipar_core.checkpoints import CheckpointNotFoundError
from lipar_core.config import PresetConfig, preset_names
from lipar_core.editor import StreamEditor
from lipar_core.presets import get_preset_config, load_preset
from tests.lipar_core.models.test_convert import to_original_name


def test_builtin_presets_validate() -> None:
    names = preset_names()
    assert {"tiny", "self-forcing-1.3b", "self-forcing-1.3b-wanvae"} <= set(names)
    for n in names:
        cfg = get_preset_config(n)
        assert cfg.name == n
    sf = get_preset_config("self-forcing-1.3b")
    assert (sf.stream.height, sf.stream.width) == (480, 832)
    assert sf.model.transformer.generator is not None
    assert sf.model.transformer.generator.filename.endswith("self_forcing_dmd.pt")
    # The repository's configs/ folder holds the same files.
    top = Path(__file__).resolve().parents[2] / "configs"
    assert sorted(p.stem for p in top.glob("*.yaml")) == names


def test_invalid_config_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"name": "x", "stream": {"window_frames": 2, "latent_frames_per_block": 3}})
    )
    with pytest.raises(ValueError, match="window_frames"):
        get_preset_config(bad)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset_config("no-such-preset")
    (tmp_path / "typo.yaml").write_text("name: x\nstreem: {}\n")
    with pytest.raises(ValueError, match="streem"):
        get_preset_config(tmp_path / "typo.yaml")


def test_self_forcing_offline_empty_cache_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = get_preset_config("self-forcing-1.3b").with_overrides(
        runtime={"device": "cpu", "dtype": "float32", "cache_dir": str(tmp_path)}
    )
    with pytest.raises(CheckpointNotFoundError) as e:
        load_preset(cfg)
    msg = str(e.value)
    assert "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in msg and str(tmp_path) in msg and "hf download" in msg


def _write_tiny_pretrained(root: Path) -> dict:
    """Tiny checkpoints in the published formats: a diffusers transformer config, a Self-Forcing generator
    (original Wan key names under generator_ema), taew2_1-style safetensors, and a umT5 text encoder folder."""
    from safetensors.torch import save_file

    tiny = get_preset_config("tiny-random")
    models = load_preset(tiny)
    wan = models.dit.wan
    (root / "wan" / "transformer").mkdir(parents=True)
    wan.save_config(root / "wan" / "transformer")
    original = {"model." + to_original_name(k): v.clone() for k, v in wan.state_dict().items()}
    torch.save({"generator": original, "generator_ema": original}, root / "self_forcing_dmd.pt")
    save_file(
        {k: v.half().contiguous() for k, v in models.autoencoder.state_dict().items()},  # type: ignore[attr-defined]
        str(root / "taew2_1.safetensors"),
    )
    models.text.save_pretrained(root / "wan")
    data = tiny.model_dump()
    data["name"] = "tiny-from-files"
    data["model"]["transformer"] = {
        "source": "pretrained",
        "repo": str(root / "wan"),
        "generator": {"repo": str(root), "filename": "self_forcing_dmd.pt"},
    }
    data["model"]["autoencoder"] = {
        "kind": "taehv",
        "config": tiny.model.autoencoder.config,
        "weights": {"repo": str(root), "filename": "taew2_1.safetensors"},
    }
    data["model"]["text"] = {
        "kind": "umt5",
        "repo": str(root / "wan"),
        "max_length": tiny.model.text.max_length,
    }
    return data


def test_pretrained_loading_path_on_tiny_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = _write_tiny_pretrained(tmp_path)
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(data))
    loaded = load_preset(path)
    ref = load_preset("tiny-random")
    for (k, a), (_, b) in zip(
        loaded.dit.wan.state_dict().items(), ref.dit.wan.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    frames = (torch.arange(12 * 64 * 64 * 3) % 251).to(torch.uint8).reshape(12, 64, 64, 3)
    a, _ = StreamEditor(loaded, "a knight").process_block(frames)
    b, _ = StreamEditor(ref, "a knight").process_block(frames)
    # fp16 autoencoder weights (as published) give nearly, not exactly, the same pixels.
    assert (a.int() - b.int()).abs().max() <= 2
    # A missing generator file: a clear error naming it and the local directory.
    (tmp_path / "self_forcing_dmd.pt").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"self_forcing_dmd\.pt"):
        load_preset(PresetConfig.model_validate(data))


def test_bundle_preset_loads_and_edits(tmp_path: Path) -> None:
    """model.bundle: the transformer, autoencoder and style text encoder come from one file (the demo model's
    format); the editor runs on them and the bundle's weights are the ones in use."""
    from tests.bundles import write_random_bundle

    dit, _, emb = write_random_bundle(tmp_path / "m.safetensors", seed=5)
    doc = get_preset_config("tiny-random").with_bundle(tmp_path / "m.safetensors").model_dump()
    models = load_preset(PresetConfig.model_validate(doc))
    for k, v in dit.wan.state_dict().items():
        assert torch.equal(models.dit.wan.state_dict()[k], v.half().float()), k
    assert torch.allclose(models.text.encode("graphite sketch")[0], emb[0].half().float(), atol=1e-5)
    frames = (torch.arange(12 * 64 * 64 * 3) % 251).to(torch.uint8).reshape(12, 64, 64, 3)
    out, _ = StreamEditor(models, "pencil sketch").process_block(frames)
    assert out.shape == (12, 256, 256, 3)
    doc["model"] = {"bundle": str(tmp_path / "missing.safetensors")}
    with pytest.raises(CheckpointNotFoundError, match=r"missing\.safetensors"):
        load_preset(PresetConfig.model_validate(doc))
    doc["model"] = {"bundle": "x.safetensors", "text": {"kind": "tiny"}}
    with pytest.raises(ValueError, match=r"model\.bundle replaces"):
        PresetConfig.model_validate(doc)


def test_a_preset_extends_another_key_by_key(tmp_path: Path) -> None:
    """``extends`` merges mappings key by key and replaces anything else; the shipped low-latency and
    random-weight 1.3B presets are built that way."""
    child = tmp_path / "child.yaml"
    child.write_text("extends: tiny-random\nname: child\nstream: {latent_frames_per_block: 1}\n")
    cfg = PresetConfig.from_yaml(child)
    base = get_preset_config("tiny-random")
    assert cfg.name == "child" and cfg.stream.latent_frames_per_block == 1
    assert cfg.stream.height == base.stream.height and cfg.model == base.model
    grandchild = tmp_path / "grandchild.yaml"
    grandchild.write_text("extends: child.yaml\nname: grandchild\nstream: {height: 128}\n")
    cfg2 = PresetConfig.from_yaml(grandchild)
    assert (cfg2.stream.height, cfg2.stream.latent_frames_per_block, cfg2.stream.width) == (128, 1, 256)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\nname: loop\n")
    with pytest.raises(ValueError, match="cycle"):
        PresetConfig.from_yaml(loop)

    rnd = get_preset_config("self-forcing-1.3b-random")
    real = get_preset_config("self-forcing-1.3b")
    assert rnd.model.transformer.source == "random" and rnd.model.transformer.generator is None
    assert (
        rnd.model.transformer.config["num_layers"] == 30 and rnd.model.transformer.config["ffn_dim"] == 8960
    )
    assert rnd.model.text.kind == "tiny" and rnd.model.text.max_length == real.model.text.max_length
    assert (rnd.stream, rnd.scheduler) == (real.stream, real.scheduler)
    low = get_preset_config("self-forcing-1.3b-random-lowlatency")
    assert low.stream.latent_frames_per_block == 1 and low.model == rnd.model
    assert get_preset_config("self-forcing-1.3b-lowlatency").model == real.model


def test_the_cpu_autoencoder_compiles_only_where_the_preset_asks() -> None:
    """``runtime.compile_autoencoder_cpu`` compiles the CPU autoencoder's inference blocks (the shipped ``tiny``
    preset asks for it); ``compile_autoencoder`` alone is for CUDA and leaves a CPU model eager."""
    from lipar_core.autoencoders.taehv import TAEHV, _run_layers

    assert get_preset_config("tiny").runtime.compile_autoencoder_cpu
    base = get_preset_config("tiny-random")
    assert base.runtime.compile_autoencoder and not base.runtime.compile_autoencoder_cpu
    eager = load_preset(base).autoencoder
    assert isinstance(eager, TAEHV) and eager.layer_runner() is _run_layers
    on = base.with_overrides(runtime={**base.runtime.model_dump(), "compile_autoencoder_cpu": True})
    compiled = load_preset(on).autoencoder
    assert isinstance(compiled, TAEHV) and compiled.layer_runner() is not _run_layers
    assert compiled.layer_runner(trainable=True) is _run_layers
