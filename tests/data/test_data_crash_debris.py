"""kill -9 during a cache write leaves a temporary folder; the next load removes it, but never the temporary
of a writer that is still alive. The writers are real child processes held mid-write (a patched np.save,
in the child's script only) and killed with SIGKILL."""

from __future__ import annotations

import io
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tests.data.childproc import SRC

from realfake.atomic import atomic_dir, atomic_write_bytes
from realfake.data.cache import cache_root, load_dataset

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(os.name == "nt", reason="SIGKILL, flock")]

# Builds the cache of argv[1] (limit argv[2]), but stops inside the atomic write once images.npy and
# labels.npy are in the temporary folder, says so, and waits to be killed.
CHILD = """
import sys, time
import numpy as np
real_save = np.save
def save_then_hang(file, arr, *a, **kw):
    real_save(file, arr, *a, **kw)
    if str(file).endswith("labels.npy"):
        print("WRITING", flush=True)
        time.sleep(600)
np.save = save_then_hang
from realfake.data.cache import load_dataset
load_dataset(sys.argv[1], limit=int(sys.argv[2]) or None, workers=1, progress=False)
"""


def make_data(root: Path) -> Path:
    for i in range(4):
        for label, colour in (("REAL", (200, i, 0)), ("FAKE", (0, i, 200))):
            p = root / label / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), colour).save(buf, "PNG")
            p.write_bytes(buf.getvalue())
    return root


def start_writer(data: Path, limit: int = 0) -> subprocess.Popen:
    """A child that is mid-write when this returns (its temporary folder holds two files)."""
    env = {**os.environ, "PYTHONPATH": SRC}  # REALFAKE_CACHE_DIR is this test's (tests/conftest.py)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(limit)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
    with selectors.DefaultSelector() as sel:
        sel.register(child.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=60)
    assert ready and child.stdout.readline() == b"WRITING\n", child.stderr.read1(4000) if not ready else b""
    return child


def kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    child.stderr.close()


def temporaries() -> list[Path]:
    return sorted((cache_root() / "datasets").glob(".*.tmp"))


def test_killed_writer_debris_removed_by_next_load(tmp_path):
    data = make_data(tmp_path / "data")
    writer = start_writer(data)
    kill(writer)
    debris = temporaries()
    assert len(debris) == 1 and (debris[0] / "images.npy").is_file()  # what kill -9 leaves

    ds = load_dataset(data, workers=1, progress=False)
    assert len(ds) == 8 and not ds.from_cache
    assert temporaries() == []  # removed, not just left beside the new entry
    assert load_dataset(data, workers=1, progress=False).from_cache


def test_live_writer_temporary_is_left_alone(tmp_path):
    from realfake.atomic import remove_stale_temporaries

    data = make_data(tmp_path / "data")
    writer = start_writer(data, limit=4)  # a cache entry of its own, still being written
    try:
        live = temporaries()
        assert len(live) == 1
        assert len(load_dataset(data, workers=1, progress=False)) == 8  # another run, same cache folder
        assert remove_stale_temporaries(cache_root() / "datasets") == []
        assert temporaries() == live and (live[0] / "labels.npy").is_file()
    finally:
        kill(writer)
    assert remove_stale_temporaries(cache_root() / "datasets") == live  # its writer is gone now
    assert temporaries() == []


def test_atomic_dir_sweeps_its_own_target_but_not_a_live_sibling(tmp_path):
    target = tmp_path / "entry"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
        with atomic_dir(target) as inner:  # a second writer of the same target, in this very process
            assert tmp.is_dir()  # not mistaken for debris: its lock is held
            (inner / "x").write_text("2")
        assert tmp.is_dir()
    assert (target / "x").read_text() == "1"
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_bytes_debris_removed_by_the_next_write(tmp_path):
    """The same for single files (weights, reports): a writer killed before its rename leaves .NAME.PID.x.tmp."""
    target = tmp_path / "report.json"
    code = ("import os, sys, time\nfrom realfake import atomic\n"
            "def hang(fd):\n    print('WRITING', flush=True)\n    time.sleep(600)\n"
            "atomic.os.fsync = hang\natomic.atomic_write_bytes(sys.argv[1], b'half')\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert child.stdout.readline() == b"WRITING\n", child.stderr.read1(4000)
        assert len(list(tmp_path.glob(".report.json.*.tmp"))) == 1
    finally:
        kill(child)
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
