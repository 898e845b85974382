"""``lipar-loadtest``: the served-path load test. Real aiortc WebRTC clients drive a running ``lipar-server``.

- :mod:`server.loadtest.cli`     the command line, worker processes, aggregation and exit codes
- :mod:`server.loadtest.client`  one client session (REST + WebRTC), the paced sending track, a worker's loop
- :mod:`server.loadtest.sources` the videos sent: a folder of clips or a built-in synthetic clip
- :mod:`server.loadtest.report`  per-session statistics, the aggregate, the JSON and markdown reports

The definitions of every reported number (steady window, received fps, dropped fraction, latency, gaps, time to
first frame, prompt-change latency) are in :mod:`server.loadtest.report`.
"""
