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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch

from lipar_core.protocol import BlockEditor

if TYPE_CHECKING:
    from lipar_core.editor import StreamEditor

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "server.worker.editors:LiparEditorFactory"

#: ``progress(stage, done, total)``: a factory's warm-up progress (stages of
#: :data:`server.worker.messages.WarmupStage`), called in the worker process while the factory is made.
Progress = Callable[[str, int, int], None]


class EditorFactory(Protocol):
    """Loads the model once (in ``__init__(config, device)``) and makes editors that share it."""

    frames_per_block: int
    height: int
    width: int

    def new(self, prompt: str, seed: int, lipar: dict[str, Any] | None = None) -> BlockEditor:
        """A fresh editor for one session (``lipar``: overrides of the preset's LIPAR settings)."""
        ...


class LiparEditorFactory:
    """The production factory: ``lipar_core`` presets and ``StreamEditor``."""

    def __init__(self, config: str, device: str, progress: Progress | None = None) -> None:
        from lipar_core.presets import get_preset_config, load_preset

        self._progress: Progress = progress or (lambda stage, done, total: None)
        self._progress("loading", 0, 1)
        preset = get_preset_config(config)  # a preset name or a YAML path
        runtime = preset.runtime.model_dump()
        runtime["device"] = device
        preset = preset.with_overrides(runtime=runtime)
        self.models = load_preset(preset)
        probe = self._editor("warm-up", 0)
        self._progress("loading", 1, 1)
        self.frames_per_block = int(probe.frames_per_block)
        self.height, self.width = int(probe.height), int(probe.width)
        if self.models.device.type == "cuda":
            self._warm_up(probe)
        del probe

    def _warm_up(self, editor: StreamEditor) -> None:
        """Before taking sessions: run a few blocks (compiling the layer functions and the autoencoder,
        autotuning kernels, cuDNN's algorithm search: a moving block, a static one with pruned passes, a
        half-moving one), then capture the CUDA graphs of every kept-token bucket and pass kind, which all
        sessions of this worker share (``StreamEditor.prepare_graphs``). So no session ever compiles or captures
        while streaming."""
        import time

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
