"""CUDA graphs for the DiT passes, shared by every stream of a worker.

In eager mode a pass launches a few thousand small kernels from Python; at pruned token counts the launch
overhead, not the GPU, sets the time (measured on an H200: a 10 %-kept pass took 35 ms eager against 67 ms
unpruned). :class:`GraphedDiT` captures one CUDA graph per (kept-token bucket, pass kind, attended prefix) and
replays it.

What a graph bakes in, and how it is kept valid:

- Tensors it reads are static buffers owned here, refreshed by copies before each replay: the input latents,
  the block's RoPE tables and cache token indices, the kept-token indices of the bucket, the block token mask,
  the time embedding and modulation of the pass's timestep (so one graph serves every timestep, strength and
  step count), and the prompt's cross-attention K/V (copied only when the prompt, or the stream, changes).
- The KV cache: graphs are bound to the buffers of a :class:`~lipar_core.models.kv_cache.CacheStage`, and
  each stream's cache is attached to the stage before its block runs. So all streams of a worker share one set
  of graphs: a new session, a new prune rate or a new strength never captures while streaming once
  :meth:`GraphedDiT.prepare` has captured every bucket at warm-up.
- Host decisions it bakes: the attended prefix length (part of the graph key, so blocks before the ring is
  full get their own graphs), the block's first frame when it holds sink frames (a stream's first block writes
  its un-rotated sink keys: the start is part of the key, so that block has graphs of its own and a new
  session's first block replays too), whether the pass is uniform over frames (only uniform passes are
  graphed) and the kind of pass.

All graphs share one memory pool (passes run one after another on one stream, and every output is cloned
right after its replay). Graph replay computes exactly what the eager pass computes (the same kernels on the
same data). With compiled layer functions (``CausalWanDiT.use_compiled_layers``) every capture is preceded by
the same pass run eagerly, so that compilation and autotuning never happen inside capture; the block's cache
state is saved before and restored after it (``KVCache.save_block``), so the warm-up leaves no trace.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from lipar_core.lipar.prune import KeepSet
from lipar_core.models.kv_cache import CacheStage, KVCache
from lipar_core.models.transformer import BlockContext, CausalWanDiT, CrossKV

log = logging.getLogger(__name__)


class GraphedDiT:
    """CUDA-graph runner around :meth:`CausalWanDiT.forward_block` (same results), shared by the streams whose
    caches attach to its stage.

    Args:
        dit: the shared model.
        stage: the cache stage the graphs are bound to (streams attach their caches to it before a block).
        max_graphs: captured graphs kept at most (oldest dropped first).
    """

    def __init__(self, dit: CausalWanDiT, stage: CacheStage, max_graphs: int = 1024) -> None:
        self.dit = dit
        self.stage = stage
        self.device = stage.buffers.k[0].device
        self.max_graphs = max_graphs
        geo = stage.geometry
        n = geo.tokens_per_block
        half = dit.head_dim // 2
        dt = stage.buffers.k[0].dtype
        f = geo.latent_frames_per_block
        self._x = torch.zeros(
            1, f, dit.in_channels, geo.latent_height, geo.latent_width, device=self.device, dtype=dt
        )
        self._cos = torch.zeros(n, 1, half, device=self.device)
        self._sin = torch.zeros(n, 1, half, device=self.device)
        self._token_index = torch.zeros(n, dtype=torch.int64, device=self.device)
        self._frame_of_token = torch.arange(geo.token_frames_per_block, device=self.device).repeat_interleave(
            geo.tokens_per_frame
        )
        self._mask = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._idx: dict[int, torch.Tensor] = {}
        self._temb: tuple[torch.Tensor, torch.Tensor] | None = None  # (temb [F, dim], mod [F, 6, dim])
        self._cross: CrossKV | None = None
        self._cross_src: CrossKV | None = None
        # key -> (graph, its output)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._warm = False
        self._pool: Any = None
        # Captures run on a stream of this runner's own: torch.cuda.graph's default capture stream is made once
        # per process on whatever device was current then, so a process with runners on two GPUs would capture
        # one of them on the other GPU's stream.
        self._capture_stream: torch.cuda.Stream | None = None
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                self._pool = torch.cuda.graph_pool_handle()
            self._capture_stream = torch.cuda.Stream(self.device)
        self.replays = 0
        self.captures = 0

    def _static_cross(self, cross: CrossKV) -> CrossKV:
        if self._cross is None:
            self._cross = CrossKV([k.clone() for k in cross.k], [v.clone() for v in cross.v])
        elif cross is not self._cross_src:
            for dst, src in zip(self._cross.k + self._cross.v, cross.k + cross.v, strict=True):
                dst.copy_(src)
        self._cross_src = cross
        return self._cross

    def _static_temb(self, ts: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        temb, mod = self.dit._time_embed(ts, self._x)
        if self._temb is None or self._temb[0].shape != temb.shape:
            self._temb = (temb.clone(), mod.clone())
        else:
            self._temb[0].copy_(temb)
            self._temb[1].copy_(mod)
        return self._temb

    def _eligible(
        self, cache: KVCache, ctx: BlockContext, keep: KeepSet | None, timesteps: Sequence[float]
    ) -> bool:
        if self.device.type != "cuda":
            return False
        uniform = all(t == timesteps[0] for t in timesteps)
        empty = keep is not None and keep.n_keep == 0
        return uniform and not empty

    @staticmethod
    def key(
        keep: KeepSet | None, recovery: str, memory: bool, prefill: bool, cache: KVCache, ctx: BlockContext
    ) -> tuple:
        """The graph a pass replays: (bucket, recovery, clean pass, first pass, attended frames, sink start); an
        unpruned pass is the same whatever its recovery or prefill flag. ``sink start`` is the block's first
        frame when the block holds sink frames (the frames whose raw keys it writes), else -1."""
        plan = ctx.plan
        sink_start = plan.frame_start if plan.frame_start < cache.sink_frames else -1
        if keep is None:
            return (0, "", memory, False, plan.valid_frames, sink_start)
        return (keep.n_pad, recovery, memory, prefill, plan.valid_frames, sink_start)

    def forward_block(
        self,
        x: torch.Tensor,
        timesteps: Sequence[float],
        cache: KVCache,
        cross: CrossKV,
        ctx: BlockContext,
        keep: KeepSet | None = None,
        recovery: str = "full",
        memory: bool = False,
        prefill: bool = False,
    ) -> torch.Tensor:
        """:meth:`CausalWanDiT.forward_block` on ``cache`` (attached to the stage), from a CUDA graph when
        possible."""
        if keep is not None and keep.full:
            keep = None
        if not self._eligible(cache, ctx, keep, timesteps):
            return self.dit.forward_block(x, timesteps, cache, cross, ctx, keep, recovery, memory, prefill)
        if not self.stage.holds(cache):
            raise RuntimeError("attach the stream's cache to the stage (CacheStage.attach) before its block")
        key = self.key(keep, recovery, memory, prefill, cache, ctx)
        ts = tuple(float(t) for t in timesteps)
        static = self._refresh(x, ts, cross, ctx, keep)
        hit = self._graphs.get(key)
        if hit is None:
            hit = self._capture(key, cache, ts, *static, recovery, memory, prefill)
        graph, out = hit
        graph.replay()
        self.replays += 1
        if memory:
            cache.has_prev = True
        return out.clone()

    def _refresh(
        self, x: torch.Tensor, ts: tuple[float, ...], cross: CrossKV, ctx: BlockContext, keep: KeepSet | None
    ) -> tuple[CrossKV, BlockContext, KeepSet | None, tuple[torch.Tensor, torch.Tensor]]:
        """Copy a pass's inputs into the static buffers; returns what the graphs read instead."""
        self._x.copy_(x)
        self._cos.copy_(ctx.cos)
        self._sin.copy_(ctx.sin)
        self._token_index.copy_(ctx.token_index)
        static_keep = None
        if keep is not None:
            n_pad = keep.n_pad
            idx = self._idx.get(n_pad)
            if idx is None:
                idx = self._idx[n_pad] = torch.zeros(n_pad, dtype=torch.int64, device=self.device)
            idx.copy_(keep.idx)
            self._mask.copy_(keep.mask)
            static_keep = KeepSet(mask=self._mask, idx=idx, n_keep=keep.n_keep, n_total=keep.n_total)
        sctx = replace(
            ctx,
            cos=self._cos,
            sin=self._sin,
            token_index=self._token_index,
            frame_of_token=self._frame_of_token,
            index_writes=True,
        )
        return self._static_cross(cross), sctx, static_keep, self._static_temb(ts)

    def prepare(
        self,
        cache: KVCache,
        cross: CrossKV,
        ctx: BlockContext,
        keep: KeepSet | None,
        recovery: str,
        memory: bool,
        prefill: bool,
        timestep: float,
    ) -> bool:
        """Capture the graph of one pass kind without replaying it (warm-up); False if it is there already.

        ``cache`` must be attached to the stage; its contents may be garbage (nothing is replayed), but the
        eager pass before a capture needs ``cache.has_prev`` for ``full`` recovery's first pruned pass.
        """
        if keep is not None and keep.full:
            keep = None
        key = self.key(keep, recovery, memory, prefill, cache, ctx)
        if key in self._graphs:
            return False
        if not self.stage.holds(cache):
            raise RuntimeError("attach the stream's cache to the stage (CacheStage.attach) before preparing")
        ts = (float(timestep),) * ctx.plan.num_frames
        x = torch.zeros_like(self._x)
        self._capture(key, cache, ts, *self._refresh(x, ts, cross, ctx, keep), recovery, memory, prefill)
        return True

    @property
    def graphs(self) -> int:
        """Graphs captured and kept now."""
        return len(self._graphs)

    def _run_aside(
        self,
        cache: KVCache,
        ts: tuple[float, ...],
        cross: CrossKV,
        ctx: BlockContext,
        keep: KeepSet | None,
        temb: tuple[torch.Tensor, torch.Tensor],
        recovery: str,
        memory: bool,
        prefill: bool,
    ) -> None:
        """One eager pass on a side stream (as capture wants its warm-up), ordered with the current stream."""
        cur = torch.cuda.current_stream(self.device)
        s = torch.cuda.Stream(self.device)
        s.wait_stream(cur)
        with torch.cuda.stream(s):
            self.dit.forward_block(
                self._x, ts, cache, cross, ctx, keep, recovery, memory, prefill, time_embedding=temb
            )
        cur.wait_stream(s)

    def _capture(
        self,
        key: tuple,
        cache: KVCache,
        ts: tuple[float, ...],
        cross: CrossKV,
        ctx: BlockContext,
        keep: KeepSet | None,
        temb: tuple[torch.Tensor, torch.Tensor],
        recovery: str,
        memory: bool,
        prefill: bool,
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        if self.dit.ops.compiled:
            # Compiled layer functions may compile or autotune on a new input shape or kind, which must not
            # happen inside capture: run this exact pass once first, then put the cache back as it was.
            snap = cache.save_block(ctx.token_index)
            has_prev = cache.has_prev
            self._run_aside(cache, ts, cross, ctx, keep, temb, recovery, memory, prefill)
            cache.restore_block(snap)
            cache.has_prev = has_prev
            del snap
            self._warm = True
        elif not self._warm:
            # Lazy initialisation (cuBLAS workspaces, kernels) outside capture, with an idempotent pass:
            # a denoising pass without prefill only rewrites the block's own kept K/V with the same values.
            self._run_aside(cache, ts, cross, ctx, keep, temb, recovery, False, False)
            self._warm = True
        if len(self._graphs) >= self.max_graphs:
            self._graphs.pop(next(iter(self._graphs)))
        g = torch.cuda.CUDAGraph()
        has_prev = cache.has_prev
        # on this runner's device and stream, whatever the current device is (cuDNN refuses to run a capture
        # on another device's stream)
        with (
            torch.cuda.device(self.device),
            torch.cuda.graph(g, pool=self._pool, stream=self._capture_stream),
        ):
            out = self.dit.forward_block(
                self._x, ts, cache, cross, ctx, keep, recovery, memory, prefill, time_embedding=temb
            )
        cache.has_prev = has_prev  # capture runs nothing: the host flag must not move either
        self._graphs[key] = (g, out)
        self.captures += 1
        log.debug("captured DiT graph %s (%d graphs)", key, len(self._graphs))
        return self._graphs[key]
