"""Model info v1: ``GET /v1/model``, the preset this node serves and the prompts its model knows.

The answer is read once per process (:class:`ModelInfoSource`): the app starts the read in a background thread
when it starts (for a bundle preset, reading the vocabulary imports :mod:`lipar_core.presets`, a few seconds,
so the event loop and ``/healthz`` never wait for it) and every request awaits that one result. A bundle that
is missing or unreadable is logged as a warning and reported as ``prompts: null``; the server still starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from lipar_core.config import PresetConfig, preset_path
from lipar_core.geometry import StreamGeometry
from server.api.schemas import ModelInfo

log = logging.getLogger("server.model")


def read_model_info(config: str) -> ModelInfo:
    """The model info of a preset (name or YAML path), from its configuration and bundle metadata (no model is
    loaded; the model code is imported only for a bundle). Failing to read a bundle's prompt vocabulary is
    logged as a warning and gives ``prompts=None``.

    Raises:
        ValueError: the preset itself is unknown or invalid.
    """
    cfg = PresetConfig.from_yaml(preset_path(config))
    geometry = StreamGeometry(
        height=cfg.stream.height,
        width=cfg.stream.width,
        latent_frames_per_block=cfg.stream.latent_frames_per_block,
    )
    prompts: dict[str, list[str]] | None = None
    if cfg.model.bundle is not None:  # else an open-vocabulary model: any prompt
        try:
            from lipar_core.presets import known_prompts

            prompts = known_prompts(cfg)
        except Exception as e:  # missing bundle, not a bundle, unreadable file: the server runs on regardless
            log.warning(
                "cannot read the prompts the model of preset %s knows (%s); /v1/model reports none", config, e
            )
    return ModelInfo(
        preset=config,
        description=cfg.description,
        width=geometry.width,
        height=geometry.height,
        frames_per_block=geometry.pixel_frames_per_block,
        strength=cfg.scheduler.denoising_steps[0] / cfg.scheduler.num_train_timesteps,
        steps=len(cfg.scheduler.denoising_steps),
        prompts=prompts,
    )


class ModelInfoSource:
    """:func:`read_model_info` of one preset, computed once in a background thread and shared by every request
    (independent of the event loop)."""

    def __init__(self, config: str) -> None:
        self.config = config
        self._future: concurrent.futures.Future[ModelInfo] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Begin reading (idempotent): the app calls this when it starts, :meth:`get` if it did not."""
        with self._lock:
            if self._future is not None:
                return
            fut: concurrent.futures.Future[ModelInfo] = concurrent.futures.Future()
            fut.set_running_or_notify_cancel()  # a request that goes away cannot cancel the shared read
            self._future = fut
        threading.Thread(target=self._read, args=(fut,), name="model-info", daemon=True).start()

    def _read(self, fut: concurrent.futures.Future[ModelInfo]) -> None:
        try:
            fut.set_result(read_model_info(self.config))
        except BaseException as e:
            log.exception("cannot read the model info of preset %s", self.config)
            fut.set_exception(e)

    async def get(self) -> ModelInfo:
        """The model info (waits for the read the first time)."""
        self.start()
        assert self._future is not None
        return await asyncio.wrap_future(self._future)


def get_model_info_source(request: Request) -> ModelInfoSource:
    """The app's model info source."""
    source: ModelInfoSource = request.app.state.model_info
    return source


ModelInfoDep = Annotated[ModelInfoSource, Depends(get_model_info_source)]

# Public like /healthz: what the node serves is no secret, and the page lists the known prompts before the
# person has entered a token (rendering them later would move the controls under the person's pointer).
router = APIRouter(prefix="/v1/model", tags=["model"])


@router.get("", response_model=ModelInfo)
async def model_info(source: ModelInfoDep) -> ModelInfo:
    """The preset this node serves: description, frame size, pixel frames per block, and the prompts its model
    knows (edit name -> prompts, canonical first) or null for an open-vocabulary model."""
    return await source.get()
