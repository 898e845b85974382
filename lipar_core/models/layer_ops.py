"""The work of one transformer layer outside attention, as pure functions that ``torch.compile`` fuses.

Between its matrix products a Wan layer does a lot of small elementwise work: float32 layer norms with the
timestep modulation, RMS norms of q and k, RoPE, gated residuals, GELU. Run op by op, each of these reads and
writes the whole [N, dim] activation in float32 (measured on an H200: about a third of an unpruned pass). The
functions here cover everything of a layer except the attention kernels and the KV-cache writes (RoPE of the
keys included, and the one-gather fills of pruned positions, :func:`fill_rope`), so that Inductor can fuse each
stretch of elementwise work into one kernel around the matrix products (which stay cuBLAS calls; the
feed-forward's first one takes its bias and GELU in the cuBLASLt epilogue, :func:`ffn_in_epilogue`). They take weights as plain tensors (:class:`LayerWeights`), never modules, so one compiled
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

from lipar_core.lipar.recovery import gather_rows
from lipar_core.models.fp8 import linear_fp8
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
    # float8 weight scales ([out, 1] float32, ``lipar_core.models.fp8``); None = plain weights
    q_s: torch.Tensor | None = None
    k_s: torch.Tensor | None = None
    v_s: torch.Tensor | None = None
    out_s: torch.Tensor | None = None
    q2_s: torch.Tensor | None = None
    out2_s: torch.Tensor | None = None
    ff1_s: torch.Tensor | None = None
    ff2_s: torch.Tensor | None = None


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
        *(
            getattr(m, "fp8_scale", None)
            for m in (a1.to_q, a1.to_k, a1.to_v, a1.to_out[0], a2.to_q, a2.to_out[0], ff_in, ff_out)
        ),
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


def _lin(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, scale: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear``, or its float8 form where the layer carries a weight scale (``fp8.linear_fp8``)."""
    return F.linear(x, w, b) if scale is None else linear_fp8(x, w, scale, b)


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
    rotate_k: bool = True,
    raw_k: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Modulated norm1 and the self-attention projections, with RoPE on q (and on k, fused, when asked).

    Args:
        rotate_k: return k rotated to the tokens' positions (what the cache stores).
        raw_k: also return k un-rotated (sink keys, the duplication source, fills of pruned positions).
    Returns:
        (q rotated, k rotated or None, v, k un-rotated or None), each [B, N, H, D].
    """
    nx = (_ln32(hs, None, None, c.eps) * (1 + scale) + shift).type_as(hs)
    q = _rms(_lin(nx, w.q_w, w.q_b, w.q_s), w.norm_q, c.qk_eps).unflatten(-1, (c.heads, -1))
    k = _rms(_lin(nx, w.k_w, w.k_b, w.k_s), w.norm_k, c.qk_eps).unflatten(-1, (c.heads, -1))
    v = _lin(nx, w.v_w, w.v_b, w.v_s).unflatten(-1, (c.heads, -1))
    k_rot = apply_rope(k, cos, sin) if rotate_k else None
    return apply_rope(q, cos, sin), k_rot, v, (k if raw_k else None)


def fill_rope(
    kept: torch.Tensor, prev: torch.Tensor, index: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """A whole block of keys from kept rows and the previous frame (:func:`~lipar_core.lipar.recovery.
    fill_index`), rotated to each position: [B, n, H, D] + [B, T, H, D] -> [B, N, H, D] (one fused gather)."""
    return apply_rope(gather_rows(kept, prev, index), cos, sin)


def post_attention(
    hs: torch.Tensor, att: torch.Tensor, gate: torch.Tensor, w: LayerWeights, c: LayerConsts
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention output projection, gated residual, norm2 and the cross-attention query.

    Args:
        att: attention output [B, H, N, D].
    Returns:
        (hs [B, N, dim], cross-attention q [B, H, N, D]).
    """
    o = _lin(att.transpose(1, 2).flatten(2).type_as(hs), w.out_w, w.out_b, w.out_s)
    hs = (hs.float() + o * gate).type_as(hs)
    nx = _ln32(hs, w.norm2_w, w.norm2_b, c.eps).to(hs.dtype) if c.cross_norm else hs
    q2 = _rms(_lin(nx, w.q2_w, w.q2_b, w.q2_s), w.norm_q2, c.qk_eps).unflatten(-1, (c.heads, -1))
    return hs, q2.transpose(1, 2)


def post_cross(
    hs: torch.Tensor,
    att2: torch.Tensor,
    c_shift: torch.Tensor,
    c_scale: torch.Tensor,
    w: LayerWeights,
    c: LayerConsts,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention output and residual, then the modulated norm3 that feeds the feed-forward.

    Args:
        att2: cross-attention output [B, H, N, D].
    Returns:
        (hs [B, N, dim], feed-forward input [B, N, dim]).
    """
    hs = hs + _lin(att2.transpose(1, 2).flatten(2).type_as(hs), w.out2_w, w.out2_b, w.out2_s)
    nx = (_ln32(hs, None, None, c.eps) * (1 + c_scale) + c_shift).type_as(hs)
    return hs, nx


def ffn_in(nx: torch.Tensor, w: LayerWeights, c: LayerConsts) -> torch.Tensor:
    """The feed-forward's first projection and its GELU: [B, N, dim] -> [B, N, ffn_dim]."""
    return F.gelu(_lin(nx, w.ff1_w, w.ff1_b, w.ff1_s), approximate=c.gelu)


def ffn_in_epilogue(nx: torch.Tensor, w: LayerWeights, c: LayerConsts) -> torch.Tensor:
    """:func:`ffn_in` with bias and tanh-GELU in the matrix product's epilogue (cuBLASLt) where it applies.

    Saves a pass over the [N, ffn_dim] activation; the GELU is applied to the float32 accumulator before the
    rounding to the model dtype (so it differs from :func:`ffn_in` by bf16 roundings). Falls back to
    :func:`ffn_in` off CUDA, without a bias, for an exact-erf GELU, or for float8 weights
    (``lipar_core.models.fp8``, their own product).
    """
    if not nx.is_cuda or w.ff1_b is None or c.gelu != "tanh" or w.ff1_s is not None:
        return ffn_in(nx, w, c)
    flat = nx.reshape(-1, nx.shape[-1])
    out = torch._addmm_activation(w.ff1_b, flat, w.ff1_w.t(), use_gelu=True)
    return out.view(*nx.shape[:-1], out.shape[-1])


def post_ffn(hs: torch.Tensor, h: torch.Tensor, c_gate: torch.Tensor, w: LayerWeights) -> torch.Tensor:
    """The feed-forward's second projection and gated residual: hs [B, N, dim], h [B, N, ffn_dim] -> hs."""
    ff = _lin(h, w.ff2_w, w.ff2_b, w.ff2_s)
    return (hs.float() + ff.float() * c_gate).type_as(hs)


@dataclass(frozen=True)
class LayerOps:
    """The layer functions the DiT calls: plain (``compiled=False``) or fused by ``torch.compile``."""

    pre_attention: Callable[..., tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]]
    post_attention: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    post_cross: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    ffn_in: Callable[[torch.Tensor, LayerWeights, LayerConsts], torch.Tensor]
    post_ffn: Callable[..., torch.Tensor]
    fill_rope: Callable[..., torch.Tensor]
    fill: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    compiled: bool

    @classmethod
    def eager(cls) -> LayerOps:
        """The functions as written (CPU, tests, and the reference for the compiled ones)."""
        return cls(
            pre_attention,
            post_attention,
            post_cross,
            ffn_in,
            post_ffn,
            fill_rope,
            gather_rows,
            False,
        )

    @classmethod
    def compiled_ops(cls, gelu_epilogue: bool = True) -> LayerOps:
        """``torch.compile`` d versions (dynamic token count, whole-graph). Compilation happens on first use.

        Args:
            gelu_epilogue: the feed-forward's first projection with bias and GELU in the cuBLASLt epilogue
                (:func:`ffn_in_epilogue`, not compiled: Inductor would split it into a product and a pointwise
                kernel again); False keeps the product and a fused bias + GELU kernel.
        """

        def comp(fn: Callable[..., Any]) -> Callable[..., Any]:
            return torch.compile(fn, dynamic=True, fullgraph=True)

        return cls(
            comp(pre_attention),
            comp(post_attention),
            comp(post_cross),
            ffn_in_epilogue if gelu_epilogue else comp(ffn_in),
            comp(post_ffn),
            comp(fill_rope),
            comp(gather_rows),
            True,
        )
