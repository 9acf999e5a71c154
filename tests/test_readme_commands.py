"""The README's six commands, run as written in a temporary folder: a first step that fails for a new user fails
here first.

Only what a test machine must change is changed, and each change is listed in `SMALLER`: the data names the README
uses (`archive.zip`, `other-generator.zip`, `photo.jpg`, `photos/`) become the stand-in's mini zip and images
made from it, and the trainings get `--limit` and `--epochs 1` so they take seconds on 2 cores. `serve` is
started on a free port and stopped once `/healthz` answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from tests.clitools import command_lines

pytestmark = pytest.mark.slow  # six real commands, two trainings among them

REPO = Path(__file__).resolve().parents[1]
SMALLER = {"train": ["--limit", "300", "--epochs", "1"]}  # appended to the README's train commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(mini_zip: Path, where: Path) -> dict[str, str]:
    """The README's placeholders, made real: the CIFAKE zip, another generator's zip, a photo and a folder."""
    photos = where / "photos"
    photos.mkdir(parents=True)
    with zipfile.ZipFile(mini_zip) as zf:
        jpgs = [n for n in zf.namelist() if n.lower().endswith(".jpg")][:4]
        for i, name in enumerate(jpgs):
            (photos / f"{i}.jpg").write_bytes(zf.read(name))
    (where / "photo.jpg").write_bytes((photos / "0.jpg").read_bytes())
    return {"archive.zip": str(mini_zip), "other-generator.zip": str(mini_zip)}


def _run(words: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realfake", *words], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def _serve(words: list[str], cwd: Path) -> None:
    port = _free_port()
    words = [*words[: words.index("--port") + 1], str(port), *words[words.index("--port") + 2 :]]
    proc = subprocess.Popen([sys.executable, "-m", "realfake", *words], cwd=cwd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail("realfake serve did not answer /healthz within 300 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_readme_commands_run_as_written(mini_zip: Path, tmp_path: Path) -> None:
    commands = command_lines((REPO / "README.md").read_text())
    assert [c[0] for c in commands] == ["train", "train", "predict", "serve", "evaluate", "adapt"]
    names = _inputs(mini_zip, tmp_path)
    for words in commands:
        words = [names.get(w, w) for w in words] + SMALLER.get(words[0], [])
        if words[0] == "serve":
            _serve(words, tmp_path)
            continue
        proc = _run(words, tmp_path)
        assert proc.returncode == 0, f"realfake {' '.join(words)}:\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr
    # what they made: the two runs, the predictions and the adapted run
    assert (tmp_path / "runs" / "demo" / "report.html").is_file()
    assert (tmp_path / "runs" / "fast" / "run.json").is_file()
    assert (tmp_path / "runs" / "fast-adapted" / "run.json").is_file()
