"""Messages between the server process and a worker process, pickled through ``multiprocessing`` queues.

Controls (open/close, prompt, params, stop) and block submissions share one ordered queue per worker. The
worker drains every queued message before it starts a block, so a control sent before a block is submitted
is applied before that block: prompt and parameter changes take effect at the next block boundary. Frames
never travel in messages; they stay in the shared-memory slab (:mod:`server.worker.ipc`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from lipar_core.protocol import Transition as Transition  # the editor's: a prompt change passes through


# ---- server → worker -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttachSlab:
    """Attach the shared-memory slab ``name`` holding ``n_slots`` slots of ``slot_frames`` frames."""

    name: str
    n_slots: int
    slot_frames: int


@dataclass(frozen=True)
class OpenSession:
    """Create the session's editor (its KV cache and stream state live in the worker until closed)."""

    session_id: str
    prompt: str
    seed: int = 0
    strength: float | None = None
    steps: int | None = None
    lipar: dict[str, Any] | None = None  # overrides of the preset's LIPAR settings (validated by the API)


@dataclass(frozen=True)
class CloseSession:
    """Drop the session's editor and everything it holds."""

    session_id: str


@dataclass(frozen=True)
class SetPrompt:
    """Change the prompt at the next block boundary (see ``StreamEditor.set_prompt``)."""

    session_id: str
    prompt: str
    transition: Transition = "cut"
    blend_blocks: int = 0
    control_id: int = 0


@dataclass(frozen=True)
class SetParams:
    """Change seed / strength / steps at the next block boundary; ``None`` keeps the current value."""

    session_id: str
    seed: int | None = None
    strength: float | None = None
    steps: int | None = None
    control_id: int = 0


@dataclass(frozen=True)
class SubmitBlock:
    """Slot ``slot`` holds ``n_frames`` input frames ``[T, H, W, 3]`` uint8 RGB for the session's block ``seq``."""

    session_id: str
    seq: int
    slot: int
    n_frames: int


@dataclass(frozen=True)
class Stop:
    """Finish the current block and exit with code 0."""


# ---- worker → server -------------------------------------------------------------------------------------
#: The stages of a worker's start, in order: the process is starting (no message yet), the model is being loaded,
#: the warm-up blocks compile the layer functions and autotune kernels (GPU), the CUDA graphs of every kept-token
#: bucket are captured (GPU), a few blocks are timed to measure the input rate one session sustains, the worker
#: serves. On the CPU a worker goes from loading to measuring to ready.
WarmupStage = Literal["starting", "loading", "compiling", "capturing", "measuring", "ready"]
WARMUP_STAGES: tuple[WarmupStage, ...] = get_args(WarmupStage)


@dataclass(frozen=True)
class WorkerProgress:
    """How far the worker's start has come (sent before :class:`WorkerReady`): ``done`` of ``total`` steps of
    ``stage`` (loading: 0 of 1, then 1 of 1; compiling: warm-up blocks run; capturing: CUDA graphs captured;
    measuring: timed blocks run)."""

    stage: WarmupStage
    done: int
    total: int


@dataclass(frozen=True)
class WorkerReady:
    """The model is loaded; ``frames_per_block``, ``height``, ``width`` describe every block of this worker.

    ``input_fps``: the input frame rate one session's blocks sustain on this worker, measured at warm-up with
    headroom (:func:`server.worker.rate.input_rate`), fps; None when its factory does not measure it.
    """

    pid: int
    frames_per_block: int
    height: int
    width: int
    input_fps: float | None = None


@dataclass(frozen=True)
class BlockDone:
    """Slot ``slot`` now holds ``n_frames`` edited frames ``[T_out, height, width, 3]`` of block ``seq``.

    ``control_id`` is the id of the last control (SetPrompt/SetParams) applied before this block.
    """

    session_id: str
    seq: int
    slot: int
    n_frames: int
    index: int
    ms: dict[str, float] = field(default_factory=dict)
    prune_ratio: float = 0.0
    control_id: int = 0
    mask_grid: tuple[int, ...] | None = (
        None  # (latent frames, grid rows, grid cols) of the block's token mask
    )
    mask_bits: bytes | None = None  # numpy.packbits of the mask in C order (True = recomputed)


@dataclass(frozen=True)
class SessionError:
    """A control or block of one session failed; ``fatal`` means the session cannot go on.

    ``slot`` is the slot of the failed block (to be freed), or -1.
    """

    session_id: str
    message: str
    fatal: bool
    slot: int = -1


@dataclass(frozen=True)
class SlotsFreed:
    """The worker dropped these slots unprocessed (their session was closed); the server may reuse them."""

    session_id: str
    slots: tuple[int, ...]


@dataclass(frozen=True)
class WorkerMemory:
    """The worker's resident size right after returning freed heap memory, between blocks (bytes).

    Sampled when no block is running, so it holds the models, the sessions' state and the allocator's live
    memory but none of a block's temporaries: a leak shows as this number climbing, not as RSS noise.
    """

    settled_rss_bytes: int


@dataclass(frozen=True)
class DeviceMemory:
    """A GPU worker's device memory, bytes (host-side counters and one driver query: no device sync).

    ``allocated``: held by live tensors of this worker; ``reserved``: held by its caching allocator (what the
    process keeps of the card, ``allocated`` included); ``used``: in use on the whole card by every process
    (total minus free, as ``nvidia-smi`` counts it, CUDA contexts included); ``total``: the card's memory.
    """

    allocated: int
    reserved: int
    used: int
    total: int


@dataclass(frozen=True)
class WorkerLoad:
    """How busy the worker was since its previous report; also the worker's heartbeat.

    Sent by the worker's main loop (never by a helper thread) every heartbeat interval (1 s by default, shorter
    for short liveness limits): between blocks, and after idle waits, which never last longer than the
    interval. A worker stuck in one block, a device call or a deadlock stops sending it, and the pool declares a
    ready worker silent beyond ``LIPAR_WORKER_LIVENESS_TIMEOUT_S`` hung (:mod:`server.worker.pool`).

    ``busy_ratio``: the fraction of the ``interval_s`` seconds of wall time the worker was NOT idle-waiting for
    messages (0..1): blocks, controls, copies and their overheads all count as busy. ``blocks``: blocks it
    finished in that interval (delivered or failed). ``memory``: the device memory of a GPU worker at the
    report (None on a CPU).
    """

    busy_ratio: float
    blocks: int
    interval_s: float
    memory: DeviceMemory | None = None


@dataclass(frozen=True)
class WorkerFailed:
    """The worker could not start (e.g. the model failed to load); it exits non-zero after sending this."""

    message: str


ToWorker = AttachSlab | OpenSession | CloseSession | SetPrompt | SetParams | SubmitBlock | Stop
FromWorker = (
    WorkerReady
    | WorkerProgress
    | BlockDone
    | SessionError
    | SlotsFreed
    | WorkerMemory
    | WorkerLoad
    | WorkerFailed
)


def describe(msg: Any) -> str:
    """Short log form of a message."""
    return type(msg).__name__
