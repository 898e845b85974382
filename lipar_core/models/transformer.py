"""The Self-Forcing causal DiT: diffusers' ``WanTransformer3DModel`` weights, our own per-block forward.

``CausalWanDiT`` keeps diffusers' modules (so published weights load unchanged) and runs them block by
block: each call processes one block of F latent frames, writes the block's keys and values into the
stream's :class:`~lipar_core.models.kv_cache.KVCache`, and attends over the sink plus the rolling window
(block-causal: a block sees itself and earlier frames, never later ones). Cross-attention K/V are computed once
per prompt (:meth:`CausalWanDiT.text_kv`). Timesteps are per latent frame.

Tokens are ordered (t, h, w) as in diffusers. Every size comes from the model config and the stream geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

from lipar_core.geometry import StreamGeometry
from lipar_core.lipar.prune import KeepSet
from lipar_core.lipar.recovery import cascade_fill, repeat_frames, scatter_kept
from lipar_core.models.kv_cache import BlockPlan, KVCache
from lipar_core.models.layer_ops import LayerOps, layer_consts, layer_weights
from lipar_core.models.rope import Rope3D, apply_rope


@dataclass
class CrossKV:
    """Cross-attention keys and values of one prompt, per layer: each [B, heads, text_len, head_dim]."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]


@dataclass
class BlockContext:
    """Everything shared by all passes of one block (computed once per block by :meth:`begin_block`).

    Attributes:
        plan: cache placement of the block.
        cos, sin: RoPE tables of the block's tokens, each [F * tokens_per_frame, 1, head_dim // 2] float32.
        token_index: cache token index of each block token, [F * tokens_per_frame] int64.
        frame_of_token: latent frame (0..F-1) of each block token, [F * tokens_per_frame] int64.
        index_writes: write K/V through ``token_index`` even where the slots are contiguous (CUDA graphs: the
            positions must live in a device tensor, not in Python slice bounds).
    """

    plan: BlockPlan
    cos: torch.Tensor
    sin: torch.Tensor
    token_index: torch.Tensor
    frame_of_token: torch.Tensor
    index_writes: bool = False


class CausalWanDiT(torch.nn.Module):
    """Block-causal streaming forward over a ``WanTransformer3DModel``.

    Args:
        wan: the diffusers transformer (weights as published, or random for tests).
    """

    def __init__(self, wan: WanTransformer3DModel) -> None:
        super().__init__()
        self.wan = wan
        cfg = wan.config
        self.heads: int = cfg.num_attention_heads
        self.head_dim: int = cfg.attention_head_dim
        self.dim: int = self.heads * self.head_dim
        self.patch: tuple[int, int, int] = tuple(cfg.patch_size)  # type: ignore[assignment]
        self.in_channels: int = cfg.in_channels
        self.out_channels: int = cfg.out_channels or cfg.in_channels
        self.num_layers: int = cfg.num_layers
        self.rope = Rope3D(self.head_dim)
        self._consts = layer_consts(wan.blocks[0], self.heads)
        self.ops = LayerOps.eager()
        self._temb_cache: dict[tuple[float, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def use_compiled_layers(self, enabled: bool = True) -> None:
        """Run each layer's elementwise work through ``torch.compile`` d functions (see ``layer_ops``).

        Meant for CUDA: compilation happens on the first pass of each kind (seconds), and CUDA-graph capture
        must come after it (``GraphedDiT`` warms up before capturing).
        """
        if enabled:
            # a few variants per function (per-frame vs uniform modulation, views vs fresh tensors): room for
            # them all, so that none falls back to eager for lack of cache entries
            dyn = torch._dynamo.config
            dyn.recompile_limit = max(dyn.recompile_limit, 32)
        self.ops = LayerOps.compiled_ops() if enabled else LayerOps.eager()

    # ------------------------------------------------------------------ per stream / per prompt
    def new_cache(
        self,
        geometry: StreamGeometry,
        sink_frames: int,
        window_frames: int,
        train_frames: int,
        batch: int = 1,
    ) -> KVCache:
        """An empty KV cache for one stream, on the model's device and dtype."""
        p = next(self.wan.blocks[0].attn1.to_k.parameters())
        return KVCache(
            self.num_layers,
            self.heads,
            self.head_dim,
            geometry,
            sink_frames,
            window_frames,
            train_frames,
            batch=batch,
            dtype=p.dtype,
            device=p.device,
        )

    @torch.no_grad()
    def text_kv(self, text_embeddings: torch.Tensor) -> CrossKV:
        """Project a prompt embedding once and compute every layer's cross-attention K and V.

        No autograd; :meth:`text_kv_trainable` is the same with gradients (training).

        Args:
            text_embeddings: [B, L, text_dim] umT5 output (padding zeroed).
        Returns:
            CrossKV with per-layer [B, heads, L, head_dim] tensors.
        """
        return self.text_kv_trainable(text_embeddings)

    def text_kv_trainable(self, text_embeddings: torch.Tensor) -> CrossKV:
        """:meth:`text_kv` with autograd as the caller's mode has it (training)."""
        ce = self.wan.condition_embedder
        p = next(ce.text_embedder.parameters())
        ctx = ce.text_embedder(text_embeddings.to(device=p.device, dtype=p.dtype))
        ks, vs = [], []
        for block in self.wan.blocks:
            a = block.attn2
            k = a.norm_k(a.to_k(ctx)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
            v = a.to_v(ctx).unflatten(-1, (self.heads, -1)).transpose(1, 2)
            ks.append(k.contiguous())
            vs.append(v.contiguous())
        return CrossKV(ks, vs)

    def _time_embed(
        self, timesteps: tuple[float, ...], like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(temb [F, dim], modulation [F, 6, dim]) for per-frame timesteps, cached per tuple of values."""
        if torch.is_grad_enabled():  # training: the embedder learns, nothing cached
            return self._compute_time_embed(timesteps, like)
        key = timesteps
        hit = self._temb_cache.get(key)
        if hit is not None and hit[0].device == like.device and hit[0].dtype == like.dtype:
            return hit
        temb, mod = self._compute_time_embed(timesteps, like)
        if len(self._temb_cache) > 64:
            self._temb_cache.clear()
        self._temb_cache[key] = (temb, mod)
        return temb, mod

    def _compute_time_embed(
        self, timesteps: tuple[float, ...], like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ce = self.wan.condition_embedder
        t = torch.tensor(timesteps, dtype=torch.float32, device=like.device)
        proj = ce.timesteps_proj(t)
        te_param = next(ce.time_embedder.parameters())
        temb = ce.time_embedder(proj.to(te_param.dtype)).type_as(like)
        mod = ce.time_proj(ce.act_fn(temb)).unflatten(-1, (6, self.dim))
        return temb, mod

    # ------------------------------------------------------------------ per block
    @torch.no_grad()
    def begin_block(self, cache: KVCache, frame_start: int) -> BlockContext:
        """Plan the block that starts at latent frame ``frame_start``; re-rotate the sink if its offset moved.

        Called once per block before its passes. Host work is integer arithmetic only.
        """
        plan = cache.plan(frame_start)
        geo = cache.geometry
        gh, gw = geo.token_grid
        dev = cache.k[0].device
        pos = torch.arange(plan.frame_positions[0], plan.frame_positions[-1] + 1, device=dev)
        cos, sin = self.rope.grid_tables(pos, gh, gw)
        tpf = geo.tokens_per_frame
        # Re-rotate the sink to its offset for this block (only once the sink is complete and in use).
        if (
            cache.sink_frames
            and frame_start >= cache.sink_frames
            and plan.sink_shift != cache.sink_rotated_shift
        ):
            spos = torch.arange(cache.sink_frames, device=dev) + plan.sink_shift
            scos, ssin = self.rope.grid_tables(spos, gh, gw)
            n = cache.sink_frames * tpf
            for layer in range(cache.num_layers):
                rot = apply_rope(cache.sink_k_raw[layer], scos, ssin)
                cache.k[layer][:, :, :n].copy_(rot.transpose(1, 2))
            cache.sink_rotated_shift = plan.sink_shift
        frame_of_token = torch.arange(plan.num_frames, device=dev).repeat_interleave(tpf)
        return BlockContext(plan, cos, sin, cache.token_index(plan, dev), frame_of_token)

    def _modulation(
        self, table: torch.Tensor, mod: torch.Tensor, uniform: bool, frame_idx: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-token modulation [1, N or 1, k, dim] (float32) from a [1, k, dim] table and [F, k, dim] values."""
        if uniform:
            return (table.float() + mod[:1].float()).unsqueeze(0)
        assert frame_idx is not None
        return (table.float() + mod.float().index_select(0, frame_idx)).unsqueeze(0)

    def _write_kv(
        self, cache: KVCache, layer: int, ctx: BlockContext, k_rot: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Write the block's rotated keys and values (all block tokens, [B, N, H, D]) into the cache."""
        plan = ctx.plan
        tpf = cache.tokens_per_frame
        kt = k_rot.transpose(1, 2)
        vt = v.transpose(1, 2)
        if plan.contiguous and not ctx.index_writes:
            a = plan.slots[0] * tpf
            b = a + plan.num_frames * tpf
            cache.k[layer][:, :, a:b].copy_(kt)
            cache.v[layer][:, :, a:b].copy_(vt)
        else:
            cache.k[layer].index_copy_(2, ctx.token_index, kt)
            cache.v[layer].index_copy_(2, ctx.token_index, vt)

    def _write_sink_raw(self, cache: KVCache, layer: int, ctx: BlockContext, k_raw: torch.Tensor) -> None:
        """Keep un-rotated keys of block frames that belong to the sink."""
        tpf = cache.tokens_per_frame
        for j, f in enumerate(range(ctx.plan.frame_start, ctx.plan.frame_start + ctx.plan.num_frames)):
            if f < cache.sink_frames:
                cache.sink_k_raw[layer][:, f * tpf : (f + 1) * tpf].copy_(k_raw[:, j * tpf : (j + 1) * tpf])

    def _self_attention_kv(
        self,
        cache: KVCache,
        layer: int,
        ctx: BlockContext,
        k: torch.Tensor,
        v: torch.Tensor,
        keep: KeepSet | None,
        recovery: str,
        memory: bool,
        prefill: bool,
    ) -> None:
        """Write this pass's keys/values of the block into the cache (un-rotated ``k``, [B, n, H, D]).

        Unpruned: every token. Pruned (``keep``): kept tokens; pruned positions per ``recovery``:
        ``full`` pre-fills them once per block from the previous block's clean last frame (rotated to their own
        positions) and the clean t = 0 pass cascades from the true predecessor; ``m_degree`` cascades from the
        current pass; ``none`` leaves them out of attention (``cache.present``).
        """
        f = ctx.plan.num_frames
        if keep is None:
            if ctx.plan.frame_start < cache.sink_frames:
                self._write_sink_raw(cache, layer, ctx, k)
            self._write_kv(cache, layer, ctx, self.ops.rope(k, ctx.cos, ctx.sin), v)
            if memory:
                cache.prev_k_raw[layer].copy_(k[:, -cache.tokens_per_frame :])
                cache.prev_v[layer].copy_(v[:, -cache.tokens_per_frame :])
            return
        n = keep.n_total
        if recovery == "none":
            if keep.n_keep:
                kr = self.ops.rope(k, ctx.cos.index_select(0, keep.idx), ctx.sin.index_select(0, keep.idx))
                cidx = ctx.token_index.index_select(0, keep.idx)
                cache.k[layer].index_copy_(2, cidx, kr.transpose(1, 2))
                cache.v[layer].index_copy_(2, cidx, v.transpose(1, 2))
            if memory:
                kf = cascade_fill(scatter_kept(k, keep.idx, n), keep.mask, cache.prev_k_raw[layer], f)
                vf = cascade_fill(scatter_kept(v, keep.idx, n), keep.mask, cache.prev_v[layer], f)
                cache.prev_k_raw[layer].copy_(kf[:, -cache.tokens_per_frame :])
                cache.prev_v[layer].copy_(vf[:, -cache.tokens_per_frame :])
            return
        prev_k = cache.prev_k_raw[layer] if cache.has_prev else None
        prev_v = cache.prev_v[layer] if cache.has_prev else None
        if recovery == "full" and not memory:
            if prefill:
                if prev_k is None or prev_v is None:
                    raise RuntimeError(
                        "noise-aware duplication needs a previous clean frame (first block pruned?)"
                    )
                dk = self.ops.rope(repeat_frames(prev_k, f), ctx.cos, ctx.sin)
                self._write_kv(cache, layer, ctx, dk, repeat_frames(prev_v, f))
            if keep.n_keep:
                kr = self.ops.rope(k, ctx.cos.index_select(0, keep.idx), ctx.sin.index_select(0, keep.idx))
                cidx = ctx.token_index.index_select(0, keep.idx)
                cache.k[layer].index_copy_(2, cidx, kr.transpose(1, 2))
                cache.v[layer].index_copy_(2, cidx, v.transpose(1, 2))
            return
        # m_degree passes, and the clean t = 0 pass of m_degree / full: cascade from the true predecessor.
        kf = cascade_fill(scatter_kept(k, keep.idx, n), keep.mask, prev_k, f)
        vf = cascade_fill(scatter_kept(v, keep.idx, n), keep.mask, prev_v, f)
        self._write_kv(cache, layer, ctx, self.ops.rope(kf, ctx.cos, ctx.sin), vf)
        if memory:
            cache.prev_k_raw[layer].copy_(kf[:, -cache.tokens_per_frame :])
            cache.prev_v[layer].copy_(vf[:, -cache.tokens_per_frame :])

    def forward_block_trainable(
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
        """One DiT pass over one block; writes the block's K/V into the cache.

        Call it for every denoising pass of a block and for the clean t = 0 pass (``memory=True``): each call
        overwrites the block's slots, so the cache ends up holding the clean pass, as Self-Forcing does.
        Autograd follows the caller's mode (training learns through one pass; the cache then carries that
        pass's graph until :meth:`KVCache.detach_`); :meth:`forward_block` is this under ``torch.no_grad()``,
        what inference calls.

        Args:
            x: latents [B, F, C, h, w] (model dtype), F = frames per block.
            timesteps: per-frame timesteps (len F), 0..1000, host floats.
            cache: the stream's KV cache.
            cross: the prompt's cross-attention K/V.
            ctx: :meth:`begin_block` of this block.
            keep: LIPAR token pruning (batch 1): only ``keep.idx`` tokens run through the blocks; None = all.
            recovery: ``none`` | ``m_degree`` | ``full`` (see :meth:`_self_attention_kv`).
            memory: this is the clean t = 0 pass (stores the duplication source for the next block).
            prefill: the block's first denoising pass (``full`` recovery pre-fills pruned K/V once).
        Returns:
            flow prediction [B, F, C_out, h, w]; zero at pruned positions.
        """
        wan = self.wan
        b, f, _c, h, w = x.shape
        pt, ph, pw = self.patch
        if f != ctx.plan.num_frames * pt:
            raise ValueError(f"block has {f} latent frames, the cache plans {ctx.plan.num_frames * pt}")
        if len(timesteps) != f // pt:
            raise ValueError(f"need one timestep per latent frame ({f // pt}), got {len(timesteps)}")
        if keep is not None and keep.full:
            keep = None  # nothing pruned: the plain path is exact and cheaper
        if keep is not None and b != 1:
            raise ValueError("token pruning runs one stream at a time (batch 1)")
        gh, gw = h // ph, w // pw
        hs = wan.patch_embedding(x.permute(0, 2, 1, 3, 4))  # [B, dim, F', gh, gw]
        hs = hs.flatten(2).transpose(1, 2).contiguous()  # [B, N, dim]
        cos, sin, fot = ctx.cos, ctx.sin, ctx.frame_of_token
        if keep is not None:
            hs = hs.index_select(1, keep.idx)
            cos, sin, fot = (
                cos.index_select(0, keep.idx),
                sin.index_select(0, keep.idx),
                fot.index_select(0, keep.idx),
            )

        ts = tuple(float(t) for t in timesteps)
        uniform = all(t == ts[0] for t in ts)
        temb, mod = self._time_embed(ts, hs)
        fidx = None if uniform else fot

        valid = ctx.plan.valid_frames * cache.tokens_per_frame
        attn_mask = None
        if keep is not None and recovery == "none":
            if prefill or memory:
                cache.present.index_copy_(0, ctx.token_index, keep.mask)
            attn_mask = cache.present[:valid].view(1, 1, 1, valid)
        n_run = hs.shape[1]
        ops = self.ops
        consts = self._consts
        for layer, block in enumerate(wan.blocks):
            if n_run == 0:  # every token pruned: only the K/V duplicates are written
                empty = hs.new_zeros((b, 0, self.heads, self.head_dim))
                self._self_attention_kv(cache, layer, ctx, empty, empty, keep, recovery, memory, prefill)
                continue
            m = self._modulation(block.scale_shift_table, mod, uniform, fidx)
            shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = m.unbind(2)
            lw = layer_weights(block)

            # Self-attention over sink + window (the block's own keys are written first).
            q, k, v = ops.pre_attention(hs, shift_msa, scale_msa, lw, consts, cos, sin)
            self._self_attention_kv(cache, layer, ctx, k, v, keep, recovery, memory, prefill)
            att = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                cache.k[layer][:, :, :valid],
                cache.v[layer][:, :, :valid],
                attn_mask=attn_mask,
            )
            # Cross-attention with the prompt's cached K/V, then the feed-forward.
            hs, q2 = ops.post_attention(hs, att, gate_msa, lw, consts)
            att2 = F.scaled_dot_product_attention(q2, cross.k[layer], cross.v[layer])
            hs = ops.post_cross(hs, att2, c_shift, c_scale, c_gate, lw, consts)
        if memory:
            cache.has_prev = True

        # Head with per-frame modulation (kept tokens only), scatter back, unpatchify.
        if uniform:
            sh = (wan.scale_shift_table.float() + temb[:1].float().unsqueeze(1)).unsqueeze(0)
        else:
            sh = (wan.scale_shift_table.float() + temb.float().unsqueeze(1)).index_select(0, fot).unsqueeze(0)
        shift, scale = sh.unbind(2)
        out_tokens = wan.proj_out((wan.norm_out(hs.float()) * (1 + scale) + shift).type_as(hs))
        if keep is not None:
            out_tokens = scatter_kept(out_tokens, keep.idx, keep.n_total)
        out_tokens = out_tokens.reshape(b, f // pt, gh, gw, pt, ph, pw, -1)
        out = out_tokens.permute(0, 1, 4, 7, 2, 5, 3, 6)  # [B, F', pt, C, gh, ph, gw, pw]
        return out.reshape(b, f, self.out_channels, h, w)

    forward_block = torch.no_grad()(forward_block_trainable)
