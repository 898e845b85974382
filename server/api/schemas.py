"""Pydantic schemas of the REST API v1. OpenAPI (``/openapi.json``) is generated from these and is the contract.

Ranges follow ``lipar_core.editor.StreamEditor``: ``strength`` in (0, 1], ``steps`` in [1, 8], ``blend_blocks``
in [0, 64]; the constants below (:data:`STRENGTH_MAX`, :data:`STEPS_MIN` ...) are the one copy of them in the server,
used by the fields and by ``GET /v1/model``'s ``ranges`` (:meth:`ParamLimits.ranges`). The prompt length limit is a
setting (``LIPAR_MAX_PROMPT_CHARS``) checked by the route.

Request bodies are strict (pydantic strict mode): no lax coercion, so ``"12"`` is not a seed and ``true`` is not a
number of steps; unknown fields are refused. An integer field takes what JSON Schema calls an integer (``3`` or
``3.0``, not ``3.5``). A prompt must not be blank (the editor's own rule, ``str.strip``).
What a JSON Schema cannot say, :class:`ParamLimits` checks against the served preset before anything reaches a
worker: whether a strength leaves room for the number of steps (``lipar_core.scheduler.make_step_list``, the
function the editor itself calls; for a PATCH merged with the session's current values) and whether LIPAR
overrides make a valid ``LiparConfig`` with the preset's settings. So a worker never rejects what the API
accepted.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from lipar_core.lipar.config import LiparConfig, MaskSource
from lipar_core.protocol import MAX_BLEND_BLOCKS, MAX_PROMPT_CHARS, MAX_STEPS
from server.sessions.types import CREATED, CUT, SMOOTH, SessionChange, SessionSpec, SessionState, Transition

#: Every character ``str.strip`` removes (``str.isspace``). A prompt of only these is blank; the JSON Schema says
#: so with a pattern ("some character outside this set") that matches exactly what :func:`_not_blank` accepts.
_WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
NOT_BLANK_PATTERN = "[^" + "".join(f"\\u{ord(c):04x}" for c in _WHITESPACE) + "]"


def _not_blank(prompt: str) -> str:
    """The editor's rule (``StreamEditor._check_prompt``): a prompt with nothing but whitespace is refused."""
    if not prompt.strip():
        raise ValueError("must not be blank (it has only whitespace)")
    return prompt


Prompt = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="what the video should look like (not blank; at most LIPAR_MAX_PROMPT_CHARS characters)",
        json_schema_extra={"pattern": NOT_BLANK_PATTERN},
    ),
    AfterValidator(_not_blank),
]


def _integral(value: Any) -> Any:
    """JSON Schema's ``integer``: a number without a fractional part, so ``3.0`` is 3. Anything else goes to
    strict validation unchanged: booleans, strings and ``3.5`` are refused, and so is a float too large to
    hold its integer exactly (beyond 2**53)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


Integral = BeforeValidator(_integral)

#: The limits of the session parameters (the editor's: ``make_step_list`` and ``StreamEditor.set_prompt``; a test
#: checks they agree). Strength is exclusive of :data:`STRENGTH_EXCLUSIVE_MIN`.
STRENGTH_EXCLUSIVE_MIN = 0.0
STRENGTH_MAX = 1.0
STEPS_MIN = 1
STEPS_MAX = MAX_STEPS
BLEND_BLOCKS_MIN = 0
BLEND_BLOCKS_MAX = MAX_BLEND_BLOCKS

Seed = Annotated[int, Integral, Field(ge=0, lt=2**63, description="noise seed")]
Strength = Annotated[
    float,
    Field(
        gt=STRENGTH_EXCLUSIVE_MIN, le=STRENGTH_MAX, description="edit strength: first denoising step / 1000"
    ),
]
Steps = Annotated[int, Integral, Field(ge=STEPS_MIN, le=STEPS_MAX, description="denoising steps per block")]
BlendBlocks = Annotated[
    int,
    Integral,
    Field(
        ge=BLEND_BLOCKS_MIN,
        le=BLEND_BLOCKS_MAX,
        description="smooth only: blocks to interpolate the prompt over",
    ),
]


class _In(BaseModel):
    """A request body: strict types (no coercion from strings or booleans), no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _LiparOverrides(_In):
    """Per-session overrides of the preset's LIPAR settings. Unset fields keep the preset's value."""

    def overrides(self) -> dict[str, Any]:
        """The fields that were given."""
        return self.model_dump(exclude_none=True)


#: The LIPAR knobs a session may override. The others (``m``, ``bucket``, ``dilation``) shape the worker's caches
#: and CUDA graphs; ``mask_source`` cannot be ``external`` (a WebRTC session has no mask track).
SESSION_LIPAR_KNOBS = (
    "enabled",
    "tau",
    "tau2",
    "tau_pixel",
    "floor",
    "floor_pixel",
    "min_keep_ratio",
    "mask_source",
    "recovery",
)
SESSION_MASK_SOURCES = tuple(s for s in get_args(MaskSource) if s != "external")


def _lipar_overrides_model() -> type[_LiparOverrides]:
    """The overrides model, derived from :class:`lipar_core.lipar.config.LiparConfig`: each knob's type, bounds
    and description, made optional (no second copy of the bounds)."""
    fields: dict[str, Any] = {}
    for name in SESSION_LIPAR_KNOBS:
        f = LiparConfig.model_fields[name]
        kind: Any = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        if name == "mask_source":
            kind = Literal[SESSION_MASK_SOURCES]
        fields[name] = (kind | None, Field(default=None, description=f.description))
    return create_model("LiparSettings", __base__=_LiparOverrides, __doc__=_LiparOverrides.__doc__, **fields)


if TYPE_CHECKING:
    LiparSettings = _LiparOverrides
else:
    LiparSettings = _lipar_overrides_model()


_RECORD = (
    "write the edited video to an mp4 on the session's node (GET /v1/sessions/{id}/recordings): true starts a "
    "recording (at creation: from the first frame), false stops and finalises it"
)
_RECORD_KEEP = "the session's recordings survive its deletion (otherwise DELETE of the session removes them)"


class SessionCreate(_In):
    """``POST /v1/sessions``: start a session. It waits for a WebRTC offer at ``offer_url``."""

    prompt: Prompt
    seed: Seed = 0
    strength: Strength | None = Field(default=None, description="default: the preset's (0.4)")
    steps: Steps | None = Field(default=None, description="default: the preset's (3)")
    lipar: LiparSettings | None = Field(default=None, description="LIPAR overrides; default: the preset's")
    record: bool = Field(default=False, description=_RECORD)
    record_keep: bool = Field(default=False, description=_RECORD_KEEP)

    def to_spec(self) -> SessionSpec:
        """What the session layer creates the session with."""
        lipar = self.lipar.overrides() if self.lipar is not None else None
        return SessionSpec(
            self.prompt, self.seed, self.strength, self.steps, lipar, self.record, self.record_keep
        )


class SessionPatch(_In):
    """``PATCH /v1/sessions/{id}``: change the prompt or parameters mid-stream.

    Applied by the worker at the next block boundary. ``transition`` says how a prompt change is applied:

    - ``cut``: the stream restarts with the new prompt (KV cache and autoencoder state reset);
    - ``smooth``: the self-attention KV cache is kept and only the text conditioning switches; with
      ``blend_blocks`` = N > 0 the prompt embedding is interpolated from the old to the new prompt over N blocks.
    """

    # The two rules of the validator below, in the JSON Schema too (so schema-driven clients know them).
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        {"required": [f], "properties": {f: {"not": {"type": "null"}}}}
                        for f in ("prompt", "seed", "strength", "steps", "record", "record_keep")
                    ]
                },
                {
                    "anyOf": [
                        {"not": {"required": ["blend_blocks"]}},
                        {"properties": {"blend_blocks": {"const": 0}}},
                        {"required": ["transition"], "properties": {"transition": {"const": SMOOTH}}},
                    ]
                },
            ]
        }
    )

    prompt: Prompt | None = None
    transition: Transition = CUT
    blend_blocks: BlendBlocks = 0
    seed: Seed | None = None
    strength: Strength | None = None
    steps: Steps | None = None
    record: bool | None = Field(default=None, description=_RECORD)
    record_keep: bool | None = Field(default=None, description=_RECORD_KEEP)

    @model_validator(mode="after")
    def _something(self) -> SessionPatch:
        given = (self.prompt, self.seed, self.strength, self.steps, self.record, self.record_keep)
        if all(v is None for v in given):
            raise ValueError("nothing to change: give prompt, seed, strength, steps, record or record_keep")
        if self.blend_blocks and self.transition != SMOOTH:
            raise ValueError("blend_blocks needs transition 'smooth'")
        return self

    def to_change(self) -> SessionChange:
        """What the session layer applies: the fields the client gave (unset ones are ``None``, so the record
        keeps its ``transition`` and ``blend_blocks`` unless the client gave them)."""
        return SessionChange(**self.model_dump(exclude_unset=True))


class SdpOffer(_In):
    """``POST /v1/sessions/{id}/offer``: the browser's SDP offer (one sendrecv video m-line)."""

    sdp: str = Field(min_length=1)
    type: Literal["offer"] = "offer"


class SdpAnswer(BaseModel):
    """The server's SDP answer."""

    sdp: str
    type: Literal["answer"] = "answer"


class Percentiles(BaseModel):
    """Latency percentiles in milliseconds over the last few hundred frames."""

    p50: float | None = None
    p95: float | None = None


class BlockTimes(BaseModel):
    """Model time per block of a session (``stage_ms.total`` of each block, ms): the first block (which pays
    for a fresh stream) and, over the later ones, the median (of the last few thousand) and the slowest: a
    ``max_after_first`` far above ``p50`` is a stall."""

    first: float | None = None
    p50: float | None = None
    max_after_first: float | None = None
    slowest: dict[str, float | int] | None = Field(
        default=None, description="the slowest block after the first: its number (1-based) and prune ratio"
    )
    n: int = Field(default=0, description="blocks finished")


class BlockMask(BaseModel):
    """The last block's LIPAR token mask, for a heat map: ``grid`` = [latent frames, rows, cols] (one token is
    16x16 pixels with the Wan autoencoder and patch); ``bits`` = base64 of numpy.packbits of the flattened
    boolean mask in C order (True = recomputed, False = copied from the previous frame)."""

    grid: list[int]
    bits: str


class SessionStats(BaseModel):
    """Live statistics of a session (owner node, refreshed about twice a second).

    ``latency_ms`` is capture-to-send on the server: from an input frame decoded to its edited frame handed to
    the encoder. ``fps_out`` counts edited frames handed to the encoder per second (over the last 3 s).
    ``stage_ms`` are the last block's model timings (encode, mask, dit, decode, total).
    """

    fps_in: float = 0.0
    fps_out: float = 0.0
    latency_ms: Percentiles = Percentiles()
    stage_ms: dict[str, float] = Field(default_factory=dict)
    block_ms: BlockTimes = BlockTimes()
    prune_ratio: float | None = None
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    blocks_out: int = 0
    queue_in: int = Field(default=0, description="frames waiting in the inbound ring")
    queue_out: int = Field(default=0, description="edited frames waiting to be sent")
    active_prompt: str | None = Field(default=None, description="prompt of the last block sent")
    prompt_applied_at_block: int | None = Field(
        default=None, description="blocks_out when the last prompt change took effect"
    )
    prompt_applied_pts: int | None = Field(
        default=None,
        description="pts of the first input frame of the first block made with the newest applied prompt "
        "change, as received by the server (rebased RTP timestamp, 90 kHz units); null until a prompt change "
        "has been applied. Output frames with this pts or later show the new prompt",
    )
    mask: BlockMask | None = Field(default=None, description="tokens LIPAR recomputed in the last block")
    state: SessionState = CREATED


class Session(BaseModel):
    """A session as the API returns it."""

    id: str
    state: SessionState
    reason: str | None = Field(default=None, description="why the session failed or closed")
    node_id: str
    offer_url: str
    prompt: str
    seed: int
    strength: float | None = None
    steps: int | None = None
    lipar: dict[str, Any] | None = Field(default=None, description="LIPAR overrides given at creation")
    transition: Transition = CUT
    blend_blocks: int = 0
    last_error: str | None = Field(default=None, description="last rejected change, if any")
    record: bool = Field(
        default=False, description="a recording is being written now (it stops at the size limit)"
    )
    record_keep: bool = Field(default=False, description=_RECORD_KEEP)
    prompt_match: PromptMatch | None = Field(
        default=None, description="how the served model understands `prompt` (see POST /v1/model/match)"
    )
    viewer_url: str | None = Field(
        default=None,
        description="the session's read-only viewer page on its node (add #token=<token> when the server has "
        "one); it works as an OBS browser source",
    )
    created_at: float
    updated_at: float
    stats: SessionStats = SessionStats()


class SessionList(BaseModel):
    """``GET /v1/sessions``."""

    sessions: list[Session]


class Recording(BaseModel):
    """A server-side recording of a session's edited video (an mp4 on the session's node)."""

    name: str = Field(description="file name, generated by the server (rec-NNN-<UTC time>.mp4)")
    state: Literal["recording", "done", "truncated", "failed"] = Field(
        description="recording: being written (not downloadable yet); done: stopped; truncated: stopped at the "
        "size limit (LIPAR_RECORDING_MAX_MB), complete and playable; failed: an encoder or disk error, or the "
        "server stopped while writing (the file may not play)"
    )
    bytes: int = Field(description="file size, bytes (while recording: written so far)")
    frames: int = Field(description="video frames in the file")
    duration_s: float = Field(description="duration, s (the frames keep the input's timing)")
    created_at: float = Field(description="start of the recording, Unix time (s)")
    keep: bool = Field(description="survives the deletion of the session")
    frames_dropped: int = Field(description="edited frames not recorded (the encoder fell behind)")
    codec: str = Field(description="video codec: h264 (or mpeg4 where the server has no H.264 encoder)")
    width: int = Field(description="frame width, pixels")
    height: int = Field(description="frame height, pixels")
    error: str | None = Field(default=None, description="why a failed recording failed")
    url: str = Field(description="download path (GET, video/mp4)")


class RecordingList(BaseModel):
    """``GET /v1/sessions/{id}/recordings``: oldest first."""

    recordings: list[Recording]


class StrengthRange(BaseModel):
    """Valid and recommended edit strengths (first denoising step / ``num_train_timesteps``) on this preset."""

    min: float = Field(
        description="the lowest distinct strength: one training timestep (1 / num_train_timesteps); the API "
        "accepts any strength above 0, a smaller one gives the same first step"
    )
    max: float = Field(description="the highest strength the API accepts")
    default: float = Field(
        description="the preset's strength (its first denoising step / num_train_timesteps)"
    )
    recommended_min: float = Field(
        description="the lowest strength the model is known to edit well at (the preset's scheduler."
        "recommended_strength; without one, min)"
    )
    recommended_max: float = Field(description="the highest such strength (without one, max)")
    min_by_steps: dict[int, float] = Field(
        description="number of steps -> the lowest strength accepted with it (each step needs a distinct "
        "step value, so more steps need a higher strength)"
    )


class StepsRange(BaseModel):
    """Valid denoising steps per block, and the preset's."""

    min: int
    max: int
    default: int = Field(description="the preset's number of denoising steps")


class IntRange(BaseModel):
    """An inclusive integer range."""

    min: int
    max: int


class ModelRanges(BaseModel):
    """What the session parameters may be on this node: the API's own limits (the constants of
    :mod:`server.api.schemas`, ``LIPAR_MAX_PROMPT_CHARS``) and the preset's defaults and recommendation."""

    strength: StrengthRange
    steps: StepsRange
    blend_blocks: IntRange = Field(description="PATCH blend_blocks (with transition smooth)")
    prompt_max_chars: int = Field(description="the longest prompt accepted (LIPAR_MAX_PROMPT_CHARS)")


class PromptMatch(BaseModel):
    """How the served model understands a prompt.

    A fixed-vocabulary model (a bundle such as the demo ``tiny``): ``known`` says whether the prompt selects one of
    its edits (``edit``, with that edit's ``canonical`` prompt and the match ``score`` in [0, 1]); an unknown prompt
    passes the video through unchanged. An open-vocabulary model (umT5): ``known`` is true and ``open_vocabulary``
    true, any prompt is understood. ``known`` is null when the model's vocabulary could not be read.
    """

    known: bool | None
    open_vocabulary: bool = False
    edit: str | None = Field(
        default=None, description="the edit the prompt selects (fixed vocabulary, known)"
    )
    canonical: str | None = Field(default=None, description="that edit's canonical prompt")
    score: float | None = Field(default=None, description="similarity to the nearest known prompt, 0..1")


class PromptQuery(_In):
    """``POST /v1/model/match``: a prompt to look up in the served model's vocabulary."""

    prompt: Prompt


class ModelInfo(BaseModel):
    """``GET /v1/model``: the preset this node serves, its stream size, the valid ranges of the session
    parameters and, for a model trained on a fixed set of prompts (a bundle), the prompts it knows."""

    preset: str = Field(description="LIPAR_CONFIG: a preset name or a YAML preset path")
    description: str = Field(description="the preset's description")
    width: int = Field(description="model frame width (pixels)")
    height: int = Field(description="model frame height (pixels)")
    frames_per_block: int = Field(description="pixel frames consumed and produced per block")
    strength: float = Field(
        description="the preset's default edit strength (first denoising step / 1000); the page starts with it"
    )
    steps: int = Field(description="the preset's default number of denoising steps")
    prompts: dict[str, list[str]] | None = Field(
        description="edit name -> the prompts the model was trained on, canonical first; null for an "
        "open-vocabulary model (any prompt) or when the vocabulary could not be read"
    )
    ranges: ModelRanges = Field(description="valid (and recommended) values of the session parameters")
    input_fps: float | None = Field(
        default=None,
        description="the camera frame rate to send, fps: the input rate ONE session's blocks sustain on this "
        "node, measured at each worker's warm-up (pixel frames per block / seconds per block of a few steady "
        "blocks, times 0.9 headroom, between 5 and 30), the minimum over the workers; null until a worker has "
        "measured it (warming up). A faster camera only makes the server decode frames it drops; sessions "
        "sharing a worker each get less.",
    )


class ErrorBody(BaseModel):
    """Every error: ``{"error": {"code": ..., "message": ...}}`` with the HTTP status."""

    code: str
    message: str
    details: list[dict[str, object]] | None = None


class ErrorResponse(BaseModel):
    """The error envelope."""

    error: ErrorBody


class WarmupProgress(BaseModel):
    """How far the workers' start has come (``/readyz``, for everyone: no pids, no errors)."""

    stage: Literal["starting", "loading", "compiling", "capturing", "measuring", "ready"] = Field(
        description="the least advanced worker's stage: starting (process starting), loading (the model), "
        "compiling (warm-up blocks, GPU), capturing (CUDA graphs, GPU), measuring (timed blocks: the input "
        "rate, GET /v1/model input_fps), ready"
    )
    done: int = Field(description="steps of that stage done (that worker's)")
    total: int = Field(description="steps of that stage (0: not known yet)")
    fraction: float = Field(
        description="the workers' start done on average, 0..1 (a guide for a bar, not a time)"
    )


class Health(BaseModel):
    """``/healthz`` and ``/readyz``."""

    status: Literal["ok", "unavailable"]
    node_id: str
    checks: dict[str, object] = Field(default_factory=dict)
    progress: WarmupProgress | None = Field(
        default=None, description="/readyz only: the workers' warm-up (public, with or without the token)"
    )


# ---- limits that depend on the served preset (checked by the routes before a worker sees the request) ---------


def _invalid(errors: list[tuple[tuple[str | int, ...], str]]) -> RequestValidationError:
    """A 422 like schema validation's: each error names its field (``loc`` under the body)."""
    return RequestValidationError(
        [{"loc": ("body", *loc), "msg": msg, "type": "value_error"} for loc, msg in errors]
    )


@dataclass(frozen=True)
class ParamLimits:
    """The limits of a session's parameters that no JSON Schema can state, for one preset.

    They are the worker's own checks, made in the server process first, with the same functions:
    ``lipar_core.scheduler.make_step_list`` (strength and steps become the step list; too low a strength for
    the number of steps has no distinct step values) plus the editor's step-list rule, ``LiparConfig`` validated
    over the preset's LIPAR settings, and the editor's attention-sink rule. A request that passes them is one
    the worker applies; one that fails is a 422 naming the field, and nothing is sent to a worker.
    """

    num_train_timesteps: int
    default_steps: tuple[int, ...]
    lipar: Mapping[str, Any]
    sink_frames: int
    token_frames_per_block: int
    max_prompt_chars: int
    recording_enabled: bool = True
    recommended_strength: tuple[float, float] | None = None

    @classmethod
    def for_preset(cls, config: str, max_prompt_chars: int, recording_enabled: bool = True) -> ParamLimits:
        """The limits of a preset (a name or a YAML path; read and validated, no model is loaded); with
        ``recording_enabled`` false, ``record: true`` is refused."""
        from lipar_core.config import PresetConfig, preset_path
        from lipar_core.geometry import StreamGeometry

        cfg = PresetConfig.from_yaml(preset_path(config))
        geometry = StreamGeometry(
            height=cfg.stream.height,
            width=cfg.stream.width,
            latent_frames_per_block=cfg.stream.latent_frames_per_block,
        )
        return cls(
            num_train_timesteps=cfg.scheduler.num_train_timesteps,
            default_steps=tuple(cfg.scheduler.denoising_steps),
            lipar=dict(cfg.lipar),
            sink_frames=cfg.stream.sink_frames,
            token_frames_per_block=geometry.token_frames_per_block,
            max_prompt_chars=max_prompt_chars,
            recommended_strength=cfg.scheduler.recommended_strength,
            recording_enabled=recording_enabled,
        )

    @property
    def default_strength(self) -> float:
        """The preset's strength: its first denoising step over the number of training timesteps."""
        return self.default_steps[0] / self.num_train_timesteps

    def ranges(self) -> ModelRanges:
        """The valid ranges of the session parameters on this preset, from the field limits above, the prompt
        setting and the preset (``GET /v1/model``). ``min_by_steps[k]`` is the lowest strength from which every
        strength up to the maximum passes :meth:`step_list` (the check requests go through) with ``k`` steps;
        found by trying each first-step value from the top down (~60 ms for 1000 timesteps: call it once)."""
        n = self.num_train_timesteps
        min_by_steps: dict[int, float] = {}
        for k in range(STEPS_MIN, STEPS_MAX + 1):
            lowest: int | None = None
            for first in range(round(STRENGTH_MAX * n), 0, -1):
                try:
                    self.step_list(first / n, k)
                except ValueError:
                    break
                lowest = first
            if lowest is not None:
                min_by_steps[k] = lowest / n
        lo, hi = self.recommended_strength or (1 / n, STRENGTH_MAX)
        return ModelRanges(
            strength=StrengthRange(
                min=1 / n,
                max=STRENGTH_MAX,
                default=self.default_strength,
                recommended_min=lo,
                recommended_max=hi,
                min_by_steps=min_by_steps,
            ),
            steps=StepsRange(min=STEPS_MIN, max=STEPS_MAX, default=len(self.default_steps)),
            blend_blocks=IntRange(min=BLEND_BLOCKS_MIN, max=BLEND_BLOCKS_MAX),
            prompt_max_chars=self.max_prompt_chars,
        )

    def step_list(self, strength: float, steps: int) -> list[int]:
        """The denoising step values the editor would make of ``strength`` and ``steps`` (its
        ``set_params``: ``make_step_list``, then its step-list rule). Raises ValueError as the editor does."""
        from lipar_core.scheduler import make_step_list

        n = self.num_train_timesteps
        values = make_step_list(strength, steps, n)
        if any(not 1 <= v <= n for v in values) or any(a <= b for a, b in itertools.pairwise(values)):
            raise ValueError(f"steps must be strictly decreasing values in [1, {n}], got {values}")
        return values

    def _prompt(self, prompt: str | None) -> list[tuple[tuple[str | int, ...], str]]:
        if prompt is not None and len(prompt) > self.max_prompt_chars:
            return [(("prompt",), f"{len(prompt)} characters is over the limit of {self.max_prompt_chars}")]
        return []

    def _steps(
        self, strength: float | None, steps: int | None, current: Mapping[str, Any] | None = None
    ) -> list[tuple[tuple[str | int, ...], str]]:
        """Check ``strength`` and ``steps`` together; a missing one is the session's current value (``current``,
        a session record) or the preset's, as the worker fills it in."""
        if strength is None and steps is None:
            return []  # the worker keeps its step list
        cur = current or {}
        s = strength if strength is not None else cur.get("strength")
        k = steps if steps is not None else cur.get("steps")
        s = float(s) if s is not None else self.default_strength
        k = int(k) if k is not None else len(self.default_steps)
        try:
            self.step_list(s, k)
        except ValueError as e:
            field = "strength" if strength is not None else "steps"
            return [((field,), f"{e} (strength {s:g} with {k} steps: raise the strength or use fewer steps)")]
        return []

    def _lipar(self, overrides: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        try:
            merged = LiparConfig.model_validate({**self.lipar, **overrides})
        except ValidationError as e:
            return [(("lipar", *err["loc"]), err["msg"]) for err in e.errors()]
        sink = merged.m[0] if merged.m is not None else self.sink_frames
        if merged.enabled and sink > self.token_frames_per_block:  # StreamEditor's rule
            return [
                (
                    ("lipar", "enabled"),
                    f"with LIPAR the attention sink ({sink} frames) must fit in the first block "
                    f"({self.token_frames_per_block} frames) of this preset",
                )
            ]
        return []

    def check_prompt(self, prompt: str) -> None:
        """Raise a 422 when ``prompt`` is over ``LIPAR_MAX_PROMPT_CHARS``."""
        errors = self._prompt(prompt)
        if errors:
            raise _invalid(errors)

    def _record(self, record: bool | None) -> list[tuple[tuple[str | int, ...], str]]:
        if record and not self.recording_enabled:
            return [(("record",), "recording is disabled on this server (LIPAR_RECORDING_ENABLED=false)")]
        return []

    def check_create(self, body: SessionCreate) -> None:
        """Raise a 422 (:class:`RequestValidationError`) when the worker would refuse to open this session (or
        it asks for a recording where recording is disabled)."""
        errors = (
            self._prompt(body.prompt) + self._steps(body.strength, body.steps) + self._record(body.record)
        )
        if body.lipar is not None:
            errors += self._lipar(body.lipar.overrides())
        if errors:
            raise _invalid(errors)

    def check_patch(self, body: SessionPatch, current: Mapping[str, Any]) -> None:
        """Raise a 422 when the worker would reject this change of the session ``current`` (its record: the
        values it runs with, ``None`` meaning the preset's)."""
        errors = self._prompt(body.prompt) + self._steps(body.strength, body.steps, current)
        errors += self._record(body.record)
        if errors:
            raise _invalid(errors)
