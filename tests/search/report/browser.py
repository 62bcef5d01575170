"""Headless Chromium for browser tests: the rendered DOM of a page, and a screenshot of it.

Debian's ``chromium`` (installed by ``.ci/run``) with the flags that work in a container without
a display, a GPU or the network. Tests marked ``needs_chromium`` are skipped outside CI when the
browser is absent; in CI (``CI=true``) they run, and fail if it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not IN_CI,
    reason="chromium not installed (apt-get install chromium); CI installs it and runs this test",
)


def _run(url: str, *extra: str, budget_ms: int = 8000, timeout: float = 90) -> str:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed; .ci/run installs the Debian package `chromium`")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if result.returncode != 0:
        raise AssertionError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def render(
    url: str, shot: Path | None = None, size: tuple[int, int] = (1400, 900), budget_ms: int = 8000
) -> str:
    """The page's DOM after its scripts ran (``budget_ms`` of virtual time); with ``shot``, a
    screenshot of a ``size`` window is saved there by the same browser run."""
    extra = ["--dump-dom"]
    if shot is not None:
        extra += [f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}"]
    dom = _run(url, *extra, budget_ms=budget_ms)
    if shot is not None:
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no PNG: {shot}"
    return dom
