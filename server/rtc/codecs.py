"""Codec preference and bitrate for the outbound video. Server process.

aiortc negotiates VP8 and H.264; we put the configured one first (and only it, plus RTX) so the browser and
the server agree on it. aiortc has no per-sender bitrate API: its encoders read module constants.
"""

from __future__ import annotations

import logging
from typing import Literal

from aiortc import RTCRtpSender
from aiortc.codecs import h264, vpx
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

log = logging.getLogger(__name__)

Codec = Literal["vp8", "h264"]
_MIME = {"vp8": "video/vp8", "h264": "video/h264"}


def prefer_codec(transceiver: RTCRtpTransceiver, codec: Codec) -> None:
    """Restrict ``transceiver`` to ``codec`` (and RTX); call before ``setRemoteDescription``."""
    caps = RTCRtpSender.getCapabilities("video")
    wanted = [c for c in caps.codecs if c.mimeType.lower() in (_MIME[codec], "video/rtx")]
    transceiver.setCodecPreferences(wanted)


def apply_bitrate(bitrate: int) -> None:
    """Make aiortc's VP8 and H.264 encoders start at ``bitrate`` bit/s and allow up to it.

    Why: aiortc 1.16 hard-codes 0.5 Mbit/s (VP8) / 1 Mbit/s (H.264) starting bitrates and caps them at 1.5 /
    3 Mbit/s in module constants (aiortc issue #1159); there is no per-sender API. Process-wide on purpose:
    one server, one configured bitrate. Remove when aiortc exposes encoder bitrate settings.
    """
    for mod in (vpx, h264):
        mod.DEFAULT_BITRATE = bitrate  # type: ignore[attr-defined]
        mod.MAX_BITRATE = max(mod.MAX_BITRATE, bitrate)  # type: ignore[attr-defined]
        mod.MIN_BITRATE = min(mod.MIN_BITRATE, bitrate)  # type: ignore[attr-defined]
    log.info("video encoder bitrate set to %d bit/s", bitrate)
