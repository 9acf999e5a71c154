"""The run folder: every file name in it, and the one rule for reading and writing them.

A run folder is what users keep and share, so only this module knows its layout. The rule, the same for
every command (train, resume, evaluate, predict, serve, report, the model card):
- a file that is missing reads as empty (`{}`), and the caller decides whether it needed it;
- a file that is there but damaged (not JSON/YAML, or not a mapping) is a RealfakeError that names the
  file and says what to do, never a traceback and never silently "absent";
- a value that is there but wrong (a threshold of "abc" or NaN, a million OOD quantiles, a seed torch cannot
  take) is the same: run.json's settings go through `calibration.check_stored`, config.yaml through `RunConfig`;
- every write is atomic (a reader or a crash sees the old file or the new one, never half); one that fails
  (disk full, read-only) is a one-line `WriteError` naming the file, and leaves no temporary behind;
- every write first removes what a killed writer left in the folder (temporaries whose writer is gone), so a
  run that was kill -9'd is clean again after its next write, with no manual cleanup.

An evaluation on other data (`realfake evaluate RUN --data OTHER`) writes the same kinds of files to
`RUN/evaluations/<name>/`, so it is a `RunDir` too, made by `RunDir.evaluation`.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from realfake.atomic import atomic_write_bytes, existing_dirs, remove_stale_temporaries
from realfake.calibration import check_stored
from realfake.config import RunConfig, validated
from realfake.errors import RealfakeError, one_line


def data_slug(data: str | Path) -> str:
    """A data path's last component made only of safe characters: never empty, '.' or '..', never a path, never
    starting with '.' (a temporary's mark) nor ending in '.old' (an aside copy, see realfake.atomic.atomic_dir)."""
    text = str(data).rstrip("/\\")
    base = re.split(r"[/\\]", text)[-1] if text else ""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "data"
    if slug.endswith(".old"):
        slug = slug[: -len(".old")] + "-old"
    return slug


class RunDir:
    """A run folder (or one evaluation inside it), by path; cheap to make, touches no file until asked."""

    CONFIG = "config.yaml"
    INFO = "run.json"
    SPLIT = "split.json"
    DATA_REPORT = "data_report.json"
    HISTORY = "history.csv"
    WEIGHTS = "model.safetensors"
    CHECKPOINT = "checkpoint"
    TENSORBOARD = "tb"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.csv"
    SAMPLES = "samples.npz"
    ROBUSTNESS = "robustness.json"
    EVALUATIONS = "evaluations"
    PLOTS = "plots"
    REPORT = "report.html"
    MODEL_CARD = "MODEL_CARD.md"
    ONNX = "model.onnx"  # where `realfake export RUN` writes by default, and where --backend onnxruntime looks
    ONNX_INT8 = "model.int8.onnx"  # where `realfake export RUN --quantize int8` writes by default

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    @staticmethod
    def default(model: str) -> RunDir:
        """runs/<model>-<local time>, where `train` writes when no --out is given."""
        return RunDir(Path("runs") / f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")

    # --- reading: missing -> empty, damaged -> one line naming the file ---------------------------------------

    def _damaged(self, name: str, why: str) -> RealfakeError:
        what = "restore it from a copy" + (", or retrain" if name in (self.CONFIG, self.SPLIT, self.INFO) else
                                            ", or re-run the command that wrote it")
        return RealfakeError(f"{self.path / name} is damaged ({why}): {what}")

    def read_text(self, name: str) -> str | None:
        """A text file's content, or None when it is missing."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise self._damaged(name, "not UTF-8 text") from None
        except OSError as e:
            raise RealfakeError(f"cannot read {path}: {e.strerror or e}") from None

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON file holding a mapping; {} when missing."""
        text = self.read_text(name)
        if text is None:
            return {}
        try:
            loaded = json.loads(text)
        except ValueError as e:
            raise self._damaged(name, f"not valid JSON: {one_line(e)}") from None
        if not isinstance(loaded, dict):
            raise self._damaged(name, f"holds a {type(loaded).__name__}, not a mapping")
        return loaded

    def read_yaml(self, name: str) -> dict[str, Any]:
        """A YAML file holding a mapping (safe loader: no tags, no objects); {} when missing."""
        text = self.read_text(name)
        if text is None:
            return {}
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise self._damaged(name, f"not valid YAML: {one_line(e)}") from None
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise self._damaged(name, f"holds a {type(loaded).__name__}, not a mapping")
        return {str(k).replace("-", "_"): v for k, v in loaded.items()}

    def info(self) -> dict[str, Any]:
        """run.json: model, status, calibration, provenance; the settings a verdict depends on are checked here,
        so every command that reads them (predict, evaluate, export, adapt, serve, train) refuses a bad one."""
        info = self.read_json(self.INFO)
        check_stored(info, str(self.path / self.INFO))
        return info

    def config(self) -> RunConfig:
        """config.yaml as a validated RunConfig; a run without one is not a run."""
        if not self.has(self.CONFIG):
            raise RealfakeError(f"{self.path} is not a run directory (no {self.CONFIG})")
        try:
            return validated(RunConfig, self.read_yaml(self.CONFIG))
        except RealfakeError as e:
            if str(e).startswith(str(self.path / self.CONFIG)):
                raise
            raise self._damaged(self.CONFIG, str(e)) from None

    def require(self, *names: str, what: str = "a trained run") -> None:
        """Fail in one line unless every named file is there."""
        missing = [n for n in names if not self.has(n)]
        if missing:
            raise RealfakeError(f"{self.path} is not {what} (needs {' and '.join(missing)})")

    # --- writing: always atomic ---------------------------------------------------------------------------------

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_bytes(name, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str, data: bytes) -> Path:
        """The one writer of a run's files: atomic, WriteError on failure, and it sweeps the folder first.

        The sweep covers every file's (and folder's) temporaries, not only this name's: a run killed while
        writing report.html is next written by `--resume` starting with history.csv. Safe because only
        temporaries whose writer's lock is free are removed (realfake.atomic).
        """
        path = self.path / name
        remove_stale_temporaries(path.parent)
        atomic_write_bytes(path, data)
        return path

    def write_config(self, cfg: RunConfig) -> Path:
        return self.write_text(self.CONFIG, cfg.to_yaml())

    def update_info(self, **fields: Any) -> dict[str, Any]:
        """run.json with `fields` added or replaced, written back atomically; returns the new content."""
        info = {**self.info(), **fields}
        self.write_json(self.INFO, info)
        return info

    def training_sources(self) -> set[str] | None:
        """Sources in the run's training split (data_report.json); None when the run cannot say."""
        rep = self.read_json(self.DATA_REPORT)
        split_sources = rep.get("split_sources")
        if isinstance(split_sources, dict) and isinstance(split_sources.get("train"), dict):
            return set(split_sources["train"])
        if isinstance(rep.get("sources"), dict):  # older runs: every source of the data, an upper bound
            return set(rep["sources"])
        return None

    # --- evaluations on other data --------------------------------------------------------------------------

    def evaluation(self, data: str | Path) -> RunDir:
        """Where an evaluation on `data` writes: RUN/evaluations/<name>, a name made only of safe characters.

        The name comes from the data path, so it is sanitised: never empty, '.' or '..', never a path, so an
        evaluation can only ever write inside RUN/evaluations and never over the run's own files. It never
        starts with '.' (the evaluation's temporary) nor ends in '.old' (the aside copy of another
        evaluation while it is replaced, see realfake.atomic.atomic_dir).
        """
        return RunDir(self.path / self.EVALUATIONS / data_slug(data))

    def adapted(self, data: str | Path) -> RunDir:
        """Where `realfake adapt RUN --data SET` writes by default: a sibling folder RUN-adapted-<set name>
        (the set's name without its .zip/.csv suffix), never inside the parent run."""
        slug = re.sub(r"\.(zip|csv)$", "", data_slug(data), flags=re.IGNORECASE) or "data"
        return RunDir(self.path.parent / f"{self.path.name}-adapted-{slug}")

    def evaluations(self) -> list[RunDir]:
        """Every evaluation that wrote metrics, in name order.

        Temporaries (hidden names) are never listed; an aside copy (realfake.atomic.atomic_dir) only when a
        crash between the two renames of its replacement left no `NAME`.
        """
        found = existing_dirs(self.path / self.EVALUATIONS)
        return [RunDir(d) for d in found.values() if (d / self.METRICS).is_file()]
