"""The server's tests share one Detector per module, loaded from the session's small trained run."""

from __future__ import annotations

from pathlib import Path

import pytest

from realfake.detector import Detector


@pytest.fixture(scope="module")
def detector(trained_run: Path) -> Detector:
    return Detector.load(trained_run, device="cpu")
