"""Model worker processes: one per device, started, watched and restarted by :class:`WorkerPool`.

- :mod:`server.worker.messages`  the typed control and result messages that cross the process boundary
- :mod:`server.worker.ipc`       the shared-memory frame slab (fixed slots, one block each)
- :mod:`server.worker.process`   the worker process main loop (round robin over sessions, block by block)
- :mod:`server.worker.editors`   how a worker builds a :class:`lipar_core.editor.StreamEditor` per session
- :mod:`server.worker.pool`      the server-side pool: placement, submission, crash detection and restart
"""

from server.worker.pool import WorkerPool

__all__ = ["WorkerPool"]
