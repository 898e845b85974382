"""Finding checkpoint files and repositories: a local directory or the Hugging Face Hub.

Everything the library loads goes through :func:`resolve_file` (one file) or :func:`resolve_repo_dir` (a
diffusers-format repository, or part of it). Both accept either a local directory or a Hub id
(``owner/name``). Hub look-ups go through ``huggingface_hub`` and therefore respect ``HF_HUB_OFFLINE=1``
(cache only) and ``HF_HUB_CACHE`` / ``HF_HOME``. Every failure (missing file, unknown repo, gated repo,
offline mode with an empty cache, no network) becomes a :class:`CheckpointNotFoundError` whose message names
the file, every place looked, whether offline mode is on, and how to get the file.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lipar_core.config import HubFile

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointNotFoundError",
    "hub_offline",
    "resolve_file",
    "resolve_repo_dir",
]

_TRUE_VALUES = {"1", "on", "yes", "true"}


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Exception bases of the HTTP clients huggingface_hub may use (httpx, httpx2, requests)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, OSError]
    for module_name, attr in (
        ("httpx", "HTTPError"),
        ("httpx2", "HTTPError"),
        ("requests", "RequestException"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        base = getattr(module, attr, None)
        if base is None and module_name == "requests":
            base = getattr(getattr(module, "exceptions", None), attr, None)
        if isinstance(base, type) and issubclass(base, BaseException):
            found.append(base)
    return tuple(found)


_HUB_ERRORS: tuple[type[BaseException], ...] = (
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    OfflineModeIsEnabled,
    HFValidationError,
    *_network_error_types(),
)


class CheckpointNotFoundError(RuntimeError):
    """A checkpoint file or repository could not be found locally, in the Hub cache, or on the Hub.

    The message is one paragraph: what was wanted, the file, every place looked (Hub id plus cache
    directory, or local path), whether ``HF_HUB_OFFLINE`` is set, why it failed, and how to get it.
    The parts are also available as attributes for programmatic use.
    """

    def __init__(
        self,
        message: str,
        *,
        what: str | None = None,
        missing: str | None = None,
        places: Sequence[str] = (),
        offline: bool | None = None,
        how_to_get: str | None = None,
    ) -> None:
        super().__init__(message)
        self.what = what
        self.missing = missing
        self.places = list(places)
        self.offline = offline
        self.how_to_get = how_to_get

    @classmethod
    def build(
        cls,
        *,
        what: str,
        missing: str,
        places: Sequence[str],
        reason: str,
        how_to_get: str,
        offline: bool | None = None,
        hub: bool = True,
    ) -> CheckpointNotFoundError:
        """Compose the standard one-paragraph message (``hub``: whether the Hub / its cache was searched)."""
        if offline is None:
            offline = hub_offline()
        if hub:
            offline_text = (
                "HF_HUB_OFFLINE is set, so only the local cache was searched (no download was attempted)."
                if offline
                else "HF_HUB_OFFLINE is not set."
            )
        else:
            offline_text = (
                f"HF_HUB_OFFLINE is {'set' if offline else 'not set'} (it does not matter for local paths)."
            )
        reason = " ".join(reason.split()).rstrip(".")  # one paragraph, even for multi-line causes
        reason = reason[:1].upper() + reason[1:]
        message = (
            f"Cannot find {what}: {missing}. Looked in: {'; '.join(places)}. {reason}. "
            f"{offline_text} To get it: {how_to_get.rstrip('.')}."
        )
        return cls(message, what=what, missing=missing, places=places, offline=offline, how_to_get=how_to_get)


def hub_offline() -> bool:
    """Whether Hub access is cache-only: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is true.

    huggingface_hub reads the variable once at import; this also honours it when it was set later.
    """
    if hf_constants.HF_HUB_OFFLINE:
        return True
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().lower() in _TRUE_VALUES


def _hub_cache_dir(cache_dir: str | None) -> str:
    """The cache directory huggingface_hub will use (explicit, else ``HF_HUB_CACHE`` / the default)."""
    if cache_dir is not None:
        return str(Path(cache_dir).expanduser())
    return str(hf_constants.HF_HUB_CACHE)


def _local_dir(repo: str) -> Path | None:
    """``repo`` as a local directory path if it is one (existing, or written like a path), else None."""
    p = Path(repo).expanduser()
    if p.is_dir():
        return p
    looks_like_path = (
        repo.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in repo
        or os.path.isabs(repo)
        or repo.count("/") > 1
        or repo in (".", "..")
    )
    return p if looks_like_path else None


def _hub_reason(err: BaseException, repo: str, target: str, revision: str | None, offline: bool) -> str:
    """A short human explanation of a huggingface_hub / network error."""
    rev = f" at revision '{revision}'" if revision else ""
    if isinstance(err, GatedRepoError):
        return (
            f"the Hub repository '{repo}' is gated: accept its terms on huggingface.co and log in "
            f"(`hf auth login`) ({type(err).__name__})"
        )
    if isinstance(err, RepositoryNotFoundError):
        return (
            f"the Hub repository '{repo}' does not exist or is private (log in with `hf auth login` if it is "
            f"private) ({type(err).__name__})"
        )
    if isinstance(err, RevisionNotFoundError):
        return f"the Hub repository '{repo}' has no revision '{revision}' ({type(err).__name__})"
    if isinstance(err, LocalEntryNotFoundError):
        if offline:
            return f"{target}{rev} is not in the local cache ({type(err).__name__})"
        return (
            f"{target}{rev} is not in the local cache and the Hub could not be reached "
            f"({type(err).__name__}: {_first_line(err)})"
        )
    if isinstance(err, EntryNotFoundError):
        return f"the Hub repository '{repo}'{rev} has no {target} ({type(err).__name__})"
    if isinstance(err, OfflineModeIsEnabled):
        return f"offline mode is enabled and {target} is not cached ({type(err).__name__})"
    if isinstance(err, HFValidationError):
        return f"'{repo}' is neither an existing local directory nor a valid Hub repository id ({_first_line(err)})"
    return f"the download failed ({type(err).__name__}: {_first_line(err)})"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no details"


def _download_hint(repo: str, filename: str | None, revision: str | None, cache_dir: str | None) -> str:
    parts = ["hf download", repo]
    if filename:
        parts.append(filename)
    if revision:
        parts += ["--revision", revision]
    if cache_dir:
        parts += ["--cache-dir", cache_dir]
    return "`" + " ".join(parts) + "`"


def resolve_file(f: HubFile, cache_dir: str | None, what: str, how_to_get: str) -> Path:
    """Path of one checkpoint file, from a local directory or the Hub (download or cache).

    Args:
        f: ``repo`` is a local directory or a Hub id; ``filename`` is relative to it; ``revision`` is a
            Hub branch, tag or commit (ignored for local directories).
        cache_dir: Hub cache directory; None means huggingface_hub's default (``HF_HUB_CACHE``).
        what: what the file is, for the error message (e.g. ``"the Self-Forcing generator checkpoint"``).
        how_to_get: how the user can get it, for the error message.

    Returns:
        The path of the file on disk (inside the Hub cache for Hub ids).

    Raises:
        CheckpointNotFoundError: the file is not there / not cached (``HF_HUB_OFFLINE=1``) / not downloadable.
    """
    local = _local_dir(f.repo)
    if local is not None:
        path = local / f.filename
        if path.is_file():
            logger.debug("%s: using local file %s", what, path)
            return path
        reason = (
            f"the local directory {local} does not exist"
            if not local.is_dir()
            else f"there is no file {path}"
        )
        raise CheckpointNotFoundError.build(
            what=what,
            missing=f"file '{f.filename}'",
            places=[f"local path {path}"],
            reason=reason,
            how_to_get=f"{how_to_get.rstrip('.')}; or put '{f.filename}' into {local}",
            hub=False,
        )

    offline = hub_offline()
    cache = _hub_cache_dir(cache_dir)
    try:
        downloaded = huggingface_hub.hf_hub_download(
            repo_id=f.repo,
            filename=f.filename,
            revision=f.revision,
            cache_dir=cache_dir,
            local_files_only=offline,
        )
    except _HUB_ERRORS as err:
        raise CheckpointNotFoundError.build(
            what=what,
            missing=f"file '{f.filename}'" + (f" (revision '{f.revision}')" if f.revision else ""),
            places=[f"Hugging Face Hub repo '{f.repo}' with cache dir {cache}"],
            reason=_hub_reason(err, f.repo, f"file '{f.filename}'", f.revision, offline),
            how_to_get=(
                f"{how_to_get.rstrip('.')}; e.g. "
                f"{_download_hint(f.repo, f.filename, f.revision, cache_dir)} while online, then run again "
                f"(HF_HUB_OFFLINE=1 is fine once cached); or set the repo to a local directory holding "
                f"'{f.filename}'"
            ),
            offline=offline,
        ) from err
    logger.debug("%s: resolved %s/%s to %s", what, f.repo, f.filename, downloaded)
    return Path(downloaded)


def resolve_repo_dir(
    repo: str,
    subfolder: str | None,
    cache_dir: str | None,
    what: str,
    how_to_get: str,
    allow_patterns: Sequence[str] | None = None,
    revision: str | None = None,
) -> Path:
    """Root directory of a (diffusers-format) repository: a local directory or a Hub snapshot.

    For a Hub id, ``snapshot_download`` fetches (or, with ``HF_HUB_OFFLINE=1``, only looks up in the cache)
    the files matching ``allow_patterns``; by default only the files under ``subfolder``. Either way the
    ``subfolder`` (when given) must exist and be non-empty.

    Args:
        repo: local directory or Hub id.
        subfolder: folder inside the repository that the caller needs (e.g. ``"transformer"``), or None.
        cache_dir: Hub cache directory; None means huggingface_hub's default.
        what: what the repository is, for the error message.
        how_to_get: how the user can get it, for the error message.
        allow_patterns: glob patterns of the files to fetch; None means ``["<subfolder>/*"]`` (or
            everything when ``subfolder`` is None).
        revision: Hub branch, tag or commit (ignored for local directories).

    Returns:
        The repository ROOT directory (join ``subfolder`` yourself).

    Raises:
        CheckpointNotFoundError: the repository or the subfolder cannot be found.
    """
    sub_desc = f"folder '{subfolder}'" if subfolder else "repository"
    local = _local_dir(repo)
    if local is not None:
        if not local.is_dir():
            raise CheckpointNotFoundError.build(
                what=what,
                missing=f"directory {local}",
                places=[f"local path {local}"],
                reason=f"the local directory {local} does not exist",
                how_to_get=f"{how_to_get.rstrip('.')}; or pass an existing local directory",
                hub=False,
            )
        root = local
        places = [f"local path {local / subfolder if subfolder else local}"]
        offline: bool | None = None
    else:
        offline = hub_offline()
        cache = _hub_cache_dir(cache_dir)
        patterns: list[str] | None
        if allow_patterns is not None:
            patterns = list(allow_patterns)
        elif subfolder:
            patterns = [f"{subfolder.strip('/')}/*"]
        else:
            patterns = None
        places = [f"Hugging Face Hub repo '{repo}' with cache dir {cache}"]
        hint = (
            f"{how_to_get.rstrip('.')}; e.g. "
            + _download_hint(repo, None, revision, cache_dir)[:-1]
            + "".join(f" --include '{p}'" for p in patterns or [])
            + "` while online, then run again (HF_HUB_OFFLINE=1 is fine once cached); or pass a local "
            "directory holding the repository"
        )
        try:
            root = Path(
                huggingface_hub.snapshot_download(
                    repo_id=repo,
                    revision=revision,
                    cache_dir=cache_dir,
                    allow_patterns=patterns,
                    local_files_only=offline,
                )
            )
        except _HUB_ERRORS as err:
            raise CheckpointNotFoundError.build(
                what=what,
                missing=f"{sub_desc} of '{repo}'" + (f" (revision '{revision}')" if revision else ""),
                places=places,
                reason=_hub_reason(err, repo, f"a snapshot of '{repo}'", revision, offline),
                how_to_get=hint,
                offline=offline,
            ) from err
        places = [f"{places[0]} (snapshot {root})"]
        how_to_get = hint

    if subfolder:
        sub = root / subfolder
        if not sub.is_dir() or not any(sub.iterdir()):
            raise CheckpointNotFoundError.build(
                what=what,
                missing=f"{sub_desc} (expected at {sub})",
                places=places,
                reason=f"{sub} {'is empty' if sub.is_dir() else 'does not exist'}",
                how_to_get=how_to_get,
                offline=offline,
                hub=local is None,
            )
    logger.debug("%s: repository %s resolved to %s", what, repo, root)
    return root
