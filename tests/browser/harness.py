"""What every real-browser test needs before it starts: Debian's chromium, private network namespaces (the page
and the server talk over a loopback-only namespace), Node.js and playwright-core. Missing system pieces skip
the test with the install command; a missing driver dependency fails it (CI installs both)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM = Path("/usr/bin/chromium")


def netns_ok() -> tuple[bool, str]:
    """Whether this process may make a private network namespace (``unshare -n``), and why not."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False, "unshare or ip is missing (apt-get install util-linux iproute2)"
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=10
    )
    if probe.returncode != 0:
        return (
            False,
            f"private network namespaces are not permitted here (needs root): {probe.stderr.strip()}",
        )
    return True, ""


def require_browser_env() -> None:
    """Skip (no chromium, no namespaces) or fail (no node, no playwright-core) unless a browser test can run."""
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver); CI installs it")
    ok, why = netns_ok()
    if not ok:
        pytest.skip(why)
    if shutil.which("node") is None:
        pytest.fail("node is missing: the browser driver runs on Node.js (apt-get install nodejs npm)")
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        pytest.fail(f"playwright-core is not installed: run `npm ci --prefix {HERE.relative_to(ROOT)}`")


def run_in_netns(module: str, out_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``python -m module out_dir`` in a private network namespace where only loopback is up, and return the
    ``out_dir/result.json`` it writes (the test fails, with the runner's output, when it wrote none)."""
    script = 'ip link set lo up && exec "$0" -m "$1" "$2"'
    proc = subprocess.run(
        ["unshare", "-n", "bash", "-c", script, sys.executable, module, str(out_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    path = out_dir / "result.json"
    assert path.exists(), (
        f"the runner wrote no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def driver_result(stdout: str, returncode: int | None, stderr: str) -> dict[str, Any]:
    """A Node driver's result: the last JSON line it printed (or a failure saying there was none), with its
    exit code and the end of its stderr."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    result: dict[str, Any] = (
        json.loads(lines[-1]) if lines else {"ok": False, "error": "the driver printed no result"}
    )
    result["driver_rc"] = returncode
    result["driver_stderr"] = stderr[-3000:]
    return result
