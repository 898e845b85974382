"""WebRTC media for sessions (server process, asyncio loop), one module per concept.

- :mod:`server.rtc.ring`      bounded drop-oldest frame ring (inbound side of a session)
- :mod:`server.rtc.inbound`   reads a remote video track, decodes to RGB at the model size, fills the ring
- :mod:`server.rtc.outbound`  the edited-video track, paced at the input rate
- :mod:`server.rtc.codecs`    codec preference and bitrate
- :mod:`server.rtc.ice`       ICE configuration: ICE servers, host-candidate addresses, pinned UDP port range
- :mod:`server.rtc.peer`      one peer connection per session: offer in, answer out
"""
