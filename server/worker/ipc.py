"""Shared-memory frame slab: fixed slots, each sized for one block of frames ``[slot_frames, H, W, 3]`` uint8.

The server process creates and owns the slab (one per worker, reused across worker restarts) and unlinks it
on shutdown; the worker attaches by name. Ownership of a slot passes with messages: the server writes input
frames and sends ``SubmitBlock``; the worker reads them, overwrites the slot with the edited frames and sends
``BlockDone``; the server copies them out and frees the slot. So at any time exactly one process touches a
slot, and no lock is needed.
"""

from __future__ import annotations

import contextlib
from multiprocessing import shared_memory

import numpy as np


class FrameSlab:
    """``n_slots`` slots of ``slot_frames`` RGB frames of ``height`` × ``width`` in one shared-memory block."""

    def __init__(
        self,
        n_slots: int,
        slot_frames: int,
        height: int,
        width: int,
        name: str | None = None,
    ) -> None:
        self.n_slots, self.slot_frames, self.height, self.width = n_slots, slot_frames, height, width
        self.slot_shape = (slot_frames, height, width, 3)
        size = n_slots * slot_frames * height * width * 3
        self.owner = name is None
        if name is None:
            self.shm = shared_memory.SharedMemory(create=True, size=size)
        else:
            # The spawned worker shares the server's resource tracker, so attaching registers the same name
            # again (a set: no duplicate) and the owner's unlink() unregisters it once.
            self.shm = shared_memory.SharedMemory(name=name)
        self._array: np.ndarray = np.ndarray((n_slots, *self.slot_shape), dtype=np.uint8, buffer=self.shm.buf)

    @property
    def name(self) -> str:
        """The shared-memory name the worker attaches to."""
        return self.shm.name

    def slot(self, i: int) -> np.ndarray:
        """A view ``[slot_frames, H, W, 3]`` uint8 of slot ``i`` (no copy)."""
        view: np.ndarray = self._array[i]
        return view

    def close(self) -> None:
        """Detach; the owner also unlinks the segment. Closing again does nothing."""
        if not hasattr(self, "_array"):
            return
        del self._array
        self.shm.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()
