"""How a worker process builds one editor per session. Runs in the worker process.

The production factory is :class:`LiparEditorFactory` (``lipar_core``): the model bundle is loaded once per
worker and shared by every session's :class:`lipar_core.editor.StreamEditor`. The pool names the factory by
import path (``"module:attr"``) because the worker is a spawned process; tests of the pool's lifecycle may
name another factory with the same interface, production code never does.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch

from lipar_core.protocol import BlockEditor
from server.worker.rate import input_rate

if TYPE_CHECKING:
    from lipar_core.editor import StreamEditor

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "server.worker.editors:LiparEditorFactory"

#: ``progress(stage, done, total)``: a factory's warm-up progress (stages of
#: :data:`server.worker.messages.WarmupStage`), called in the worker process while the factory is made.
Progress = Callable[[str, int, int], None]


#: blocks the rate measurement runs: the first is not timed (after a fresh start or a graph capture it pays for
#: first-touch memory and caches), the others are (:mod:`server.worker.rate`)
MEASURE_BLOCKS = 5
#: the prompt of the warm-up and the timed blocks on an open-vocabulary model (a fixed-vocabulary model: its first
#: known prompt)
MEASURE_PROMPT = "a watercolor painting"


class EditorFactory(Protocol):
    """Loads the model once (in ``__init__(config, device)``) and makes editors that share it.

    A factory may also set ``input_fps`` (float, fps, or None): the input frame rate one session's blocks
    sustain, measured at warm-up; the worker reports it in :class:`~server.worker.messages.WorkerReady` (a factory
    without the attribute reports None).
    """

    frames_per_block: int
    height: int
    width: int

    def new(self, prompt: str, seed: int, lipar: dict[str, Any] | None = None) -> BlockEditor:
        """A fresh editor for one session (``lipar``: overrides of the preset's LIPAR settings)."""
        ...


class LiparEditorFactory:
    """The production factory: ``lipar_core`` presets and ``StreamEditor``.

    Before taking sessions it warms up (GPU: :meth:`_warm_up`) and then measures the input rate one session
    sustains on this device (:meth:`_measure`, every device), ``input_fps`` (fps).
    """

    def __init__(self, config: str, device: str, progress: Progress | None = None) -> None:
        from lipar_core.presets import get_preset_config, known_prompts, load_preset

        self._progress: Progress = progress or (lambda stage, done, total: None)
        self._progress("loading", 0, 1)
        preset = get_preset_config(config)  # a preset name or a YAML path
        runtime = preset.runtime.model_dump()
        runtime["device"] = device
        preset = preset.with_overrides(runtime=runtime)
        self.models = load_preset(preset)
        # an unknown prompt would pass the video through (no model work) on a fixed-vocabulary model: the warm-up
        # would then compile and capture nothing that sessions run, and the measured rate would be the
        # pass-through's; both use a prompt the model knows
        vocabulary = known_prompts(preset)
        prompt = next(iter(vocabulary.values()))[0] if vocabulary else MEASURE_PROMPT
        probe = self._editor(prompt, 0)
        self._progress("loading", 1, 1)
        self.frames_per_block = int(probe.frames_per_block)
        self.height, self.width = int(probe.height), int(probe.width)
        if self.models.device.type == "cuda":
            self._warm_up(probe)
        del probe
        self.input_fps: float | None = self._measure(self._editor(prompt, 0))

    def _measure(self, editor: StreamEditor, n_blocks: int = MEASURE_BLOCKS) -> float:
        """The input frame rate one session's blocks sustain here, fps (:func:`server.worker.rate.input_rate`).

        Runs ``n_blocks`` blocks through ``editor``, a fresh session's editor with a prompt the model knows, after
        any warm-up (so on a GPU through the captured graphs, as sessions run) and times all but the first, wall
        clock, each ending with its frames on the host as a session's do. The input is what a webcam shows
        typically: a still half (LIPAR prunes it) and a moving half (new noise in every frame, recomputed).
        Progress: stage ``measuring``, blocks done of ``n_blocks``. It adds ``n_blocks`` block times to the
        worker's start."""
        if editor.passing_through:
            log.warning("the rate is measured on blocks that pass through (no model work): it is too high")
        g = torch.Generator().manual_seed(1)
        shape = (self.frames_per_block, self.height, self.width, 3)
        still = torch.randint(0, 256, shape[1:], dtype=torch.uint8, generator=g)
        top = self.height // 2
        cuda = self.models.device.type == "cuda"
        seconds: list[float] = []
        self._progress("measuring", 0, n_blocks)
        with torch.inference_mode():
            for i in range(n_blocks):
                frames = still.expand(shape).clone()
                frames[:, :top] = torch.randint(
                    0, 256, (shape[0], top, self.width, 3), dtype=torch.uint8, generator=g
                )
                t0 = time.perf_counter()
                out, _ = editor.process_block(frames)
                out.cpu()
                if cuda:
                    torch.cuda.synchronize(self.models.device)
                if i > 0:
                    seconds.append(time.perf_counter() - t0)
                self._progress("measuring", i + 1, n_blocks)
        fps = input_rate(self.frames_per_block, seconds)
        log.info(
            "measured %s ms per block of %d frames (median): one session sustains %.1f fps; asking cameras for %.1f",
            [round(1000 * s) for s in seconds],
            self.frames_per_block,
            self.frames_per_block / statistics.median(seconds),
            fps,
        )
        return fps

    def _warm_up(self, editor: StreamEditor) -> None:
        """Before taking sessions: run a few blocks (compiling the layer functions and the autoencoder,
        autotuning kernels, cuDNN's algorithm search: a moving block, a static one with pruned passes, a
        half-moving one), then capture the CUDA graphs of every kept-token bucket and pass kind, which all
        sessions of this worker share (``StreamEditor.prepare_graphs``). So no session ever compiles or captures
        while streaming."""
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(0)
        shape = (self.frames_per_block, self.height, self.width, 3)
        a = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        b = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        half = b.clone()
        half[:, : self.height // 2] = a[:, : self.height // 2]
        blocks = (a, b, b, half)
        self._progress("compiling", 0, len(blocks))
        with torch.inference_mode():
            for i, frames in enumerate(blocks):
                editor.process_block(frames)
                self._progress("compiling", i + 1, len(blocks))
        t1 = time.perf_counter()
        log.info("ran the warm-up blocks in %.1f s; capturing CUDA graphs", t1 - t0)
        last, sent = [t1], [0.0]

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if done == total or now - sent[0] > 0.5:  # the pool hears of it at most twice a second
                sent[0] = now
                self._progress("capturing", done, total)
            if done == total or now - last[0] > 5.0:
                last[0] = now
                log.info("CUDA graphs: %d of %d prepared", done, total)

        with torch.inference_mode():
            captured = editor.prepare_graphs(progress)
        log.info(
            "captured %d CUDA graphs in %.1f s (warm-up %.1f s)",
            captured,
            time.perf_counter() - t1,
            time.perf_counter() - t0,
        )

    def new(self, prompt: str, seed: int, lipar: dict[str, Any] | None = None) -> BlockEditor:
        """A fresh ``StreamEditor`` sharing this worker's models; ``lipar`` overrides the preset's settings."""
        return self._editor(prompt, seed, lipar)

    def _editor(self, prompt: str, seed: int, lipar: dict[str, Any] | None = None) -> StreamEditor:
        from lipar_core.editor import StreamEditor
        from lipar_core.lipar.config import LiparConfig

        settings = LiparConfig.model_validate({**self.models.config.lipar, **(lipar or {})})
        return StreamEditor(self.models, prompt=prompt, seed=seed, lipar=settings)


def make_factory(path: str, config: str, device: str, progress: Progress | None = None) -> EditorFactory:
    """Import ``"module:attr"`` and call it with ``(config, device)``, plus ``progress=`` when given and the factory
    takes it (test factories without warm-up need not)."""
    module, _, attr = path.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    if progress is not None and "progress" in inspect.signature(obj).parameters:
        factory: EditorFactory = obj(config, device, progress=progress)
    else:
        factory = obj(config, device)
    return factory
