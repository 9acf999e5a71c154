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


def cli_many(*arg_lists, timeout=600, at_once=4):
    """Several `realfake` commands at once, each in its own child process, as subprocess.run would return them.

    Starting Python and importing torch dominates a command that fails early; run side by side, those imports
    overlap (they wait on the disk as much as on a core), which keeps `make test` within its budget.
    """
    results = []
    for first in range(0, len(arg_lists), at_once):
        group = arg_lists[first : first + at_once]
        procs = [subprocess.Popen([sys.executable, "-m", "realfake", *map(str, a)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for a in group]
        for args, proc in zip(group, procs, strict=True):
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def assert_one_line_error(proc, text):
    """A user error: exit code 1, no traceback, and `text` in what was printed."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert text in proc.stderr, proc.stderr
