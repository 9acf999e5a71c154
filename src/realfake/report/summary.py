"""The one sentence a user reads first: the home test figure beside every figure measured on data unlike it.

A test accuracy of 99.9% reads as "this detector works"; it only says so for images like its training data.
The same run scored 79.2% on a generator it never saw (see shared/data/README.md), and only figures measured
on such data say anything about them. So the report, the model card and the web page (through /v1/model) all
open with this sentence, made here once from the run's metrics.json and its evaluations, and the figures it is
made from travel with it (`Summary.to_dict`).

Where other data comes from: `realfake evaluate RUN --data OTHER` (RUN/evaluations/<name>/), and the held-out
source of `--protocol holdout:SOURCE` (a source in the test metrics' per_source that was not in training).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePath
from typing import Any

from realfake.rundir import RunDir

# Data-file endings dropped from a name shown to people: "ganC-fake.zip" reads as "ganC-fake".
_DATA_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".tar", ".csv")
EVALUATE_HINT = "realfake evaluate RUN --data OTHER"
OTHER_DATA = "other data"
HELD_OUT = "held-out source"


@dataclass(frozen=True)
class OodFigures:
    """The `ood` block of a metrics.json, as counts a person can read: how many images "I don't know" caught."""

    n: int | None
    level: float | None
    n_flagged: int | None
    fraction_flagged: float | None
    fraction_flagged_real: float | None
    fraction_flagged_fake: float | None
    fraction_uncertain: float | None
    confidently_wrong: float | None
    accuracy_decided: float | None

    @staticmethod
    def from_metrics(metrics: dict[str, Any]) -> OodFigures | None:
        """None for a run (or an evaluation) made before the OOD score existed."""
        ood = metrics.get("ood")
        if not isinstance(ood, dict):
            return None
        return OodFigures(
            n=_int(metrics.get("n")), level=_num(ood.get("level")), n_flagged=_int(ood.get("n_flagged")),
            **{k: _num(ood.get(k)) for k in ("fraction_flagged", "fraction_flagged_real", "fraction_flagged_fake",
                                              "fraction_uncertain", "confidently_wrong", "accuracy_decided")},
        )


@dataclass(frozen=True)
class Measured:
    """One figure measured on data unlike the training data: another data set, or a held-out source."""

    name: str  # for people: "ganC-fake", not ".../ganC-fake.zip"
    kind: str  # OTHER_DATA or HELD_OUT
    n: int | None
    accuracy: float | None
    fakes_called_real: float | None  # share of its FAKE images labelled REAL; None when it has none
    reals_called_fake: float | None  # share of its REAL images labelled FAKE; None when it has none
    roc_auc: float | None = None
    ece: float | None = None
    ood: OodFigures | None = None  # None: measured before the OOD score existed

    @property
    def confidently_wrong(self) -> float | None:
        return self.ood.confidently_wrong if self.ood else None


@dataclass(frozen=True)
class Summary:
    """The sentence and the figures it is made from."""

    text: str
    test_accuracy: float | None
    test_n: int | None
    test_ood: OodFigures | None
    measured: list[Measured] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ood_rows(self) -> list[tuple[str, OodFigures]]:
        """(data name, its OOD figures): the test split, then every measured data set that has them."""
        rows = [("test split", self.test_ood)] if self.test_ood else []
        return rows + [(m.name, m.ood) for m in self.measured if m.ood]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def data_label(name: Any) -> str:
    """A data set's name as people say it: the last path part, without an archive ending."""
    base = PurePath(str(name).rstrip("/\\").replace("\\", "/")).name or str(name)
    for suffix in _DATA_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def _class_errors(metrics: dict[str, Any]) -> tuple[float | None, float | None]:
    """(share of FAKE called REAL, share of REAL called FAKE) from the confusion matrix, by the threshold."""
    cm = metrics.get("confusion_matrix")
    if not (isinstance(cm, list) and len(cm) == 2 and all(isinstance(r, list) and len(r) == 2 for r in cm)):
        return None, None
    (rr, rf), (fr, ff) = cm
    return (fr / (fr + ff) if fr + ff else None), (rf / (rr + rf) if rr + rf else None)


def measured_from(name: str, kind: str, metrics: dict[str, Any]) -> Measured:
    """A Measured from one metrics mapping (an evaluation's metrics.json, or one per_source entry)."""
    missed, alarms = _class_errors(metrics)
    return Measured(name=name, kind=kind, n=_int(metrics.get("n")), accuracy=_num(metrics.get("accuracy")),
                    fakes_called_real=missed, reals_called_fake=alarms, roc_auc=_num(metrics.get("roc_auc")),
                    ece=_num(metrics.get("ece")), ood=OodFigures.from_metrics(metrics) or _per_source_ood(metrics))


def _per_source_ood(metrics: dict[str, Any]) -> OodFigures | None:
    """A per_source entry carries only its uncertain and confidently wrong shares (no level or flag counts)."""
    if _num(metrics.get("confidently_wrong")) is None:
        return None
    return OodFigures(n=_int(metrics.get("n")), level=None, n_flagged=None, fraction_flagged=None,
                      fraction_flagged_real=None, fraction_flagged_fake=None,
                      fraction_uncertain=_num(metrics.get("fraction_uncertain")),
                      confidently_wrong=_num(metrics.get("confidently_wrong")), accuracy_decided=None)


def held_out_sources(metrics: dict[str, Any], seen: set[str] | None) -> list[str]:
    """Sources in the test metrics that training never saw (`--protocol holdout:SOURCE`), in name order."""
    per = metrics.get("per_source")
    if not isinstance(per, dict):
        return []
    unseen = metrics.get("sources_unseen_in_training")
    if isinstance(unseen, list):
        return sorted(str(s) for s in unseen if s in per)
    if seen is None:
        return []
    return sorted(s for s in per if s != "(none)" and s not in seen)


def _home_accuracy(metrics: dict[str, Any], held: list[str]) -> tuple[float | None, int | None]:
    """Test accuracy on the images like the training data: without the held-out sources' images, if any."""
    acc, n = _num(metrics.get("accuracy")), _int(metrics.get("n"))
    per = metrics.get("per_source")
    if not held or not isinstance(per, dict):
        return acc, n
    home = [m for s, m in per.items() if s not in held and isinstance(m, dict)]
    pairs = [(_num(m.get("accuracy")), _int(m.get("n"))) for m in home]
    if not pairs or any(a is None or k is None for a, k in pairs):
        return acc, n
    total = sum(k for _, k in pairs)  # type: ignore[misc]
    if not total:
        return acc, n
    return sum(a * k for a, k in pairs) / total, total  # type: ignore[operator]


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _clause(m: Measured) -> str:
    """'ganC-fake 79.2% (41.5% of fakes called REAL, 3.1% confidently wrong after 'I don't know')'."""
    name = f"{m.name} (held out of training)" if m.kind == HELD_OUT else m.name
    head = f"{name} {_pct(m.accuracy)}" if m.accuracy is not None else f"{name} (accuracy not recorded)"
    details = []
    if m.fakes_called_real is not None:
        details.append(f"{_pct(m.fakes_called_real)} of fakes called REAL")
    if m.reals_called_fake is not None:
        details.append(f"{_pct(m.reals_called_fake)} of real photos called FAKE")
    if m.confidently_wrong is not None:
        details.append(f"{_pct(m.confidently_wrong)} confidently wrong after 'I don't know'")
    return head + (f" ({', '.join(details)})" if details else "")


def summarize(
    metrics: dict[str, Any], evaluations: list[tuple[str, dict[str, Any]]], seen: set[str] | None = None
) -> Summary:
    """The summary of a run from its test metrics and its evaluations on other data ((name, metrics) pairs).

    `seen` is the run's training sources (RunDir.training_sources), which tells a held-out source from the rest.
    Pure, so every face says the same thing for the same files.
    """
    held = held_out_sources(metrics, seen)
    per = metrics.get("per_source") if isinstance(metrics.get("per_source"), dict) else {}
    measured = [measured_from(s, HELD_OUT, per[s]) for s in held if isinstance(per.get(s), dict)]
    measured += [measured_from(data_label(name), OTHER_DATA, m) for name, m in evaluations if m]
    acc, n = _home_accuracy(metrics, held)
    home = (f"Test accuracy {_pct(acc)} on images like its training data" if acc is not None
            else "No test accuracy recorded for this model")
    if measured:
        text = f"{home}; on other data it was measured on: {'; '.join(_clause(m) for m in measured)}."
    else:
        text = (f"{home}. Performance on generators it was not trained on is unknown: evaluate it with "
                f"`{EVALUATE_HINT}`.")
    return Summary(text=text, test_accuracy=acc, test_n=n, test_ood=OodFigures.from_metrics(metrics),
                   measured=measured)


def evaluations_of(run: RunDir) -> list[tuple[str, dict[str, Any]]]:
    """(data name, metrics) of each evaluation on other data in the run folder, in name order."""
    out = []
    for ev in run.evaluations():
        m = ev.read_json(RunDir.METRICS)
        if m:
            out.append((str(ev.read_json(RunDir.DATA_REPORT).get("data") or ev.path.name), m))
    return out


def run_summary(run_dir: str | RunDir | PurePath) -> Summary:
    """The summary of a run folder, read through RunDir (missing files read as empty)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return summarize(run.read_json(RunDir.METRICS), evaluations_of(run), run.training_sources())
