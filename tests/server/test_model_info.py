"""``GET /v1/model`` and ``POST /v1/model/match`` in process (httpx ASGI transport; no worker is started): the
open-vocabulary ``tiny-random`` preset, the shipped demo bundle (``tiny``), a YAML preset on a small bundle made
here, a preset whose bundle is missing, the token, the parameter ranges against the API's own field limits, and
that the info is read once, when the app starts."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import torch
import yaml
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from lipar_core.config import PresetConfig, preset_path
from lipar_core.editor import MAX_BLEND_BLOCKS
from lipar_core.scheduler import make_step_list
from lipar_core.train.demo import vocabulary
from server.api import schemas
from server.api.routes import model as model_route
from server.api.schemas import ModelInfo, ParamLimits
from server.main import create_app
from server.settings import load_settings
from tests.bundles import write_random_bundle

pytestmark = pytest.mark.timeout(120)

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TINY_DESCRIPTION = (
    "Tiny random-initialised Self-Forcing-shaped model on the CPU for tests (no downloads, no weights file)"
)


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bundle (the tiny-random models) with the demo vocabulary."""
    path = tmp_path_factory.mktemp("bundle") / "demo.safetensors"
    write_random_bundle(path)
    return path


def _preset(tmp_path: Path, bundle: Path, name: str = "demo") -> Path:
    """A YAML preset on ``bundle``: a non-square 96x64 stream with 2 latent frames (8 pixel frames) per block."""
    path = tmp_path / f"{name}.yaml"
    doc = {
        "name": name,
        "description": f"{name} bundle preset",
        "model": {"bundle": str(bundle)},
        "stream": {"height": 64, "width": 96, "latent_frames_per_block": 2, "window_frames": 4},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _app(config: str = "tiny-random", token: str | None = TOKEN, max_prompt_chars: int = 1000) -> FastAPI:
    return create_app(
        load_settings(
            config=config, api_token=token, node_id="model-info", max_prompt_chars=max_prompt_chars
        ),
        client_dir=None,
    )


def _read(config: str) -> ModelInfo:
    """The model info of a preset with the default prompt limit."""
    return model_route.read_model_info(config, ParamLimits.for_preset(config, 1000))


@pytest_asyncio.fixture
async def client_for() -> AsyncIterator:
    clients: list[httpx.AsyncClient] = []

    def make(app: FastAPI) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)
        c.headers.update(AUTH)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.aclose()


async def test_random_preset_is_open_vocabulary(client_for) -> None:
    api = client_for(_app())
    r = await api.get("/v1/model")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "preset": "tiny-random",
        "description": TINY_DESCRIPTION,
        "width": 256,
        "height": 256,
        "frames_per_block": 12,
        "strength": 0.4,
        "steps": 3,
        "prompts": None,
        "ranges": {
            "strength": {
                "min": 0.001,
                "max": 1.0,
                "default": 0.4,
                "recommended_min": 0.001,  # no recommendation in the preset: the whole valid range
                "recommended_max": 1.0,
                "min_by_steps": {
                    "1": 0.001,
                    "2": 0.002,
                    "3": 0.004,
                    "4": 0.007,
                    "5": 0.01,
                    "6": 0.013,
                    "7": 0.015,
                    "8": 0.018,
                },
            },
            "steps": {"min": 1, "max": 8, "default": 3},
            "blend_blocks": {"min": 0, "max": 64},
            "prompt_max_chars": 1000,
        },
        "input_fps": None,  # no worker has measured it (none started here; tests/server/test_input_rate.py)
    }
    assert "/v1/model" in (await api.get("/openapi.json")).json()["paths"]


async def test_public_while_sessions_need_the_token(client_for) -> None:
    """The page reads /v1/model before the person enters a token; session routes still refuse without one."""
    api = client_for(_app())
    r = await api.get("/v1/model", headers={"Authorization": ""})
    assert r.status_code == 200 and r.json()["preset"] == "tiny-random"
    assert (await api.get("/v1/sessions", headers={"Authorization": ""})).status_code == 401


async def test_bundle_preset_lists_its_vocabulary(client_for, bundle_file: Path, tmp_path: Path) -> None:
    preset = _preset(tmp_path, bundle_file)
    api = client_for(_app(str(preset)))
    r = await api.get("/v1/model")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = {edit: list(prompts) for edit, prompts in vocabulary().items()}
    assert len(expected) > 1 and all(len(p) > 1 for p in expected.values())
    assert body["prompts"] == expected
    assert list(body["prompts"]) == list(expected)  # the edits in training order
    assert body["preset"] == str(preset) and body["description"] == "demo bundle preset"
    assert (body["width"], body["height"], body["frames_per_block"]) == (96, 64, 8)


async def test_missing_bundle_still_serves_prompts_null(
    client_for, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "missing.safetensors"
    app = _app(str(_preset(tmp_path, missing, "gone")))
    api = client_for(app)
    with caplog.at_level(logging.WARNING, logger="server.model"):
        r = await api.get("/v1/model")
    assert r.status_code == 200, r.text
    assert r.json()["prompts"] is None and r.json()["description"] == "gone bundle preset"
    assert (r.json()["width"], r.json()["height"], r.json()["frames_per_block"]) == (96, 64, 8)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert any("missing.safetensors" in m for m in warnings), warnings
    assert (await api.get("/healthz")).status_code == 200


def test_not_a_bundle_gives_prompts_null(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other))
    with caplog.at_level(logging.WARNING, logger="server.model"):
        info = _read(str(_preset(tmp_path, other, "other")))
    assert info.prompts is None and info.frames_per_block == 8
    assert any("not a model bundle" in rec.getMessage() for rec in caplog.records)


def test_embedded_default_reports_its_trained_strength_and_styles() -> None:
    info = _read("tiny")  # the shipped demo bundle: the strength and steps it was trained at (its metadata)
    from lipar_core.bundle import bundle_train_config
    from lipar_core.presets import bundle_path

    trained = bundle_train_config(bundle_path("weights/demo.safetensors"))["denoising_steps"]
    assert (info.strength, info.steps) == (trained[0] / 1000, len(trained))
    assert info.prompts is not None and len(info.prompts) == 8
    assert info.prompts["negative"][:2] == ["photo negative", "inverted colors"]


def test_unknown_preset_raises() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        _read("no-such-preset")


async def test_read_once_and_started_with_the_app(
    client_for, bundle_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's start begins the read before any request; many requests share that one read."""
    reads: list[str] = []
    release = threading.Event()
    real = model_route.read_model

    def counting(config: str, limits: ParamLimits) -> tuple[ModelInfo, model_route.PromptMatcher]:
        reads.append(config)
        release.wait(30)
        return real(config, limits)

    monkeypatch.setattr(model_route, "read_model", counting)
    app = _app(str(_preset(tmp_path, bundle_file)))
    manager = app.state.manager

    async def nothing() -> None:
        return None

    # the lifespan without workers: only the model-info read and the in-memory store start
    for obj in (manager, manager.pool):
        monkeypatch.setattr(obj, "start", nothing)
        monkeypatch.setattr(obj, "stop", nothing)
    async with app.router.lifespan_context(app):
        for _ in range(100):
            if reads:
                break
            await asyncio.sleep(0.05)
        assert len(reads) == 1, "the read did not start with the app"
        api = client_for(app)
        pending = [asyncio.create_task(api.get("/v1/model")) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in pending)  # they wait for the read
        release.set()
        responses = await asyncio.gather(*pending)
        responses.append(await api.get("/v1/model"))
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json() == responses[0].json() for r in responses) and responses[0].json()["prompts"]
    assert len(reads) == 1


# ---- ranges: one source each (the API's field limits, the prompt setting, the preset) ------------------------


def _numeric(prop: dict) -> dict:
    """The non-null branch of an OpenAPI property (``anyOf: [{...}, {"type": "null"}]`` or the property)."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("integer", "number"):
            return branch
    raise AssertionError(f"no numeric branch in {prop}")


def _bound(branch: dict, *keys: str) -> float:
    """The first of ``keys`` the schema branch has (pydantic writes ``ge``/``le`` or ``minimum``/``maximum``)."""
    return next(branch[k] for k in keys if k in branch)


async def test_ranges_are_the_api_field_limits(client_for) -> None:
    """What /v1/model says is valid is what the request schemas accept: compared with the OpenAPI document, so
    a limit changed on one side only fails here."""
    api = client_for(_app(max_prompt_chars=77))
    ranges = (await api.get("/v1/model")).json()["ranges"]
    props = (await api.get("/openapi.json")).json()["components"]["schemas"]["SessionPatch"]["properties"]
    strength, steps, blend = (
        _numeric(props["strength"]),
        _numeric(props["steps"]),
        _numeric(props["blend_blocks"]),
    )
    assert ranges["strength"]["max"] == _bound(strength, "maximum", "le") == schemas.STRENGTH_MAX
    assert ranges["strength"]["min"] > strength["exclusiveMinimum"] == schemas.STRENGTH_EXCLUSIVE_MIN
    assert ranges["steps"]["min"] == _bound(steps, "minimum", "ge") == schemas.STEPS_MIN
    assert ranges["steps"]["max"] == _bound(steps, "maximum", "le") == schemas.STEPS_MAX
    assert ranges["blend_blocks"]["min"] == _bound(blend, "minimum", "ge") == schemas.BLEND_BLOCKS_MIN
    assert ranges["blend_blocks"]["max"] == _bound(blend, "maximum", "le") == schemas.BLEND_BLOCKS_MAX
    assert ranges["prompt_max_chars"] == 77  # the setting, not a copy of its default
    assert sorted(int(k) for k in ranges["strength"]["min_by_steps"]) == list(
        range(schemas.STEPS_MIN, schemas.STEPS_MAX + 1)
    )


def test_ranges_follow_the_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranges read the module's constants when computed (no copy of 8 or 64 of their own)."""
    monkeypatch.setattr(schemas, "STEPS_MAX", 5)
    monkeypatch.setattr(schemas, "BLEND_BLOCKS_MAX", 10)
    r = ParamLimits.for_preset("tiny-random", 1000).ranges()
    assert (r.steps.max, r.blend_blocks.max) == (5, 10)
    assert sorted(r.strength.min_by_steps) == [1, 2, 3, 4, 5]


def test_api_limits_are_the_editors() -> None:
    """The API's constants are the library's limits: the editor takes their extremes and refuses one past them."""
    make_step_list(schemas.STRENGTH_MAX, schemas.STEPS_MAX)
    with pytest.raises(ValueError, match="steps must be in"):
        make_step_list(0.5, schemas.STEPS_MAX + 1)
    with pytest.raises(ValueError, match="steps must be in"):
        make_step_list(0.5, schemas.STEPS_MIN - 1)
    with pytest.raises(ValueError, match="strength must be in"):
        make_step_list(schemas.STRENGTH_MAX + 0.01, 1)
    assert MAX_BLEND_BLOCKS == schemas.BLEND_BLOCKS_MAX


@pytest.mark.parametrize("preset", ["tiny", "tiny-random"])
def test_min_by_steps_is_the_lowest_strength_accepted(preset: str) -> None:
    """Each ``min_by_steps[k]`` passes the API's own check (the editor's) with k steps, one timestep less does not."""
    limits = ParamLimits.for_preset(preset, 1000)
    r = limits.ranges()
    n = limits.num_train_timesteps
    for k, lowest in r.strength.min_by_steps.items():
        limits.check_create(schemas.SessionCreate(prompt="x", strength=lowest, steps=k))
        if lowest > r.strength.min:
            with pytest.raises(RequestValidationError, match="too low"):
                limits.check_create(schemas.SessionCreate(prompt="x", strength=lowest - 1 / n, steps=k))
    assert r.strength.min == 1 / n


def test_demo_preset_recommends_its_trained_strength() -> None:
    """The demo model edits well only near the strength it was trained at: its preset says so, and the ranges
    carry it (a band around the default, narrower than the valid range)."""
    info = _read("tiny")
    s = info.ranges.strength
    cfg = PresetConfig.from_yaml(preset_path("tiny")).scheduler
    assert cfg.recommended_strength is not None
    assert (s.recommended_min, s.recommended_max) == cfg.recommended_strength
    assert s.recommended_min <= s.default == info.strength <= s.recommended_max
    assert s.default == cfg.denoising_steps[0] / cfg.num_train_timesteps
    assert s.recommended_max - s.recommended_min < 0.1 * (s.max - s.min)
    assert (info.ranges.steps.default, info.steps) == (len(cfg.denoising_steps),) * 2


def _scheduler_preset(tmp_path: Path, recommended: list[float]) -> Path:
    path = tmp_path / "rec.yaml"
    path.write_text(
        yaml.safe_dump({"extends": "tiny-random", "scheduler": {"recommended_strength": recommended}})
    )
    return path


def test_preset_recommended_strength_is_used(tmp_path: Path) -> None:
    s = _read(str(_scheduler_preset(tmp_path, [0.3, 0.5]))).ranges.strength
    assert (s.recommended_min, s.recommended_max, s.default) == (0.3, 0.5, 0.4)


@pytest.mark.parametrize(
    ("recommended", "message"),
    [
        ([0.5, 0.6], "must contain the preset's strength 0.4"),
        ([0.0, 0.5], "0 < min <= max <= 1"),
        ([0.5, 0.3], "0 < min <= max <= 1"),
        ([0.3, 1.5], "0 < min <= max <= 1"),
    ],
)
def test_preset_recommended_strength_is_validated(
    tmp_path: Path, recommended: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PresetConfig.from_yaml(_scheduler_preset(tmp_path, recommended))


# ---- prompt match -----------------------------------------------------------------------------------------------


async def test_match_on_the_demo_bundle(client_for) -> None:
    """The shipped ``tiny`` model knows its styles by paraphrase and says which edit a prompt selects; an unknown
    prompt (which the model passes through) is ``known: false``. Public, like /v1/model."""
    api = client_for(_app("tiny", max_prompt_chars=60))
    api.headers.pop("Authorization")

    async def match(prompt: str) -> dict:
        r = await api.post("/v1/model/match", json={"prompt": prompt})
        assert r.status_code == 200, r.text
        return r.json()

    thermal = await match("infrared thermal image")
    assert thermal["known"] is True and thermal["open_vocabulary"] is False
    assert (thermal["edit"], thermal["canonical"]) == ("thermal", "thermal camera")
    assert thermal["score"] > 0.99
    sketch = await match("Make it look like a PENCIL drawing!")
    assert (sketch["known"], sketch["edit"], sketch["canonical"]) == (True, "pencil_sketch", "pencil sketch")
    unknown = await match("a cat riding a bicycle on the moon")
    assert (unknown["known"], unknown["edit"], unknown["canonical"]) == (False, None, None)
    assert 0.0 <= unknown["score"] < 0.45

    for body, where in (
        ({"prompt": "x" * 61}, "61 characters is over the limit of 60"),
        ({"prompt": "  "}, "blank"),
        ({}, "prompt"),
        ({"prompt": "sepia", "extra": 1}, "extra"),
        ({"prompt": 3}, "prompt"),
    ):
        r = await api.post("/v1/model/match", json=body)
        assert r.status_code == 422 and where in r.text, (body, r.text)


async def test_match_on_a_bundle_made_here(client_for, bundle_file: Path, tmp_path: Path) -> None:
    api = client_for(_app(str(_preset(tmp_path, bundle_file))))
    for edit, prompts in vocabulary().items():
        r = (await api.post("/v1/model/match", json={"prompt": prompts[-1]})).json()
        assert (r["known"], r["edit"], r["canonical"]) == (True, edit, prompts[0]), r


async def test_open_vocabulary_model_knows_every_prompt(client_for) -> None:
    api = client_for(_app("tiny-random"))
    for prompt in ("a knight in shining armour, cinematic lighting", "zzqx"):
        r = await api.post("/v1/model/match", json={"prompt": prompt})
        assert r.status_code == 200
        assert r.json() == {
            "known": True,
            "open_vocabulary": True,
            "edit": None,
            "canonical": None,
            "score": None,
        }


async def test_match_without_a_readable_vocabulary_is_unknown(client_for, tmp_path: Path) -> None:
    api = client_for(_app(str(_preset(tmp_path, tmp_path / "missing.safetensors", "gone"))))
    r = await api.post("/v1/model/match", json={"prompt": "thermal camera"})
    assert r.status_code == 200 and r.json()["known"] is None and r.json()["edit"] is None
