"""FP8 for the transformer's matrix products (an option, not the default).

:func:`quantize_fp8` stores the weights of the per-token linear layers of every transformer block
(self-attention q/k/v/out, cross-attention q/out, both feed-forward layers) as float8 e4m3 with one float32
scale per output row (``module.fp8_scale``, [out, 1]); :func:`linear_fp8` quantizes the input on the fly with
one scale per token and multiplies on the GPU's FP8 tensor cores (``torch._scaled_mm``, Hopper and newer:
compute capability 8.9+), adding the bias afterwards. The layer functions (``layer_ops``) use it wherever a
layer carries ``fp8_scale``, so the scaling, the casts and the bias add fuse with the elementwise work
around them when compiled, and the passes are graphed as usual. Left in the model dtype: the cross-attention
K/V projections (computed once per prompt, nothing to gain), the embedders and the head.

Why not torchao (the library for this): its float8 weights are tensor subclasses, and passed into our
compiled layer functions they made a single call run past 300 s on an H100 without finishing (2026-11-27,
bench/NOTES.md); plain float8 tensors plus their scales keep one compiled graph for all layers.

The quality cost is measured by ``bench/gpu_checks.py`` (``fp8_check``: PSNR of edited frames and latents
against bf16) and reported in bench/NOTES.md.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448

# Linear layers of a WanTransformerBlock that run per token (names relative to the block).
FP8_LAYERS: tuple[str, ...] = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_out.0",
    "ffn.net.0.proj",
    "ffn.net.2",
)


class FP8Unavailable(RuntimeError):
    """FP8 was asked for where it cannot run (no CUDA, or a GPU without FP8 tensor cores)."""


def fp8_layer(fqn: str) -> bool:
    """Whether the linear layer at ``fqn`` (a name inside the transformer, e.g. ``blocks.3.attn1.to_q``) is one
    that :func:`quantize_fp8` converts."""
    parts = fqn.split(".")
    return len(parts) > 2 and parts[0] == "blocks" and ".".join(parts[2:]) in FP8_LAYERS


def quantize_rows(w: torch.Tensor, per_row: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Float8 of a weight: [N, K] -> (float8 e4m3 [N, K], float32 scale), w ≈ q * scale.

    ``per_row``: one scale per output row ([N, 1]); else one for the whole tensor ([1, 1]).
    """
    a = w.detach().abs()
    amax = a.amax(dim=1, keepdim=True) if per_row else a.amax().reshape(1, 1)
    scale = amax.float().clamp(min=1e-12) / FP8_MAX
    return (w.detach().float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def linear_fp8(
    x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear`` with a float8 weight: the input quantized on the fly (dynamic scales), FP8 product.

    Per-row weight scales go with one input scale per token; a per-tensor weight scale with one input scale
    for the whole input (cuBLASLt's tensor-wise FP8 kernels).

    Args:
        x: [..., K] in the model dtype.
        w: [N, K] float8 e4m3 (:func:`quantize_rows`).
        scale: [N, 1] (per row) or [1, 1] (per tensor) float32 weight scales.
        bias: [N] or None.
    Returns:
        [..., N] in ``x``'s dtype.
    """
    x2 = x.reshape(-1, x.shape[-1])
    a = x2.abs()
    amax = a.amax(dim=1, keepdim=True) if scale.shape[0] > 1 else a.amax().reshape(1, 1)
    xs = amax.float().clamp(min=1e-12) / FP8_MAX
    xq = (x2.float() / xs).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    y = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=scale.t(), out_dtype=x.dtype, use_fast_accum=True)
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], w.shape[0])


def convert_fp8(wan: torch.nn.Module, per_row: bool = True) -> int:
    """Store the per-token linear layers' weights of ``wan`` as float8 + ``fp8_scale`` (any device; no checks).

    ``per_row``: per-row weight and per-token input scales; else per-tensor scales for both.

    Inference only: the converted modules' own ``forward`` no longer applies (the layer functions do).
    Returns the number of layers converted (8 per block).
    """
    n = 0
    for name, module in wan.named_modules():
        if isinstance(module, torch.nn.Linear) and fp8_layer(name):
            q, s = quantize_rows(module.weight, per_row)
            module.weight = torch.nn.Parameter(q, requires_grad=False)
            module.register_buffer("fp8_scale", s)
            n += 1
    return n


def quantize_fp8(wan: torch.nn.Module, per_row: bool = True) -> int:
    """:func:`convert_fp8` for a ``WanTransformer3DModel`` on a CUDA GPU with FP8 tensor cores.

    Raises:
        FP8Unavailable: the model is not on CUDA, or the GPU has no FP8 tensor cores.
    """
    device = next(wan.parameters()).device
    if device.type != "cuda":
        raise FP8Unavailable(f"runtime.fp8 needs a CUDA device (the transformer is on {device})")
    if torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise FP8Unavailable(f"runtime.fp8 needs FP8 tensor cores (compute capability 8.9+); {name} has none")
    n = convert_fp8(wan, per_row)
    log.info("FP8: %d linear layers stored as float8 with per-%s scales", n, "row" if per_row else "tensor")
    return n
