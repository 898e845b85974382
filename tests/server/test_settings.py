"""Settings: defaults are the embedded tiny/CPU/in-memory configuration; bad values fail fast and clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("LIPAR_CONFIG", "LIPAR_DEVICES", "LIPAR_REDIS_URL", "LIPAR_API_TOKEN", "LIPAR_ICE_SERVERS"):
        monkeypatch.delenv(k, raising=False)
    s = load_settings()
    assert (s.host, s.port, s.config, s.devices) == ("0.0.0.0", 8000, "tiny", ["cpu"])
    assert s.redis_url is None and s.api_token is None and s.ice_servers == [] and s.rtc_port_range is None
    assert s.video_codec == "vp8"


def test_env_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPAR_DEVICES", "cuda:0,cuda:1")
    monkeypatch.setenv(
        "LIPAR_ICE_SERVERS", '[{"urls": ["turn:turn.example:3478"], "username": "u", "credential": "c"}]'
    )
    monkeypatch.setenv("LIPAR_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("LIPAR_RTC_PORT_MIN", "40000")
    monkeypatch.setenv("LIPAR_RTC_PORT_MAX", "40100")
    monkeypatch.setenv("LIPAR_VIDEO_CODEC", "h264")
    monkeypatch.setenv("LIPAR_LOG_LEVEL", "debug")
    s = load_settings()
    assert s.devices == ["cuda:0", "cuda:1"] and s.ice_servers[0].username == "u"
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.rtc_port_range == (40000, 40100) and s.video_codec == "h264" and s.log_level == "DEBUG"


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"LIPAR_PORT": "0"}, "LIPAR_PORT"),
        ({"LIPAR_DEVICES": "gpu0"}, "LIPAR_DEVICES"),
        ({"LIPAR_API_TOKEN": "changethis"}, "placeholder"),
        ({"LIPAR_ICE_SERVERS": "stun:x"}, "JSON list"),
        ({"LIPAR_RTC_PORT_MIN": "40000"}, "both"),
        ({"LIPAR_RTC_PORT_MIN": "41000", "LIPAR_RTC_PORT_MAX": "40000"}, "above"),
        ({"LIPAR_VIDEO_CODEC": "av1"}, "LIPAR_VIDEO_CODEC"),
        ({"LIPAR_REDIS_URL": "localhost:6379"}, "redis://"),
        ({"LIPAR_CONFIG": "/no/such/preset.yaml"}, "does not exist"),
    ],
)
def test_bad_settings_fail_fast(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError, match=needle):
        load_settings()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--port", "70000"], "LIPAR_PORT"),
        (["--config", "/no/such/preset.yaml"], "LIPAR_CONFIG"),
        (["--config", "no-such-preset"], "unknown preset 'no-such-preset'; built-in presets: "),
    ],
)
def test_cli_exits_2_with_message(args: list[str], needle: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "server.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and needle in r.stderr, r.stderr


async def test_static_client_and_cors(tmp_path: Path) -> None:
    """client_web/ is served at / when present (the API does not depend on it); CORS follows the settings."""
    import httpx

    from server.main import create_app

    (tmp_path / "index.html").write_text("<h1>lipar</h1>")
    app = create_app(load_settings(cors_origins="https://ui.example"), client_dir=tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert "lipar" in (await c.get("/")).text
        preflight = {"Access-Control-Request-Method": "POST"}
        r = await c.options("/v1/sessions", headers={"Origin": "https://ui.example", **preflight})
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = await c.options("/v1/sessions", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in r.headers
        assert (await c.get("/healthz")).status_code == 200
    app2 = create_app(load_settings(), client_dir=tmp_path / "missing")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app2), base_url="http://t") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/")).status_code == 404


def test_worker_threads_split_the_cores_among_cpu_workers() -> None:
    from server.worker.pool import auto_threads

    assert auto_threads("cpu", ["cpu"], cores=2) == 2
    assert auto_threads("cpu", ["cpu", "cpu"], cores=2) == 1
    assert auto_threads("cpu", ["cpu", "cpu", "cpu"], cores=8) == 2
    assert auto_threads("cpu", ["cpu", "cpu", "cpu"], cores=2) == 1, "never below one"
    assert auto_threads("cuda:0", ["cuda:0", "cpu"], cores=16) == 0, "torch's default"
    assert auto_threads("cpu", ["cuda:0", "cpu"], cores=16) == 16
    assert load_settings(worker_threads=3).worker_threads == 3
    with pytest.raises(SettingsError, match="LIPAR_WORKER_THREADS"):
        load_settings(worker_threads=-1)
