"""Tests for lipar_core.checkpoints: local directories, the Hub cache offline, and the error messages."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)

from lipar_core.checkpoints import CheckpointNotFoundError, hub_offline, resolve_file, resolve_repo_dir
from lipar_core.config import HubFile

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


def _fake_hub_cache(cache: Path, repo: str, files: dict[str, str]) -> Path:
    """The on-disk layout huggingface_hub uses for a cached snapshot (refs/main → snapshots/<commit>)."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snap = repo_dir / "snapshots" / COMMIT
    for name, text in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_text(text)
    return snap


# ---------------------------------------------------------------------------- Hub, offline


def test_resolve_file_offline_empty_cache(offline: None, tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    f = HubFile(repo="gdhe17/Self-Forcing", filename="checkpoints/self_forcing_dmd.pt")
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_file(f, str(cache), "the Self-Forcing generator", "set model.transformer.generator")
    msg = str(info.value)
    assert "the Self-Forcing generator" in msg
    assert "checkpoints/self_forcing_dmd.pt" in msg
    assert "gdhe17/Self-Forcing" in msg
    assert str(cache) in msg
    assert "HF_HUB_OFFLINE is set" in msg
    assert "set model.transformer.generator" in msg
    assert "hf download gdhe17/Self-Forcing checkpoints/self_forcing_dmd.pt" in msg
    assert "\n" not in msg  # one paragraph
    assert info.value.offline is True
    assert isinstance(info.value.__cause__, LocalEntryNotFoundError)
    assert list(cache.iterdir()) == [] or all(p.name.startswith(".") for p in cache.iterdir())


def test_resolve_repo_dir_offline_empty_cache(offline: None, tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_repo_dir(
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "transformer", str(cache), "the Wan transformer", "see README"
        )
    msg = str(info.value)
    for part in ("the Wan transformer", "'transformer'", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", str(cache)):
        assert part in msg
    assert "HF_HUB_OFFLINE is set" in msg
    assert "see README" in msg
    assert "--include 'transformer/*'" in msg


def test_offline_cached_file_and_snapshot_are_found(offline: None, tmp_path: Path) -> None:
    snap = _fake_hub_cache(tmp_path, "owner/name", {"transformer/config.json": "{}", "ckpt/gen.pt": "x"})
    got = resolve_file(HubFile(repo="owner/name", filename="ckpt/gen.pt"), str(tmp_path), "gen", "how")
    assert got == snap / "ckpt" / "gen.pt"
    root = resolve_repo_dir("owner/name", "transformer", str(tmp_path), "the transformer", "how")
    assert root == snap
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_repo_dir("owner/name", "vae", str(tmp_path), "the VAE", "get the VAE")
    msg = str(info.value)
    assert str(snap / "vae") in msg and "does not exist" in msg and "get the VAE" in msg


def test_offline_env_set_after_import_is_honoured(
    online: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """huggingface_hub reads HF_HUB_OFFLINE at import; a later setting must still mean cache-only."""
    calls: list[dict[str, Any]] = []

    def fake(**kwargs: Any) -> str:
        calls.append(kwargs)
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    with pytest.raises(CheckpointNotFoundError, match="HF_HUB_OFFLINE is set"):
        resolve_file(HubFile(repo="a/b", filename="c.pt", revision="v1"), str(tmp_path), "c", "how")
    with pytest.raises(CheckpointNotFoundError, match="HF_HUB_OFFLINE is set"):
        resolve_repo_dir("a/b", "sub", str(tmp_path), "b", "how")
    assert [c["local_files_only"] for c in calls] == [True, True]
    assert calls[0]["revision"] == "v1" and calls[0]["cache_dir"] == str(tmp_path)
    assert calls[1]["allow_patterns"] == ["sub/*"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline()


def _hub_errors() -> list[tuple[BaseException, str]]:
    errors: list[tuple[BaseException, str]] = [
        (ConnectionError("no route to host"), "ConnectionError: no route to host"),
        (OfflineModeIsEnabled("offline"), "offline mode is enabled"),
        (EntryNotFoundError("404"), "has no file 'c.pt'"),
        (LocalEntryNotFoundError("cannot reach"), "the Hub could not be reached"),
    ]
    http_lib = importlib.import_module(huggingface_hub.errors.Response.__module__.split(".")[0])
    response = http_lib.Response(404, request=http_lib.Request("GET", "https://huggingface.co/a/b"))
    errors.append((RepositoryNotFoundError("404 repo", response=response), "does not exist or is private"))
    errors.append((http_lib.ConnectError("dns failure"), "ConnectError: dns failure"))
    return errors


@pytest.mark.parametrize(("error", "expected"), _hub_errors(), ids=lambda v: type(v).__name__)
def test_hub_errors_are_converted(
    online: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error: BaseException, expected: str
) -> None:
    def fake(**kwargs: Any) -> str:
        assert kwargs["local_files_only"] is False
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_file(HubFile(repo="a/b", filename="c.pt"), str(tmp_path), "the c file", "ask for c")
    msg = str(info.value)
    assert expected.lower() in msg.lower()
    assert "HF_HUB_OFFLINE is not set" in msg
    assert "c.pt" in msg and "'a/b'" in msg and str(tmp_path) in msg and "ask for c" in msg
    assert info.value.__cause__ is error


def test_unexpected_errors_are_not_swallowed(online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(**kwargs: Any) -> str:
        raise KeyError("a bug")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(KeyError):
        resolve_file(HubFile(repo="a/b", filename="c.pt"), None, "c", "how")


# ---------------------------------------------------------------------------- local directories


def test_resolve_file_local_dir(offline: None, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.pt").write_bytes(b"123")
    assert (
        resolve_file(HubFile(repo=str(tmp_path), filename="sub/w.pt"), None, "w", "how")
        == tmp_path / "sub/w.pt"
    )


def test_resolve_file_local_missing_names_path(
    offline: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **_: pytest.fail("Hub must not be used"))
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_file(HubFile(repo=str(tmp_path), filename="taew2_1.pth"), None, "the TAE weights", "get TAE")
    msg = str(info.value)
    assert str(tmp_path / "taew2_1.pth") in msg
    assert "the TAE weights" in msg and "get TAE" in msg
    assert "does not matter for local paths" in msg
    # a path-like repo that does not exist is a local path, not a Hub id
    missing_dir = tmp_path / "no" / "such" / "dir"
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as info2:
        resolve_file(HubFile(repo=str(missing_dir), filename="x.pt"), None, "x", "how")
    assert str(missing_dir) in str(info2.value)


def test_resolve_repo_dir_local(offline: None, tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text("{}")
    (tmp_path / "vae").mkdir()
    assert resolve_repo_dir(str(tmp_path), "transformer", None, "t", "how") == tmp_path
    assert resolve_repo_dir(str(tmp_path), None, None, "t", "how") == tmp_path
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_repo_dir(str(tmp_path), "text_encoder", None, "the text encoder", "get it")
    assert str(tmp_path / "text_encoder") in str(info.value) and "does not exist" in str(info.value)
    with pytest.raises(CheckpointNotFoundError, match="is empty"):
        resolve_repo_dir(str(tmp_path), "vae", None, "the VAE", "get it")
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve_repo_dir(str(tmp_path / "nope" / "x"), "vae", None, "the VAE", "get it")


def test_error_survives_pickling() -> None:
    err = CheckpointNotFoundError.build(
        what="w", missing="file 'f'", places=["local path /x/f"], reason="gone", how_to_get="get", hub=False
    )
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, CheckpointNotFoundError) and str(again) == str(err)
    assert isinstance(err, RuntimeError)
