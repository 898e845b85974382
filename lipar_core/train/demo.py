"""Train the embedded demo model: a small causal DiT, a small TAEHV and a style text encoder (one file).

``python -m lipar_core.train.demo --out DIR`` (``--device cuda`` on the GPU machine) trains, in order:

1. The autoencoder (TAEHV design, small widths) on 12-frame blocks of the training split, original frames and
   every style target alike (the decoder must draw sketches and pixel art as well as camera frames): L1 on
   pixels and on Sobel gradients, a latent-scale penalty that keeps latents near unit variance (the
   scheduler's noise is N(0, 1)), and latent jitter so that the decoder tolerates imperfect latents.
2. The editor: the causal DiT and the style embeddings, on rollouts of the model itself, exactly as it runs
   live: streams of several blocks, the sink + window KV cache, the step schedule
   ([400, 350, 250] -> t = 769.23, 729.17, 625.0), fresh noise between steps, the clean t = 0 pass writing
   the cache. For each block one denoising step (chosen at random) is run with gradients and its x0
   prediction is regressed on the latents of the procedurally styled input; the steps before it run without
   gradients from the model's own predictions, and the cache holds the model's own earlier outputs.
3. Held-out evaluation (:func:`evaluate`): the style classifier picks the prompted style, edge similarity
   to the input, LIPAR against the unpruned output.

The bundle (``demo.safetensors``): ``transformer.*``, ``autoencoder.*``, ``text.embeddings`` in float16,
with the architecture and vocabulary in the metadata (:func:`save_bundle`, :func:`load_bundle`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from lipar_core.autoencoders.taehv import TAEHV, MemBlock, TGrow, TPool
from lipar_core.bundle import bundle_train_config, load_bundle, save_bundle
from lipar_core.geometry import StreamGeometry
from lipar_core.models.transformer import CausalWanDiT
from lipar_core.scheduler import FlowMatchScheduler
from lipar_core.text.style_encoder import ORIGINAL, StyleTextEncoder
from lipar_core.train.data import StreamDataset, heldout_streams
from lipar_core.train.styles import STYLE_PROMPTS, apply_style, sobel

log = logging.getLogger(__name__)

DEMO_TRANSFORMER: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 64,
    "freq_dim": 64,
    "ffn_dim": 384,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
}
DEMO_AUTOENCODER: dict[str, Any] = {"encoder_width": 32, "decoder_widths": [64, 32, 16, 16]}


@dataclass
class DemoConfig:
    """Everything that defines a training run (saved with the bundle)."""

    # Widescreen with the 1.3B presets' aspect (832x480 halved), one latent frame (4 pixel frames) per block:
    # a block is gathered in 133 ms at 30 fps, so latency is one block's compute plus little (issue 16).
    height: int = 240
    width: int = 416
    latent_frames_per_block: int = 1
    sink_frames: int = 1
    window_frames: int = 8
    train_frames: int = 21
    # strength 0.09: sigma 0.33 -> 0.21 (shift 5), low enough that the model sees the input's detail (edges,
    # the pass-through edit) and high enough to repaint colour and texture
    denoising_steps: list[int] = field(default_factory=lambda: [90, 70, 50])
    shift: float = 5.0
    transformer: dict[str, Any] = field(default_factory=lambda: dict(DEMO_TRANSFORMER))
    autoencoder: dict[str, Any] = field(default_factory=lambda: dict(DEMO_AUTOENCODER))
    text_tokens: int = 4
    ae_steps: int = 1500
    ae_batch: int = 4
    # pixel frames per autoencoder sample, streamed as one; None: one latent frame (the temporal stride; runs
    # 1-9). Two latent frames (8) let every MemBlock see a real past: with one, the stages that run on one frame
    # per latent only ever saw the zero start-of-stream past, and their past weights never trained
    # (clear_untrained_memory)
    ae_frames: int | None = 8
    ae_crop: int = 128
    ae_lr: float = 1e-3
    ae_jitter: float = 0.05  # std of the noise added to latents before decoding in stage 1 (robust decoder)
    ae_mse: float = 0.0  # weight of a pixel MSE term in stage 1, beside L1 (PSNR is an MSE measure)
    # False: stage 1 trains the decoder only; the latents, so the editor's targets and the latent floor of the
    # LIPAR mask, stay exactly as they were (for a decoder grown by widen_autoencoder on a trained bundle)
    train_encoder: bool = True
    ae_seconds: float | None = None  # wall-clock budget of stage 1 (None: ae_steps decides alone)
    pool_streams: int = 48  # training streams generated once and sampled from
    dit_steps: int = 2500
    dit_seconds: float | None = None  # wall-clock budget of stage 2 (None: dit_steps decides alone)
    # the editor trains on frames resized to this square size; None: at the stream size (height x width)
    dit_size: int | None = None
    dit_blocks: int = 4
    dit_batch: int = 8  # streams rolled out together per step (one batched KV cache)
    dit_lr: float = 1e-3
    original_fraction: float = 0.15  # share of training streams whose target is the input itself
    # How often each edit is drawn, relative to 1 for an edit not named (:func:`edit_sampler`): in stage 1 over
    # every edit ("original" too: the camera frames themselves), in stage 2 over the styles (the pass-through's
    # share there is ``original_fraction``). E.g. {"original": 3} for sharper camera frames from the decoder,
    # {"comic_posterize": 3} for a style the editor learns slowly.
    edit_weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    @property
    def geometry(self) -> StreamGeometry:
        """The stream geometry of the run."""
        return StreamGeometry(self.height, self.width, latent_frames_per_block=self.latent_frames_per_block)


def vocabulary() -> dict[str, tuple[str, ...]]:
    """The edits the demo model learns (style name -> prompts, canonical first), in training order."""
    return {k: tuple(v) for k, v in STYLE_PROMPTS.items()}


def edit_names() -> list[str]:
    """Names of every learned edit: the styles, then ``original`` (pass-through)."""
    return [*vocabulary(), ORIGINAL]


def target_frames(name: str, frames: torch.Tensor) -> torch.Tensor:
    """The training target of edit ``name`` for float frames [T, 3, H, W] in [0, 1] (same shape)."""
    return frames if name == ORIGINAL else apply_style(name, frames)


def edit_sampler(cfg: DemoConfig, names: Sequence[str], rng: random.Random) -> Callable[[int], list[str]]:
    """A function that draws ``k`` edits of ``names`` (with replacement) at the weights of ``cfg.edit_weights``.

    Raises:
        ValueError: a weight names no known edit, or is negative or not finite, or every weight of ``names``
            is 0.
    """
    known = edit_names()
    for name, w in cfg.edit_weights.items():
        if name not in known:
            raise ValueError(f"edit weight for unknown edit {name!r}; the edits are {known}")
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"edit weight of {name!r} must be finite and >= 0, got {w}")
    weights = [float(cfg.edit_weights.get(n, 1.0)) for n in names]
    if not any(weights):
        raise ValueError(f"every edit of {list(names)} has weight 0")
    return lambda k: rng.choices(list(names), weights=weights, k=k)


def to_float_frames(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, H, W] in [0, 1] on ``device``."""
    return frames.to(device).permute(0, 3, 1, 2).float().div_(255.0)


def build_models(cfg: DemoConfig, device: torch.device) -> tuple[CausalWanDiT, TAEHV, torch.nn.Parameter]:
    """Fresh (seeded) DiT, autoencoder and style-embedding table [edits, L, text_dim] on ``device``."""
    torch.manual_seed(cfg.seed)
    wan = WanTransformer3DModel(**cfg.transformer).to(device)
    ae = TAEHV(**cfg.autoencoder).to(device)
    emb = torch.nn.Parameter(
        torch.randn(len(edit_names()), cfg.text_tokens, int(cfg.transformer["text_dim"]), device=device) * 0.5
    )
    return CausalWanDiT(wan), ae, emb


class StageClock:
    """When a training stage ends and its learning rate: ``steps`` steps or ``seconds`` of wall clock,
    whichever comes first, with a linear warm-up over the first ``warmup`` of the progress and a cosine decay
    to ``floor`` of the peak after it. Progress is max(step / steps, elapsed / seconds) in [0, 1]."""

    def __init__(self, steps: int, seconds: float | None, warmup: float = 0.05, floor: float = 0.02) -> None:
        if steps < 0 or (seconds is not None and seconds < 0):
            raise ValueError(f"steps and seconds must be >= 0, got {steps}, {seconds}")
        self.steps, self.seconds, self.warmup, self.floor = steps, seconds, warmup, floor
        self.start = time.perf_counter()

    def progress(self, step: int) -> float:
        """Fraction of the stage done before step ``step`` (0-based)."""
        p = step / self.steps if self.steps else 1.0
        if self.seconds is not None:
            p = max(p, (time.perf_counter() - self.start) / self.seconds if self.seconds else 1.0)
        return min(p, 1.0)

    def lr_factor(self, progress: float) -> float:
        """Multiplier of the peak learning rate at ``progress``."""
        if progress < self.warmup:
            return max(progress / self.warmup, 1e-3)
        q = (progress - self.warmup) / max(1.0 - self.warmup, 1e-9)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * q))

    def steps_of(self, opt: torch.optim.Optimizer, peaks: Sequence[float]) -> Iterator[int]:
        """Yield step numbers until the stage is over, setting each group's learning rate before each step."""
        step = 0
        with tqdm(total=self.steps, desc="steps", mininterval=10) as bar:
            while (p := self.progress(step)) < 1.0:
                for group, peak in zip(opt.param_groups, peaks, strict=True):
                    group["lr"] = peak * self.lr_factor(p)
                yield step
                step += 1
                bar.update()


def build_pool(cfg: DemoConfig, streams: int, blocks: int, seed: int, workers: int = 0) -> torch.Tensor:
    """A pool of training streams made once (generating them is slower than training on them):
    uint8 [streams, blocks * frames_per_block, H, W, 3]. ``workers`` > 0 makes them in that many processes
    (same streams, same order)."""
    fpb = cfg.geometry.pixel_frames_per_block
    data = StreamDataset("train", blocks, cfg.height, cfg.width, fpb, seed=seed, length=streams)
    loader = DataLoader(data, batch_size=None, num_workers=workers)
    return torch.stack([item.frames for item in tqdm(loader, total=streams, desc="streams", mininterval=10)])


def _gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 distance of the Sobel gradients of two [N, 3, H, W] images (channel by channel)."""
    n, c, h, w = a.shape
    ga, gb = sobel(a.reshape(n * c, 1, h, w)), sobel(b.reshape(n * c, 1, h, w))
    return sum((x - y).abs().mean() for x, y in zip(ga, gb, strict=True))  # type: ignore[return-value]


def train_autoencoder(
    cfg: DemoConfig, ae: TAEHV, pool: torch.Tensor, device: torch.device, steps: int | None = None
) -> list[float]:
    """Stage 1 (see the module docstring) on blocks of ``pool`` (:func:`build_pool`). Returns the loss per step."""
    clock = StageClock(
        cfg.ae_steps if steps is None else steps, cfg.ae_seconds if steps is None else None, 0.1
    )
    n_frames = cfg.ae_frames or ae.temporal_stride
    params = list(ae.parameters() if cfg.train_encoder else ae.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.ae_lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    draw_edits = edit_sampler(cfg, edit_names(), rng)
    losses: list[float] = []
    ae.train()
    for _ in clock.steps_of(opt, [cfg.ae_lr]):
        x = autoencoder_batch(cfg, pool, n_frames, draw_edits(cfg.ae_batch), rng, device)  # [B, T, 3, h, w]
        z = ae.encoder_stream(trainable=cfg.train_encoder)(x)
        z_noisy = z + cfg.ae_jitter * torch.randn_like(z)
        y = ae.decoder_stream(trainable=True)(z_noisy)
        flat_x, flat_y = x.flatten(0, 1), y.flatten(0, 1)
        loss = (
            (flat_y - flat_x).abs().mean()
            + cfg.ae_mse * (flat_y - flat_x).pow(2).mean()
            + 0.5 * _gradient_l1(flat_y, flat_x)
            + 0.01 * (z.pow(2).mean() - 1.0).abs()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    ae.eval()
    return losses


def autoencoder_batch(
    cfg: DemoConfig,
    pool: torch.Tensor,
    n_frames: int,
    edits: Sequence[str],
    rng: random.Random,
    device: torch.device,
) -> torch.Tensor:
    """One stage-1 batch: for each of ``edits``, ``n_frames`` consecutive frames of a random pool stream at a
    random ``cfg.ae_crop`` square crop (corners on the autoencoder's 8-px latent grid), turned into that edit's
    target.

    The crops are cut where the pool lives (keep it on the training device) and each edit is applied once to
    all of its crops together: the styles work frame by frame, so this equals styling crop by crop.

    Args:
        pool: uint8 [streams, frames, H, W, 3] (:func:`build_pool`).
        edits: the edit of each sample (length B).
    Returns:
        float [B, n_frames, 3, crop, crop] in [0, 1] on ``device``.
    """
    c, grid = cfg.ae_crop, TAEHV.spatial_stride
    if pool.shape[1] < n_frames:
        raise ValueError(f"samples of {n_frames} frames need pool streams that long, not {pool.shape[1]}")
    crops = []
    for _ in edits:
        stream = pool[rng.randrange(pool.shape[0])]
        start = rng.randrange(stream.shape[0] // n_frames) * n_frames
        top = rng.randrange(0, cfg.height - c + 1, grid)
        left = rng.randrange(0, cfg.width - c + 1, grid)
        crops.append(stream[start : start + n_frames, top : top + c, left : left + c])
    x = torch.stack(crops).to(device).permute(0, 1, 4, 2, 3).float().div_(255.0)  # [B, T, 3, c, c]
    out = torch.empty_like(x)
    for name in dict.fromkeys(edits):
        idx = torch.tensor([i for i, e in enumerate(edits) if e == name], device=device)
        out[idx] = target_frames(name, x[idx].flatten(0, 1)).view(len(idx), *x.shape[1:])
    return out


@torch.no_grad()
def autoencoder_psnr(
    ae: TAEHV, streams: dict[str, torch.Tensor], frames_per_block: int, device: torch.device
) -> dict[str, float]:
    """Reconstruction PSNR (dB, frames in [0, 1]) of whole streams (uint8 [T, H, W, 3]) through the streaming
    encoder and decoder, block by block as live: per stream for the original frames, and ``styled`` for the
    mean over every style target of every stream."""
    out: dict[str, float] = {}
    styled: list[float] = []
    for name, frames in streams.items():
        x = to_float_frames(frames, device)
        for edit in edit_names():
            target = target_frames(edit, x)
            y = _stream_round_trip(ae, target, frames_per_block)
            db = _psnr_db(y, target[: y.shape[0]])
            if edit == ORIGINAL:
                out[name] = db
            else:
                styled.append(db)
    out["styled"] = sum(styled) / max(len(styled), 1)
    return out


@torch.no_grad()
def memory_gain_db(
    ae: TAEHV, streams: dict[str, torch.Tensor], frames_per_block: int, device: torch.device
) -> dict[str, float]:
    """What the autoencoder's stream memory is worth, per stream (uint8 [T, H, W, 3]) of at least two blocks:
    the PSNR (dB) of the frames after the first block streamed as live (each block sees the previous one through
    the MemBlocks) minus that of the same blocks each coded as a new stream (a zero past, as the first block).
    Positive: the memory helps; clearly negative: the memory feeds the network something training never showed
    it (run 8: -1.6 dB on carphone, -2.4 on camera: past weights that never trained, clear_untrained_memory).

    Raises:
        ValueError: a stream shorter than two blocks.
    """
    out: dict[str, float] = {}
    for name, frames in streams.items():
        if frames.shape[0] < 2 * frames_per_block:
            raise ValueError(
                f"{name}: {frames.shape[0]} frames, the memory needs two blocks of {frames_per_block}"
            )
        x = to_float_frames(frames, device)
        streamed = _stream_round_trip(ae, x, frames_per_block)
        n = streamed.shape[0]
        # each block alone: a new stream per block, so every block starts from the zero past
        fresh = torch.cat(
            [
                _stream_round_trip(ae, x[i : i + frames_per_block], frames_per_block)
                for i in range(0, n, frames_per_block)
            ]
        )
        after_first = x[frames_per_block:n]
        out[name] = _psnr_db(streamed[frames_per_block:], after_first) - _psnr_db(
            fresh[frames_per_block:], after_first
        )
    return out


def _psnr_db(y: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR (dB) of frames in [0, 1] against ``x`` (120 dB at most: identical frames)."""
    return 10.0 * math.log10(1.0 / max(float(F.mse_loss(y, x)), 1e-12))


@torch.no_grad()
def _stream_round_trip(ae: TAEHV, frames: torch.Tensor, fpb: int) -> torch.Tensor:
    """Frames [T, 3, H, W] in [0, 1] (T a multiple of ``fpb``) through one encoder and one decoder stream, block
    by block as live: the decoded frames, same shape, in [0, 1]."""
    dec = ae.decoder_stream()
    return torch.cat([dec(z[None])[0] for z in _encode_stream(ae, frames, fpb)]).clamp(0.0, 1.0)


@torch.no_grad()
def _encode_stream(ae: TAEHV, frames: torch.Tensor, fpb: int) -> torch.Tensor:
    """Latents of a whole stream, block by block through one encoder stream: [blocks, F, C, h, w]."""
    enc = ae.encoder_stream()
    return torch.cat([enc(frames[None, i : i + fpb]) for i in range(0, frames.shape[0], fpb)])


def train_editor(
    cfg: DemoConfig,
    dit: CausalWanDiT,
    ae: TAEHV,
    emb: torch.nn.Parameter,
    pool: torch.Tensor,
    device: torch.device,
    steps: int | None = None,
) -> list[float]:
    """Stage 2 on the model's own rollouts over streams of ``pool`` (see the module docstring).

    Each step rolls out ``cfg.dit_batch`` streams of the pool together (random streams and edits, one batched
    KV cache). Returns the mean loss per step (MSE of the x0 prediction against the target latents).
    """
    clock = StageClock(cfg.dit_steps if steps is None else steps, cfg.dit_seconds if steps is None else None)
    size = (cfg.height, cfg.width) if cfg.dit_size is None else (cfg.dit_size, cfg.dit_size)
    geo = StreamGeometry(*size, latent_frames_per_block=cfg.latent_frames_per_block)
    fpb = geo.pixel_frames_per_block
    f_lat = geo.latent_frames_per_block
    sched = FlowMatchScheduler(shift=cfg.shift)
    timesteps = sched.timesteps(cfg.denoising_steps)
    params = [*dit.parameters(), emb]
    opt = torch.optim.AdamW(
        [{"params": list(dit.parameters()), "weight_decay": 0.01}, {"params": [emb], "weight_decay": 0.0}],
        lr=cfg.dit_lr,
    )
    rng = random.Random(cfg.seed + 1)
    names = edit_names()
    draw_styles = edit_sampler(cfg, names[:-1], rng)
    latents: dict[tuple[int, str], torch.Tensor] = {}  # (stream, edit) -> [blocks, F, C, h, w]

    def encoded(i: int, name: str) -> torch.Tensor:
        hit = latents.get((i, name))
        if hit is None:
            frames = to_float_frames(pool[i], device)
            if tuple(frames.shape[-2:]) != size:
                frames = F.interpolate(frames, size=size, mode="bilinear", antialias=True).clamp_(0.0, 1.0)
            hit = latents[(i, name)] = _encode_stream(ae, target_frames(name, frames), fpb)
        return hit

    losses: list[float] = []
    dit.train()
    for _ in clock.steps_of(opt, [cfg.dit_lr, cfg.dit_lr]):
        picks = [rng.randrange(pool.shape[0]) for _ in range(cfg.dit_batch)]
        edits = [ORIGINAL if rng.random() < cfg.original_fraction else draw_styles(1)[0] for _ in picks]
        e = torch.tensor([names.index(n) for n in edits], device=device)
        lat_in = torch.stack([encoded(i, ORIGINAL) for i in picks], dim=1)  # [blocks, B, F, C, h, w]
        lat_tgt = torch.stack([encoded(i, n) for i, n in zip(picks, edits, strict=True)], dim=1)
        blocks = lat_in.shape[0]
        cache = dit.new_cache(geo, cfg.sink_frames, cfg.window_frames, cfg.train_frames, batch=len(picks))
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for b in range(blocks):
            ctx = dit.begin_block(cache, b * f_lat)
            grad_step = rng.randrange(len(timesteps))
            x = sched.add_noise(lat_in[b], torch.randn_like(lat_in[b]), sched.sigma(timesteps[0]))
            x0 = x
            for k, t in enumerate(timesteps):
                sigma = sched.sigma(t)
                if k == grad_step:
                    cross = dit.text_kv_trainable(emb[e])
                    flow = dit.forward_block_trainable(x, [t] * f_lat, cache, cross, ctx, prefill=k == 0)
                    x0_pred = sched.x0_from_flow(x, flow, sigma)
                    loss = F.mse_loss(x0_pred, lat_tgt[b])
                    (loss / blocks).backward()
                    cache.detach_()  # the next pass writes the same buffers; its graph starts afresh
                    total += float(loss.detach())
                    x0 = x0_pred.detach()
                else:
                    with torch.no_grad():
                        cross_ng = dit.text_kv(emb[e].detach())
                        flow = dit.forward_block(x, [t] * f_lat, cache, cross_ng, ctx, prefill=k == 0)
                        x0 = sched.x0_from_flow(x, flow, sigma)
                if k + 1 < len(timesteps):
                    x = sched.add_noise(x0, torch.randn_like(x0), sched.sigma(timesteps[k + 1]))
            with torch.no_grad():
                cross_ng = dit.text_kv(emb[e].detach())
                dit.forward_block(x0, [0.0] * f_lat, cache, cross_ng, ctx, memory=True)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(total / blocks)
    dit.eval()
    return losses


def widen_autoencoder(
    ae: TAEHV, encoder_widths: Sequence[int] | None = None, decoder_widths: Sequence[int] | None = None
) -> TAEHV:
    """A copy of ``ae`` whose encoder and / or decoder stages are wider (each width at least the old one) and
    that encodes and decodes exactly as before: the old weights sit on the old channels, the new channels start
    from the default initialisation, and every weight from a new channel into an old one is 0, so the new
    channels only take part once training moves those weights (Net2Net-style growth of a trained autoencoder).
    The latents stay the same until the encoder trains, so the editor's targets and the LIPAR latent floor stay
    valid; with the decoder alone widened they stay valid for good.

    Args:
        ae: a trained autoencoder (any device; eval or train mode).
        encoder_widths: the new stage widths of the encoder, 3 entries (None: as they are).
        decoder_widths: the new ``decoder_widths``, 4 entries (None: as they are).
    Returns:
        A new TAEHV on ``ae``'s device, in eval mode.
    Raises:
        ValueError: wrong count, or a width below the old one.
    """
    enc_w = list(ae.encoder_widths if encoder_widths is None else encoder_widths)
    dec_w = list(ae.decoder_widths if decoder_widths is None else decoder_widths)
    for part, new_w, old_w in (("encoder", enc_w, ae.encoder_widths), ("decoder", dec_w, ae.decoder_widths)):
        if len(new_w) != len(old_w) or any(n < o for n, o in zip(new_w, old_w, strict=True)):
            raise ValueError(
                f"{part} widths {new_w} must be {len(old_w)} values >= the current {list(old_w)}"
            )
    dev = next(ae.parameters()).device
    new = TAEHV(ae.latent_channels, enc_w, dec_w).to(dev)
    with torch.no_grad():
        _embed_layers(ae.encoder, new.encoder, ae.image_channels)
        _embed_layers(ae.decoder, new.decoder, ae.latent_channels)
    return new.eval()


def memory_frames(ae: TAEHV, frames: int) -> dict[str, int]:
    """How many frames each MemBlock runs on for a sample of ``frames`` pixel frames (the encoder) and its
    ``frames // 4`` latent frames (the decoder): ``"encoder.9" -> 1``. A MemBlock on one frame sees only its
    zero start-of-stream past, so training on such samples never reaches the past half of its first conv.

    Raises:
        ValueError: ``frames`` is not a positive multiple of the temporal stride.
    """
    if frames < 1 or frames % ae.temporal_stride:
        raise ValueError(f"{frames} frames is not a positive multiple of {ae.temporal_stride}")
    out: dict[str, int] = {}
    for part, t in (("encoder", frames), ("decoder", frames // ae.temporal_stride)):
        for index, layer in enumerate(getattr(ae, part)):
            if isinstance(layer, TPool):
                t //= layer.stride
            elif isinstance(layer, TGrow):
                t *= layer.stride
            elif isinstance(layer, MemBlock):
                out[f"{part}.{index}"] = t
    return out


def clear_untrained_memory(ae: TAEHV, trained_frames: int = 4) -> list[str]:
    """Zero the past half of the first conv of every MemBlock that ran on one frame per sample when ``ae`` was
    trained on samples of ``trained_frames`` pixel frames (:func:`memory_frames`; runs 1-9 trained on 4).

    Such a block only ever saw a zero past, so those weights are still the random initialisation, while a stream
    feeds them the previous block's features from its second block on: noise the rest of the network never
    learned to expect (it cost 0.5-1.7 dB of streamed held-out PSNR on run 8). With them zero, every block
    decodes as the first one does, which is what training taught; a later training on longer samples
    (``DemoConfig.ae_frames``) then starts those weights from 0. In place.

    Returns:
        The cleared blocks (``"decoder.3"``, ...).
    """
    cleared = [name for name, t in memory_frames(ae, trained_frames).items() if t == 1]
    with torch.no_grad():
        for name in cleared:
            part, index = name.split(".")
            block = getattr(ae, part)[int(index)]
            first = block.conv[0]
            first.weight[:, first.in_channels // 2 :] = 0.0  # cat([x, past]): the past's channels
    return cleared


def _embed_layers(old_seq: nn.Sequential, new_seq: nn.Sequential, in_channels: int) -> None:
    """Copy every layer of ``old_seq`` onto the first channels of the same, wider layer of ``new_seq``
    (:func:`_embed_conv`). An activation's old channels are its first ``old`` of ``wide``; a TPool's input and a
    TGrow's output hold ``stride`` frames of ``wide`` channels each."""
    dev = next(new_seq.parameters()).device
    old, wide = in_channels, in_channels
    for a, b in zip(old_seq, new_seq, strict=True):
        in_idx = torch.arange(old, device=dev)
        if isinstance(a, nn.Conv2d):
            assert isinstance(b, nn.Conv2d)
            _embed_conv(a, b, torch.arange(a.out_channels, device=dev), in_idx)
            old, wide = a.out_channels, b.out_channels
        elif isinstance(a, MemBlock):
            assert isinstance(b, MemBlock)
            convs_a = [m for m in a.conv if isinstance(m, nn.Conv2d)]
            convs_b = [m for m in b.conv if isinstance(m, nn.Conv2d)]
            both = torch.cat([in_idx, in_idx + wide])  # cat([x, past])
            for k, (ca, cb) in enumerate(zip(convs_a, convs_b, strict=True)):
                _embed_conv(ca, cb, torch.arange(ca.out_channels, device=dev), both if k == 0 else in_idx)
        elif isinstance(a, TGrow | TPool):
            assert isinstance(b, type(a))
            stacked = (torch.arange(a.stride, device=dev)[:, None] * wide + in_idx[None]).flatten()
            grow = isinstance(a, TGrow)
            _embed_conv(a.conv, b.conv, stacked if grow else in_idx, in_idx if grow else stacked)


def _embed_conv(old: nn.Conv2d, new: nn.Conv2d, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
    """Put ``old``'s weights at rows ``out_idx`` and columns ``in_idx`` of ``new`` and zero the rest of those
    rows (nothing new flows into an old channel); the other rows keep their initialisation."""
    rows = new.weight[out_idx]
    rows.zero_()
    rows[:, in_idx] = old.weight
    new.weight[out_idx] = rows
    if old.bias is not None and new.bias is not None:
        new.bias[out_idx] = old.bias


def resume_from(path: Path, dit: CausalWanDiT, ae: TAEHV, emb: torch.nn.Parameter) -> None:
    """Copy a bundle's weights (float16 in the file) into freshly built models of the same architecture.

    Raises:
        ValueError: the bundle's architecture or vocabulary differs from this run's.
    """
    b = load_bundle(path)
    if b.text.names != edit_names():
        raise ValueError(f"{path} knows the edits {b.text.names}, this run trains {edit_names()}")
    dev = emb.device
    dit.wan.load_state_dict({k: v.to(dev) for k, v in b.transformer.state_dict().items()})
    ae.load_state_dict({k: v.to(dev) for k, v in b.autoencoder.state_dict().items()})
    with torch.no_grad():
        emb.copy_(b.text.embeddings.to(dev))
    log.info("resumed from %s", path)


def _save(path: Path, cfg: DemoConfig, dit: CausalWanDiT, ae: TAEHV, emb: torch.nn.Parameter) -> int:
    """Write the bundle of the current weights; returns its size in bytes."""
    return save_bundle(path, dit.wan, ae, StyleTextEncoder(vocabulary(), emb.detach().cpu()), asdict(cfg))


def _edit_weight(text: str) -> tuple[str, float]:
    """``--edit-weight`` value ``EDIT=W`` -> (edit, W)."""
    name, sep, weight = text.partition("=")
    try:
        return name, float(weight if sep else "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected EDIT=W with a number W, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train and write the bundle."""
    p = argparse.ArgumentParser(prog="python -m lipar_core.train.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (demo.safetensors, train.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ae-steps", type=int, default=None)
    p.add_argument("--ae-seconds", type=float, default=None, help="stage 1 wall-clock budget (s)")
    p.add_argument("--ae-batch", type=int, default=None)
    p.add_argument("--ae-lr", type=float, default=None, help="autoencoder peak learning rate")
    p.add_argument("--dit-steps", type=int, default=None)
    p.add_argument("--dit-seconds", type=float, default=None, help="stage 2 wall-clock budget (s)")
    p.add_argument(
        "--dit-size",
        type=int,
        default=None,
        help="editor training frame size (px, square; default: the stream's)",
    )
    p.add_argument("--ae-jitter", type=float, default=None, help="latent noise std in stage 1")
    p.add_argument(
        "--ae-frames", type=int, default=None, help="pixel frames per stage-1 sample (a multiple of 4)"
    )
    p.add_argument(
        "--clear-untrained-memory",
        action="store_true",
        help="zero the resumed autoencoder's never-trained past weights first (clear_untrained_memory)",
    )
    p.add_argument("--ae-mse", type=float, default=None, help="weight of the pixel MSE term in stage 1")
    p.add_argument(
        "--decoder-widths",
        type=lambda t: [int(v) for v in t.split(",")],
        default=None,
        metavar="W0,W1,W2,W3",
        help="grow the (resumed) decoder to these widths, decoding as before at the start (widen_autoencoder)",
    )
    p.add_argument(
        "--encoder-widths",
        type=lambda t: [int(v) for v in t.split(",")],
        default=None,
        metavar="W1,W2,W3",
        help="grow the (resumed) encoder's three stages to these widths, encoding as before at the start",
    )
    p.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="stage 1 trains the decoder only (the editor and the latent floor stay valid)",
    )
    p.add_argument("--dit-blocks", type=int, default=None, help="blocks per training stream")
    p.add_argument("--dit-batch", type=int, default=None, help="streams per editor step")
    p.add_argument("--dit-lr", type=float, default=None, help="editor peak learning rate")
    p.add_argument("--pool-streams", type=int, default=None)
    p.add_argument("--workers", type=int, default=0, help="processes that make the training streams")
    p.add_argument(
        "--edit-weight",
        action="append",
        default=[],
        type=_edit_weight,
        metavar="EDIT=W",
        help="draw this edit W times as often as an unnamed one (repeatable; see DemoConfig.edit_weights)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="start from this bundle's weights (e.g. --ae-steps 0 to train the editor further)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = DemoConfig(seed=args.seed)
    for key in (
        "ae_steps",
        "ae_seconds",
        "ae_batch",
        "ae_lr",
        "dit_steps",
        "dit_seconds",
        "dit_size",
        "dit_batch",
        "dit_lr",
        "pool_streams",
        "ae_jitter",
        "ae_frames",
        "ae_mse",
        "dit_blocks",
    ):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if cfg.ae_frames is not None and (cfg.ae_frames < 1 or cfg.ae_frames % TAEHV.temporal_stride):
        p.error(f"--ae-frames {cfg.ae_frames} is not a positive multiple of {TAEHV.temporal_stride}")
    cfg.edit_weights.update(args.edit_weight)
    cfg.train_encoder = not args.freeze_encoder
    try:  # unknown edits and bad weights fail before any work
        edit_sampler(cfg, edit_names(), random.Random(0))
    except ValueError as e:
        p.error(str(e))
    if args.resume is not None:  # the resumed bundle's autoencoder (its decoder may have been grown)
        cfg.autoencoder = dict(bundle_train_config(args.resume)["autoencoder"])
    dev = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    dit, ae, emb = build_models(cfg, dev)
    if args.resume is not None:
        resume_from(args.resume, dit, ae, emb)
    if args.clear_untrained_memory:
        if args.resume is None:
            p.error(
                "--clear-untrained-memory needs --resume (a fresh model has no untrained memory to clear)"
            )
        trained = bundle_train_config(args.resume).get("ae_frames") or ae.temporal_stride
        log.info("cleared the untrained past weights of %s", ", ".join(clear_untrained_memory(ae, trained)))
    if args.decoder_widths is not None or args.encoder_widths is not None:
        try:
            ae = widen_autoencoder(ae, args.encoder_widths, args.decoder_widths)
        except ValueError as e:
            p.error(str(e))
        cfg.autoencoder["encoder_width"] = ae.encoder_width
        cfg.autoencoder["decoder_widths"] = list(ae.decoder_widths)
    t0 = time.time()
    # on the training device: stage 1 cuts its crops there (uint8; 0.6 GB for 128 streams of 16 frames)
    pool = build_pool(cfg, cfg.pool_streams, cfg.dit_blocks, cfg.seed, workers=args.workers).to(dev)
    heldout = heldout_streams(2, cfg.height, cfg.width, cfg.geometry.pixel_frames_per_block)
    tp = time.time()
    ae_losses = train_autoencoder(cfg, ae, pool, dev)
    t1 = time.time()
    ae.requires_grad_(False)
    ae_psnr = autoencoder_psnr(ae, heldout, cfg.geometry.pixel_frames_per_block, dev)
    ae_memory = memory_gain_db(ae, heldout, cfg.geometry.pixel_frames_per_block, dev)
    log.info(
        "autoencoder: %d steps in %.0f s, held-out PSNR %s, memory gain %s",
        len(ae_losses),
        t1 - tp,
        ae_psnr,
        ae_memory,
    )
    _save(args.out / "demo-stage1.safetensors", cfg, dit, ae, emb)
    t1 = time.time()
    dit_losses = train_editor(cfg, dit, ae, emb, pool, dev)
    t2 = time.time()
    size = _save(args.out / "demo.safetensors", cfg, dit, ae, emb)

    def tail(xs: list[float]) -> float:
        k = max(1, len(xs) // 10)
        return sum(xs[-k:]) / k if xs else math.nan

    report: dict[str, Any] = {
        "config": asdict(cfg),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
        "pool_seconds": tp - t0,
        "autoencoder": {
            "seconds": t1 - tp,
            "steps": len(ae_losses),
            "final_loss": tail(ae_losses),
            "heldout_psnr_db": ae_psnr,
            "heldout_memory_gain_db": ae_memory,
            "losses": ae_losses[:: max(1, len(ae_losses) // 200)],
        },
        "editor": {
            "seconds": t2 - t1,
            "steps": len(dit_losses),
            "final_loss": tail(dit_losses),
            "losses": dit_losses[:: max(1, len(dit_losses) // 200)],
        },
        "bundle_bytes": size,
    }
    (args.out / "train.json").write_text(json.dumps(report, indent=1))
    log.info(
        "bundle %s (%.1f MB); autoencoder loss %.4f, editor loss %.4f (%d steps)",
        args.out / "demo.safetensors",
        size / 1e6,
        report["autoencoder"]["final_loss"],
        report["editor"]["final_loss"],
        len(dit_losses),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
