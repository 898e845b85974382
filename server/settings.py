"""Server settings: environment variables with the ``LIPAR_`` prefix, validated once at start.

Runs in the server process. Every field maps to ``LIPAR_<NAME>`` (e.g. ``LIPAR_PORT``). Bad values fail fast
with a message naming the variable (:func:`load_settings`).
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lipar_core.protocol import MAX_PROMPT_CHARS

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
_PLACEHOLDER_TOKENS = {"changethis", "change-me", "changeme", "secret", "token", "xxx"}


class IceServer(BaseModel):
    """One ICE server, as in the browser's ``RTCIceServer`` (``urls`` is a string or a list)."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class Settings(BaseSettings):
    """All server settings. Defaults run the ``tiny`` preset on the CPU with the in-memory store."""

    model_config = SettingsConfigDict(env_prefix="LIPAR_", extra="ignore", case_sensitive=False)

    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    config: str = Field(default="tiny", description="model preset name (e.g. tiny) or a YAML preset path")
    devices: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["cpu"])
    sessions_per_worker: Annotated[int, Field(ge=1, le=64)] = 2
    viewers_per_session: Annotated[int, Field(ge=0, le=64)] = Field(
        default=8,
        description="read-only viewers (/view/{id}) one session may have at once; 0 turns viewers off",
    )
    redis_url: str | None = None
    node_id: str = Field(default_factory=socket.gethostname)
    public_url: str | None = Field(default=None, description="base URL where clients reach this node")
    api_token: str | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ice_servers: Annotated[list[IceServer], NoDecode] = Field(default_factory=list)
    rtc_port_min: Annotated[int, Field(ge=1024, le=65535)] | None = None
    rtc_port_max: Annotated[int, Field(ge=1024, le=65535)] | None = None
    rtc_host_addresses: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="IP addresses to gather ICE host candidates on; empty = every non-loopback interface",
    )
    video_codec: Literal["vp8", "h264"] = "vp8"
    video_bitrate: Annotated[int, Field(ge=100_000, le=50_000_000)] = 2_000_000
    idle_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    max_prompt_chars: Annotated[int, Field(ge=1, le=MAX_PROMPT_CHARS)] = 1000  # the core's limit bounds it
    max_body_bytes: Annotated[int, Field(ge=1024, le=10_000_000)] = 256 * 1024
    max_sdp_bytes: Annotated[int, Field(ge=1024, le=10_000_000)] = 64 * 1024
    heartbeat_ttl_s: Annotated[float, Field(gt=0.5, le=600)] = 15.0
    record_ttl_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = 600.0
    redis_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    """Connect and read timeout of every Redis call (one immediate retry on a broken connection, none on a
    timeout): a paused or unreachable Redis costs a request at most about this long, then 503 + Retry-After
    (code ``store_unavailable``)."""
    worker_threads: Annotated[int, Field(ge=0, le=256)] = 0
    """Torch threads per worker process; 0 (default) chooses: on a CPU device the cores split evenly among the
    CPU workers (at least 1 each, never oversubscribed); on a GPU device torch's default."""
    worker_start_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 180.0
    worker_liveness_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 15.0
    """A ready worker whose main loop sent no heartbeat for this long is hung: its sessions fail ("worker N on
    DEVICE unresponsive: ..."), it is killed and restarted. Keep it well above the longest block (under a second
    on a GPU, about a second for ``tiny`` on 2 CPU cores); not applied while the model loads (that is
    ``worker_start_timeout_s``); 0 turns the check off."""
    worker_max_start_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    """A worker that fails to start (exits or times out before its model is loaded) this many times in a row is
    given up: ``failed`` in ``/readyz`` (503) and not started again until the server restarts."""
    worker_restart_backoff_max_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    """Ceiling of the restart back-off: the first failure restarts at once, the next ones after 1, 2, 4, ... s."""
    metrics_public: bool = False
    """Serve ``/metrics`` without the bearer token even when ``api_token`` is set (a private-network scraper)."""
    readyz_details_public: bool = False
    """Show ``/readyz``'s per-worker and store details (pids, errors) without the bearer token when ``api_token``
    is set; otherwise an unauthenticated ``/readyz`` gives only its status."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    auth_fail_limit: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=20, description="wrong bearer tokens from one client address within the window before 429"
    )
    auth_fail_window_s: Annotated[float, Field(gt=0, le=86_400)] = 10.0
    auth_block_s: Annotated[float, Field(gt=0, le=86_400)] = Field(
        default=30.0, description="how long an address over the limit is answered 429 (Retry-After)"
    )
    csp_connect_src: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins the page may call besides its own (the public URLs of other nodes)",
    )

    recording_enabled: bool = True
    """Sessions may record their edited video (``record: true``); false: such a request is a 422."""
    recordings_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "lipar-recordings",
        description="folder of the server-side recordings (one sub-folder per session); created at start",
    )
    recording_max_mb: Annotated[float, Field(gt=0.01, le=1_000_000)] = 500.0
    """Size limit of one recording, MB (10^6 bytes): the recording stops there (state ``truncated``; the file
    stays complete and playable) and the session goes on."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("devices", "cors_origins", "rtc_host_addresses", "csp_connect_src", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("ice_servers", mode="before")
    @classmethod
    def _ice_json(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else []
            except json.JSONDecodeError as e:
                raise ValueError(f'must be a JSON list such as [{{"urls": "stun:host:3478"}}]: {e}') from None
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one device, e.g. cpu or cuda:0,cuda:1")
        bad = [d for d in v if not _DEVICE_RE.match(d)]
        if bad:
            raise ValueError(f"unknown device(s) {bad}: use cpu, cuda or cuda:N")
        if len(set(v)) != len(v):
            raise ValueError(f"devices are listed twice: {v}")
        return v

    @field_validator("csp_connect_src")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if not re.fullmatch(r"(https?|wss?)://[A-Za-z0-9.\-\[\]:]+", o)]
        if bad:
            raise ValueError(f"must be origins such as https://node2.example:8000, got {bad}")
        return v

    @field_validator("api_token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and v.strip().lower() in _PLACEHOLDER_TOKENS:
            raise ValueError("is a placeholder; set a real secret or leave LIPAR_API_TOKEN unset")
        if v is not None and len(v) < 8:
            raise ValueError("must be at least 8 characters")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v or None

    @field_validator("config")
    @classmethod
    def _config(cls, v: str) -> str:
        if v.endswith((".yaml", ".yml")) or "/" in v:
            if not Path(v).is_file():
                raise ValueError(f"config file {v} does not exist")
        elif not re.match(r"^[A-Za-z0-9_.-]+$", v):
            raise ValueError(f"{v!r} is neither a preset name nor a YAML path")
        return v

    @model_validator(mode="after")
    def _ports(self) -> Settings:
        lo, hi = self.rtc_port_min, self.rtc_port_max
        if (lo is None) != (hi is None):
            raise ValueError("set both LIPAR_RTC_PORT_MIN and LIPAR_RTC_PORT_MAX, or neither")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"LIPAR_RTC_PORT_MIN ({lo}) is above LIPAR_RTC_PORT_MAX ({hi})")
        return self

    @property
    def rtc_port_range(self) -> tuple[int, int] | None:
        """The pinned UDP port range for media, or None for ephemeral ports."""
        if self.rtc_port_min is None or self.rtc_port_max is None:
            return None
        return (self.rtc_port_min, self.rtc_port_max)

    @property
    def recording_max_bytes(self) -> int:
        """``recording_max_mb`` in bytes."""
        return int(self.recording_max_mb * 1_000_000)

    @property
    def advertised_url(self) -> str:
        """Base URL clients use to reach this node (``LIPAR_PUBLIC_URL`` or host:port)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


class SettingsError(Exception):
    """Settings are invalid; the message names every bad ``LIPAR_`` variable."""


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings (environment + ``overrides``); raise :class:`SettingsError` if bad."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = "_".join(str(p) for p in err["loc"]) or "settings"
            name = f"LIPAR_{loc.upper()}" if err["loc"] else "settings"
            lines.append(f"  {name}: {err['msg']}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
    except (ValueError, json.JSONDecodeError) as e:
        raise SettingsError(f"invalid settings: {e}") from None


def check_model_config(config: str) -> None:
    """Fail fast on an unknown preset name or an invalid YAML preset, before any worker starts.

    Reads and validates the preset with :class:`lipar_core.config.PresetConfig` only (no model code is
    imported into the server process). Names resolve as everywhere else
    (:func:`lipar_core.config.preset_path`).
    """
    from lipar_core.config import PresetConfig, preset_path

    try:
        path = preset_path(config)
    except ValueError as e:
        raise SettingsError(f"invalid settings:\n  LIPAR_CONFIG: {e}") from None
    try:
        PresetConfig.from_yaml(path)
    except (ValueError, ValidationError) as e:
        raise SettingsError(f"invalid settings:\n  LIPAR_CONFIG: {path} is not a valid preset: {e}") from None
