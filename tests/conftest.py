"""Shared test helpers: run the real CLI in a subprocess, locate the real data sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CNNCTL_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()


def run_cli(*args: str, cwd: Path | None = None, input: str | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m cnnctl ARGS` as a user would, capturing stdout and stderr separately."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cnnctl", *map(str, args)],
        cwd=cwd or ROOT,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("cnnctl: error: "), proc.stderr
    for needle in needles:
        assert needle.lower() in lines[-1].lower(), lines[-1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the real MNIST, CIFAR-10 and PetImages copies (see its README)."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.fail(f"real data sets not found at {SHARED_DATA}; set CNNCTL_SHARED_DATA")
    return SHARED_DATA
