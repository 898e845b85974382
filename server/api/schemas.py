"""Pydantic schemas of the REST API v1. OpenAPI (``/openapi.json``) is generated from these and is the contract.

Ranges follow ``lipar_core.editor.StreamEditor``: ``strength`` in (0, 1], ``steps`` in [1, 8], ``blend_blocks``
in [0, 64]. The prompt length limit is a setting (``LIPAR_MAX_PROMPT_CHARS``) checked by the route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from lipar_core.lipar.config import LiparConfig, MaskSource

SessionState = Literal["created", "connecting", "streaming", "closed", "failed"]
TERMINAL_STATES: frozenset[str] = frozenset({"closed", "failed"})

Prompt = Annotated[
    str, Field(min_length=1, max_length=100_000, description="what the video should look like")
]
Seed = Annotated[int, Field(ge=0, lt=2**63, description="noise seed")]
Strength = Annotated[float, Field(gt=0.0, le=1.0, description="edit strength: first denoising step / 1000")]
Steps = Annotated[int, Field(ge=1, le=8, description="denoising steps per block")]
BlendBlocks = Annotated[
    int, Field(ge=0, le=64, description="smooth only: blocks to interpolate the prompt over")
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class SessionCreate(_In):
    """``POST /v1/sessions``: start a session. It waits for a WebRTC offer at ``offer_url``."""

    prompt: Prompt
    seed: Seed = 0
    strength: Strength | None = Field(default=None, description="default: the preset's (0.4)")
    steps: Steps | None = Field(default=None, description="default: the preset's (3)")
    lipar: LiparSettings | None = Field(default=None, description="LIPAR overrides; default: the preset's")


class SessionPatch(_In):
    """``PATCH /v1/sessions/{id}``: change the prompt or parameters mid-stream.

    Applied by the worker at the next block boundary. ``transition`` says how a prompt change is applied:

    - ``cut``: the stream restarts with the new prompt (KV cache and autoencoder state reset);
    - ``smooth``: the self-attention KV cache is kept and only the text conditioning switches; with
      ``blend_blocks`` = N > 0 the prompt embedding is interpolated from the old to the new prompt over N blocks.
    """

    prompt: Prompt | None = None
    transition: Literal["cut", "smooth"] = "cut"
    blend_blocks: BlendBlocks = 0
    seed: Seed | None = None
    strength: Strength | None = None
    steps: Steps | None = None

    @model_validator(mode="after")
    def _something(self) -> SessionPatch:
        if self.prompt is None and self.seed is None and self.strength is None and self.steps is None:
            raise ValueError("nothing to change: give prompt, seed, strength or steps")
        if self.blend_blocks and self.transition != "smooth":
            raise ValueError("blend_blocks needs transition 'smooth'")
        return self


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
    state: SessionState = "created"


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
    transition: Literal["cut", "smooth"] = "cut"
    blend_blocks: int = 0
    last_error: str | None = Field(default=None, description="last rejected change, if any")
    created_at: float
    updated_at: float
    stats: SessionStats = SessionStats()


class SessionList(BaseModel):
    """``GET /v1/sessions``."""

    sessions: list[Session]


class ModelInfo(BaseModel):
    """``GET /v1/model``: the preset this node serves, its stream size and, for a model trained on a fixed set of
    prompts (a bundle), the prompts it knows."""

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


class ErrorBody(BaseModel):
    """Every error: ``{"error": {"code": ..., "message": ...}}`` with the HTTP status."""

    code: str
    message: str
    details: list[dict[str, object]] | None = None


class ErrorResponse(BaseModel):
    """The error envelope."""

    error: ErrorBody


class Health(BaseModel):
    """``/healthz`` and ``/readyz``."""

    status: Literal["ok", "unavailable"]
    node_id: str
    checks: dict[str, object] = Field(default_factory=dict)
