"""What a person reads about a run: figures (plots), a self-contained report.html (html) and MODEL_CARD.md
(model_card), all drawn from the run folder's files through `RunDir`, so they can be re-made at any time."""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from pathlib import Path

from realfake.atomic import WriteError
from realfake.errors import RealfakeError
from realfake.rundir import RunDir


def build(run_dir: str | Path, *, need_metrics: bool = True) -> Path:
    """(Re)draw every figure, the self-contained report.html and MODEL_CARD.md from the files in the run.

    `need_metrics=False` writes them without a metrics.json too (an adapted run whose head was fine-tuned has
    none until evaluated: its report says so, and where it comes from).
    """
    from realfake.report.html import build_report
    from realfake.report.model_card import write_model_card

    run = RunDir(run_dir)
    if need_metrics and not run.has(RunDir.METRICS):
        raise RealfakeError(f"{run.path} has no {RunDir.METRICS} yet: run `realfake evaluate {run.path}` first")
    try:
        path = build_report(run.path)
        write_model_card(run.path)
    except WriteError as e:  # every file here is drawn from the run's files: drawing again is all it takes
        raise e.then(f"run: realfake report {run.path}") from None
    return path
