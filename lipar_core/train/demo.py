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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from tqdm import tqdm

from lipar_core.autoencoders.taehv import TAEHV
from lipar_core.bundle import load_bundle, save_bundle
from lipar_core.geometry import StreamGeometry
from lipar_core.models.transformer import CausalWanDiT
from lipar_core.scheduler import FlowMatchScheduler
from lipar_core.text.style_encoder import ORIGINAL, StyleTextEncoder
from lipar_core.train.data import StreamDataset
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

    height: int = 256
    width: int = 256
    latent_frames_per_block: int = 3
    sink_frames: int = 1
    window_frames: int = 8
    train_frames: int = 21
    # strength 0.15 (make_step_list): sigma 0.47 -> 0.34, an edit that keeps the input's structure
    denoising_steps: list[int] = field(default_factory=lambda: [150, 122, 94])
    shift: float = 5.0
    transformer: dict[str, Any] = field(default_factory=lambda: dict(DEMO_TRANSFORMER))
    autoencoder: dict[str, Any] = field(default_factory=lambda: dict(DEMO_AUTOENCODER))
    text_tokens: int = 4
    ae_steps: int = 1500
    ae_batch: int = 4
    ae_frames: int | None = (
        None  # frames per autoencoder sample; None: one latent frame (the temporal stride)
    )
    ae_crop: int = 128
    ae_lr: float = 1e-3
    pool_streams: int = 48  # training streams generated once and sampled from
    dit_steps: int = 2500
    dit_size: int = 128  # the editor trains on frames resized to this square size (the DiT is size-agnostic)
    dit_blocks: int = 3
    dit_lr: float = 1e-3
    original_fraction: float = 0.1  # share of training streams whose target is the input itself
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


def build_pool(cfg: DemoConfig, streams: int, blocks: int, seed: int) -> torch.Tensor:
    """A pool of training streams made once (generating them is slower than training on them):
    uint8 [streams, blocks * frames_per_block, H, W, 3]."""
    fpb = cfg.geometry.pixel_frames_per_block
    data = StreamDataset("train", blocks, cfg.height, cfg.width, fpb, seed=seed, length=streams)
    return torch.stack([item.frames for item in tqdm(data, total=streams, desc="streams", mininterval=10)])


def _gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 distance of the Sobel gradients of two [N, 3, H, W] images (channel by channel)."""
    n, c, h, w = a.shape
    ga, gb = sobel(a.reshape(n * c, 1, h, w)), sobel(b.reshape(n * c, 1, h, w))
    return sum((x - y).abs().mean() for x, y in zip(ga, gb, strict=True))  # type: ignore[return-value]


def train_autoencoder(
    cfg: DemoConfig, ae: TAEHV, pool: torch.Tensor, device: torch.device, steps: int | None = None
) -> list[float]:
    """Stage 1 (see the module docstring) on blocks of ``pool`` (:func:`build_pool`). Returns the loss per step."""
    steps = cfg.ae_steps if steps is None else steps
    n_frames = cfg.ae_frames or ae.temporal_stride
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.ae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.ae_lr, total_steps=max(steps, 1), pct_start=0.1
    )
    rng = random.Random(cfg.seed)
    names = edit_names()
    losses: list[float] = []
    ae.train()
    for _ in tqdm(range(steps), desc="autoencoder", mininterval=10):
        batch = []
        for _ in range(cfg.ae_batch):
            stream = pool[rng.randrange(pool.shape[0])]
            start = rng.randrange(stream.shape[0] // n_frames) * n_frames
            x = to_float_frames(stream[start : start + n_frames], device)  # [n_frames, 3, H, W]
            top = rng.randrange(0, cfg.height - cfg.ae_crop + 1, 8)
            left = rng.randrange(0, cfg.width - cfg.ae_crop + 1, 8)
            x = x[:, :, top : top + cfg.ae_crop, left : left + cfg.ae_crop]
            batch.append(target_frames(rng.choice(names), x))
        x = torch.stack(batch)  # [B, T, 3, h, w]
        z = ae.encoder_stream(trainable=True)(x)
        z_noisy = z + 0.1 * torch.randn_like(z)
        y = ae.decoder_stream(trainable=True)(z_noisy)
        flat_x, flat_y = x.flatten(0, 1), y.flatten(0, 1)
        loss = (
            (flat_y - flat_x).abs().mean()
            + 0.5 * _gradient_l1(flat_y, flat_x)
            + 0.01 * (z.pow(2).mean() - 1.0).abs()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    ae.eval()
    return losses


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

    Returns the mean loss per stream (MSE of the x0 prediction against the target latents).
    """
    steps = cfg.dit_steps if steps is None else steps
    geo = StreamGeometry(cfg.dit_size, cfg.dit_size, latent_frames_per_block=cfg.latent_frames_per_block)
    fpb = geo.pixel_frames_per_block
    f_lat = geo.latent_frames_per_block
    sched = FlowMatchScheduler(shift=cfg.shift)
    timesteps = sched.timesteps(cfg.denoising_steps)
    params = [*dit.parameters(), emb]
    opt = torch.optim.AdamW(
        [{"params": list(dit.parameters()), "weight_decay": 0.01}, {"params": [emb], "weight_decay": 0.0}],
        lr=cfg.dit_lr,
    )
    lr = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.dit_lr, total_steps=max(steps, 1), pct_start=0.05
    )
    rng = random.Random(cfg.seed + 1)
    names = edit_names()
    styles = names[:-1]
    latents: dict[tuple[int, str], torch.Tensor] = {}  # (stream, edit) -> [blocks, F, C, h, w]

    def encoded(i: int, name: str) -> torch.Tensor:
        hit = latents.get((i, name))
        if hit is None:
            frames = to_float_frames(pool[i], device)
            if frames.shape[-2:] != (cfg.dit_size, cfg.dit_size):
                frames = F.interpolate(
                    frames, size=(cfg.dit_size, cfg.dit_size), mode="bilinear", antialias=True
                ).clamp_(0.0, 1.0)
            hit = latents[(i, name)] = _encode_stream(ae, target_frames(name, frames), fpb)
        return hit

    losses: list[float] = []
    dit.train()
    for _ in tqdm(range(steps), desc="editor", mininterval=10):
        i = rng.randrange(pool.shape[0])
        name = ORIGINAL if rng.random() < cfg.original_fraction else rng.choice(styles)
        e = names.index(name)
        lat_in, lat_tgt = encoded(i, ORIGINAL), encoded(i, name)
        cache = dit.new_cache(geo, cfg.sink_frames, cfg.window_frames, cfg.train_frames)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for b in range(lat_in.shape[0]):
            ctx = dit.begin_block(cache, b * f_lat)
            grad_step = rng.randrange(len(timesteps))
            x = sched.add_noise(
                lat_in[b : b + 1], torch.randn_like(lat_in[b : b + 1]), sched.sigma(timesteps[0])
            )
            x0 = x
            for i, t in enumerate(timesteps):
                sigma = sched.sigma(t)
                if i == grad_step:
                    cross = dit.text_kv_trainable(emb[e : e + 1])
                    flow = dit.forward_block_trainable(x, [t] * f_lat, cache, cross, ctx, prefill=i == 0)
                    x0_pred = sched.x0_from_flow(x, flow, sigma)
                    loss = F.mse_loss(x0_pred, lat_tgt[b : b + 1])
                    (loss / lat_in.shape[0]).backward()
                    cache.detach_()  # the next pass writes the same buffers; its graph starts afresh
                    total += float(loss.detach())
                    x0 = x0_pred.detach()
                else:
                    with torch.no_grad():
                        cross_ng = dit.text_kv(emb[e : e + 1].detach())
                        flow = dit.forward_block(x, [t] * f_lat, cache, cross_ng, ctx, prefill=i == 0)
                        x0 = sched.x0_from_flow(x, flow, sigma)
                if i + 1 < len(timesteps):
                    x = sched.add_noise(x0, torch.randn_like(x0), sched.sigma(timesteps[i + 1]))
            with torch.no_grad():
                cross_ng = dit.text_kv(emb[e : e + 1].detach())
                dit.forward_block(x0, [0.0] * f_lat, cache, cross_ng, ctx, memory=True)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr.step()
        losses.append(total / lat_in.shape[0])
    dit.eval()
    return losses


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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train and write the bundle."""
    p = argparse.ArgumentParser(prog="python -m lipar_core.train.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (demo.safetensors, train.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ae-steps", type=int, default=None)
    p.add_argument("--dit-steps", type=int, default=None)
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
    cfg = DemoConfig(seed=args.seed)
    if args.ae_steps is not None:
        cfg.ae_steps = args.ae_steps
    if args.dit_steps is not None:
        cfg.dit_steps = args.dit_steps
    dev = torch.device(args.device)
    dit, ae, emb = build_models(cfg, dev)
    if args.resume is not None:
        resume_from(args.resume, dit, ae, emb)
    t0 = time.time()
    pool = build_pool(cfg, cfg.pool_streams, cfg.dit_blocks, cfg.seed)
    tp = time.time()
    ae_losses = train_autoencoder(cfg, ae, pool, dev)
    t1 = time.time()
    ae.requires_grad_(False)
    dit_losses = train_editor(cfg, dit, ae, emb, pool, dev)
    t2 = time.time()
    size = save_bundle(
        args.out / "demo.safetensors",
        dit.wan,
        ae,
        StyleTextEncoder(vocabulary(), emb.detach().cpu()),
        asdict(cfg),
    )

    def tail(xs: list[float]) -> float:
        k = max(1, len(xs) // 10)
        return sum(xs[-k:]) / k if xs else math.nan

    report: dict[str, Any] = {
        "config": asdict(cfg),
        "device": str(dev),
        "pool_seconds": tp - t0,
        "autoencoder": {
            "seconds": t1 - tp,
            "final_loss": tail(ae_losses),
            "losses": ae_losses[:: max(1, len(ae_losses) // 200)],
        },
        "editor": {
            "seconds": t2 - t1,
            "final_loss": tail(dit_losses),
            "losses": dit_losses[:: max(1, len(dit_losses) // 200)],
        },
        "bundle_bytes": size,
    }
    (args.out / "train.json").write_text(json.dumps(report, indent=1))
    log.info(
        "bundle %s (%.1f MB); autoencoder loss %.4f, editor loss %.4f",
        args.out / "demo.safetensors",
        size / 1e6,
        report["autoencoder"]["final_loss"],
        report["editor"]["final_loss"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
