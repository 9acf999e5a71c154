"""MODEL_CARD.md: what a run's detector is, what it was trained and tested on, and where it should not be trusted.

Written from the run's own files (config.yaml, run.json, data_report.json, metrics.json, evaluations/), so it
can be re-made at any time (`realfake report`) and never states a figure the run did not measure.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from realfake.contract import CLASS_NAMES, HOLDOUT, IMAGE_SIZE, __version__
from realfake.data.extra import describe as describe_extra_fakes
from realfake.errors import RealfakeError
from realfake.metrics import METRIC_LABELS
from realfake.report.summary import (
    BUNDLED_SAMPLE,
    DEMO_NOTE,
    FAKE,
    REAL,
    UNCERTAIN,
    Adaptation,
    LabelShares,
    Summary,
    run_summary,
)
from realfake.rundir import RunDir

STANDIN_WARNING = (
    "**This run was trained and tested on the stand-in data set, not on CIFAKE: accuracy on the stand-in is "
    "not CIFAKE accuracy.** Its FAKE half comes from a small GAN trained on CIFAR-10, not from Stable Diffusion."
)
_METRICS = [  # the headline figures; names from the one list the HTML report uses too
    (key, METRIC_LABELS[key])
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "ece", "ece_equal_mass",
                "brier", "n")
]
_PROTOCOLS = {
    "seed": "all images pooled, then a stratified 70/20/10 train/validation/test split (the original notebook's)",
    "official": "90/10 stratified train/validation split of the data's train/ folder; its test/ folder is the test set",
}


def _cell(v: Any) -> str:
    """A value for a Markdown table: numbers rounded, missing ones marked, pipes and newlines made harmless."""
    if v is None:
        text = "not recorded"
    elif isinstance(v, bool):
        text = "yes" if v else "no"
    elif isinstance(v, float):
        text = f"{v:.4f}"
    elif isinstance(v, int):
        text = f"{v:,}"
    else:
        text = str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _is_standin(*names: Any) -> bool:
    return any("standin" in str(n).lower().replace("-", "").replace("_", "") for n in names if n)


def _protocol_text(protocol: str) -> str:
    if protocol.startswith(HOLDOUT):
        return (f"every image of source `{protocol[len(HOLDOUT):]}` kept out of training and validation and put in "
                "the test split (see the per-source figures); the rest split 70/20/10")
    return _PROTOCOLS.get(protocol, "see config.yaml")


def _data_section(cfg: dict[str, Any], data: dict[str, Any]) -> list[str]:
    name = data.get("data") or cfg.get("data") or "the bundled demo sample"
    protocol = cfg.get("protocol") or data.get("split", {}).get("protocol")
    limit = cfg.get("limit")
    out = [
        f"- **Data**: {_cell(name)}"
        + (" (no --data given: the bundled demo sample)" if not cfg.get("data") and name != BUNDLED_SAMPLE else ""),
        f"- **Protocol**: `{_cell(protocol)}` — {_protocol_text(str(protocol))}",
        f"- **Subset**: {f'a stratified subset of {limit:,} images (--limit)' if limit else 'all usable images'}"
        + (f", seed {cfg['seed']}" if limit and cfg.get("seed") is not None else ""),
        f"- **Unreadable files skipped**: {_cell(data.get('n_skipped', 'not recorded'))}",
    ]
    split = data.get("split") or {}
    rows = [
        [name, *(part.get(c) for c in CLASS_NAMES), part.get("n")]
        for name in ("train", "val", "test")
        if isinstance(part := split.get(name), dict)
    ]
    if rows:
        out += ["", "Images per class in each split:", "", _table(["split", *CLASS_NAMES, "total"], rows)]
    sources = data.get("sources") or {}
    if sources:
        out += ["", "Image sources (first folder below REAL/ or FAKE/): " + ", ".join(
            f"{_cell(k)} ({_cell(v)})" for k, v in sources.items())]
    if isinstance(extra := data.get("extra_fakes"), dict):
        out += ["", f"- **Extra fakes** (--extra-fakes): {describe_extra_fakes(extra, _cell(name))}"]
    return out


def _metrics_section(metrics: dict[str, Any]) -> list[str]:
    if not metrics:
        return ["No metrics.json in this run yet: run `realfake evaluate RUN`."]
    rows = [[label, metrics[key]] for key, label in _METRICS if key in metrics]
    out = [_table(["metric", "value"], rows)]
    cm = metrics.get("confusion_matrix")
    if isinstance(cm, list) and len(cm) == len(CLASS_NAMES):
        out += ["", "Confusion matrix (rows: true class, columns: predicted class):", "",
                _table(["", *(f"pred {c}" for c in CLASS_NAMES)],
                       [[f"true {c}", *row] for c, row in zip(CLASS_NAMES, cm, strict=False)])]
    return out


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _other_data(summary: Summary) -> list[str]:
    """Figures measured on other data (`realfake evaluate RUN --data OTHER`) or on a held-out source: the only
    evidence about data unlike the training set; then any evaluation on data the run was fitted on, said so."""
    out = []
    if not summary.measured:
        out += ["None yet. Accuracy on images from other generators, cameras or processing is **unknown**: "
                "measure it with `realfake evaluate RUN --data OTHER`."]
    rows = [[m.name, m.table_kind, m.n, _pct(m.accuracy), _pct(m.fakes_called_real),
             _pct(m.reals_called_fake), m.roc_auc, _pct(m.confidently_wrong)]
            for m in summary.measured + summary.fitted_on]
    if rows:
        out += ([""] if out else []) + [
            _table(["data", "what", "images", "accuracy", "fakes called REAL", "real photos called FAKE", "ROC AUC",
                    "confidently wrong after 'I don't know'"], rows)]
    if summary.fitted_on:
        out += ["", "Data marked *not a test* is data this run was fitted on (its adaptation set, or its training "
                "data): its figures say how well the fit went there, nothing about unseen data."]
    return out


def _shares_cells(m: list[LabelShares] | None, cls: str) -> list[str]:
    """The three label shares of one true class, right label first, or n/a without images of that class."""
    row = next((x for x in m or [] if x.true_class == cls), None)
    if row is None:
        return ["n/a"] * 3
    return [_pct(row.right), _pct(row.uncertain), _pct(row.wrong)]


def _labels_section(summary: Summary) -> list[str]:
    """What users get: per data set, the share of each true class labelled FAKE / uncertain / REAL."""
    rows = summary.label_rows()
    if not rows:
        return []
    return [
        "## Labels users get",
        "",
        f"Per true class, the share of images labelled {FAKE}, `{UNCERTAIN}` or {REAL}: what a user receives and "
        "acts on. Threshold accuracy counts an `uncertain` image as REAL or FAKE by its p_fake; these do not.",
        "",
        _table(["data", "what", f"fakes: {FAKE}", f"fakes: {UNCERTAIN}", f"fakes: {REAL}",
                f"real photos: {REAL}", f"real photos: {UNCERTAIN}", f"real photos: {FAKE}", "threshold accuracy"],
               [[name, what, *_shares_cells(shares, FAKE), *_shares_cells(shares, REAL), _pct(acc)]
                for name, what, shares, acc in rows]),
        "",
    ]


def _adaptation_section(a: Adaptation | None, summary: Summary, metrics: dict[str, Any]) -> list[str]:
    """Where an adapted run comes from: its parent, the set, what was fitted on it, and what its test figures are."""
    if a is None:
        return []
    counts = ", ".join(f"{_cell(n)} {c}" for c, n in a.per_class.items())
    tuned = ("no: the weights are the parent's, byte for byte" if a.finetuned_epochs is None else
             f"the head, {a.finetuned_epochs} epochs on {_cell(a.finetuned_images)} of the images; the rest "
             "of the weights are the parent's")
    if not metrics:
        home = "not measured since the weights changed: run `realfake evaluate RUN`"
    elif "rescored_from" in metrics:
        home = summary.test_split
    else:
        home = "measured on the parent's test split with this run's weights and calibration"
    return [
        "## Adapted from",
        "",
        _table(["", ""], [
            ["Parent run", f"`{_cell(a.parent)}`" + (f" ({_cell(a.parent_path)})" if a.parent_path else "")],
            ["Adaptation set", f"{_cell(a.name)} ({_cell(a.data)})"],
            ["Images", f"{_cell(a.n_images)}" + (f" ({counts})" if counts else "")],
            ["Re-fitted on them", a.refit_text],
            ["Calibrated on", _cell(a.calibration_images)],
            ["Fine-tuned", tuned],
            ["Test figures", home],
        ]),
        "",
        "An evaluation on the adaptation set is marked *adapted on (not a test)*: the calibration was fitted there.",
        "",
    ]


def _ood_section(summary: Summary) -> list[str]:
    """How many images were flagged out of distribution; nothing for a run made before the OOD score existed."""
    rows = summary.ood_rows()
    if not rows:
        return []
    level = next((o.level for _, o in rows if o and o.level is not None), None)
    return [
        "## I don't know (out of distribution)",
        "",
        "An image is labelled `uncertain` instead of REAL or FAKE when it is out of distribution: its `ood` score "
        "(how atypical it is of the class it would be labelled, against this run's validation images of that "
        f"class) is above {_cell(level) if level is not None else 'the run level'}, or when p_fake falls in the "
        "uncertain band, if any. *Confidently wrong* is the share of all images that still got a wrong REAL/FAKE "
        "label.",
        "",
        _table(["data", "images", "flagged out of distribution", "of REAL", "of FAKE", "labelled uncertain",
                "confidently wrong", "accuracy on the rest"],
               [[name, o.n, f"{_cell(o.n_flagged)} ({_pct(o.fraction_flagged)})", _pct(o.fraction_flagged_real),
                 _pct(o.fraction_flagged_fake), _pct(o.fraction_uncertain), _pct(o.confidently_wrong),
                 _pct(o.accuracy_decided)] for name, o in rows if o]),
        "",
    ]


def _decision_extras(run: dict[str, Any]) -> list[str]:
    out = []
    band = run.get("uncertain_band")
    if isinstance(band, list) and len(band) == 2:
        out.append(f"- **Uncertain**: p_fake from {_cell(band[0])} to {_cell(band[1])} is labelled `uncertain`.")
    ood = run.get("ood")
    if isinstance(ood, dict) and isinstance(ood.get("level"), (int, float)):
        out.append(f"- **I don't know**: an image whose `ood` score is above {_cell(float(ood['level']))} (more "
                   "atypical of the class it would be labelled than that share of validation images) is labelled "
                   "`uncertain`.")
    if run.get("tta") not in (None, "none"):
        out.append(f"- **Test-time augmentation**: `{_cell(run['tta'])}` (flip: the logit is averaged with the "
                   "mirror image's).")
    return out


def model_card(run_dir: str | Path) -> str:
    """The card's Markdown text for a run directory."""
    rd = RunDir(run_dir)
    run_dir = rd.path
    if not run_dir.is_dir():
        raise RealfakeError(f"run folder not found: {run_dir}")
    cfg, run = rd.read_yaml(RunDir.CONFIG), rd.info()
    data, metrics = rd.read_json(RunDir.DATA_REPORT), rd.read_json(RunDir.METRICS)
    name = run_dir.resolve().name
    model = run.get("model") or cfg.get("model") or "not recorded"
    threshold = run.get("threshold", metrics.get("threshold", cfg.get("threshold")))
    temperature = run.get("temperature")
    policy = run.get("threshold_policy")
    standin = _is_standin(data.get("data"), cfg.get("data"))
    summary = run_summary(rd)

    lines = [f"# Model card: realfake run `{name}`", ""]
    if metrics or summary.adapted_from or summary.demo:  # the demo's sentence opens with what it shows
        lines += [f"**{summary.text}**", ""]
    if standin:
        lines += [f"> {STANDIN_WARNING}", ""]
    lines += [
        "A binary classifier that estimates whether a small image is AI-generated (**FAKE**) or a real photograph "
        "(**REAL**). It outputs `p_fake`, a probability for FAKE, and a label from a decision threshold.",
        "",
        *_adaptation_section(summary.adapted_from, summary, metrics),
        *_labels_section(summary),
        "## Measured on other data",
        "",
        *_other_data(summary),
        "",
        "## Model",
        "",
        _table(["", ""], [
            ["Architecture", f"`{model}` (see the realfake docs: docs/guide/models.md)"],
            ["Starting weights", run.get("weights_used") or cfg.get("weights")],
            ["Epochs run (best epoch kept)", f"{_cell(run.get('epochs_run'))} ({_cell(run.get('best_epoch'))})"],
            ["Trained on", f"{_cell(run.get('device'))}, {_cell(run.get('created'))}"],
            ["Software", f"realfake {_cell(run.get('realfake'))}, torch {_cell(run.get('torch'))}"],
            ["Weights file", RunDir.WEIGHTS + (f" (and {RunDir.ONNX}, exported)" if rd.has(RunDir.ONNX) else "")],
        ]),
        "",
        "## Decision",
        "",
        f"- **Threshold**: label = FAKE when p_fake ≥ {_cell(None if threshold is None else f'{float(threshold):.4g}')}"
        + (f" (policy `{_cell(policy)}`)" if policy else "") + ".",
        f"- **Calibration**: p_fake = sigmoid(logit / T), T = {_cell(float(temperature))}."
        if temperature is not None else "- **Calibration**: none recorded; p_fake = sigmoid(logit).",
        *_decision_extras(run),
        "",
        "## Training data",
        "",
        *_data_section(cfg, data),
        "",
        "## Test metrics",
        "",
        f"On {summary.test_split}, FAKE as the positive class, at the threshold above"
        f"{' (figures on the stand-in data, not CIFAKE)' if standin else ''}"
        f"{' (the bundled demo sample: the pipeline working, not a skill)' if summary.demo else ''}:",
        "",
        *_metrics_section(metrics),
        "",
        *_ood_section(summary),
        "## Intended use",
        "",
        "- Research, teaching and triage: flagging images for a closer look by a person, and studying how well "
        "generated images can be told apart from photographs of the kind it was trained on.",
        "- Inputs like its training data: small natural images, resized exactly as realfake resizes them "
        f"(`realfake.data.images`: centre-crop to a square, Lanczos to {IMAGE_SIZE}x{IMAGE_SIZE}).",
        "- Not for decisions about people (accusing someone of faking an image, moderation without review, "
        "legal or journalistic proof). A score is evidence, not proof.",
        "",
        "## Limits",
        "",
        f"- **{IMAGE_SIZE}x{IMAGE_SIZE} input.** Every image is reduced to {IMAGE_SIZE}x{IMAGE_SIZE} pixels "
        "first; detail a larger image carries (and most traces generators leave in it) is gone before the "
        "model sees it.",
        "- **One generator family.** The FAKE images it learned from come from one generator "
        f"({'a small CIFAR-10 GAN' if standin else 'the one behind this data set; CIFAKE uses Stable Diffusion 1.4'}"
        "). Accuracy on images from other generators is unknown unless measured (see *Measured on other data*); "
        "detectors often fail there without warning.",
        "- **One kind of real image.** REAL images are what the data set holds (CIFAKE: CIFAR-10 photographs); "
        "other cameras, compression, screenshots, edits or resizing pipelines can shift p_fake.",
        "- **Test figures hold for the test split only**: images drawn from the same source as the training set.",
        "- **Explanations** (`realfake predict --explain`) are Grad-CAM maps of the evidence for FAKE, also for "
        "images judged REAL; they show where the model looked, not why, and are coarse at this size.",
    ]
    if standin:
        lines += [f"- {STANDIN_WARNING}"]
    if summary.demo:
        lines += [f"- **{DEMO_NOTE}** For a detector, train on real data: `realfake train --data PATH`."]
    lines += ["", "---", "",
              f"*Written by realfake {__version__} on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} "
              "from the files in this run directory; `realfake report RUN` writes it again.*", ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path) -> Path:
    """Write RUN/MODEL_CARD.md atomically; returns its path."""
    return RunDir(run_dir).write_text(RunDir.MODEL_CARD, model_card(run_dir))
