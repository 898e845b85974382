"""Per-layer self-attention KV cache: an attention sink plus a rolling window, as a ring buffer.

Layout per layer: K and V of [B, capacity, heads, head_dim] (token-major, like the projections that produce
them, so that writing a block's rows is a plain row copy; attention reads them through a transposed view) with
capacity = (m0 + m1) * tokens_per_frame.
Frame slots 0..m0-1 hold the sink (the first m0 latent frames of the stream, never evicted); slots
m0..m0+m1-1 are a ring holding the last m1 latent frames (which include the current block). A latent frame f
lives in slot f if f < m0, else in slot m0 + (f - m0) mod m1. A new block simply overwrites the slots of the
frames that left the window: nothing is shifted or copied, and since attention is a set operation over keys,
ring order does not matter. The attended keys are always a prefix of the buffer (the sink fills first, then
the ring fills in order until it wraps).

RoPE and the training-length clamp (LIPAR.md §2.7, §8.3). The model was trained on ``train_frames`` (21)
latent frames. The reference clamps a late block's temporal position to train_frames - F.. and rotates every
surviving cached key back by F positions at each eviction. Scores depend only on relative offsets, so here the
window keeps its absolute positions and only the sink moves: sink frame i is placed at position
i + max(0, frame_start + F - train_frames). That re-rotates m0 * tokens_per_frame keys per layer per block
(from an un-rotated copy, so no rounding accumulates) instead of the whole window, and gives every
query-key pair exactly the offset the clamped reference gives.

Host-side bookkeeping only (Python ints): the GPU never has to tell the host anything.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from lipar_core.geometry import StreamGeometry


def write_rows(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.index_copy_(1, index, src)`` for token rows [B, n, ...] moved as 8-byte words where they allow.

    ``index_copy_`` costs per element it moves; a bf16 row of heads x head_dim values moved as int64 words is
    a quarter of the elements (measured: the cache writes were 12 ms of two LIPAR blocks on an H100 as bf16
    elements). Pure data movement, so the result is bit-identical to the plain copy.
    """
    row = src.shape[2:].numel() * src.element_size()
    if src.is_contiguous() and dst.is_contiguous() and row % 8 == 0 and src.dtype == dst.dtype:
        b, n = src.shape[:2]
        dst.view(dst.shape[0], dst.shape[1], -1).view(torch.int64).index_copy_(
            1, index, src.reshape(b, n, -1).view(torch.int64)
        )
    else:
        dst.index_copy_(1, index, src)


@dataclass(frozen=True)
class BlockPlan:
    """Where one block lives in the cache. Computed on the host from the block's first frame.

    Attributes:
        frame_start: absolute index of the block's first latent frame in the stream.
        num_frames: latent frames in the block (F).
        slots: cache frame slot of each block frame.
        valid_frames: attended keys are cache frames [0, valid_frames) (a prefix).
        sink_shift: temporal position offset of the sink frames for this block.
        frame_positions: temporal RoPE position of each block frame (absolute).
    """

    frame_start: int
    num_frames: int
    slots: tuple[int, ...]
    valid_frames: int
    sink_shift: int
    frame_positions: tuple[int, ...]

    @property
    def contiguous(self) -> bool:
        """True when the block's slots are consecutive (one slice write per tensor)."""
        return all(b == a + 1 for a, b in zip(self.slots, self.slots[1:], strict=False))


class KVCache:
    """Self-attention K/V of one stream for every layer.

    Args:
        num_layers: DiT layers.
        heads, head_dim: attention shape.
        geometry: stream geometry (tokens per frame, frames per block).
        sink_frames: m0, frames kept from the start of the stream.
        window_frames: m1, the most recent frames kept (including the current block).
        train_frames: latent frames the model was trained on (RoPE offsets stay below it).
        batch: batch size.
        dtype, device: storage.
    """

    def __init__(
        self,
        num_layers: int,
        heads: int,
        head_dim: int,
        geometry: StreamGeometry,
        sink_frames: int,
        window_frames: int,
        train_frames: int,
        batch: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        f = geometry.token_frames_per_block
        if window_frames < f:
            raise ValueError(f"window_frames ({window_frames}) must be >= frames per block ({f})")
        self.num_layers = num_layers
        self.geometry = geometry
        self.sink_frames = sink_frames
        self.window_frames = window_frames
        self.train_frames = train_frames
        self.tokens_per_frame = geometry.tokens_per_frame
        cap = (sink_frames + window_frames) * self.tokens_per_frame
        self.capacity_tokens = cap
        shape = (batch, cap, heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        sink_shape = (batch, sink_frames * self.tokens_per_frame, heads, head_dim)
        # Un-rotated sink keys, [B, m0 * tokens_per_frame, heads, head_dim], to re-rotate without drift.
        self.sink_k_raw = [torch.zeros(sink_shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.sink_rotated_shift = 0
        # Noise-aware duplication source: un-rotated K and V of the previous block's last frame from its clean
        # t = 0 pass, [B, tokens_per_frame, heads, head_dim] per layer (LIPAR.md §4.3).
        frame_shape = (batch, self.tokens_per_frame, heads, head_dim)
        self.prev_k_raw = [torch.zeros(frame_shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.prev_v = [torch.zeros(frame_shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.has_prev = False
        # Naive pruning only: which cache tokens hold real keys ([capacity] bool).
        self.present = torch.ones(cap, dtype=torch.bool, device=device)
        # The buffers allocated above: the stream's own storage. While the cache is attached to a
        # CacheStage its fields point at the stage's buffers instead (see CacheStage).
        self.own = self.storage()
        self.fresh = True  # ``own`` holds nothing a later block reads (set by reset, cleared by a copy-back)

    def reset(self) -> None:
        """Forget the stream (stale values are never read: validity is tracked on the host)."""
        self.sink_rotated_shift = 0
        self.has_prev = False
        self.present.fill_(True)
        self.fresh = True

    def storage(self) -> CacheStorage:
        """The device buffers the cache's fields point at now."""
        return CacheStorage(
            list(self.k),
            list(self.v),
            list(self.sink_k_raw),
            list(self.prev_k_raw),
            list(self.prev_v),
            self.present,
        )

    def bind(self, st: CacheStorage) -> None:
        """Point the cache's fields at ``st`` (host bookkeeping only; no data moves)."""
        self.k, self.v = list(st.k), list(st.v)
        self.sink_k_raw, self.prev_k_raw, self.prev_v = (
            list(st.sink_k_raw),
            list(st.prev_k_raw),
            list(st.prev_v),
        )
        self.present = st.present

    def slot_of(self, frame: int) -> int:
        """Cache frame slot of absolute latent frame ``frame``."""
        if frame < self.sink_frames:
            return frame
        return self.sink_frames + (frame - self.sink_frames) % self.window_frames

    def plan(self, frame_start: int) -> BlockPlan:
        """Plan the block that starts at latent frame ``frame_start``."""
        f = self.geometry.token_frames_per_block
        end = frame_start + f
        ring = min(self.window_frames, max(0, end - self.sink_frames))
        valid = end if end <= self.sink_frames else self.sink_frames + ring
        return BlockPlan(
            frame_start=frame_start,
            num_frames=f,
            slots=tuple(self.slot_of(frame_start + j) for j in range(f)),
            valid_frames=valid,
            sink_shift=max(0, end - self.train_frames),
            frame_positions=tuple(range(frame_start, end)),
        )

    def token_index(self, plan: BlockPlan, device: torch.device) -> torch.Tensor:
        """Cache token index of every token of the block, [F * tokens_per_frame] int64, (t, h, w) order."""
        tpf = self.tokens_per_frame
        base = torch.tensor([s * tpf for s in plan.slots], dtype=torch.int64, device=device)
        return (base[:, None] + torch.arange(tpf, device=device)[None, :]).reshape(-1)

    def detach_(self) -> None:
        """Drop any autograd history the buffers picked up from a pass run with gradients (training)."""
        for lst in (self.k, self.v, self.sink_k_raw, self.prev_k_raw, self.prev_v):
            for i, t in enumerate(lst):
                lst[i] = t.detach()

    def save_block(self, token_index: torch.Tensor) -> BlockSnapshot:
        """Copy everything a DiT pass over the block at ``token_index`` may write (see :meth:`restore_block`).

        A pass writes only the block's own K/V slots, the duplication source (``prev_k_raw``/``prev_v``), the
        ``present`` flags of the block and ``has_prev``; sink keys change only in a stream's first blocks.
        Costs a copy of those slots (about 1 GB for the 1.3B model at 832x480): for rare events only, such as
        a throwaway warm-up pass before a CUDA-graph capture.
        """
        return BlockSnapshot(
            token_index=token_index,
            k=[k.index_select(1, token_index) for k in self.k],
            v=[v.index_select(1, token_index) for v in self.v],
            prev_k_raw=[p.clone() for p in self.prev_k_raw],
            prev_v=[p.clone() for p in self.prev_v],
            present=self.present.index_select(0, token_index),
            has_prev=self.has_prev,
        )

    def restore_block(self, snap: BlockSnapshot) -> None:
        """Put back what :meth:`save_block` copied."""
        idx = snap.token_index
        for dst, src in zip(self.k + self.v, snap.k + snap.v, strict=True):
            write_rows(dst, idx, src)
        for dst, src in zip(self.prev_k_raw + self.prev_v, snap.prev_k_raw + snap.prev_v, strict=True):
            dst.copy_(src)
        self.present.index_copy_(0, idx, snap.present)
        self.has_prev = snap.has_prev


@dataclass(frozen=True)
class CacheStorage:
    """The device buffers of one KV cache (shapes as in :class:`KVCache`)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    sink_k_raw: list[torch.Tensor]
    prev_k_raw: list[torch.Tensor]
    prev_v: list[torch.Tensor]
    present: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        """Every buffer, in a fixed order."""
        return [*self.k, *self.v, *self.sink_k_raw, *self.prev_k_raw, *self.prev_v, self.present]


class CacheStage:
    """Fixed device buffers that the KV caches of several streams occupy in turn.

    A CUDA graph bakes in the addresses of the cache buffers it reads and writes. So that one set of graphs
    serves every stream of a worker (captured once, at warm-up, never while streaming), the graphs are bound to
    the stage's buffers, and a stream's cache is *attached* to the stage before its block runs: the cache's
    fields then point at the stage buffers, holding its data. Attaching another stream first copies the
    stage's contents back into the previous owner's own buffers (and points it back at them). With one stream,
    or one stream after another without a change of owner, nothing is copied; a change of owner moves one
    cache's worth of data each way (about 3 GB for the 1.3B model at 832x480, a few milliseconds on an H100).

    Copies run on the current CUDA stream, ordered after the previous owner's passes and before the new
    owner's. The stage holds only a weak reference to its owner: a stream that is dropped is never copied back.

    Args:
        like: a cache whose shapes, dtype and device the stage takes (its contents are not copied).
    """

    def __init__(self, like: KVCache) -> None:
        own = like.own
        self.geometry = like.geometry
        self.layout = tuple((tuple(t.shape), t.dtype, t.device) for t in own.tensors())

        def zeros(lst: list[torch.Tensor]) -> list[torch.Tensor]:
            return [torch.zeros_like(t) for t in lst]

        self.buffers = CacheStorage(
            k=zeros(own.k),
            v=zeros(own.v),
            sink_k_raw=zeros(own.sink_k_raw),
            prev_k_raw=zeros(own.prev_k_raw),
            prev_v=zeros(own.prev_v),
            present=torch.ones_like(own.present),
        )
        self._owner: weakref.ref[KVCache] | None = None
        self.switches = 0

    @property
    def owner(self) -> KVCache | None:
        """The cache whose data the stage holds now (None: no one, or it was dropped)."""
        return self._owner() if self._owner is not None else None

    def holds(self, cache: KVCache) -> bool:
        """True when ``cache`` is attached (its fields point at the stage's buffers)."""
        return self.owner is cache and cache.k[0] is self.buffers.k[0]

    def attach(self, cache: KVCache) -> None:
        """Make ``cache`` the stage's owner (see the class docstring); a no-op when it already is.

        Raises:
            ValueError: the cache's buffers differ in shape, dtype or device from the stage's.
        """
        if self.holds(cache):
            return
        layout = tuple((tuple(t.shape), t.dtype, t.device) for t in cache.own.tensors())
        if layout != self.layout:
            raise ValueError(
                "this KV cache does not fit the stage (another geometry, window, dtype or device)"
            )
        prev = self.owner
        if prev is not None and prev is not cache:
            for dst, src in zip(prev.own.tensors(), self.buffers.tensors(), strict=True):
                dst.copy_(src)
            prev.bind(prev.own)
            prev.fresh = False
        if not cache.fresh:
            for dst, src in zip(self.buffers.tensors(), cache.own.tensors(), strict=True):
                dst.copy_(src)
        else:
            self.buffers.present.copy_(cache.own.present)
        cache.bind(self.buffers)
        self._owner = weakref.ref(cache)
        self.switches += 1

    def detach(self, cache: KVCache) -> None:
        """Copy ``cache``'s data back into its own buffers and leave the stage empty (no-op if not attached)."""
        if not self.holds(cache):
            return
        for dst, src in zip(cache.own.tensors(), self.buffers.tensors(), strict=True):
            dst.copy_(src)
        cache.bind(cache.own)
        cache.fresh = False
        self._owner = None


@dataclass
class BlockSnapshot:
    """A block's cache state saved by :meth:`KVCache.save_block`."""

    token_index: torch.Tensor
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    prev_k_raw: list[torch.Tensor]
    prev_v: list[torch.Tensor]
    present: torch.Tensor
    has_prev: bool
