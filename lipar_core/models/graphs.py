"""CUDA graphs for the DiT passes of one stream.

In eager mode a pass launches a few thousand small kernels from Python; at pruned token counts the launch
overhead, not the GPU, sets the time (measured on an H200: a 10 %-kept pass took 35 ms eager against 67 ms
unpruned). :class:`GraphedDiT` captures one CUDA graph per (kept-token bucket, pass kind) and replays it.

What a graph bakes in, and how it is kept valid:

- Tensors it reads are static buffers owned here, refreshed by copies before each replay: the input latents,
  the block's RoPE tables and cache token indices, the kept-token indices of the bucket, the block token mask,
  and the prompt's cross-attention K/V (copied only when the prompt changes).
- Host decisions it bakes: the attended prefix length (part of the graph key, so blocks before the ring is
  full get their own graphs), whether the block holds sink frames (such blocks, the stream's first, run
  eagerly), the kind of pass and its timesteps (part of the key).
- The stream's KV cache has fixed addresses for the stream's lifetime, so graphs stay bound to it.

Graphs stay valid across a stream reset (same buffers; eligibility is checked per pass).
All graphs of a stream share one memory pool (its passes run one after another on one stream); the pool
lives as long as the stream's runner (a pool shared across runners breaks when one runner's graphs are all
freed: the allocator then retires the pool while its handle is still in use).
Graph replay computes exactly what the eager pass computes (the same kernels on the same data).
With compiled layer functions (``CausalWanDiT.use_compiled_layers``) every capture is preceded by the same
pass run eagerly, so that compilation and autotuning never happen inside capture; the block's cache state is
saved before and restored after it (``KVCache.save_block``), so the warm-up leaves no trace.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from lipar_core.lipar.prune import KeepSet
from lipar_core.models.kv_cache import KVCache
from lipar_core.models.transformer import BlockContext, CausalWanDiT, CrossKV

log = logging.getLogger(__name__)


class GraphedDiT:
    """Per-stream CUDA-graph runner around :meth:`CausalWanDiT.forward_block` (same signature and results).

    Args:
        dit: the shared model.
        cache: the stream's KV cache (graphs are bound to its buffers).
        max_graphs: captured graphs kept at most (oldest dropped first).
    """

    def __init__(self, dit: CausalWanDiT, cache: KVCache, max_graphs: int = 256) -> None:
        self.dit = dit
        self.cache = cache
        self.device = cache.k[0].device
        self.max_graphs = max_graphs
        geo = cache.geometry
        n = geo.tokens_per_block
        half = dit.head_dim // 2
        dt = cache.k[0].dtype
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
        self._cross: CrossKV | None = None
        self._cross_src: CrossKV | None = None
        # key -> (graph, its output, tensors it reads that must outlive it)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self._warm = False
        self._pool: Any = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
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

    def _eligible(self, ctx: BlockContext, keep: KeepSet | None, timesteps: Sequence[float]) -> bool:
        if self.device.type != "cuda":
            return False
        in_sink = ctx.plan.frame_start < self.cache.sink_frames
        uniform = all(t == timesteps[0] for t in timesteps)
        empty = keep is not None and keep.n_keep == 0
        return not in_sink and uniform and not empty

    def forward_block(
        self,
        x: torch.Tensor,
        timesteps: Sequence[float],
        cross: CrossKV,
        ctx: BlockContext,
        keep: KeepSet | None = None,
        recovery: str = "full",
        memory: bool = False,
        prefill: bool = False,
    ) -> torch.Tensor:
        """:meth:`CausalWanDiT.forward_block` on this stream's cache, replayed from a CUDA graph when possible."""
        if keep is not None and keep.full:
            keep = None
        if not self._eligible(ctx, keep, timesteps):
            return self.dit.forward_block(
                x, timesteps, self.cache, cross, ctx, keep, recovery, memory, prefill
            )
        n_pad = keep.n_pad if keep is not None else 0
        ts = tuple(float(t) for t in timesteps)
        key = (n_pad, recovery if keep is not None else "", memory, prefill, ts, ctx.plan.valid_frames)
        # Refresh the static inputs.
        self._x.copy_(x)
        self._cos.copy_(ctx.cos)
        self._sin.copy_(ctx.sin)
        self._token_index.copy_(ctx.token_index)
        static_keep = None
        if keep is not None:
            idx = self._idx.get(n_pad)
            if idx is None:
                idx = self._idx[n_pad] = torch.zeros(n_pad, dtype=torch.int64, device=self.device)
            idx.copy_(keep.idx)
            self._mask.copy_(keep.mask)
            static_keep = KeepSet(mask=self._mask, idx=idx, n_keep=keep.n_keep, n_total=keep.n_total)
        scross = self._static_cross(cross)
        sctx = replace(
            ctx,
            cos=self._cos,
            sin=self._sin,
            token_index=self._token_index,
            frame_of_token=self._frame_of_token,
            index_writes=True,
        )
        hit = self._graphs.get(key)
        if hit is None:
            hit = self._capture(key, ts, scross, sctx, static_keep, recovery, memory, prefill)
        graph, out, _ = hit
        graph.replay()
        self.replays += 1
        if memory:
            self.cache.has_prev = True
        return out.clone()

    def _run_aside(
        self,
        ts: tuple[float, ...],
        cross: CrossKV,
        ctx: BlockContext,
        keep: KeepSet | None,
        recovery: str,
        memory: bool,
        prefill: bool,
    ) -> None:
        """One eager pass on a side stream (as capture wants its warm-up), ordered with the current stream."""
        cur = torch.cuda.current_stream(self.device)
        s = torch.cuda.Stream(self.device)
        s.wait_stream(cur)
        with torch.cuda.stream(s):
            self.dit.forward_block(self._x, ts, self.cache, cross, ctx, keep, recovery, memory, prefill)
        cur.wait_stream(s)

    def _capture(
        self,
        key: tuple,
        ts: tuple[float, ...],
        cross: CrossKV,
        ctx: BlockContext,
        keep: KeepSet | None,
        recovery: str,
        memory: bool,
        prefill: bool,
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]:
        temb = self.dit._time_embed(ts, self._x)  # outside the graph; kept alive with it below
        if self.dit.ops.compiled:
            # Compiled layer functions may compile or autotune on a new input shape or kind, which must not
            # happen inside capture: run this exact pass once first, then put the cache back as it was.
            snap = self.cache.save_block(ctx.token_index)
            self._run_aside(ts, cross, ctx, keep, recovery, memory, prefill)
            self.cache.restore_block(snap)
            del snap
            self._warm = True
        elif not self._warm:
            # Lazy initialisation (cuBLAS workspaces, kernels) outside capture, with an idempotent pass:
            # a denoising pass without prefill only rewrites the block's own kept K/V with the same values.
            self._run_aside(ts, cross, ctx, keep, recovery, False, False)
            self._warm = True
        if len(self._graphs) >= self.max_graphs:
            self._graphs.pop(next(iter(self._graphs)))
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self._pool):
            out = self.dit.forward_block(self._x, ts, self.cache, cross, ctx, keep, recovery, memory, prefill)
        self._graphs[key] = (g, out, temb)
        self.captures += 1
        log.debug("captured DiT graph %s (%d graphs)", key, len(self._graphs))
        return self._graphs[key]
