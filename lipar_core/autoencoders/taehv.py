"""TAEHV: the tiny video autoencoder for Wan 2.1 (``taew2_1``), streamed block by block in parallel over time.

The module layout mirrors the published ``taew2_1.pth`` / ``taew2_1.safetensors`` weights (madebyollin/taehv):
two ``nn.Sequential`` named ``encoder`` and ``decoder`` whose state-dict keys are ``encoder.0.weight``,
``encoder.2.conv.weight``, ``encoder.4.conv.0.weight``, ``decoder.1.weight``, ``decoder.7.conv.weight``, ... so
the files load strictly.

Architecture (widths shown for the published model; every width is a constructor argument):

- encoder: ``conv(3, 64)``, ReLU, then three stages of ``TPool`` (temporal strides 2, 2, 1), a stride-2 3x3 conv
  and three ``MemBlock``; a final ``conv(64, 16)``. RGB in [0, 1], 4 frames -> 1 latent, 8x spatial.
- decoder: ``Clamp`` (3 tanh(x / 3)), ``conv(16, 256)``, ReLU, then three stages of three ``MemBlock``, a 2x
  nearest ``Upsample``, a ``TGrow`` (temporal strides 1, 2, 2) and a 3x3 conv to the next width; ReLU and a
  final ``conv(64, 3)``; output clamped to [0, 1]. 1 latent -> 4 frames.

Streaming. A ``MemBlock`` at frame t sees its own input at frame t - 1 (zeros for the first frame of a
stream); nothing else mixes time except ``TPool`` (which merges groups of consecutive frames) and ``TGrow``
(which splits one frame into several). Since a block always holds a multiple of 4 frames (encoder) or whole
latents (decoder), the ``TPool`` groups never straddle two blocks, so the only state a stream carries is, for
every ``MemBlock``, its input at the last frame of the previous block. Each block then runs every layer on
all its frames at once (batched over batch x time). LIPAR disables TAEHV's usual trimming of the first 3
decoded frames: 12 frames <-> 3 latents, exactly.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from lipar_core.autoencoders.base import VideoAutoencoder

logger = logging.getLogger(__name__)

__all__ = [
    "TAEHV",
    "Clamp",
    "MemBlock",
    "TAEHVDecoderStream",
    "TAEHVEncoderStream",
    "TAEHVWeightsError",
    "TGrow",
    "TPool",
    "tiny_taehv",
]

DEFAULT_DECODER_WIDTHS: tuple[int, int, int, int] = (256, 128, 64, 64)
TINY_DECODER_WIDTHS: tuple[int, int, int, int] = (32, 16, 8, 8)
# Temporal strides of the three encoder TPool stages and of the three decoder TGrow stages (taew2_1).
_ENCODER_TIME_STRIDES: tuple[int, int, int] = (2, 2, 1)
_DECODER_TIME_STRIDES: tuple[int, int, int] = (1, 2, 2)


class TAEHVWeightsError(ValueError):
    """A weight file that cannot be read or does not match the architecture (missing/unexpected/mis-shaped keys)."""


def conv(n_in: int, n_out: int, **kwargs: object) -> nn.Conv2d:
    """3x3 convolution with padding 1 (keeps the spatial size unless ``stride`` is given)."""
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)  # type: ignore[arg-type]


class Clamp(nn.Module):
    """Soft clamp to (-3, 3): ``3 * tanh(x / 3)``. No parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block that also sees its input at the previous frame.

    ``forward(x, past) = relu(conv(cat([x, past], channels)) + skip(x))``, where ``past`` is this block's input
    one frame earlier (zeros for a stream's first frame).
    """

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv(n_in * 2, n_out),
            nn.ReLU(inplace=True),
            conv(n_out, n_out),
            nn.ReLU(inplace=True),
            conv(n_out, n_out),
        )
        self.skip: nn.Module = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        """Args: x, past: [N, n_in, H, W] (N = frames, any batch x time flattening). Returns [N, n_out, H, W]."""
        return self.act(self.conv(torch.cat([x, past], dim=1)) + self.skip(x))


def _cpu_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` ([N, C, H, W]) takes the CPU channels-last path: there a 1x1 convolution is one matrix
    product over the contiguous channel axis (about 6x faster than oneDNN's 1x1 convolution at 416x240, and no
    layout copy), and oneDNN's 3x3 convolutions run 1.2-4x faster on channels-last input."""
    return x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last)


class TPool(nn.Module):
    """Temporal pooling: ``stride`` consecutive frames are stacked along channels and mixed by a 1x1 conv."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f * stride, n_f, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: [N * stride, C, H, W], frames of one group consecutive. Returns [N, C, H, W]."""
        nt, c, h, w = x.shape
        s = self.stride
        if _cpu_channels_last(x):
            # [N, H, W, C] in memory: frame k of each group times its slice of the 1x1 weight, summed
            xv = x.permute(0, 2, 3, 1).reshape(nt // s, s, h * w, c)
            wk = self.conv.weight.view(-1, s, c)  # [C_out, stride, C]: stacked channel k * C + c
            y = torch.matmul(xv[:, 0], wk[:, 0].t())
            for k in range(1, s):
                y.add_(torch.matmul(xv[:, k], wk[:, k].t()))
            return y.view(nt // s, h, w, -1).permute(0, 3, 1, 2)  # channels-last [N / stride, C_out, H, W]
        return self.conv(x.reshape(nt // s, s * c, h, w))


class TGrow(nn.Module):
    """Temporal upsampling: a 1x1 conv makes ``stride`` frames' worth of channels, split in order into frames."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: [N, C, H, W]. Returns [N * stride, C, H, W] (the stride frames of an input consecutive)."""
        nt, c, h, w = x.shape
        s = self.stride
        if _cpu_channels_last(x):
            y = torch.matmul(x.permute(0, 2, 3, 1), self.conv.weight.view(s * c, c).t())  # [N, H, W, s * C]
            y = y.view(nt, h, w, s, c).permute(0, 3, 1, 2, 4).reshape(nt * s, h, w, c)
            return y.permute(0, 3, 1, 2)  # channels-last [N * stride, C, H, W]
        return self.conv(x).reshape(nt * s, c, h, w)


class _EagerFallback:
    """A compiled :func:`_run_layers` that runs eager once a call fails compiled but succeeds eager: a failed
    call is repeated eagerly (the function is pure, so nothing was half done); an error of the inputs themselves
    is raised again there and leaves the compiled function in place; a machine that cannot compile loses the
    speed, not the stream."""

    def __init__(self, compiled: Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]]) -> None:
        self.compiled: Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]] | None = compiled

    def __call__(self, *args: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as e:  # Inductor's compile errors have no common public base class
                out = _run_layers(*args)  # an error of the inputs is raised here
                logger.warning(
                    "autoencoder: torch.compile failed (%s: %s); running eager", type(e).__name__, e
                )
                self.compiled = None
                return out
        return _run_layers(*args)


def _run_stateful(
    layers: nn.Sequential,
    x: torch.Tensor,
    batch: int,
    memory: dict[int, torch.Tensor],
    run: Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]],
) -> torch.Tensor:
    """Run ``layers`` on a block of frames, in parallel over time, carrying MemBlock state in ``memory``.

    Args:
        layers: the encoder or decoder sequence.
        x: [B * T, C, H, W], the T frames of each batch element consecutive.
        batch: B.
        memory: layer index -> that MemBlock's input at the last frame of the previous block, [B, 1, C, H, W];
            updated in place. A missing entry means the stream starts here (zeros).
        run: :func:`_run_layers` or a compiled version of it.
    Returns:
        [B * T', C', H', W'] in the same layout.
    """
    slots = [i for i, layer in enumerate(layers) if isinstance(layer, MemBlock)]
    y, new = run(layers, x, batch, tuple(memory.get(i) for i in slots))
    memory.update(zip(slots, new, strict=True))
    return y


def _run_layers(
    layers: nn.Sequential, x: torch.Tensor, batch: int, past: tuple[torch.Tensor | None, ...]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The layers on a block of frames as a pure function of the stream state (``torch.compile`` friendly).

    Args:
        past: for each MemBlock in order, its input at the previous block's last frame [B, 1, C, H, W], or
            None at a stream's start (zeros).
    Returns:
        (output [B * T', C', H', W'], each MemBlock's input at this block's last frame).
    """
    new: list[torch.Tensor] = []
    for index, layer in enumerate(layers):
        if not isinstance(layer, MemBlock):
            x = layer(x)
            continue
        nt, c, h, w = x.shape
        frames = x.view(batch, nt // batch, c, h, w)
        prev = past[len(new)]
        if prev is None:
            prev = x.new_zeros((batch, 1, c, h, w))
        elif prev.shape != (batch, 1, c, h, w):
            raise ValueError(
                f"stream state of layer {index} has shape {tuple(prev.shape)} but this block needs "
                f"{(batch, 1, c, h, w)}: batch size or resolution changed mid-stream (call reset() first)"
            )
        p = torch.cat([prev, frames[:, :-1]], dim=1).reshape(nt, c, h, w)
        new.append(frames[:, -1:].clone())
        x = layer(x, p)
    return x, tuple(new)


class TAEHVEncoderStream:
    """Encoder state of one stream: for every encoder MemBlock, its input at the previous block's last frame."""

    def __init__(self, model: TAEHV, trainable: bool = False) -> None:
        self._model = model
        self._memory: dict[int, torch.Tensor] = {}
        self.trainable = trainable

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode the next block of the stream (all frames at once; autograd only if ``trainable``).

        Args:
            frames: [B, T, 3, H, W] float RGB in [0, 1]; T a positive multiple of 4, H and W multiples of 8.
        Returns:
            latents: [B, T // 4, latent_channels, H // 8, W // 8] in the model's dtype and device.
        """
        model = self._model
        if frames.ndim != 5 or frames.shape[2] != model.image_channels:
            raise ValueError(
                f"expected frames [B, T, {model.image_channels}, H, W], got {tuple(frames.shape)}"
            )
        b, t, c, h, w = frames.shape
        if t == 0 or t % model.temporal_stride:
            raise ValueError(f"T={t} frames must be a positive multiple of {model.temporal_stride}")
        if h % model.spatial_stride or w % model.spatial_stride:
            raise ValueError(f"resolution {w}x{h} must be a multiple of {model.spatial_stride}")
        x = model.layout(frames.to(device=model.device, dtype=model.dtype).reshape(b * t, c, h, w))
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            z = _run_stateful(model.encoder, x, b, self._memory, model.layer_runner(self.trainable))
        return z.view(b, t // model.temporal_stride, *z.shape[1:])

    def reset(self) -> None:
        """Forget the stream state (the next call starts a new stream)."""
        self._memory.clear()


class TAEHVDecoderStream:
    """Decoder state of one stream: for every decoder MemBlock, its input at the previous block's last frame."""

    def __init__(self, model: TAEHV, trainable: bool = False) -> None:
        self._model = model
        self._memory: dict[int, torch.Tensor] = {}
        self.trainable = trainable

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latents of the stream (all at once; no frame is trimmed). ``trainable``: with autograd
        and without the final clamp to [0, 1].

        Args:
            latents: [B, L, latent_channels, h, w], L >= 1.
        Returns:
            frames: [B, 4 * L, 3, 8 * h, 8 * w] float RGB in [0, 1], model dtype and device.
        """
        model = self._model
        if latents.ndim != 5 or latents.shape[2] != model.latent_channels:
            raise ValueError(
                f"expected latents [B, L, {model.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        b, n, c, h, w = latents.shape
        if n == 0:
            raise ValueError("expected at least one latent frame")
        x = model.layout(latents.to(device=model.device, dtype=model.dtype).reshape(b * n, c, h, w))
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            y = _run_stateful(model.decoder, x, b, self._memory, model.layer_runner(self.trainable))
        if not self.trainable:  # training sees the raw output: a clamp would stop gradients outside [0, 1]
            y = y.clamp_(0.0, 1.0)
        return y.view(b, n * model.temporal_stride, *y.shape[1:])

    def reset(self) -> None:
        """Forget the stream state."""
        self._memory.clear()


class TAEHV(nn.Module):
    """Tiny video autoencoder for the Wan 2.1 latent space (weight-compatible with ``taew2_1``).

    Holds weights only; per-stream state lives in :meth:`encoder_stream` / :meth:`decoder_stream` objects, so
    one instance serves any number of streams.

    Attributes:
        latent_channels: channels of a latent frame (16).
        temporal_stride: pixel frames per latent frame (4).
        spatial_stride: pixels per latent pixel along each axis (8).
        image_channels: 3 (RGB).
    """

    temporal_stride: int = 4
    spatial_stride: int = 8
    image_channels: int = 3

    def __init__(
        self,
        latent_channels: int = 16,
        encoder_width: int | Sequence[int] = 64,
        decoder_widths: Sequence[int] = DEFAULT_DECODER_WIDTHS,
    ) -> None:
        """Build the architecture (random initialisation; use :meth:`from_file` for trained weights).

        Args:
            latent_channels: latent channels (16 for Wan 2.1).
            encoder_width: channels of every encoder stage (64 published), or of each of its three stages (at
                1/2, 1/4 and 1/8 of the frame size): the first conv and the first stage's temporal pooling run
                at the first stage's width, each stage's stride-2 conv goes to its own width. The deeper stages
                are the cheap ones to widen (a quarter and a sixteenth of the first one's pixels, and one frame
                where the first has two).
            decoder_widths: channels of the decoder's three MemBlock stages and of its last conv
                ((256, 128, 64, 64) published).
        """
        super().__init__()
        if len(decoder_widths) != 4:
            raise ValueError(f"decoder_widths must have 4 entries, got {list(decoder_widths)}")
        widths = (encoder_width,) * 3 if isinstance(encoder_width, int) else tuple(encoder_width)
        if len(widths) != len(_ENCODER_TIME_STRIDES) or min(widths) < 1:
            raise ValueError(f"encoder_width must be one width or 3 positive ones, got {encoder_width!r}")
        self.latent_channels = latent_channels
        self.encoder_widths: tuple[int, ...] = widths
        self.decoder_widths = tuple(decoder_widths)

        prev = widths[0]
        enc: list[nn.Module] = [conv(self.image_channels, prev), nn.ReLU(inplace=True)]
        for stride, e in zip(_ENCODER_TIME_STRIDES, widths, strict=True):
            enc += [
                TPool(prev, stride),
                conv(prev, e, stride=2, bias=False),
                MemBlock(e, e),
                MemBlock(e, e),
                MemBlock(e, e),
            ]
            prev = e
        enc.append(conv(prev, latent_channels))
        self.encoder = nn.Sequential(*enc)

        n_f = self.decoder_widths
        dec: list[nn.Module] = [Clamp(), conv(latent_channels, n_f[0]), nn.ReLU(inplace=True)]
        for stage, stride in enumerate(_DECODER_TIME_STRIDES):
            width = n_f[stage]
            dec += [MemBlock(width, width), MemBlock(width, width), MemBlock(width, width)]
            dec += [
                nn.Upsample(scale_factor=2),
                TGrow(width, stride),
                conv(width, n_f[stage + 1], bias=False),
            ]
        dec += [nn.ReLU(inplace=True), conv(n_f[3], self.image_channels)]
        self.decoder = nn.Sequential(*dec)

        assert math.prod(_ENCODER_TIME_STRIDES) == self.temporal_stride == math.prod(_DECODER_TIME_STRIDES)
        self._compiled: Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]] | None = None
        self.channels_last = False

    @property
    def encoder_width(self) -> int | list[int]:
        """The constructor's ``encoder_width``: one int when every stage has the same width (the published
        form), else the three stage widths."""
        w = self.encoder_widths
        return w[0] if len(set(w)) == 1 else list(w)

    def use_channels_last(self, enabled: bool = True) -> None:
        """Run the streams in channels-last layout (weights converted once; inputs on entry): the fast layout
        for inference on a CPU (see :func:`_cpu_channels_last`; the encoder and decoder at 416x240 take 105 and
        71 ms per 4-frame block instead of 147 and 104 on two cores). Results equal the default layout's within
        float rounding. GPUs keep the default (Inductor picks their layout, :meth:`compile_streams`)."""
        self.channels_last = enabled
        fmt = torch.channels_last if enabled else torch.contiguous_format
        with torch.no_grad():
            for weight in self.parameters():
                if weight.ndim == 4:  # the convolutions' [C_out, C_in, kH, kW]
                    weight.data = weight.data.contiguous(memory_format=fmt)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [N, C, H, W] in the layout the streams run in."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def compile_streams(self, enabled: bool = True) -> None:
        """Run inference blocks of every stream through ``torch.compile`` (Inductor; fixed shapes per
        resolution, so one graph per encoder / decoder and stream start / steady state).

        Inductor picks the convolutions' memory layout for the whole network (channels-last on GPUs, with no
        per-convolution layout conversion) and fuses the elementwise work between them (ReLU, residual adds,
        the clamp). Compilation happens on the first blocks (seconds). Training streams stay eager.

        Encoder / decoder, stream start / steady state, each resolution (and possibly each instance) get graphs
        of the one compiled function; the recompile limit is raised so that a process holding several (a bench
        comparing configurations) does not fall back to eager for lack of cache entries. A machine where Inductor
        cannot compile (no C++ compiler for the CPU backend) runs eager, with one warning.
        """
        if enabled:
            dyn = torch._dynamo.config
            dyn.recompile_limit = max(dyn.recompile_limit, 32)
        self._compiled = _EagerFallback(torch.compile(_run_layers, dynamic=False)) if enabled else None

    def layer_runner(
        self, trainable: bool = False
    ) -> Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
        """The function a stream runs its layers with: compiled (:meth:`compile_streams`) or not."""
        return self._compiled if self._compiled is not None and not trainable else _run_layers

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights (the dtype the streams compute and return in)."""
        return next(self.parameters()).dtype

    def encoder_stream(self, trainable: bool = False) -> TAEHVEncoderStream:
        """A new encoder state for one stream (``trainable``: with autograd, for training)."""
        return TAEHVEncoderStream(self, trainable)

    def decoder_stream(self, trainable: bool = False) -> TAEHVDecoderStream:
        """A new decoder state for one stream (``trainable``: with autograd, for training)."""
        return TAEHVDecoderStream(self, trainable)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode a whole clip as one fresh stream: [B, T, 3, H, W] in [0, 1] -> [B, T // 4, C, H // 8, W // 8]."""
        return self.encoder_stream()(frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a whole clip as one fresh stream: [B, L, C, h, w] -> [B, 4 L, 3, 8 h, 8 w] in [0, 1]."""
        return self.decoder_stream()(latents)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        """Load weights strictly, converting them to this module's dtype.

        Raises:
            TAEHVWeightsError: keys missing from or unexpected in ``state_dict``, or shapes that differ; the
                message lists them (``source`` names the file in it).
        """
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        mismatched = [
            f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
            for k, v in state_dict.items()
            if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)
        ]
        if missing or unexpected or mismatched:
            parts = [f"TAEHV weights from {source} do not match the architecture"]
            if missing:
                parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
            if mismatched:
                parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
            raise TAEHVWeightsError("\n  ".join(parts))
        self.load_state_dict(dict(state_dict), strict=True)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        **config: object,
    ) -> TAEHV:
        """Build a TAEHV and load ``taew2_1.pth`` / ``taew2_1.safetensors`` (or a file saved from this class).

        Args:
            path: ``.pth``/``.pt`` (a plain state dict, read with ``weights_only=True``) or ``.safetensors``.
            dtype: dtype of the returned module (the published fp16 weights are converted to it).
            device: device of the returned module.
            **config: constructor arguments (``latent_channels``, ``encoder_width``, ``decoder_widths``).
        Raises:
            FileNotFoundError: no such file.
            TAEHVWeightsError: unreadable file, unknown suffix, or keys/shapes not matching (strict).
        """
        state = _read_state_dict(path)
        with torch.device("meta"):
            model = cls(**config)  # type: ignore[arg-type]
        model = model.to_empty(device=device).to(dtype=dtype)
        model.load_weights(state, source=os.fspath(path))
        logger.info("loaded TAEHV weights from %s (%s, %s)", os.fspath(path), dtype, device)
        return model.eval()


def _read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a plain state dict from a ``.pth``/``.pt`` or ``.safetensors`` file onto the CPU."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"TAEHV weight file not found: {name}")
    suffix = os.path.splitext(name)[1].lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(name, device="cpu")
        elif suffix in (".pth", ".pt"):
            state = torch.load(name, map_location="cpu", weights_only=True)
        else:
            raise TAEHVWeightsError(
                f"unknown TAEHV weight file type {suffix!r} ({name}): use .pth or .safetensors"
            )
    except TAEHVWeightsError:
        raise
    except Exception as exc:  # the readers raise assorted types for corrupt files
        raise TAEHVWeightsError(f"could not read TAEHV weights from {name}: {exc}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise TAEHVWeightsError(f"{name} does not hold a plain state dict (str -> tensor)")
    return dict(state)


def tiny_taehv(
    seed: int = 0,
    *,
    latent_channels: int = 16,
    encoder_width: int | Sequence[int] = 16,
    decoder_widths: Sequence[int] = TINY_DECODER_WIDTHS,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TAEHV:
    """A small randomly initialised TAEHV (same class, narrower) for tests and CPU runs.

    Deterministic for a given ``seed``: the weights are drawn from a seeded ``torch.Generator`` (the global RNG
    is neither used nor changed). The scale keeps activations O(1) and puts most decoded pixels inside (0, 1),
    so the output clamp does not hide differences.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.device("meta"):
        model = TAEHV(
            latent_channels=latent_channels, encoder_width=encoder_width, decoder_widths=decoder_widths
        )
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                bound = math.sqrt(3.0 / fan_in)  # variance 1 / fan_in
                module.weight.uniform_(-bound, bound, generator=gen)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1, generator=gen)
        last = model.decoder[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        last.bias.fill_(0.5)  # centre decoded pixels in [0, 1]
    return model.to(device=device, dtype=dtype).eval()


if TYPE_CHECKING:

    def _implements_protocol(model: TAEHV) -> VideoAutoencoder:
        return model
