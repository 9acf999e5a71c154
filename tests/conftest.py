"""Shared fixtures: every test gets its own cache folder, and the stand-in data is found beside the repo."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests compare runs bit for bit (same seed, resume). Library calls leave the thread count alone (realfake.tuning),
# but the `realfake` command opts in to realfake.device.ThreadGovernor, which changes the count when other
# processes are busy (a shared CI machine may be), and a run whose count changed is not repeatable bit for bit.
# The governor steps aside where the user fixed the count, as here, for the commands the tests run in this
# process or as children (they inherit it). Its own tests unset the variable.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REALFAKE_SHARED_DATA", REPO.parent / "shared" / "data"))
MINI_ZIP = SHARED_DATA / "standin-cifake-mini.zip"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Caches go to a temporary folder: never the user's cache, never ../shared (read-only in CI).

    The folder goes when the test ends: a test's cache is its own, and keeping hundreds of them fills /tmp.
    """
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("REALFAKE_CACHE_DIR", str(cache))
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def _library_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts as a library user's process: a command run here (tests/clitools.cli_inline) opted it in
    to realfake.tuning's tricks and set OMP_WAIT_POLICY; both are undone after the test."""
    from realfake import tuning

    monkeypatch.setattr(tuning, "_process_opted_in", False)
    monkeypatch.setattr(tuning, "_applied", [])
    had_policy = "OMP_WAIT_POLICY" in os.environ
    yield
    if not had_policy:
        os.environ.pop("OMP_WAIT_POLICY", None)


@pytest.fixture(scope="session")
def mini_zip() -> Path:
    if not MINI_ZIP.is_file():
        pytest.skip(f"stand-in data not found at {MINI_ZIP} (set REALFAKE_SHARED_DATA)")
    return MINI_ZIP


@pytest.fixture(scope="session")
def trained_run(mini_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small trained run (seed-resnet50, 1 epoch on 200 images), shared read-only by the tests.

    Tests that change a run must copy it first (shutil.copytree). Its data cache lives in its own folder.
    """
    from realfake import training as run
    from realfake.config import RunConfig

    with pytest.MonkeyPatch.context() as mp:  # a session fixture: its own cache, restored afterwards
        mp.setenv("REALFAKE_CACHE_DIR", str(tmp_path_factory.mktemp("trained-run-cache")))
        out = tmp_path_factory.mktemp("trained") / "run"
        cfg = RunConfig(data=str(mini_zip), limit=200, epochs=1, batch_size=32, weights="none", device="cpu",
                        seed=3, out=str(out))
        return run.train(cfg, progress=False, log=lambda m: None)


@pytest.fixture(scope="session")
def bf16_run(mini_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny `fast` run trained with --precision bf16 on this CPU (whatever it has), report left out: the
    precision tests and the precision parity benchmark's test read it."""
    from realfake import training
    from realfake.config import RunConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REALFAKE_CACHE_DIR", str(tmp_path_factory.mktemp("bf16-cache")))
        mp.setattr(training.report, "build", lambda run_dir: run_dir)  # plots are not what is tested here
        cfg = RunConfig(data=str(mini_zip), limit=40, epochs=1, model="fast", batch_size=16, weights="none",
                        device="cpu", seed=1, precision="bf16", out=str(tmp_path_factory.mktemp("bf16") / "run"))
        return training.train(cfg, progress=False, log=lambda m: None)


@pytest.fixture(scope="session")
def quantize_run(mini_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `fast` run on 400 images with a 40-image test split: the int8 tests quantize it, and the int8 parity
    benchmark's test reads it (and must leave it as it was)."""
    from realfake import training
    from realfake.config import RunConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REALFAKE_CACHE_DIR", str(tmp_path_factory.mktemp("fast-run-cache")))
        mp.setattr(training.report, "build", lambda run_dir: Path(run_dir) / "report.html")  # plots: not needed here
        out = tmp_path_factory.mktemp("quantize") / "run"
        cfg = RunConfig(data=str(mini_zip), model="fast", limit=400, epochs=1, batch_size=64, augment="flips",
                        device="cpu", seed=3, out=str(out))
        return training.train(cfg, progress=False, log=lambda m: None)
