"""StreamEditor: edits one video stream block by block.

One object per stream (a browser session, a file). It owns everything that persists across blocks: the
self-attention KV cache, the autoencoder stream states, the prompt conditioning (cross-attention K/V), the
noise generator and the block counter. The models themselves (:class:`~lipar_core.presets.EditorModels`) are
shared by all streams of a worker process.

Per block (LIPAR.md §2.5): encode 12 frames to 3 latents, noise them to the first timestep, run the denoising
passes with fresh seeded noise between them, run the clean t = 0 pass that writes the KV cache, decode.

Threading: a StreamEditor is used by one thread at a time (the worker's loop). ``set_prompt``, ``set_params``
and ``reset`` only record the change; it is applied at the start of the next :meth:`process_block`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lipar_core.lipar.config import LiparConfig
from lipar_core.lipar.mask import PruneMasker
from lipar_core.lipar.prune import KeepSet, PendingKeepSet, padded_count
from lipar_core.lipar.restore import RestorationBuffer
from lipar_core.models.graphs import GraphedDiT
from lipar_core.protocol import MAX_BLEND_BLOCKS as MAX_BLEND_BLOCKS  # defined with the contract's limits
from lipar_core.protocol import BlockStats as BlockStats  # the one stats type, re-exported here
from lipar_core.protocol import Transition as Transition
from lipar_core.scheduler import make_step_list
from lipar_core.text.style_encoder import StyleTextEncoder
from lipar_core.timing import StageHandle, StageTimer, on_device
from lipar_core.video_io import fit_frames

if TYPE_CHECKING:
    from lipar_core.models.transformer import BlockContext, CrossKV
    from lipar_core.presets import EditorModels
    from lipar_core.protocol import BlockEditor, SubmittedBlock

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    prompt: str | None = None
    transition: Transition = "cut"
    blend_blocks: int = 0
    seed: int | None = None
    steps: list[int] | None = None
    reset: bool = False


@dataclass
class _Blend:
    start: torch.Tensor  # [1, L, text_dim]
    end: torch.Tensor
    blocks: int
    done: int = 0


@dataclass
class _EncodedBlock:
    """One block after the encode and mask stages (:meth:`StreamEditor._encode_stage`), all on the device
    except ``mask_host``.

    Attributes:
        x_in: model frames [1, T, 3, height, width] in [0, 1] (float32).
        latents: [1, F, C, h, w] in the DiT dtype, F = latent frames per block.
        keep_grid: which tokens to recompute, [1, F, gh, gw] bool; None without LIPAR.
        mask_host: ``keep_grid[0]`` copied to the host (pinned, non-blocking on CUDA) for the stats; None
            without LIPAR.
        pending: the kept-token set on its way to the host; None without LIPAR.
    """

    x_in: torch.Tensor
    latents: torch.Tensor
    keep_grid: torch.Tensor | None = None
    mask_host: torch.Tensor | None = None
    pending: PendingKeepSet | None = None


class StreamEditor:
    """Edits one stream.

    Args:
        models: the shared model bundle of the worker.
        prompt: the initial prompt.
        seed: noise seed (the same seed and input give the same output).
        steps: denoising step values (default: the preset's), e.g. [400, 350, 250].
        lipar: LIPAR settings (default: the preset's ``lipar`` section). ``lipar.m`` sets the attention window
            whether or not pruning is enabled; None there keeps the stream's sink/window frames.
        cuda_graphs: replay DiT passes from CUDA graphs (default: ``runtime.cuda_graphs`` on a CUDA device).
    """

    def __init__(
        self,
        models: EditorModels,
        prompt: str,
        seed: int = 0,
        steps: list[int] | None = None,
        lipar: LiparConfig | None = None,
        cuda_graphs: bool | None = None,
        pass_unknown: bool = True,
    ) -> None:
        self.models = models
        self.pass_unknown = pass_unknown
        cfg = models.config
        self.geometry = models.geometry
        self.height = self.geometry.height
        self.width = self.geometry.width
        self.frames_per_block = self.geometry.pixel_frames_per_block
        self.device = models.device
        self.dtype = models.dtype
        self.lipar = lipar if lipar is not None else LiparConfig.model_validate(cfg.lipar)
        sink, window = (
            self.lipar.m if self.lipar.m is not None else (cfg.stream.sink_frames, cfg.stream.window_frames)
        )
        if self.lipar.enabled and sink > self.geometry.token_frames_per_block:
            raise ValueError(
                f"with LIPAR the attention sink ({sink} frames) must fit in the first block "
                f"({self.geometry.token_frames_per_block} frames), which is never pruned"
            )
        self.cache = models.dit.new_cache(self.geometry, sink, window, cfg.stream.train_frames)
        use_graphs = cfg.runtime.cuda_graphs if cuda_graphs is None else cuda_graphs
        # One set of graphs per worker (and cache shape), shared by all its streams: see graphs.py.
        self.graphs: GraphedDiT | None = (
            models.graph_runner(self.cache) if use_graphs and self.device.type == "cuda" else None
        )
        self.masker = PruneMasker(
            self.lipar, self.geometry, compile=cfg.runtime.compile_mask and self.device.type == "cuda"
        )
        self.restoration = RestorationBuffer((self.geometry.patch[1], self.geometry.patch[2]))
        self.encoder = models.autoencoder.encoder_stream()
        self.decoder = models.autoencoder.decoder_stream()
        self.seed = seed
        self.steps = list(steps) if steps is not None else list(cfg.scheduler.denoising_steps)
        self._validate_steps(self.steps)
        self.prompt = self._check_prompt(prompt)
        self._text = models.text.encode(self.prompt)
        self.passing_through = self._passes_through(self.prompt)
        self._text_in_use = self._text
        self._cross: CrossKV = models.dit.text_kv(self._text)
        self._blend: _Blend | None = None
        self._pending = _Pending()
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(seed)
        self.block_index = 0
        self.frame_index = 0
        self.last_latents: torch.Tensor | None = None  # the last block's edited latents [1, F, C, h, w]
        self._encode_stream: torch.cuda.Stream | None = None  # CUDA: the encoder's own stream (lazily)
        self._decode_stream: torch.cuda.Stream | None = None  # CUDA: the decoder's own stream (lazily)

    # ------------------------------------------------------------------ control (any time)
    @staticmethod
    def _check_prompt(prompt: str) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        return prompt

    def _passes_through(self, prompt: str) -> bool:
        """Whether ``prompt`` is unknown to a fixed-vocabulary model (one with a :class:`StyleTextEncoder`),
        whose blocks then return their input unchanged without running the model (``pass_unknown``)."""
        text = self.models.text
        return self.pass_unknown and isinstance(text, StyleTextEncoder) and not text.match(prompt).known

    def _validate_steps(self, steps: list[int]) -> None:
        n = self.models.scheduler.num_train_timesteps
        if (
            not steps
            or any(not 1 <= s <= n for s in steps)
            or any(a <= b for a, b in itertools.pairwise(steps))
        ):
            raise ValueError(f"steps must be strictly decreasing values in [1, {n}], got {steps}")

    def set_prompt(self, prompt: str, transition: Transition = "cut", blend_blocks: int = 0) -> None:
        """Change the prompt at the next block boundary.

        ``cut``: reset the stream's caches (KV cache, autoencoder states, block counter), as a new stream
        with the new prompt; the first block after it is computed whole.
        ``smooth``: keep the self-attention KV cache and autoencoder states, switch the text conditioning;
        with ``blend_blocks`` = N > 0 the prompt embedding is interpolated linearly from the old to the new
        one over the next N blocks (the N-th block uses the new prompt alone).
        """
        self._check_prompt(prompt)
        if transition not in ("cut", "smooth"):
            raise ValueError(f"transition must be 'cut' or 'smooth', got {transition!r}")
        if not 0 <= blend_blocks <= MAX_BLEND_BLOCKS:
            raise ValueError(f"blend_blocks must be in [0, {MAX_BLEND_BLOCKS}], got {blend_blocks}")
        self._pending.prompt = prompt
        self._pending.transition = transition
        self._pending.blend_blocks = blend_blocks

    def set_params(
        self, seed: int | None = None, strength: float | None = None, steps: int | None = None
    ) -> None:
        """Change the noise seed and/or the edit strength and number of steps at the next block.

        ``strength`` in (0, 1] is the first denoising step over 1000 (default 0.4); ``steps`` in [1,
        :data:`~lipar_core.protocol.MAX_STEPS`].
        Giving one of strength/steps keeps the other's current value: the latest one set, even when it is not
        applied yet (two changes before a block both count). Raises ValueError on bad values.
        """
        if seed is not None:
            if not 0 <= seed < 2**63:
                raise ValueError("seed must be in [0, 2**63)")
            self._pending.seed = seed
        if strength is not None or steps is not None:
            n = self.models.scheduler.num_train_timesteps
            current = self._pending.steps if self._pending.steps is not None else self.steps
            s = strength if strength is not None else current[0] / n
            k = steps if steps is not None else len(current)
            new = make_step_list(s, k, n)
            self._validate_steps(new)
            self._pending.steps = new

    def reset(self) -> None:
        """Restart the stream at the next block (caches and counters cleared, prompt kept)."""
        self._pending.reset = True

    # ------------------------------------------------------------------ block loop (worker thread)
    def _apply_pending(self) -> None:
        p = self._pending
        self._pending = _Pending()
        if p.seed is not None:
            self.seed = p.seed
            self._gen.manual_seed(p.seed)
        if p.steps is not None:
            self.steps = p.steps
        if p.prompt is not None:
            new_text = self.models.text.encode(p.prompt)
            if p.transition == "smooth" and p.blend_blocks > 0:
                self._blend = _Blend(start=self._current_text(), end=new_text, blocks=p.blend_blocks)
            else:
                self._blend = None
                self._cross = self.models.dit.text_kv(new_text)
                self._text_in_use = new_text
            self._text = new_text
            self.prompt = p.prompt
            if p.transition == "cut":
                p.reset = True
            was, self.passing_through = self.passing_through, self._passes_through(p.prompt)
            if was and not self.passing_through:
                p.reset = True  # the model did not follow the stream while it passed through: start afresh
        if p.reset:
            self._restart()

    def _current_text(self) -> torch.Tensor:
        """The prompt embedding the last block used (mid-blend: the interpolated one)."""
        return self._text_in_use

    def _restart(self) -> None:
        self.cache.reset()
        self.masker.reset()
        self.restoration.reset()
        self.encoder.reset()
        self.decoder.reset()
        self._gen.manual_seed(self.seed)
        self.block_index = 0
        self.frame_index = 0

    def _pass(
        self,
        x: torch.Tensor,
        timesteps: list[float],
        cross: CrossKV,
        ctx: BlockContext,
        keep: KeepSet | None,
        recovery: str,
        memory: bool = False,
        prefill: bool = False,
    ) -> torch.Tensor:
        """One DiT pass of this stream (from a CUDA graph when enabled and possible)."""
        if self.graphs is not None:
            return self.graphs.forward_block(
                x, timesteps, self.cache, cross, ctx, keep, recovery, memory, prefill
            )
        return self.models.dit.forward_block(
            x, timesteps, self.cache, cross, ctx, keep, recovery, memory, prefill
        )

    def bucket_sizes(self) -> list[int]:
        """Every token count a pruned pass can run with (:func:`padded_count` of each partial kept count): the
        shapes :meth:`prepare_graphs` captures."""
        n = self.geometry.tokens_per_block
        return sorted({padded_count(k, n, self.lipar.bucket) for k in range(1, n)})

    @torch.no_grad()
    def prepare_graphs(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Capture every CUDA graph this stream's settings can replay, before any stream needs one.

        Runs the stream's first block on random frames (which loads every lazily initialised kernel), then
        captures the graph of every pass kind (first denoising pass, later denoising passes, the clean pass) for
        a stream's first block (unpruned, it writes the attention sink) and, at each later block position whose
        attended prefix differs (the ring filling up, then full), for every kept-token bucket and for the
        unpruned block. Graphs are shared by every stream of the worker with this cache
        shape (:meth:`EditorModels.graph_runner`) and no longer depend on timesteps, so afterwards no session,
        prune rate, strength or step count captures while streaming (another ``recovery`` or ``m`` override
        still captures on first use). Leaves the stream reset.

        Args:
            progress: called with (graphs prepared so far, graphs to prepare) after each one.
        Returns:
            The number of graphs captured (0 without CUDA graphs).
        """
        if self.graphs is None:
            return 0
        with on_device(self.device):
            return self._prepare_graphs(progress)

    def _prepare_graphs(self, progress: Callable[[int, int], None] | None) -> int:
        assert self.graphs is not None
        g = torch.Generator().manual_seed(0)
        shape = (self.frames_per_block, self.height, self.width, 3)
        self._restart()
        before = self.graphs.captures
        frames = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        self.process_block(frames)  # a first block: captures the passes it runs
        geo = self.geometry
        f, (gh, gw) = geo.token_frames_per_block, geo.token_grid
        keeps: list[KeepSet | None] = [None]
        if self.lipar.enabled:
            n = geo.tokens_per_block
            for pad in self.bucket_sizes():
                mask = torch.zeros(n, dtype=torch.bool, device=self.device)
                mask[: min(pad, n - 1)] = True
                keeps.append(KeepSet.from_mask(mask.view(f, gh, gw), self.lipar.bucket))
        kinds = [(True, False, self.steps[0]), (False, False, self.steps[-1]), (False, True, 0.0)]
        # A stream's first block (frame 0: it writes the sink, and LIPAR never prunes it), then every later
        # position whose attended prefix differs.
        positions: list[int] = [0]
        frame, seen = self.frame_index, set()
        while (valid := self.cache.plan(frame).valid_frames) not in seen:
            seen.add(valid)
            positions.append(frame)
            frame += f
        total, done = len(kinds) + (len(positions) - 1) * len(keeps) * len(kinds), 0
        self.graphs.stage.attach(self.cache)
        self.cache.has_prev = True
        for frame in positions:
            ctx = self.models.dit.begin_block(self.cache, frame)
            for keep in keeps if frame > 0 else [None]:
                for prefill, memory, t in kinds:
                    self.graphs.prepare(
                        self.cache, self._cross, ctx, keep, self.lipar.recovery, memory, prefill, t
                    )
                    done += 1
                    if progress is not None:
                        progress(done, total)
        self._restart()
        return self.graphs.captures - before

    def _to_model_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, H, W, 3] (any size) -> float [1, T, 3, height, width] in [0, 1] on the device.

        Frames of another aspect ratio are centre-cropped to the model's aspect, then resized (bilinear,
        antialiased).
        """
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {tuple(frames.shape)} {frames.dtype}")
        if frames.shape[0] != self.frames_per_block:
            raise ValueError(f"a block has {self.frames_per_block} frames, got {frames.shape[0]}")
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        x = fit_frames(x, self.height, self.width)
        return x.unsqueeze(0)

    def process_block(
        self, frames: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, BlockStats]:
        """Edit the next block of the stream (:meth:`submit_block` and wait for its result).

        Args:
            frames: uint8 [T, H_in, W_in, 3] RGB, T = :attr:`frames_per_block`; any resolution (resized).
            mask: for ``mask_source: external``, which pixels changed, [T, H, W] (nonzero = changed) at the
                model resolution.
        Returns:
            (frames_out, stats): frames_out uint8 [T_out, height, width, 3] on the CPU (T_out = T with the
            tiny autoencoder; the Wan VAE returns 3 fewer frames for the stream's first block).
        """
        return self.submit_block(frames, mask).result()

    @torch.no_grad()
    def submit_block(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> BlockTicket:
        """Queue the next block of the stream; the output comes from :meth:`BlockTicket.result`.

        On CUDA, the encoder and the decoder have streams of their own. The block's frames upload, encode and
        get their LIPAR mask on the encoder's stream, so this happens while the previous block (of this stream or
        of another session) still runs its DiT passes on the current stream, and the block's one host wait (its
        kept-token count) does not wait for those passes; the DiT passes then queue on the current stream right
        behind the previous block's, and the decoder runs on its own stream after them. The host returns once
        the DiT's work is queued, so the caller can submit the next block, and this block decodes while the
        next one's run. Tickets of one stream must be collected in order. On the CPU everything runs before this
        returns. Arguments as in :meth:`process_block`.

        Stages, in order: :meth:`_encode_stage` (frames -> latents and LIPAR mask), :meth:`_blend_prompt`,
        :meth:`_denoise` (the denoising passes and the clean KV-cache pass), :meth:`_decode_stage`, then
        :meth:`_finish_block` (stats and counters).

        Runs with the editor's device current (the caller's current device may be another GPU), so "the current
        stream" above is always this device's.
        """
        with on_device(self.device):
            return self._submit_block(frames, mask)

    def _submit_block(self, frames: torch.Tensor, mask: torch.Tensor | None) -> BlockTicket:
        self._apply_pending()
        if self.passing_through:
            return self._pass_through(frames)
        if self.graphs is not None:
            self.graphs.stage.attach(self.cache)  # this stream's cache into the shared graphs' buffers
        timer = StageTimer(self.device)
        total = timer.start("total")
        block = self._encode_stage(frames, mask, timer)
        with timer.stage("dit"):
            # Host work that does not depend on the kept count runs while the device computes the mask.
            cross = self._blend_prompt()
            x0, keep = self._denoise(block, cross)
        out, done = self._decode_stage(x0, timer, total)
        stats = self._finish_block(frames, out, keep, block)
        return BlockTicket(out, stats, timer, done)

    def _pass_through(self, frames: torch.Tensor) -> BlockTicket:
        """A block of a prompt the model does not know: the input at the model's size, uint8 [T, height, width,
        3] on the host, with no model work (stats: ``passthrough`` time only, nothing pruned or recomputed)."""
        timer = StageTimer(self.device)
        total = timer.start("total")
        with timer.stage("passthrough"):
            x = self._to_model_frames(frames)[0]  # [T, 3, H, W] in [0, 1]
            out = _to_host(x.permute(0, 2, 3, 1).mul(255.0).round_().clamp_(0, 255).to(torch.uint8))
        timer.stop(total)
        stats = BlockStats(
            index=self.block_index,
            ms={},
            frames_in=int(frames.shape[0]),
            frames_out=int(out.shape[0]),
            prompt=self.prompt,
        )
        done = None
        if out.is_pinned() and self.device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
        return BlockTicket(out, stats, timer, done)

    def _encode_stage(
        self, frames: torch.Tensor, mask: torch.Tensor | None, timer: StageTimer
    ) -> _EncodedBlock:
        """Upload, encode and mask a block; on CUDA on the encoder's own stream, which the current stream then
        waits for (an event, no host wait).

        Args:
            frames: uint8 [T, H_in, W_in, 3] RGB on any device, T = :attr:`frames_per_block`.
            mask: external change mask [T, H, W] at the model resolution, or None.
            timer: the block's stage timer (``encode`` and ``mask`` stages).
        Returns:
            The encoded block; its device tensors are safe to read on the current stream.
        """
        if self.device.type != "cuda":
            return self._encode_and_mask(frames, mask, timer)
        main = torch.cuda.current_stream(self.device)
        if self._encode_stream is None:
            self._encode_stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._encode_stream):
            block = self._encode_and_mask(frames, mask, timer)
            encoded = torch.cuda.Event()
            encoded.record()
        main.wait_event(encoded)
        # made on the encoder's stream, read on this one: the allocator must not reuse them before
        pending = block.pending
        for made in (
            block.x_in,
            block.latents,
            block.keep_grid,
            pending.padded if pending is not None else None,
        ):
            if made is not None:
                made.record_stream(main)
        return block

    def _blend_prompt(self) -> CrossKV:
        """The cross-attention K/V for this block: mid-blend, the prompt embedding interpolated linearly from
        the old one ([1, L, text_dim]) to the new one by ``(done + 1) / blocks`` (device work only, no host
        wait); otherwise the current prompt's."""
        if self._blend is not None:
            b = self._blend
            w = min(1.0, (b.done + 1) / b.blocks)
            self._text_in_use = torch.lerp(b.start.float(), b.end.float(), w).to(b.end.dtype)
            self._cross = self.models.dit.text_kv(self._text_in_use)
        return self._cross

    def _denoise(self, block: _EncodedBlock, cross: CrossKV) -> tuple[torch.Tensor, KeepSet | None]:
        """The block's DiT work on the current stream: noise the latents to the first timestep, run one pass
        per denoising step (fresh seeded noise between them; pruned tokens restored from the previous block),
        then the clean t = 0 pass that writes the KV cache.

        Waits on the host once, for the kept-token count (:meth:`PendingKeepSet.result`), after the noise is
        queued.

        Args:
            block: the encoded block (latents [1, F, C, h, w], F = latent frames per block).
            cross: the prompt's cross-attention K/V (:meth:`_blend_prompt`).
        Returns:
            (x0, keep): the edited latents [1, F, C, h, w] in the DiT dtype, and the kept-token set (None without
            LIPAR).
        """
        sched = self.models.scheduler
        recovery = self.lipar.recovery
        lat = block.latents
        ctx = self.models.dit.begin_block(self.cache, self.frame_index)
        timesteps = sched.timesteps(self.steps)
        n_frames = lat.shape[1]
        x = sched.add_noise(lat, self._noise_like(lat), sched.sigma(timesteps[0]))
        keep = block.pending.result() if block.pending is not None else None  # the block's one host wait
        x0 = lat
        pruned = keep is not None and not keep.full
        for i, t in enumerate(timesteps):
            sigma = sched.sigma(t)
            if keep is not None and keep.n_keep == 0:
                # Nothing changed: no pass runs; the first pass still lays the K/V duplicates.
                if i == 0:
                    self._pass(x, [t] * n_frames, cross, ctx, keep, recovery, prefill=True)
                x0 = x
            else:
                flow = self._pass(x, [t] * n_frames, cross, ctx, keep, recovery, prefill=i == 0)
                x0 = sched.x0_from_flow(x, flow, sigma)
            if pruned:
                assert block.keep_grid is not None
                x0 = self.restoration.fill(x0, block.keep_grid)
            if i + 1 < len(timesteps):
                x = sched.add_noise(x0, self._noise_like(x0), sched.sigma(timesteps[i + 1]))
        self.restoration.commit(x0)
        self.last_latents = x0
        # The clean t = 0 pass writes the KV cache (and the duplication source of the next block).
        self._pass(x0, [0.0] * n_frames, cross, ctx, keep, recovery, memory=True)
        return x0, keep

    def _noise_like(self, x: torch.Tensor) -> torch.Tensor:
        """Seeded standard normal noise of ``x``'s shape, drawn in float32 from the stream's generator (the
        same seed gives the same noise in every dtype), cast to ``x``'s dtype."""
        noise = torch.randn(x.shape, generator=self._gen, device=self.device, dtype=torch.float32)
        return noise.to(x.dtype)

    def _decode_stage(
        self, x0: torch.Tensor, timer: StageTimer, total: StageHandle
    ) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Decode the edited latents [1, F, C, h, w] into uint8 [T_out, height, width, 3] host frames; on CUDA on
        the decoder's own stream after the DiT's work (an event, no host wait): ready once the returned event has
        completed."""
        to_decode = x0.to(self.models.autoencoder_dtype)
        if self.device.type != "cuda":
            return self._decode(to_decode, timer, total)
        if self._decode_stream is None:
            self._decode_stream = torch.cuda.Stream(self.device)
        latents_ready = torch.cuda.Event()
        latents_ready.record()
        side = self._decode_stream
        side.wait_event(latents_ready)
        with torch.cuda.stream(side):
            to_decode.record_stream(side)  # the allocator keeps it until the decode has read it
            return self._decode(to_decode, timer, total)

    def _finish_block(
        self, frames: torch.Tensor, out: torch.Tensor, keep: KeepSet | None, block: _EncodedBlock
    ) -> BlockStats:
        """The block's stats (``ms`` filled in by :meth:`BlockTicket.result`); advances the prompt blend and the
        block and latent-frame counters."""
        stats = BlockStats(
            index=self.block_index,
            ms={},
            prune_ratio=keep.prune_ratio if keep is not None else 0.0,
            token_mask=block.mask_host,
            frames_in=int(frames.shape[0]),
            frames_out=int(out.shape[0]),
            prompt=self.prompt,
        )
        if self._blend is not None:
            self._blend.done += 1
            if self._blend.done >= self._blend.blocks:
                self._blend = None
        self.block_index += 1
        self.frame_index += block.latents.shape[1]
        return stats

    def _encode_and_mask(
        self, frames: torch.Tensor, mask: torch.Tensor | None, timer: StageTimer
    ) -> _EncodedBlock:
        """Encode a block and compute its LIPAR mask on the current stream (keep grid, its host copy and the
        kept-token set are None without LIPAR)."""
        x_in, lat = self._encode(frames, timer)
        with timer.stage("mask"):
            if not self.lipar.enabled:
                return _EncodedBlock(x_in, lat)
            ext = mask.to(self.device) if mask is not None else None
            made = self.masker.block(
                lat,
                pixels=x_in if self.lipar.mask_source == "pixel" else None,
                external=ext,
                force_full=self.block_index == 0,
            )
            keep_grid = made.keep
            mask_host = _to_host(keep_grid[0])  # for the stats; read in result()
            # the count travels to the host; the kept order was computed with the mask
            pending = KeepSet.begin(keep_grid, self.lipar.bucket, (made.n_kept, made.order))
        return _EncodedBlock(x_in, lat, keep_grid, mask_host, pending)

    def _encode(self, frames: torch.Tensor, timer: StageTimer) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames -> (model frames [1, T, 3, H, W] in [0, 1], latents [1, F, C, h, w]) on the current
        stream."""
        x_in = self._to_model_frames(frames)
        with timer.stage("encode"):
            lat = self.encoder(x_in.to(self.models.autoencoder_dtype)).to(self.dtype)
        return x_in, lat

    def _decode(
        self, latents: torch.Tensor, timer: StageTimer, total: StageHandle
    ) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Decode a block's latents on the current stream into uint8 [T_out, H, W, 3] host frames (pinned on
        CUDA, filled asynchronously: ready when the returned event has completed); closes the ``total``
        stage after the copy."""
        with timer.stage("decode"):
            pix = self.decoder(latents)  # [1, T_out, 3, H, W] in [0, 1]
            out = pix[0].permute(0, 2, 3, 1).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        if not out.is_cuda:
            timer.stop(total)
            return out, None
        # Pinned host memory (PyTorch's caching host allocator): a 832x480 block is 14 MB, which takes 8.8 ms
        # into pageable memory on an H200 and about a tenth of that pinned.
        host = _to_host(out)
        timer.stop(total)
        done = torch.cuda.Event()
        done.record()
        return host, done


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` on the host; from CUDA into pinned memory without waiting (valid once the work queued
    so far on the current stream has completed)."""
    if not t.is_cuda:
        return t.clone()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


@dataclass
class BlockTicket:
    """A submitted block (:meth:`StreamEditor.submit_block`); :meth:`result` waits for its frames."""

    frames: torch.Tensor  # uint8 [T_out, H, W, 3] on the host, complete once ``done`` has completed
    stats: BlockStats  # ms filled in by result()
    timer: StageTimer
    done: torch.cuda.Event | None

    def result(self) -> tuple[torch.Tensor, BlockStats]:
        """(frames_out, stats) of the block, as :meth:`StreamEditor.process_block` returns them."""
        if self.done is not None:
            self.done.synchronize()
        if not self.stats.ms:
            self.stats.ms = self.timer.finish()
        return self.frames, self.stats


if TYPE_CHECKING:  # the editor and its ticket keep the contract the worker relies on (lipar_core.protocol)
    _STREAM_EDITOR_IS_A_BLOCK_EDITOR: type[BlockEditor] = StreamEditor
    _BLOCK_TICKET_IS_A_SUBMITTED_BLOCK: type[SubmittedBlock] = BlockTicket
