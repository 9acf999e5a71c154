"""The one sentence a user reads first: the home test figure beside every figure measured on data unlike it.

A high test accuracy reads as "this detector works"; it only says so for images like its training data. The
same run can score far lower on a generator it never saw (docs/performance.md#figures-behind-the-code), and
only figures measured on such data say anything about them. So the report, the model card and the web page
(through /v1/model) all open with this sentence, made here once from the run's metrics.json and its
evaluations, and the figures it is made from travel with it (`Summary.to_dict`). These types are also the
server's response schema for those figures (/v1/model's `summary_figures`), so each field's description is the
one the API documents: one copy.

Where other data comes from: `realfake evaluate RUN --data OTHER` (RUN/evaluations/<name>/), and the held-out
source of `--protocol holdout:SOURCE` (a source in the test metrics' per_source that was not in training).

What a user acts on is the label (FAKE / uncertain / REAL), not accuracy at the threshold, which counts an
image labelled `uncertain` as right or wrong by its p_fake. On an unseen generator the two can part ways: a
high "accuracy" while most of its fakes are labelled uncertain (same link). So wherever metrics.json holds its
`labels` block the sentence gives the label shares per true class first and the threshold accuracy beside
them. An evaluation on data the run was fitted on (an adapted run's adaptation set, or its own training data)
is said to be so, and never counts as evidence about unseen data.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from dataclasses import asdict, dataclass, field
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import Field

from realfake.calibration import UNCERTAIN
from realfake.contract import CLASS_NAMES
from realfake.metrics import METRIC_LABELS
from realfake.rundir import RunDir

# Data-file endings dropped from a name shown to people: "ganC-fake.zip" reads as "ganC-fake".
_DATA_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".tar", ".csv")
EVALUATE_HINT = "realfake evaluate RUN --data OTHER"
OTHER_DATA = "other data"
HELD_OUT = "held-out source"
ADAPTED_ON = "adapted on"  # the adaptation set of an adapted run: its calibration was fitted there, not a test
TRAINING_DATA = "training data"  # the run's own training data set, training images included: not a test
KINDS = (OTHER_DATA, HELD_OUT, ADAPTED_ON, TRAINING_DATA)  # Measured.kind: what the data is to the run
_WHAT = {OTHER_DATA: "never trained on", HELD_OUT: "held out of training",
         ADAPTED_ON: "adapted on these images, so not a test", TRAINING_DATA: "its training data, so not a test"}
_TABLE_KIND = {HELD_OUT: "held out of training", ADAPTED_ON: "adapted on (not a test)",
               TRAINING_DATA: "its training data (not a test)"}
REAL, FAKE = CLASS_NAMES
BUNDLED_SAMPLE = "the bundled demo sample"  # how data_report.json names it (realfake.data.sources.open_source)
DEMO_SAMPLE_NAME = "demo-sample"  # the bundled sample's file name, also when passed with --data
DEMO_NOTE = ("Demo run: trained on the bundled sample, whose REAL and FAKE images differ in content (photographs "
             "against a small GAN's samples), so its figures show the pipeline working, not a detector's skill.")
_REFIT = {"temperature": "temperature", "threshold": "decision threshold", "ood": "'I don't know' (OOD) quantiles"}


@dataclass(frozen=True)
class LabelShares:
    """Of one true class's images, the share that got each label users see (metrics.json `labels`)."""

    true_class: Annotated[Literal[CLASS_NAMES], Field(  # type: ignore[valid-type]  # named once, in contract.py
        description="the true class of the images these shares are of")]
    n: Annotated[int, Field(description="images of this true class")]
    fake: Annotated[float, Field(description="share labelled FAKE, 0..1")]
    uncertain: Annotated[float, Field(description="share labelled 'uncertain', 0..1")]
    real: Annotated[float, Field(description="share labelled REAL, 0..1")]

    @property
    def right(self) -> float:
        return self.fake if self.true_class == FAKE else self.real

    @property
    def wrong(self) -> float:
        return self.real if self.true_class == FAKE else self.fake

    def phrase(self, first: bool = True) -> str:
        """'of fakes 12.5% labelled FAKE, 87.5% uncertain, 0.0% REAL': the right label, uncertain, the wrong one."""
        who, other = ("fakes", REAL) if self.true_class == FAKE else ("real photos", FAKE)
        return (f"of {who} {_share(self.right)} {'labelled ' if first else ''}{self.true_class}, "
                f"{_share(self.uncertain)} {UNCERTAIN}, {_share(self.wrong)} {other}")


def shares_text(shares: list[LabelShares]) -> str:
    """Every class's phrase, fakes first: 'of fakes ...; of real photos ...'."""
    return "; ".join(s.phrase(first=i == 0) for i, s in enumerate(shares))


def _label_counts(metrics: dict[str, Any]) -> dict[str, dict[str, int]] | None:
    """The `labels` block's counts per true class and label; None when absent (a run made before it) or
    malformed."""
    block = metrics.get("labels")
    if not isinstance(block, dict):
        return None
    out: dict[str, dict[str, int]] = {}
    for cls in CLASS_NAMES:
        counts = block.get(cls, {}).get("counts") if isinstance(block.get(cls), dict) else None
        if not isinstance(counts, dict):
            return None
        values = {v: _int(counts.get(v)) for v in (FAKE, UNCERTAIN, REAL)}
        if any(c is None or c < 0 for c in values.values()):
            return None
        out[cls] = values  # type: ignore[assignment]
    return out


def label_shares_of(metrics: dict[str, Any]) -> list[LabelShares] | None:
    """A metrics mapping's label shares, fakes first; None for metrics made before they were recorded."""
    return _shares(_label_counts(metrics))


def _shares(counts: dict[str, dict[str, int]] | None) -> list[LabelShares] | None:
    """FAKE then REAL, each class with images; None when there are no counts or no images."""
    if counts is None:
        return None
    out = []
    for cls in (FAKE, REAL):
        c = counts[cls]
        n = sum(c.values())
        if n:
            out.append(LabelShares(cls, n, c[FAKE] / n, c[UNCERTAIN] / n, c[REAL] / n))
    return out or None


@dataclass(frozen=True)
class Adaptation:
    """Where an adapted run (`realfake adapt`) comes from: run.json's `parent` and `adapted_on`."""

    parent: Annotated[str, Field(description="the parent run's folder name")]
    parent_path: Annotated[str | None, Field(description="the parent run's path, as recorded; null when not")]
    data: Annotated[str, Field(description="the adaptation set, as recorded (a path, or the name given to "
                                           "adapt_arrays)")]
    n_images: Annotated[int | None, Field(description="labelled images in the adaptation set")]
    per_class: Annotated[dict[str, int], Field(description="the adaptation set's images per class")]
    refit: Annotated[list[str], Field(description="what was re-fitted on it, by run.json's names: temperature, "
                                                  "threshold, ood")]
    finetuned_epochs: Annotated[int | None, Field(description="epochs the model's head was fine-tuned for; null: "
                                                              "the weights are the parent's, unchanged")]
    finetuned_images: Annotated[int | None, Field(description="adaptation images the head was fine-tuned on")]
    calibration_images: Annotated[int | None, Field(description="adaptation images the calibration was re-fitted "
                                                                "on (all of them, or the rest after fine-tuning)")]

    @property
    def name(self) -> str:
        return data_label(self.data)

    @staticmethod
    def from_info(info: dict[str, Any]) -> Adaptation | None:
        """None for a run `train` made."""
        parent, on = info.get("parent"), info.get("adapted_on")
        if not isinstance(parent, dict) or not isinstance(on, dict):
            return None
        tuned = on.get("finetuned") if isinstance(on.get("finetuned"), dict) else None

        def total(d: Any) -> int | None:
            return sum(v for v in d.values() if _int(v) is not None) if isinstance(d, dict) else None

        return Adaptation(
            parent=str(parent.get("name") or data_label(parent.get("path") or "?")),
            parent_path=str(parent["path"]) if parent.get("path") else None,
            data=str(on.get("data") or "?"), n_images=_int(on.get("n_images")),
            per_class={str(k): v for k, v in (on.get("per_class") or {}).items() if _int(v) is not None},
            refit=[str(r) for r in on.get("refit") or []],
            finetuned_epochs=_int(tuned.get("epochs")) if tuned else None,
            finetuned_images=total(tuned.get("images")) if tuned else None,
            calibration_images=total(on.get("calibration_images")),
        )

    @property
    def refit_text(self) -> str:
        names = [_REFIT.get(r, r) for r in self.refit] or ["nothing"]
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"

    def sentence(self) -> str:
        """'Adapted from run X on Y (60 labelled images): temperature, ... re-fitted on them; weights unchanged.'"""
        n = f" ({self.n_images:,} labelled images)" if self.n_images is not None else ""
        head = f"Adapted from run {self.parent} on {self.name}{n}: "
        if self.finetuned_epochs is None:
            return head + f"{self.refit_text} re-fitted on them; the weights are the parent's, unchanged."
        rest = f" on the other {self.calibration_images:,}" if self.calibration_images is not None else ""
        of = f" on {self.finetuned_images:,} of them" if self.finetuned_images is not None else ""
        return head + (f"the model's head fine-tuned for {self.finetuned_epochs} epochs{of}, then "
                       f"{self.refit_text} re-fitted{rest}.")


@dataclass(frozen=True)
class OodFigures:
    """The `ood` block of a metrics.json, as counts a person can read: how many images "I don't know" caught.

    A held-out source's figures carry only its uncertain and confidently wrong shares; the rest are null there.
    """

    n: Annotated[int | None, Field(description="images evaluated")]
    level: Annotated[float | None, Field(description="ood score above which an image was labelled 'uncertain'")]
    n_flagged: Annotated[int | None, Field(description="images flagged out of distribution")]
    fraction_flagged: Annotated[float | None, Field(description="n_flagged / n")]
    fraction_flagged_real: Annotated[float | None, Field(description="share of the REAL images flagged; null "
                                                                     "without any")]
    fraction_flagged_fake: Annotated[float | None, Field(description="share of the FAKE images flagged; null "
                                                                     "without any")]
    fraction_uncertain: Annotated[float | None, Field(description="share labelled 'uncertain' for any reason (OOD "
                                                                  "or band)")]
    confidently_wrong: Annotated[float | None, Field(description="share of all images that still got a wrong "
                                                                 "REAL/FAKE label")]
    accuracy_decided: Annotated[float | None, Field(description="accuracy on the images that got a REAL/FAKE "
                                                                "label")]

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

    name: Annotated[str, Field(description="the data's name for people, e.g. 'ganC-fake' (no path, no .zip)")]
    kind: Annotated[Literal[KINDS], Field(  # type: ignore[valid-type]  # named once, above
        description="'other data': `realfake evaluate RUN --data OTHER`; 'held-out source': a source kept out of "
        "training by `--protocol holdout:SOURCE`, measured in the test split; 'adapted on' / 'training data': data "
        "the run was fitted on (only in `fitted_on`), so not a test")]
    n: Annotated[int | None, Field(description="images measured")]
    accuracy: Annotated[float | None, Field(description="share labelled right at the threshold, 0..1")]
    fakes_called_real: Annotated[float | None, Field(description="share of its FAKE images labelled REAL at the "
                                                                 "threshold; null without any")]
    reals_called_fake: Annotated[float | None, Field(description="share of its REAL images labelled FAKE at the "
                                                                 "threshold; null without any")]
    roc_auc: Annotated[float | None, Field(description="ROC AUC of p(FAKE), FAKE the positive class; null "
                                                       "without both classes")] = None
    ece: Annotated[float | None, Field(description=METRIC_LABELS["ece"])] = None
    ood: Annotated[OodFigures | None, Field(description="out-of-distribution flags; null when measured without an "
                                                        "OOD score")] = None
    labels: Annotated[list[LabelShares] | None, Field(description="per true class, the share of each label users "
                                                                  "get; null when measured before label shares "
                                                                  "were recorded")] = None
    ece_equal_mass: Annotated[float | None, Field(description=METRIC_LABELS["ece_equal_mass"])] = None

    @property
    def what(self) -> str:
        """What this data is to the run, in people's words: 'never trained on', 'held out of training', ..."""
        return _WHAT.get(self.kind, self.kind)

    @property
    def table_kind(self) -> str:
        """The same, as the report's and the model card's tables say it."""
        return _TABLE_KIND.get(self.kind, "other data set")

    @property
    def confidently_wrong(self) -> float | None:
        return self.ood.confidently_wrong if self.ood else None


@dataclass(frozen=True)
class Summary:
    """The sentence and the figures it is made from.

    `measured` holds only data the run was never fitted on (the evidence about unseen data); evaluations on
    the adaptation set or on the training data go to `fitted_on`, said to be so.
    """

    # The sentence: the server sends it on its own (/v1/model's `summary`), so not again among the figures.
    text: Annotated[str, Field(exclude=True)]
    test_accuracy: Annotated[float | None, Field(description="accuracy on the test images like the training data "
                                                             "(without a held-out source's images), 0..1")]
    test_n: Annotated[int | None, Field(description="test images that figure is measured on")]
    test_ood: Annotated[OodFigures | None, Field(description="out-of-distribution flags on the test split; null for "
                                                             "a run made before the OOD score existed")]
    measured: Annotated[list[Measured], Field(description="every other data set and held-out source measured; "
                                                          "empty: performance on generators it was not trained on "
                                                          "is unknown")] = field(default_factory=list)
    test_labels: Annotated[list[LabelShares] | None, Field(description="per true class, the share of each label "
                                                                       "users get on the test split; null for a run "
                                                                       "made before label shares were "
                                                                       "recorded")] = None
    test_ece_equal_mass: Annotated[float | None, Field(description=METRIC_LABELS["ece_equal_mass"]
                                                                   + ", on the test split")] = None
    test_split: Annotated[str, Field(description="where the home figures come from, for people")] = "its test split"
    fitted_on: Annotated[list[Measured], Field(description="data the run was fitted on and evaluated on too (an "
                                                           "adaptation set, its training data): shown, never as a "
                                                           "test")] = field(default_factory=list)
    adapted_from: Annotated[Adaptation | None, Field(description="the parent run and adaptation set of a run made by "
                                                                 "`realfake adapt`; null for one `train` made")] = None
    demo: Annotated[bool, Field(description="trained on the bundled demo sample: shows the pipeline working, not a "
                                            "detector's skill")] = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ood_rows(self) -> list[tuple[str, OodFigures]]:
        """(data name, its OOD figures): the test split, then every measured data set that has them."""
        rows = [("test split", self.test_ood)] if self.test_ood else []
        return rows + [(m.name, m.ood) for m in self.measured + self.fitted_on if m.ood]

    def label_rows(self) -> list[tuple[str, str, list[LabelShares], float | None]]:
        """(data name, what it is to the run, its label shares, threshold accuracy) of every data set with label
        shares, side by side: the home test split first, then unseen data, then data the run was fitted on."""
        rows = [("test split", "images like its training data", self.test_labels, self.test_accuracy)]
        rows += [(m.name, m.what, m.labels, m.accuracy) for m in self.measured + self.fitted_on]
        return [(name, what, shares, acc) for name, what, shares, acc in rows if shares]


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
                    ece=_num(metrics.get("ece")), ood=OodFigures.from_metrics(metrics) or _per_source_ood(metrics),
                    labels=label_shares_of(metrics), ece_equal_mass=_num(metrics.get("ece_equal_mass")))


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


def _home_labels(metrics: dict[str, Any], held: list[str]) -> list[LabelShares] | None:
    """Label shares on the test images like the training data: the held-out sources' images left out."""
    per = metrics.get("per_source")
    if not held or not isinstance(per, dict):
        return label_shares_of(metrics)
    home = [_label_counts(m) if isinstance(m, dict) else None for s, m in per.items() if s not in held]
    if not home or any(c is None for c in home):
        return None  # the whole split's shares would count the held-out images as home ones
    return _shares({cls: {v: sum(c[cls][v] for c in home) for v in (FAKE, UNCERTAIN, REAL)}  # type: ignore[index]
                    for cls in CLASS_NAMES})


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _share(x: float) -> str:
    """A share as people read it, never rounding a few images away: 1 of 2,500 is '<0.1%', not '0.0%'."""
    if 0 < x < 0.0005:
        return "<0.1%"
    if 0.9995 <= x < 1:
        return ">99.9%"
    return f"{x:.1%}"


def _details(m: Measured) -> str:
    """' (41.5% of fakes called REAL, ...)': the errors at the threshold, where recorded."""
    details = []
    if m.fakes_called_real is not None:
        details.append(f"{_pct(m.fakes_called_real)} of fakes called REAL")
    if m.reals_called_fake is not None:
        details.append(f"{_pct(m.reals_called_fake)} of real photos called FAKE")
    if m.confidently_wrong is not None:
        details.append(f"{_pct(m.confidently_wrong)} confidently wrong after 'I don't know'")
    return f" ({', '.join(details)})" if details else ""


def _clause(m: Measured) -> str:
    """'ganC-fake 79.2% (41.5% of fakes called REAL, 3.1% confidently wrong after 'I don't know')'."""
    name = m.name if m.kind == OTHER_DATA else f"{m.name} ({m.what})"
    head = f"{name} {_pct(m.accuracy)}" if m.accuracy is not None else f"{name} (accuracy not recorded)"
    return head + _details(m)


def _threshold_accuracy(acc: float | None) -> str:
    return f" (threshold accuracy {_pct(acc)})" if acc is not None else ""


def _sentence(m: Measured) -> str:
    """'On ganC-fake (never trained on): of fakes 12.5% labelled FAKE, ... (threshold accuracy 98.9%).'"""
    if m.labels:
        return f"On {m.name} ({m.what}): {shares_text(m.labels)}{_threshold_accuracy(m.accuracy)}."
    # measured before label shares were recorded: what it has
    acc = f"threshold accuracy {_pct(m.accuracy)}" if m.accuracy is not None else "accuracy not recorded"
    return f"On {m.name} ({m.what}): {acc}{_details(m)}."


def _same_data(a: Any, b: Any) -> bool:
    """Whether two recorded data names are the same set, by its name: two sets named alike count as the same, so
    an evaluation is never called unseen when it may be the set the run was fitted on."""
    return bool(a) and bool(b) and data_label(a).lower() == data_label(b).lower()


def _home_sentence(acc: float | None, shares: list[LabelShares] | None, where: str, adapted: Adaptation | None,
                   has_metrics: bool) -> str:
    if shares:
        return f"On {where}: {shares_text(shares)}{_threshold_accuracy(acc)}."
    if acc is not None:
        return f"Test accuracy {_pct(acc)} on images like its training data."
    if not has_metrics and adapted is not None and adapted.finetuned_epochs is not None:
        return ("Not measured on its test split since its head was fine-tuned (the parent's figures no longer "
                "hold): measure it with `realfake evaluate RUN`.")
    return "No test accuracy recorded for this model."


def summarize(
    metrics: dict[str, Any], evaluations: list[tuple[str, dict[str, Any]]], seen: set[str] | None = None, *,
    adapted_from: Adaptation | None = None, trained_on: str | None = None, demo: bool = False,
) -> Summary:
    """The summary of a run from its test metrics and its evaluations on other data ((name, metrics) pairs).

    `seen` is the run's training sources (RunDir.training_sources), which tells a held-out source from the rest;
    `adapted_from` (an adapted run's provenance) and `trained_on` (its training data's name) tell an evaluation
    on data the run was fitted on from one on unseen data; `demo`: trained on the bundled demo sample.
    Pure, so every face says the same thing for the same files.
    """
    held = held_out_sources(metrics, seen)
    per = metrics.get("per_source") if isinstance(metrics.get("per_source"), dict) else {}
    measured = [measured_from(s, HELD_OUT, per[s]) for s in held if isinstance(per.get(s), dict)]
    fitted: list[Measured] = []
    for name, m in evaluations:
        if not m:
            continue
        if adapted_from is not None and _same_data(name, adapted_from.data):
            fitted.append(measured_from(data_label(name), ADAPTED_ON, m))
        elif _same_data(name, trained_on):
            fitted.append(measured_from(data_label(name), TRAINING_DATA, m))
        else:
            measured.append(measured_from(data_label(name), OTHER_DATA, m))
    acc, n = _home_accuracy(metrics, held)
    shares = _home_labels(metrics, held)
    rescored = metrics.get("rescored_from") if isinstance(metrics.get("rescored_from"), dict) else None
    split, where = "its test split", "its test split (images like its training data)"
    if rescored:  # an adapted run's: the weights are the parent's, so are the logits; only the calibration is new
        split = "its parent's test split, re-scored with this run's calibration"
        where = (f"its parent's test split (images like its training data; run {rescored.get('run') or '?'}'s "
                 "logits, re-scored with this run's calibration)")
    home = _home_sentence(acc, shares, where, adapted_from, bool(metrics))
    unknown = (f"Performance on generators it was not trained on is unknown: evaluate it with "
               f"`{EVALUATE_HINT}`.")
    everything = measured + fitted
    if shares or any(m.labels for m in everything):
        text = " ".join([home, *(_sentence(m) for m in everything)] + ([] if measured else [unknown]))
    elif everything:  # a run and evaluations made before label shares were recorded: the sentence they had
        text = f"{home[:-1]}; on other data it was measured on: {'; '.join(_clause(m) for m in everything)}."
        text += "" if measured else f" {unknown}"
    else:
        text = f"{home} {unknown}"
    prefix = ([DEMO_NOTE] if demo else []) + ([adapted_from.sentence()] if adapted_from else [])
    return Summary(text=" ".join([*prefix, text]), test_accuracy=acc, test_n=n,
                   test_ood=OodFigures.from_metrics(metrics), measured=measured, test_labels=shares,
                   test_ece_equal_mass=_num(metrics.get("ece_equal_mass")), test_split=split, fitted_on=fitted,
                   adapted_from=adapted_from, demo=demo)


def is_demo(config: dict[str, Any], data_report: dict[str, Any]) -> bool:
    """Whether a run was trained on the bundled demo sample: config.yaml's `data` is null (no --data given), or
    its data is the sample itself (data_report.json's name for it, or the file demo-sample.zip)."""
    if "data" in config and config["data"] is None:
        return True
    names = [config.get("data"), data_report.get("data")]
    return any(n == BUNDLED_SAMPLE or (n and data_label(n).lower() == DEMO_SAMPLE_NAME) for n in names)


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
    config, data = run.read_yaml(RunDir.CONFIG), run.read_json(RunDir.DATA_REPORT)
    return summarize(run.read_json(RunDir.METRICS), evaluations_of(run), run.training_sources(),
                     adapted_from=Adaptation.from_info(run.read_json(RunDir.INFO)),
                     trained_on=config.get("data") or data.get("data"), demo=is_demo(config, data))
