"""Model info v1: ``GET /v1/model``, the preset this node serves, the valid ranges of the session parameters and
the prompts its model knows; ``POST /v1/model/match``, how the model understands one prompt.

The answer is read once per process (:class:`ModelInfoSource`), except ``input_fps``, which the workers measure at
their warm-up and the route reads from the pool on every request. The app starts the read in a background thread
when it starts (for a bundle preset, reading the vocabulary imports :mod:`lipar_core.presets`, a few seconds,
so the event loop and ``/healthz`` never wait for it) and every request awaits that one result. A bundle that
is missing or unreadable is logged as a warning and reported as ``prompts: null`` (and a match ``known: null``);
the server still starts.

A prompt is matched by the bundle's own :class:`lipar_core.text.style_encoder.StyleTextEncoder` (its
``match``, the rule the worker's encoder applies to every prompt), read from the bundle without the model.
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
from lipar_core.text.style_encoder import StyleTextEncoder
from server.api.deps import ManagerDep
from server.api.schemas import ErrorResponse, ModelInfo, ParamLimits, PromptMatch, PromptQuery

log = logging.getLogger("server.model")


class PromptMatcher:
    """How the served model understands a prompt (:class:`PromptMatch`); thread-safe, no model needed.

    Args:
        encoder: a fixed-vocabulary model's prompt encoder, or None.
        open_vocabulary: the model takes any prompt (umT5); else, with ``encoder`` None, its vocabulary could not
            be read and every answer is ``known: null``.
    """

    def __init__(self, encoder: StyleTextEncoder | None, open_vocabulary: bool) -> None:
        self.encoder = encoder
        self.open_vocabulary = open_vocabulary

    def match(self, prompt: str) -> PromptMatch:
        """The match of one prompt (~0.1 ms per 100 characters on the CPU: hashing and one small product)."""
        if self.open_vocabulary:
            return PromptMatch(known=True, open_vocabulary=True)
        if self.encoder is None:
            return PromptMatch(known=None)
        m = self.encoder.match(prompt)
        score = round(min(max(m.score, 0.0), 1.0), 4)
        if not m.known:
            return PromptMatch(known=False, score=score)
        return PromptMatch(
            known=True, edit=m.style, canonical=self.encoder.vocabulary[m.style][0], score=score
        )


def _read_style_encoder(path: str) -> StyleTextEncoder:
    """A bundle's prompt encoder alone (its ``text.*`` tensors and metadata; the model is not built)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith("text.")}  # noqa: SIM118 (not a mapping)
    return StyleTextEncoder.from_state(tensors, meta)


def read_model(config: str, limits: ParamLimits) -> tuple[ModelInfo, PromptMatcher]:
    """The model info of a preset (name or YAML path) and its prompt matcher, from its configuration and bundle
    metadata (no model is loaded; the model code is imported only for a bundle). ``limits`` (the app's, for the
    same preset) give the ranges. Failing to read a bundle's prompt vocabulary is logged as a warning and gives
    ``prompts=None`` and a matcher that answers ``known: null``.

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
    encoder: StyleTextEncoder | None = None
    if cfg.model.bundle is not None:  # else an open-vocabulary model: any prompt
        try:
            from lipar_core.presets import bundle_path, known_prompts

            prompts = known_prompts(cfg)
            encoder = _read_style_encoder(str(bundle_path(cfg.model.bundle)))
        except Exception as e:  # missing bundle, not a bundle, unreadable file: the server runs on regardless
            prompts = None
            log.warning(
                "cannot read the prompts the model of preset %s knows (%s); /v1/model reports none", config, e
            )
    info = ModelInfo(
        preset=config,
        description=cfg.description,
        width=geometry.width,
        height=geometry.height,
        frames_per_block=geometry.pixel_frames_per_block,
        strength=cfg.scheduler.denoising_steps[0] / cfg.scheduler.num_train_timesteps,
        steps=len(cfg.scheduler.denoising_steps),
        prompts=prompts,
        ranges=limits.ranges(),
    )
    return info, PromptMatcher(encoder, open_vocabulary=cfg.model.bundle is None)


def read_model_info(config: str, limits: ParamLimits) -> ModelInfo:
    """The model info alone (:func:`read_model`)."""
    return read_model(config, limits)[0]


class ModelInfoSource:
    """:func:`read_model` of one preset, computed once in a background thread and shared by every request
    (independent of the event loop)."""

    def __init__(self, config: str, limits: ParamLimits) -> None:
        self.config = config
        self.limits = limits
        self._future: concurrent.futures.Future[tuple[ModelInfo, PromptMatcher]] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Begin reading (idempotent): the app calls this when it starts, :meth:`get` if it did not."""
        with self._lock:
            if self._future is not None:
                return
            fut: concurrent.futures.Future[tuple[ModelInfo, PromptMatcher]] = concurrent.futures.Future()
            fut.set_running_or_notify_cancel()  # a request that goes away cannot cancel the shared read
            self._future = fut
        threading.Thread(target=self._read, args=(fut,), name="model-info", daemon=True).start()

    def _read(self, fut: concurrent.futures.Future[tuple[ModelInfo, PromptMatcher]]) -> None:
        try:
            fut.set_result(read_model(self.config, self.limits))
        except BaseException as e:
            log.exception("cannot read the model info of preset %s", self.config)
            fut.set_exception(e)

    async def get(self) -> ModelInfo:
        """The model info (waits for the read the first time)."""
        return (await self._get())[0]

    async def matcher(self) -> PromptMatcher:
        """The prompt matcher (waits for the read the first time)."""
        return (await self._get())[1]

    async def _get(self) -> tuple[ModelInfo, PromptMatcher]:
        self.start()
        assert self._future is not None
        # shielded: a request that is cancelled (its client left) must not cancel the read the others share
        return await asyncio.shield(asyncio.wrap_future(self._future))


def get_model_info_source(request: Request) -> ModelInfoSource:
    """The app's model info source."""
    source: ModelInfoSource = request.app.state.model_info
    return source


ModelInfoDep = Annotated[ModelInfoSource, Depends(get_model_info_source)]

# Public like /healthz: what the node serves is no secret, and the page lists the known prompts before the
# person has entered a token (rendering them later would move the controls under the person's pointer).
router = APIRouter(prefix="/v1/model", tags=["model"])


@router.get("", response_model=ModelInfo)
async def model_info(source: ModelInfoDep, manager: ManagerDep) -> ModelInfo:
    """The preset this node serves: description, frame size, pixel frames per block, the valid ranges of the
    session parameters (``ranges``), the prompts its model knows (edit name -> prompts, canonical first) or null
    for an open-vocabulary model, and ``input_fps``, the camera rate one session sustains (measured at the workers'
    warm-up; null before)."""
    info = await source.get()
    return info.model_copy(update={"input_fps": manager.pool.input_fps})


@router.post(
    "/match",
    response_model=PromptMatch,
    responses={
        400: {"model": ErrorResponse, "description": "the body is not JSON"},
        413: {"model": ErrorResponse, "description": "body over LIPAR_MAX_BODY_BYTES"},
        422: {
            "model": ErrorResponse,
            "description": "no prompt, a blank one, or one over LIPAR_MAX_PROMPT_CHARS",
        },
    },
)
async def match_prompt(body: PromptQuery, source: ModelInfoDep) -> PromptMatch:
    """Whether the served model knows a prompt: for a fixed-vocabulary model, ``known`` and the ``edit`` it selects
    with that edit's ``canonical`` prompt (an unknown prompt passes the video through unchanged); an
    open-vocabulary model knows every prompt (``open_vocabulary: true``). Public, like ``GET /v1/model``."""
    source.limits.check_prompt(body.prompt)
    return (await source.matcher()).match(body.prompt)
