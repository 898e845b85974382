"""What every real-browser test needs before it starts: Debian's chromium, private network namespaces (the page
and the server talk over a loopback-only namespace), Node.js and playwright-core. Missing system pieces skip
the test with the install command; a missing driver dependency fails it (CI installs both)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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
