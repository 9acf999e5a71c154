"""Running the real `realfake` command from tests, and checking its one-line errors."""

import subprocess
import sys

import pytest


def cli(*args, check=True, timeout=900):
    """Run `python -m realfake ARGS` in a child process; fail the test with its stderr if it fails and check."""
    proc = subprocess.run([sys.executable, "-m", "realfake", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"realfake {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def assert_one_line_error(proc, text):
    """A user error: exit code 1, no traceback, and `text` in what was printed."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert text in proc.stderr, proc.stderr
