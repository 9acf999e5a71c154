"""Shared fixtures: every test gets its own cache folder, and the stand-in data is found beside the repo."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests compare runs bit for bit (same seed, resume). realfake.device.ThreadGovernor changes the thread count
# when other processes are busy, which a shared CI machine may be, and a run whose count changed is not repeatable
# bit for bit; it steps aside where the user fixed the count, as here (before torch loads; children inherit it).
# Its own tests unset the variable.
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
