"""Running `pgtide` commands as real subprocesses, and what a failed one must look like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout


def env_for(database_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a pgtide subprocess: this one, with pgtide's variables replaced."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGTIDE_")}
    env.pop("DATABASE_URL", None)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    # Run this checkout's code even where the package is not installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | extra


def pgtide(
    *args: str, database_url: str | None, cwd: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `pgtide ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env=env_for(database_url, **extra),
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A failed command: exit 1, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]
