"""server: the real-time streaming video-editing service around :mod:`lipar_core`.

Process and responsibility boundaries are the folder tree:

- :mod:`server.api`       FastAPI routes, pydantic schemas, dependencies, JSON errors (server process)
- :mod:`server.sessions`  session lifecycle, admission, idle timeout, the store (memory or Redis)
- :mod:`server.rtc`       aiortc peer connections, inbound reader → ring, outbound paced track, codecs, ICE
- :mod:`server.worker`    one model worker process per device, the pool that watches it, shared-memory IPC
- :mod:`server.metrics`   the Prometheus metric contract
- :mod:`server.settings`  ``LIPAR_`` settings, validated at start
"""
