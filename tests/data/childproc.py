"""Run a snippet in a fresh interpreter on the code under test and read back its peak memory (ru_maxrss),
so a test measures what one decode or read costs, not what the test process happened to hold already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import realfake

SRC = str(Path(realfake.__file__).resolve().parents[1])  # the code under test, for the child processes
posix_only = pytest.mark.skipif(sys.platform not in ("linux", "darwin"), reason="ru_maxrss")

MEASURE = """
import json, resource, sys, time
def peak_mb():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024 if sys.platform == "darwin" else 1024)
"""


def run_child(code: str, *args: str, timeout: float = 120) -> dict:
    """Run `code` in a fresh interpreter on the code under test; it prints one JSON line last."""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", MEASURE + code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
