"""LiparConfig: the preset's ``lipar`` section is typed and validated at start; settings merge like mappings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from lipar_core.config import PresetConfig
from lipar_core.lipar.config import LiparConfig
from lipar_core.presets import get_preset_config


def _preset_with_lipar(tmp_path: Path, lipar: dict) -> Path:
    data = get_preset_config("tiny-random").model_dump(mode="json")
    data["lipar"] = lipar
    p = tmp_path / "preset.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_preset_lipar_is_a_validated_lipar_config() -> None:
    cfg = get_preset_config("tiny")
    assert isinstance(cfg.lipar, LiparConfig)
    assert cfg.lipar.mask_source == "pixel" and cfg.lipar.floor_pixel == LiparConfig().floor_pixel
    assert PresetConfig(name="x").lipar == LiparConfig()  # no section: the defaults


@pytest.mark.parametrize(
    ("lipar", "field"),
    [({"tua": 0.1}, "lipar.tua"), ({"tau": -1}, "lipar.tau"), ({"floor_pixel": 3}, "lipar.floor_pixel")],
)
def test_a_bad_knob_fails_at_start_naming_the_field(tmp_path: Path, lipar: dict, field: str) -> None:
    """The preset loader (lipar-edit, lipar-bench, the workers) and the server's start-up check both refuse it."""
    from server.settings import SettingsError, check_model_config

    path = _preset_with_lipar(tmp_path, lipar)
    with pytest.raises(ValidationError) as e:
        get_preset_config(path)
    assert field in {".".join(str(x) for x in err["loc"]) for err in e.value.errors()}
    with pytest.raises(SettingsError, match=field.split(".")[1]):
        check_model_config(str(path))


def test_settings_merge_like_mappings() -> None:
    """``{**preset.lipar, **overrides}`` (the worker's and the editor's call sites) keeps working."""
    base = LiparConfig(mask_source="pixel", tau_pixel=0.05)
    merged = LiparConfig.model_validate({**base, "tau": 0.2})
    assert (merged.mask_source, merged.tau_pixel, merged.tau) == ("pixel", 0.05, 0.2)
    assert dict(base) == base.model_dump() and base["floor"] == base.floor
    assert LiparConfig.model_validate(base) is base
    with pytest.raises(KeyError):
        base["nope"]
    # Round trip through a preset copy (model_dump) keeps the settings.
    cfg = PresetConfig(name="x", lipar=base)
    assert cfg.with_overrides(runtime={"device": "cpu"}).lipar == base
