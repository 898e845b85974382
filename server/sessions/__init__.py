"""Sessions (server process): lifecycle, admission, idle timeout, and the store.

Lifecycle: ``created`` → ``connecting`` (offer answered) → ``streaming`` (first edited frame sent) →
``closed`` | ``failed`` (with a ``reason``).

- :mod:`server.sessions.types`        states, transition, create/change inputs, the stored record (no HTTP)
- :mod:`server.sessions.errors`       domain errors the API maps to HTTP statuses
- :mod:`server.sessions.store`        the store interface
- :mod:`server.sessions.memory_store` the in-memory store (the embedded default, one node)
- :mod:`server.sessions.redis_store`  the Redis store (several nodes)
- :mod:`server.sessions.live`         the media and compute of one session owned by this node
- :mod:`server.sessions.manager`      the lifecycle: create, offer, patch, delete, idle timeout, failures
"""
