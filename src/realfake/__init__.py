"""realfake: tell AI-generated images from real photographs.

The public API is small on purpose: train a run, evaluate it, load it as a Detector.
"""

from __future__ import annotations

__side__ = "face"  # see tests/test_layers.py

from typing import TYPE_CHECKING, Any

from realfake.contract import __version__

__all__ = ["Detector", "train", "evaluate", "__version__"]

if TYPE_CHECKING:
    from realfake.detector import Detector
    from realfake.evaluation import evaluate
    from realfake.training import train


def __getattr__(name: str) -> Any:
    # Lazy so that `import realfake` (and `realfake --help`) does not pay for importing torch.
    if name == "Detector":
        from realfake.detector import Detector

        return Detector
    if name == "train":
        from realfake.training import train

        return train
    if name == "evaluate":
        from realfake.evaluation import evaluate

        return evaluate
    raise AttributeError(name)
