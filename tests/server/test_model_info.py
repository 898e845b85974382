"""``GET /v1/model`` in process (httpx ASGI transport; no worker is started): the built-in open-vocabulary
``tiny`` preset, a YAML preset on a small bundle made here, a preset whose bundle is missing, the token, and
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

from lipar_core.train.demo import vocabulary
from server.api.routes import model as model_route
from server.api.schemas import ModelInfo
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


def _app(config: str = "tiny-random", token: str | None = TOKEN) -> FastAPI:
    return create_app(
        load_settings(config=config, api_token=token, node_id="model-info"),
        client_dir=None,
    )


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
        info = model_route.read_model_info(str(_preset(tmp_path, other, "other")))
    assert info.prompts is None and info.frames_per_block == 8
    assert any("not a model bundle" in rec.getMessage() for rec in caplog.records)


def test_embedded_default_reports_its_trained_strength_and_styles() -> None:
    info = model_route.read_model_info("tiny")  # the shipped demo bundle: trained at strength 0.15, 3 steps
    assert (info.strength, info.steps) == (0.15, 3)
    assert info.prompts is not None and len(info.prompts) == 8
    assert info.prompts["negative"][:2] == ["photo negative", "inverted colors"]


def test_unknown_preset_raises() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        model_route.read_model_info("no-such-preset")


async def test_read_once_and_started_with_the_app(
    client_for, bundle_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's start begins the read before any request; many requests share that one read."""
    reads: list[str] = []
    release = threading.Event()
    real = model_route.read_model_info

    def counting(config: str) -> ModelInfo:
        reads.append(config)
        release.wait(30)
        return real(config)

    monkeypatch.setattr(model_route, "read_model_info", counting)
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
