"""The work of one transformer layer outside attention, as three pure functions that ``torch.compile`` fuses.

Between its matrix products a Wan layer does a lot of small elementwise work: float32 layer norms with the
timestep modulation, RMS norms of q and k, RoPE, gated residuals, GELU. Run op by op, each of these reads and
writes the whole [N, dim] activation in float32 (measured on an H200: about a third of an unpruned pass). The
functions here cover everything of a layer except the attention kernels and the KV-cache writes, so that
Inductor can fuse each stretch of elementwise work into one kernel around the matrix products (which stay
cuBLAS calls). They take weights as plain tensors (:class:`LayerWeights`), never modules, so one compiled
graph serves every layer, and they are compiled with a dynamic token count, so every kept-token bucket reuses
it. Uncompiled, they run exactly the operations of the diffusers modules, in the same order: the eager path is
bit-identical to ``WanTransformerBlock``'s arithmetic.

Shapes: ``hs`` [B, N, dim] in the model dtype; modulation terms [1, N or 1, dim] float32; ``cos``/``sin``
[N, 1, head_dim // 2] float32; q/k/v [B, N, heads, head_dim].
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from lipar_core.models.rope import apply_rope

log = logging.getLogger(__name__)


class LayerWeights(NamedTuple):
    """The tensors of one ``WanTransformerBlock`` the layer functions need (no copies: the module's own)."""

    q_w: torch.Tensor
    q_b: torch.Tensor | None
    k_w: torch.Tensor
    k_b: torch.Tensor | None
    v_w: torch.Tensor
    v_b: torch.Tensor | None
    norm_q: torch.Tensor | None
    norm_k: torch.Tensor | None
    out_w: torch.Tensor
    out_b: torch.Tensor | None
    norm2_w: torch.Tensor | None
    norm2_b: torch.Tensor | None
    q2_w: torch.Tensor
    q2_b: torch.Tensor | None
    norm_q2: torch.Tensor | None
    out2_w: torch.Tensor
    out2_b: torch.Tensor | None
    ff1_w: torch.Tensor
    ff1_b: torch.Tensor | None
    ff2_w: torch.Tensor
    ff2_b: torch.Tensor | None


class LayerConsts(NamedTuple):
    """Per-model constants of the layer functions (the same for every layer)."""

    heads: int
    eps: float  # layer norms (norm1, norm2, norm3)
    qk_eps: float  # RMS norms of q and k
    gelu: str  # approximation of the feed-forward GELU ("tanh" in Wan)
    cross_norm: bool  # norm2 present (Wan's cross_attn_norm)


def layer_weights(block: Any) -> LayerWeights:
    """The tensors of a diffusers ``WanTransformerBlock`` (attn1, attn2, norm2, ffn)."""
    a1, a2 = block.attn1, block.attn2
    ff_in, ff_out = block.ffn.net[0].proj, block.ffn.net[2]
    norm2 = block.norm2 if isinstance(block.norm2, torch.nn.LayerNorm) else None
    return LayerWeights(
        a1.to_q.weight,
        a1.to_q.bias,
        a1.to_k.weight,
        a1.to_k.bias,
        a1.to_v.weight,
        a1.to_v.bias,
        a1.norm_q.weight if a1.norm_q is not None else None,
        a1.norm_k.weight if a1.norm_k is not None else None,
        a1.to_out[0].weight,
        a1.to_out[0].bias,
        norm2.weight if norm2 is not None else None,
        norm2.bias if norm2 is not None else None,
        a2.to_q.weight,
        a2.to_q.bias,
        a2.norm_q.weight if a2.norm_q is not None else None,
        a2.to_out[0].weight,
        a2.to_out[0].bias,
        ff_in.weight,
        ff_in.bias,
        ff_out.weight,
        ff_out.bias,
    )


def layer_consts(block: Any, heads: int) -> LayerConsts:
    """Constants read off a diffusers ``WanTransformerBlock``."""
    norm2 = block.norm2 if isinstance(block.norm2, torch.nn.LayerNorm) else None
    for norm in (block.attn1.norm_q, block.attn1.norm_k, block.attn2.norm_q):
        if norm is not None and not isinstance(norm, torch.nn.RMSNorm):
            raise ValueError(
                f"q/k norm {type(norm).__name__} is not supported (Wan uses rms_norm_across_heads)"
            )
    qk_eps = block.attn1.norm_q.eps if block.attn1.norm_q is not None else 1e-6
    return LayerConsts(
        heads=heads,
        eps=float(block.norm1.eps),
        qk_eps=float(qk_eps if qk_eps is not None else torch.finfo(torch.float32).eps),
        gelu=str(block.ffn.net[0].approximate),
        cross_norm=norm2 is not None,
    )


def _ln32(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """diffusers' ``FP32LayerNorm``: layer norm in float32 (returns float32)."""
    return F.layer_norm(
        x.float(),
        (x.shape[-1],),
        weight.float() if weight is not None else None,
        bias.float() if bias is not None else None,
        eps,
    )


def _rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``torch.nn.RMSNorm`` over the last dimension (identity when the model has no q/k norm)."""
    if weight is None:
        return x
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def pre_attention(
    hs: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    w: LayerWeights,
    c: LayerConsts,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Modulated norm1 and the self-attention projections: (q rotated, k un-rotated, v), each [B, N, H, D]."""
    nx = (_ln32(hs, None, None, c.eps) * (1 + scale) + shift).type_as(hs)
    q = _rms(F.linear(nx, w.q_w, w.q_b), w.norm_q, c.qk_eps).unflatten(-1, (c.heads, -1))
    k = _rms(F.linear(nx, w.k_w, w.k_b), w.norm_k, c.qk_eps).unflatten(-1, (c.heads, -1))
    v = F.linear(nx, w.v_w, w.v_b).unflatten(-1, (c.heads, -1))
    return apply_rope(q, cos, sin), k, v


def post_attention(
    hs: torch.Tensor, att: torch.Tensor, gate: torch.Tensor, w: LayerWeights, c: LayerConsts
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention output projection, gated residual, norm2 and the cross-attention query.

    Args:
        att: attention output [B, H, N, D].
    Returns:
        (hs [B, N, dim], cross-attention q [B, H, N, D]).
    """
    o = F.linear(att.transpose(1, 2).flatten(2).type_as(hs), w.out_w, w.out_b)
    hs = (hs.float() + o * gate).type_as(hs)
    nx = _ln32(hs, w.norm2_w, w.norm2_b, c.eps).to(hs.dtype) if c.cross_norm else hs
    q2 = _rms(F.linear(nx, w.q2_w, w.q2_b), w.norm_q2, c.qk_eps).unflatten(-1, (c.heads, -1))
    return hs, q2.transpose(1, 2)


def post_cross(
    hs: torch.Tensor,
    att2: torch.Tensor,
    c_shift: torch.Tensor,
    c_scale: torch.Tensor,
    c_gate: torch.Tensor,
    w: LayerWeights,
    c: LayerConsts,
) -> torch.Tensor:
    """Cross-attention output and residual, then the modulated feed-forward with its gated residual.

    Args:
        att2: cross-attention output [B, H, N, D].
    Returns:
        hs [B, N, dim].
    """
    hs = hs + F.linear(att2.transpose(1, 2).flatten(2).type_as(hs), w.out2_w, w.out2_b)
    nx = (_ln32(hs, None, None, c.eps) * (1 + c_scale) + c_shift).type_as(hs)
    ff = F.linear(F.gelu(F.linear(nx, w.ff1_w, w.ff1_b), approximate=c.gelu), w.ff2_w, w.ff2_b)
    return (hs.float() + ff.float() * c_gate).type_as(hs)


@dataclass(frozen=True)
class LayerOps:
    """The layer functions the DiT calls: plain (``compiled=False``) or fused by ``torch.compile``."""

    pre_attention: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    post_attention: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    post_cross: Callable[..., torch.Tensor]
    rope: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    compiled: bool

    @classmethod
    def eager(cls) -> LayerOps:
        """The functions as written (CPU, tests, and the reference for the compiled ones)."""
        return cls(pre_attention, post_attention, post_cross, apply_rope, False)

    @classmethod
    def compiled_ops(cls) -> LayerOps:
        """``torch.compile`` d versions (dynamic token count, whole-graph). Compilation happens on first use."""

        def comp(fn: Callable[..., Any]) -> Callable[..., Any]:
            return torch.compile(fn, dynamic=True, fullgraph=True)

        return cls(comp(pre_attention), comp(post_attention), comp(post_cross), comp(apply_rope), True)
