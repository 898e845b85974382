"""The typed contract between a stream editor and whoever drives it (the server's worker loop).

:class:`~lipar_core.editor.StreamEditor` satisfies :class:`BlockEditor` and its
:class:`~lipar_core.editor.BlockTicket` satisfies :class:`SubmittedBlock`; test doubles implement the same
protocols and return the real :class:`BlockStats`, so a renamed method or stats field fails the type check
and the tests alike. This module is light on purpose (the standard library only at run time; torch for
annotations): the server's settings, API schemas and session layer import it without loading torch or the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

if TYPE_CHECKING:  # annotations only: importing this module does not import torch
    import torch

Transition = Literal["cut", "smooth"]

# The limits of an editor's controls: the one definition of each, which the editor enforces and the server's
# settings and API schemas derive their bounds from.
MAX_PROMPT_CHARS: Final = 10_000
"""Longest prompt, in characters after cleaning, a prompt encoder accepts (``lipar_core.text``); the server's
``LIPAR_MAX_PROMPT_CHARS`` may only lower it."""
MAX_STEPS: Final = 8
"""Most denoising steps per block (``set_params(steps=...)``, :func:`lipar_core.scheduler.make_step_list`)."""
MAX_BLEND_BLOCKS: Final = 64
"""Most blocks a smooth prompt change interpolates over (``set_prompt(..., blend_blocks=...)``)."""


@dataclass
class BlockStats:
    """What one :meth:`StreamEditor.process_block` call did.

    Attributes:
        index: block number since the stream (or the last cut) started.
        ms: milliseconds per stage: ``encode``, ``mask``, ``dit``, ``decode``, ``total``.
        prune_ratio: fraction of DiT tokens pruned in this block (0 without LIPAR).
        frames_in, frames_out: pixel frames consumed and produced.
        token_mask: which tokens were recomputed, [latent_frames, grid_h, grid_w] bool on the CPU, or None.
        prompt: the prompt in effect for this block.
    """

    index: int
    ms: dict[str, float]
    prune_ratio: float = 0.0
    frames_in: int = 0
    frames_out: int = 0
    token_mask: torch.Tensor | None = None
    prompt: str = ""


class SubmittedBlock(Protocol):
    """A block handed to :meth:`BlockEditor.submit_block` (``StreamEditor``'s :class:`BlockTicket`)."""

    def result(self) -> tuple[torch.Tensor, BlockStats]:
        """Wait for the block: (frames_out uint8 ``[T_out, height, width, 3]`` on the CPU, its stats)."""
        ...


class BlockEditor(Protocol):
    """One stream's editor as the worker loop uses it (:class:`~lipar_core.editor.StreamEditor`).

    Every editor has both ways of running a block: :meth:`submit_block` may return before the block's work is
    done (on CUDA the decoder runs on a stream of its own), :meth:`process_block` is ``submit_block`` followed
    by ``result``. An editor that cannot overlap (the CPU) simply computes everything in ``submit_block``.
    Tickets of one stream must be collected in order. Controls (``set_prompt``, ``set_params``) only record the
    change; it applies at the next block boundary.
    """

    frames_per_block: int
    height: int
    width: int

    def submit_block(self, frames: torch.Tensor) -> SubmittedBlock:
        """Queue the next block, ``frames`` uint8 ``[T, H_in, W_in, 3]``; collect it with ``result()``."""
        ...

    def process_block(self, frames: torch.Tensor) -> tuple[torch.Tensor, BlockStats]:
        """Edit the next block and wait for it: ``submit_block(frames).result()``."""
        ...

    def set_prompt(self, prompt: str, transition: Transition = "cut", blend_blocks: int = 0) -> None:
        """Switch the prompt at the next block boundary (``blend_blocks`` in [0, :data:`MAX_BLEND_BLOCKS`]);
        ValueError on bad values."""
        ...

    def set_params(
        self, seed: int | None = None, strength: float | None = None, steps: int | None = None
    ) -> None:
        """Change seed / strength / steps (in [1, :data:`MAX_STEPS`]) at the next block (``None`` keeps the
        value); ValueError on bad values."""
        ...
