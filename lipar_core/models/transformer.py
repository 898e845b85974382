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
from lipar_core.lipar.recovery import fill_index, scatter_kept
from lipar_core.models.kv_cache import BlockPlan, KVCache, write_rows
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


@dataclass
class _PassKV:
    """One layer's self-attention keys and values of the computed tokens, each [B, n, H, D] (or None when
    the pass does not need that form of the keys)."""

    k_rot: torch.Tensor | None
    v: torch.Tensor
    k_raw: torch.Tensor | None


@dataclass
class _PrunedPass:
    """Index work of one pruned pass, shared by all layers.

    Attributes:
        keep: the kept-token set.
        cache_index: cache token index of each computed (kept, padded) token, [n_pad] int64.
        fill: rows of ``cat([previous frame, kept rows])`` for every block position (:func:`fill_index`),
            [N] int64, when the pass writes the whole block; None when it writes kept rows only.
        last_fill: the same for the block's last frame only, [T] int64 (recovery ``none``'s clean pass).
    """

    keep: KeepSet
    cache_index: torch.Tensor
    fill: torch.Tensor | None
    last_fill: torch.Tensor | None


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

    def use_compiled_layers(self, enabled: bool = True, gelu_epilogue: bool = True) -> None:
        """Run each layer's elementwise work through ``torch.compile`` d functions (see ``layer_ops``).

        Meant for CUDA: compilation happens on the first pass of each kind (seconds), and CUDA-graph capture
        must come after it (``GraphedDiT`` warms up before capturing).

        Args:
            enabled: compiled (True) or the plain functions (False).
            gelu_epilogue: with ``enabled``, the feed-forward's bias and GELU in the cuBLASLt epilogue of its
                first product (``layer_ops.ffn_in_epilogue``).
        """
        if enabled:
            # a few variants per function (per-frame vs uniform modulation, views vs fresh tensors, which keys a
            # pass needs): room for them all, so that none falls back to eager for lack of cache entries
            dyn = torch._dynamo.config
            dyn.recompile_limit = max(dyn.recompile_limit, 32)
        self.ops = LayerOps.compiled_ops(gelu_epilogue) if enabled else LayerOps.eager()

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
        p = self.wan.patch_embedding.weight  # model dtype (linear weights may be float8, see fp8.py)
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
                cache.k[layer][:, :n].copy_(apply_rope(cache.sink_k_raw[layer], scos, ssin))
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
        if plan.contiguous and not ctx.index_writes:
            a = plan.slots[0] * cache.tokens_per_frame
            b = a + k_rot.shape[1]
            cache.k[layer][:, a:b].copy_(k_rot)
            cache.v[layer][:, a:b].copy_(v)
        else:
            write_rows(cache.k[layer], ctx.token_index, k_rot)
            write_rows(cache.v[layer], ctx.token_index, v)

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
        kv: _PassKV,
        pp: _PrunedPass | None,
        recovery: str,
        memory: bool,
    ) -> None:
        """Write this pass's keys/values of the block into the cache.

        Unpruned: every token. Pruned (``pp``): kept tokens; pruned positions per ``recovery``: ``full``
        fills them once per block (the first denoising pass) from the previous block's clean last frame
        (rotated to their own positions) and the clean t = 0 pass cascades from the true predecessor;
        ``m_degree`` cascades from the current pass; ``none`` leaves them out of attention
        (``cache.present``). Fills are one gather per tensor (:func:`fill_index` rows, computed once per pass).
        """
        tpf = cache.tokens_per_frame
        if pp is None:
            assert kv.k_rot is not None
            if kv.k_raw is not None and ctx.plan.frame_start < cache.sink_frames:
                self._write_sink_raw(cache, layer, ctx, kv.k_raw)
            self._write_kv(cache, layer, ctx, kv.k_rot, kv.v)
            if memory:
                assert kv.k_raw is not None
                cache.prev_k_raw[layer].copy_(kv.k_raw[:, -tpf:])
                cache.prev_v[layer].copy_(kv.v[:, -tpf:])
            return
        prev_k, prev_v = cache.prev_k_raw[layer], cache.prev_v[layer]
        if not cache.has_prev:  # nothing computed before: pruned positions of the first frame hold zeros
            prev_k, prev_v = torch.zeros_like(prev_k), torch.zeros_like(prev_v)
        if pp.fill is None:  # kept rows only (the block's other rows were filled earlier, or stay absent)
            if pp.keep.n_keep:
                assert kv.k_rot is not None
                write_rows(cache.k[layer], pp.cache_index, kv.k_rot)
                write_rows(cache.v[layer], pp.cache_index, kv.v)
            if memory:  # recovery "none": only the duplication source needs the cascade
                assert kv.k_raw is not None and pp.last_fill is not None
                last_k = self.ops.fill(kv.k_raw, prev_k, pp.last_fill)
                last_v = self.ops.fill(kv.v, prev_v, pp.last_fill)
                cache.prev_k_raw[layer].copy_(last_k)
                cache.prev_v[layer].copy_(last_v)
            return
        assert kv.k_raw is not None
        k_full = self.ops.fill_rope(kv.k_raw, prev_k, pp.fill, ctx.cos, ctx.sin)
        v_full = self.ops.fill(kv.v, prev_v, pp.fill)
        if memory:
            cache.prev_k_raw[layer].copy_(self.ops.fill(kv.k_raw, prev_k, pp.fill[-tpf:]))
            cache.prev_v[layer].copy_(v_full[:, -tpf:])
        self._write_kv(cache, layer, ctx, k_full, v_full)

    def _pruned_pass(
        self,
        cache: KVCache,
        ctx: BlockContext,
        keep: KeepSet | None,
        recovery: str,
        memory: bool,
        prefill: bool,
    ) -> tuple[_PrunedPass | None, bool, bool]:
        """Per-pass index work of a pruned pass, done once for all layers: (plan, rotate_k, raw_k).

        ``rotate_k`` / ``raw_k`` say which keys the layers must produce: rotated keys are written as they are;
        un-rotated ones feed the sink, the duplication source and the fills of pruned positions.
        """
        if keep is None:
            return None, True, memory or ctx.plan.frame_start < cache.sink_frames
        f = ctx.plan.num_frames
        tpf = cache.tokens_per_frame
        cache_index = ctx.token_index.index_select(0, keep.idx)
        if recovery == "none":
            last = fill_index(keep.mask, f, cascade=True)[-tpf:] if memory else None
            return _PrunedPass(keep, cache_index, None, last), True, memory
        if recovery == "full" and not memory:
            if not prefill:
                return _PrunedPass(keep, cache_index, None, None), True, False
            if not cache.has_prev:
                raise RuntimeError(
                    "noise-aware duplication needs a previous clean frame (first block pruned?)"
                )
            return _PrunedPass(keep, cache_index, fill_index(keep.mask, f, cascade=False), None), False, True
        # m_degree passes, and the clean t = 0 pass of m_degree / full: cascade from the true predecessor.
        return _PrunedPass(keep, cache_index, fill_index(keep.mask, f, cascade=True), None), False, True

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
        time_embedding: tuple[torch.Tensor, torch.Tensor] | None = None,
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
            time_embedding: (temb [F, dim], modulation [F, 6, dim]) to use instead of computing them from
                ``timesteps`` (CUDA graphs read them from buffers, so that one graph serves every timestep);
                ``timesteps`` still decides whether the pass is uniform over frames.
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
        temb, mod = time_embedding if time_embedding is not None else self._time_embed(ts, hs)
        fidx = None if uniform else fot

        valid = ctx.plan.valid_frames * cache.tokens_per_frame
        attn_mask = None
        if keep is not None and recovery == "none":
            if prefill or memory:
                cache.present.index_copy_(0, ctx.token_index, keep.mask)
            attn_mask = cache.present[:valid].view(1, 1, 1, valid)
        pp, rotate_k, raw_k = self._pruned_pass(cache, ctx, keep, recovery, memory, prefill)
        n_run = hs.shape[1]
        ops = self.ops
        consts = self._consts
        for layer, block in enumerate(wan.blocks):
            if n_run == 0:  # every token pruned: only the K/V duplicates are written
                empty = hs.new_zeros((b, 0, self.heads, self.head_dim))
                self._self_attention_kv(cache, layer, ctx, _PassKV(empty, empty, empty), pp, recovery, memory)
                continue
            m = self._modulation(block.scale_shift_table, mod, uniform, fidx)
            shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = m.unbind(2)
            lw = layer_weights(block)

            # Self-attention over sink + window (the block's own keys are written first).
            q, k_rot, v, k_raw = ops.pre_attention(
                hs, shift_msa, scale_msa, lw, consts, cos, sin, rotate_k=rotate_k, raw_k=raw_k
            )
            self._self_attention_kv(cache, layer, ctx, _PassKV(k_rot, v, k_raw), pp, recovery, memory)
            att = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                cache.k[layer][:, :valid].transpose(1, 2),
                cache.v[layer][:, :valid].transpose(1, 2),
                attn_mask=attn_mask,
            )
            # Cross-attention with the prompt's cached K/V, then the feed-forward.
            hs, q2 = ops.post_attention(hs, att, gate_msa, lw, consts)
            att2 = F.scaled_dot_product_attention(q2, cross.k[layer], cross.v[layer])
            hs, nx = ops.post_cross(hs, att2, c_shift, c_scale, lw, consts)
            hs = ops.post_ffn(hs, ops.ffn_in(nx, lw, consts), c_gate, lw)
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
