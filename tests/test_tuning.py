"""realfake.tuning: library use leaves the host process as it found it; `apply()` (the command) opts in, and
REALFAKE_TUNING=0 refuses every trick whatever the caller chose."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import realfake
from realfake import tuning

SRC = str(Path(realfake.__file__).resolve().parents[1])  # the code under test, for the child processes
GLIBC = platform.libc_ver()[0] == "glibc"

# A fresh process that loads a Detector and predicts as a program would: fixed images through the model (fp32),
# the same images from files through predict_batches (forked decoding workers), and the server's memory release.
# `library` opts in to nothing; `apply` calls tuning.apply() first, as the command does, and then starts a
# `realfake serve --workers 2` worker's app. Every glibc symbol looked up through ctypes is noted (the spy), so
# that a mallopt or malloc_trim is seen even if the switchboard's own record missed it.
CHILD = r"""
import json, os, sys
before_env = dict(os.environ)
import ctypes
looked_up = []
class Spy(ctypes.CDLL):
    def __getattr__(self, name):
        if name in ("mallopt", "malloc_trim"):
            looked_up.append(name)
        return super().__getattr__(name)
ctypes.CDLL = Spy
mode, run, folder = sys.argv[1:4]
from realfake import tuning
if mode == "apply":
    tuning.apply(passive_wait=True)  # before torch loads, as `realfake predict` does
import numpy as np
import torch
threads = torch.get_num_threads()
from realfake.detector import Detector
from realfake.predict import predict_batches
from realfake.serve.decoding import release_memory
det = Detector.load(run, device="cpu", precision="fp32")
images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
logits = det.predict_logits(images)
files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
p_files = [float(p) for b in predict_batches(det, files, batch_size=2, workers=2, progress=False) for p in b.p_fake]
release_memory()
out = {"threads_after_predict": torch.get_num_threads()}
if mode == "apply":
    from realfake.serve.app import SETTINGS_ENV, app_from_env
    os.environ[SETTINGS_ENV] = json.dumps({"run": run, "workers": 2, "device": "cpu"})
    app_from_env()
    del os.environ[SETTINGS_ENV]
changed = sorted(k for k in set(before_env) | set(os.environ) if before_env.get(k) != os.environ.get(k))
print(json.dumps({**out, "threads": [threads, torch.get_num_threads()], "env_changed": changed,
                  "applied": list(tuning.applied()), "looked_up": looked_up,
                  "logits": [float.hex(float(z)) for z in logits], "p_files": [float.hex(p) for p in p_files]}))
"""


def _images(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def children(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """What each kind of process reported: library use, the command's opt-in, and the opt-in refused by env."""
    folder = _images(tmp_path_factory.mktemp("tuning") / "images")
    base = {k: v for k, v in os.environ.items() if k not in (tuning.ENV, "OMP_WAIT_POLICY")}
    base["PYTHONPATH"] = SRC
    runs = {"library": ("library", {}), "apply": ("apply", {}), "vetoed": ("apply", {tuning.ENV: "0"})}
    out = {}
    for name, (mode, extra) in runs.items():
        proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(trained_run), str(folder)],
                              capture_output=True, text=True, timeout=600, env={**base, **extra})
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def test_loading_a_detector_and_predicting_leave_the_process_as_they_found_it(children):
    seen = children["library"]
    assert seen["env_changed"] == []  # no OMP_WAIT_POLICY, nothing else
    assert seen["threads"][0] == seen["threads"][1] == seen["threads_after_predict"]
    assert seen["applied"] == []
    assert seen["looked_up"] == []  # neither mallopt nor malloc_trim was even looked up


@pytest.mark.skipif(not GLIBC, reason="the malloc tricks are glibc's")
def test_the_commands_opt_in_runs_the_tricks_and_the_environment_can_refuse_them(children):
    on = children["apply"]
    assert on["env_changed"] == ["OMP_WAIT_POLICY"]
    assert on["applied"] == [tuning.WAIT_POLICY, tuning.MALLOC, tuning.MALLOC_TRIM, tuning.THREADS]
    assert on["looked_up"] == ["mallopt", "malloc_trim"]  # the spy agrees with the record
    assert on["threads_after_predict"] == on["threads"][0]  # a Detector changes no thread count...
    assert on["threads"][1] == max(1, (os.cpu_count() or 1) // 2)  # ...a server worker takes its share
    off = children["vetoed"]  # REALFAKE_TUNING=0: apply() and the server worker's opt-in both refused
    assert off["env_changed"] == [] and off["applied"] == [] and off["looked_up"] == []
    assert off["threads"][0] == off["threads"][1] == off["threads_after_predict"]


def test_tuning_changes_no_verdict(children):
    """fp32 logits and p_fake, to the last bit, with and without the tricks."""
    with_tricks, without = children["apply"], children["library"]
    assert with_tricks["logits"] == without["logits"] and len(without["logits"]) == 6
    assert with_tricks["p_files"] == without["p_files"] and len(without["p_files"]) == 5


def test_a_calls_choice_beats_the_processes_and_the_environment_beats_both(monkeypatch):
    monkeypatch.delenv(tuning.ENV, raising=False)
    assert not tuning.enabled()  # library use: off
    with tuning.opted_in(True):
        assert tuning.enabled()
        with tuning.opted_in(None):  # None keeps what is in force
            assert tuning.enabled()
    assert not tuning.enabled()
    monkeypatch.setattr(tuning, "_process_opted_in", True)  # as after apply()
    assert tuning.enabled()
    with tuning.opted_in(False):
        assert not tuning.enabled()
    for off in ("0", "false", "OFF", " no "):
        monkeypatch.setenv(tuning.ENV, off)
        with tuning.opted_in(True):
            assert not tuning.enabled()
    monkeypatch.setenv(tuning.ENV, "1")
    assert tuning.enabled()


def test_a_calls_opt_in_stays_in_its_thread():
    seen: list[bool] = []
    with tuning.opted_in(True):
        worker = threading.Thread(target=lambda: seen.append(tuning.enabled()))
        worker.start()
        worker.join()
        assert tuning.enabled()
    assert seen == [False]


def test_the_wait_policy_is_the_users_where_they_chose_one(monkeypatch):
    monkeypatch.delenv(tuning.ENV, raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert tuning.apply(passive_wait=True) == ()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
