"""One self-contained HTML page per run: data, run info, metrics, figures and config.

Images are embedded as base64 data URIs and the CSS is inline, so the page can be mailed, attached or
opened offline and makes no outside requests. Every string read from a run file is HTML-escaped: file
names in a data set are user input.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

from realfake.contract import CLASS_NAMES
from realfake.data.extra import describe as describe_extra_fakes
from realfake.errors import RealfakeError
from realfake.metrics import METRIC_LABELS
from realfake.report.plots import EVALUATION_PLOT, draw_all
from realfake.report.summary import (
    DEMO_NOTE,
    FAKE,
    REAL,
    UNCERTAIN,
    Adaptation,
    LabelShares,
    Measured,
    Summary,
    data_label,
    evaluations_of,
    run_summary,
)
from realfake.rundir import RunDir

MAX_SKIPPED_SHOWN = 20

_METRIC_ROWS = list(METRIC_LABELS.items())  # key in metrics.json -> label shown
_NOT_SCALAR = {"confusion_matrix", "per_class", "per_source", "uncertain", "sources_unseen_in_training", "ood",
               "labels", "rescored_from"}

_CAPTIONS = {
    "training_curves": "Loss and accuracy per epoch on the training and validation splits.",
    "confusion_matrix": "Test images by true class (rows) and predicted class (columns).",
    "roc_curve": "ROC curve on the test split, FAKE as the positive class.",
    "pr_curve": "Precision-recall curve on the test split, FAKE as the positive class.",
    "predictions_grid": "A sample of test images: green titles are right, red ones wrong; "
    "p is the model's probability for the class it predicted.",
    "reliability_diagram": "Share of test images truly FAKE against the predicted p(FAKE), per bin, before and "
    "after temperature scaling, in 15 equal-width bins and (calibrated) 15 equal-mass bins of the same number of "
    "images each: the closer to the diagonal, the more p(FAKE) can be taken at its word. Below, the number of "
    "images in each equal-width bin: a point resting on a handful of images says little.",
    "robustness": "Accuracy and ROC AUC on degraded test images (see Robustness above): each degradation "
    "applied to all images, to REAL only and to FAKE only.",
}

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1000px; margin: 2em auto; padding: 0 1em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
.sub { color: #59636e; margin-top: 0; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td table { margin: 0; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #59636e; font-size: .92em; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: .8em; overflow-x: auto; font-size: .9em; }
.muted { color: #59636e; }
.summary { font-size: 1.08em; background: #f6f8fa; border-left: 4px solid #0969da; padding: .7em 1em; }
.note { background: #fff8c5; border: 1px solid #d4a72c; padding: .7em 1em; margin-top: 2.5em; }
"""


def _fmt(v: Any) -> str:
    """A value as escaped text: null as n/a, floats to 4 decimals, ints as they are."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.4f}" if abs(v) < 1e6 else f"{v:.4g}"
    return escape(str(v))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _value(v: Any) -> str:
    """Any JSON value as escaped HTML; nested mappings become nested tables."""
    if isinstance(v, dict):
        return _kv_table(v) if v else '<span class="muted">none</span>'
    if isinstance(v, list):
        if all(not isinstance(x, (dict, list)) for x in v):
            return ", ".join(_fmt(x) for x in v) or '<span class="muted">none</span>'
        return escape(json.dumps(v))
    return _fmt(v)


def _kv_table(d: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td{' class=num' if _is_number(v) else ''}>{_value(v)}</td></tr>"
        for k, v in d.items()
    )
    return f"<table>{rows}</table>"


def _data_section(data: dict[str, Any]) -> str:
    if not data:
        return '<p class="muted">No data_report.json in this run.</p>'
    summary = {k: v for k, v in data.items() if k != "skipped"}
    parts = [_kv_table(summary)]
    if isinstance(extra := data.get("extra_fakes"), dict):
        parts.insert(0, f'<p class="extra-fakes">{escape(describe_extra_fakes(extra, str(data.get("data"))))}</p>')
    skipped = data.get("skipped") or []
    n_skipped = data.get("n_skipped", len(skipped))
    if skipped:
        shown = skipped[:MAX_SKIPPED_SHOWN]
        rows = "".join(
            f"<tr><td>{escape(str(s.get('path', '')))}</td><td>{escape(str(s.get('reason', '')))}</td></tr>"
            if isinstance(s, dict)
            else f"<tr><td colspan=2>{escape(str(s))}</td></tr>"
            for s in shown
        )
        more = f" (first {len(shown)} of {_fmt(n_skipped)})" if _is_number(n_skipped) and n_skipped > len(shown) else ""
        parts.append(f"<h3>Skipped files{more}</h3><table><tr><th>path</th><th>reason</th></tr>{rows}</table>")
    return "".join(parts)


def _metrics_section(metrics: dict[str, Any]) -> str:
    if not metrics:
        return '<p class="muted">No metrics.json in this run.</p>'
    known = {k for k, _ in _METRIC_ROWS}
    rows = [(label, metrics.get(key)) for key, label in _METRIC_ROWS if key in metrics]
    rows += [  # figures added later (ece, brier, ...) show up without a change here
        (k, v) for k, v in metrics.items() if k not in known and k not in _NOT_SCALAR and (_is_number(v) or v is None)
    ]
    body = "".join(f"<tr><th>{escape(label)}</th><td class=num>{_fmt(v)}</td></tr>" for label, v in rows)
    parts = [f"<table>{body}</table>"]

    per_class = metrics.get("per_class")
    if isinstance(per_class, dict) and per_class:
        cols = ["precision", "recall", "f1", "support"]
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join(
            f"<tr><th>{escape(str(name))}</th>"
            + "".join(f"<td class=num>{_fmt(m.get(c) if isinstance(m, dict) else None)}</td>" for c in cols)
            + "</tr>"
            for name, m in per_class.items()
        )
        parts.append(f"<h3>Per class</h3><table><tr><th>class</th>{head}</tr>{body}</table>")

    cm = metrics.get("confusion_matrix")
    if isinstance(cm, list) and len(cm) == len(CLASS_NAMES):
        head = "".join(f"<th>pred {n}</th>" for n in CLASS_NAMES)
        body = "".join(
            f"<tr><th>true {n}</th>" + "".join(f"<td class=num>{_fmt(c)}</td>" for c in row) + "</tr>"
            for n, row in zip(CLASS_NAMES, cm, strict=False)
        )
        parts.append(f"<h3>Confusion matrix</h3><table><tr><th></th>{head}</tr>{body}</table>")
    return "".join(parts)


def _uncertain_html(metrics: dict[str, Any]) -> str:
    u = metrics.get("uncertain")
    if not isinstance(u, dict) or not isinstance(u.get("band"), list) or len(u["band"]) != 2:
        return ""
    lo, hi = u["band"]
    frac = u.get("fraction_uncertain")
    share = f" ({frac:.1%})" if _is_number(frac) else ""
    return (
        f"<p>Uncertainty band {_fmt(lo)}–{_fmt(hi)} on calibrated p(FAKE): {_fmt(u.get('n_uncertain'))} of "
        f"{_fmt(metrics.get('n'))} images{share} are labelled <em>uncertain</em>. Accuracy on the "
        f"{_fmt(u.get('n_decided'))} decided images: {_fmt(u.get('accuracy_decided'))} "
        f"(on all images: {_fmt(u.get('accuracy_all'))}).</p>"
    )


_SOURCE_COLS = [("n", "n"), ("classes", "classes"), ("accuracy", "accuracy"), ("recall", "recall (FAKE)"),
                ("roc_auc", "ROC AUC"), ("roc_auc_vs_other_class", "AUC vs other class")]


def _per_source_html(metrics: dict[str, Any], seen: set[str] | None) -> str:
    """A row per source, and one plain sentence naming the sources the model never saw in training."""
    per = metrics.get("per_source")
    if not isinstance(per, dict) or not per:
        return ""
    head = "".join(f"<th>{escape(label)}</th>" for _, label in _SOURCE_COLS)
    body = "".join(
        f"<tr><th>{escape(str(name))}</th>"
        + "".join(f"<td{' class=num' if _is_number(m.get(k)) else ''}>{_value(m.get(k))}</td>" for k, _ in _SOURCE_COLS)
        + "</tr>"
        for name, m in per.items()
        if isinstance(m, dict)
    )
    parts = [f"<h3>Per source</h3><table><tr><th>source</th>{head}</tr>{body}</table>"]
    unseen = metrics.get("sources_unseen_in_training")
    if not isinstance(unseen, list) and seen is not None:
        unseen = [s for s in per if s != "(none)" and s not in seen]
    if isinstance(unseen, list):
        if unseen:
            names = ", ".join(escape(str(s)) for s in unseen)
            parts.append(
                f"<p><strong>Never seen in training:</strong> {names}. Figures for "
                f"{'this source' if len(unseen) == 1 else 'these sources'} measure how the detector generalises "
                "to a generator or camera it was not trained on.</p>"
            )
        else:
            parts.append("<p>Every source evaluated here also appears in the training split.</p>")
    return "".join(parts)


def _robustness_html(rob: dict[str, Any]) -> str:
    rows = [r for r in rob.get("conditions", []) if isinstance(r, dict)]
    if not rows:
        return '<p class="muted">No robustness.json in this run: <code>realfake robustness RUN</code> makes one.</p>'
    cols = [("accuracy", "accuracy"), ("roc_auc", "ROC AUC"), ("ece", "ECE"), ("accuracy_real", "acc. REAL"),
            ("accuracy_fake", "acc. FAKE")]
    head = "".join(f"<th>{c}</th>" for _, c in cols)
    body = "".join(
        f"<tr><th>{escape(str(r.get('condition')))}</th>"
        + "".join(f"<td class=num>{_fmt(r.get(k))}</td>" for k, _ in cols)
        + "</tr>"
        for r in rows
    )
    intro = (
        f"<p>The {escape(str(rob.get('split', 'test')))} images (n = {_fmt(rob.get('n'))}) degraded once, "
        f"deterministically (noise seed {_fmt(rob.get('seed'))}): JPEG re-compression, Gaussian blur, down-and-up "
        "resampling, additive noise (sigma on the 0–255 scale). <em>/REAL-only</em> and <em>/FAKE-only</em> degrade "
        "one class and leave the other clean: a model that learnt a format shortcut (say, JPEG artefacts = REAL) "
        "fails on one of them while the other looks fine.</p>"
    )
    return intro + f"<table><tr><th>condition</th>{head}</tr>{body}</table>"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def summary_html(summary: Summary) -> str:
    """The summary sentence as a paragraph; `code` spans (the command to run) as <code>."""
    parts = escape(summary.text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    return f'<p class="summary">{text}</p>'


def _table(cols: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """A table with a header row; each row is (its heading, cell contents already escaped), numbers right."""
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(f"<tr><th>{escape(name)}</th>{''.join(f'<td class=num>{c}</td>' for c in cells)}</tr>"
                   for name, cells in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _measured_table(measured: list[Measured]) -> str:
    cols = ["data", "what", "images", "accuracy", "fakes called REAL", "real photos called FAKE", "ROC AUC", "ECE",
            "confidently wrong after 'I don't know'"]
    return _table(cols, [
        (m.name, [m.table_kind, _fmt(m.n), _pct(m.accuracy), _pct(m.fakes_called_real),
                  _pct(m.reals_called_fake), _fmt(m.roc_auc), _fmt(m.ece), _pct(m.confidently_wrong)])
        for m in measured
    ])


def _other_data_html(summary: Summary, evaluations: list[tuple[str, dict[str, Any]]], seen: set[str] | None) -> str:
    """Every figure measured on data unlike the training data, with people's labels; details per evaluation.
    Evaluations on data the run was fitted on follow, marked as no test."""
    parts = []
    if not summary.measured:
        parts.append('<p>None measured yet. Accuracy on images from other generators, cameras or processing is '
                     "<strong>unknown</strong>: measure it with <code>realfake evaluate RUN --data OTHER</code> "
                     "(or train with <code>--protocol holdout:SOURCE</code>).</p>")
    rows = summary.measured + summary.fitted_on
    if not rows:
        return "".join(parts)
    parts += [_measured_table(rows),
              '<p class="muted">Fakes called REAL and real photos called FAKE count the REAL/FAKE decision at the '
              "threshold; images labelled <em>uncertain</em> are among them (see Labels users get above).</p>"]
    if summary.fitted_on:
        parts.append("<p><em>Not a test</em>: data this run was fitted on (its adaptation set, or its training "
                     "data). Those figures say how well the fit went there, nothing about unseen data.</p>")
    for name, m in evaluations:
        details = _uncertain_html(m) + _per_source_html(m, seen)
        if details:
            parts.append(f"<h3>{escape(data_label(name))} <span class=muted>({escape(str(name))})</span></h3>{details}")
    return "".join(parts)


def _shares_cells(shares: list[LabelShares], cls: str) -> list[str]:
    row = next((x for x in shares if x.true_class == cls), None)
    if row is None:
        return ['<span class="muted">n/a</span>'] * 3
    return [_pct(row.right), _pct(row.uncertain), _pct(row.wrong)]


def _labels_html(summary: Summary) -> str:
    """What users get, side by side per data set: of each true class, the share labelled FAKE / uncertain / REAL."""
    rows = summary.label_rows()
    if not rows:
        return ""
    head = ("<tr><th rowspan=2>data</th><th rowspan=2>what</th><th colspan=3>fakes labelled</th>"
            "<th colspan=3>real photos labelled</th><th rowspan=2>threshold accuracy</th></tr><tr>"
            + "".join(f"<th>{escape(c)}</th>" for c in (FAKE, UNCERTAIN, REAL, REAL, UNCERTAIN, FAKE)) + "</tr>")
    body = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(what)}</td>"
        + "".join(f"<td class=num>{c}</td>" for c in [*_shares_cells(shares, FAKE), *_shares_cells(shares, REAL),
                                                         _pct(acc)])
        + "</tr>"
        for name, what, shares, acc in rows
    )
    intro = ("<p>What a user receives and acts on: of each true class, the share of images labelled FAKE, "
             "<em>uncertain</em> or REAL by the run&rsquo;s own rule (the one <code>realfake predict</code> applies). "
             "Threshold accuracy counts an <em>uncertain</em> image as REAL or FAKE by its p(FAKE); these shares "
             "do not.</p>")
    return intro + f"<table>{head}{body}</table>"


def _adaptation_html(a: Adaptation | None, summary: Summary, metrics: dict[str, Any]) -> str:
    """Where an adapted run comes from: parent, set, what was fitted on it, and what its test figures are."""
    if a is None:
        return ""
    tuned = ("no: the weights are the parent's, byte for byte" if a.finetuned_epochs is None else
             f"the head, {a.finetuned_epochs} epochs on {_fmt(a.finetuned_images)} of the images; the rest of the "
             "weights are the parent's")
    if not metrics:
        home = "not measured since the weights changed: run <code>realfake evaluate RUN</code>"
    elif "rescored_from" in metrics:
        home = escape(summary.test_split)
    else:
        home = "measured on the parent's test split with this run's weights and calibration"
    rows = [
        ("Parent run", escape(a.parent) + (f" <span class=muted>({escape(a.parent_path)})</span>" if a.parent_path
                                           else "")),
        ("Adaptation set", f"{escape(a.name)} <span class=muted>({escape(a.data)})</span>"),
        ("Images", _fmt(a.n_images) + (" (" + ", ".join(f"{_fmt(n)} {escape(c)}" for c, n in a.per_class.items())
                                       + ")" if a.per_class else "")),
        ("Re-fitted on them", escape(a.refit_text)),
        ("Calibrated on", _fmt(a.calibration_images)),
        ("Fine-tuned", escape(tuned)),
        ("Test figures", home),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return (f"<table>{body}</table><p>An evaluation on the adaptation set is marked <em>adapted on (not a "
            "test)</em>: the calibration was fitted there.</p>")


def _ood_html(summary: Summary) -> str:
    """How many images "I don't know" flagged, on the test split and on each other data set; empty for old runs."""
    rows = summary.ood_rows()
    if not rows:
        return ""
    levels = {o.level for _, o in rows if o.level is not None}
    level = f"{levels.pop():g}" if len(levels) == 1 else "the run's level"
    cols = ["data", "images", "flagged out of distribution", "of REAL images", "of FAKE images",
            "labelled uncertain (any reason)", "confidently wrong", "accuracy on the rest"]
    table = _table(cols, [
        (name, [_fmt(o.n), f"{_fmt(o.n_flagged)} ({_pct(o.fraction_flagged)})", _pct(o.fraction_flagged_real),
                _pct(o.fraction_flagged_fake), _pct(o.fraction_uncertain), _pct(o.confidently_wrong),
                _pct(o.accuracy_decided)])
        for name, o in rows
    ])
    intro = (
        "<p>An image is labelled <em>uncertain</em> (&ldquo;I don&rsquo;t know&rdquo;) instead of REAL or FAKE when "
        f"it is <strong>out of distribution</strong>: its ood score, how atypical it is of the class it would be "
        f"labelled compared with this run&rsquo;s validation images of that class, is above {escape(level)} "
        "(0.97: more extreme than 97% of them, towards the other class). Inside the uncertain band, if the run has "
        "one, it is uncertain too. <em>Confidently wrong</em> is the share of all images that still got a wrong "
        "REAL/FAKE label; <em>accuracy on the rest</em> counts only the images that got one.</p>"
    )
    return intro + table


def _figures_section(plots: dict[str, Path]) -> str:
    if not plots:
        return '<p class="muted">No figures could be drawn from this run.</p>'
    out = []
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        caption = _CAPTIONS.get(name) or (
            f"Reliability diagram on {name.removeprefix(EVALUATION_PLOT)}, an evaluation on other data: the same "
            "bins as on the test split. On a generator the run never saw, p(FAKE) is not calibrated, and its "
            "images are mostly labelled uncertain (see Labels users get)." if name.startswith(EVALUATION_PLOT)
            else name.replace("_", " "))
        out.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{escape(name)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    return "".join(out)


def write_report(run_dir: Path, plots: dict[str, Path]) -> Path:
    """Write run_dir/report.html from the run's files and the given PNGs; returns its path."""
    rd = RunDir(run_dir)
    run_dir = rd.path
    run = rd.info()
    metrics = rd.read_json(RunDir.METRICS)
    data = rd.read_json(RunDir.DATA_REPORT)
    seen = rd.training_sources()
    robustness = rd.read_json(RunDir.ROBUSTNESS)
    evaluations = evaluations_of(rd)
    summary = run_summary(rd)
    ood = _ood_html(summary)
    labels_html = _labels_html(summary)
    adapted = _adaptation_html(summary.adapted_from, summary, metrics)
    config = rd.read_text(RunDir.CONFIG)

    name = run_dir.resolve().name
    model = run.get("model")
    title = f"realfake run {name}" + (f" — {model}" if model else "")
    source = data.get("data")
    note = (
        "These metrics are measured on this run's test split of the data named above"
        + (f" ({escape(str(source))})" if source else "")
        + ". They describe images like those: they say nothing about images from other generators, "
        "other cameras or other processing, where a detector can fail without warning."
        + (f" {escape(DEMO_NOTE)}" if summary.demo else "")
    )
    none = '<p class="muted">No {} in this run.</p>'
    run_html = _kv_table(run) if run else none.format(RunDir.INFO)
    config_html = f"<pre>{escape(config)}</pre>" if config is not None else none.format(RunDir.CONFIG)
    labels = " / ".join(CLASS_NAMES)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p class="sub">Real vs AI-generated image detector; labels: {labels} (FAKE is positive).</p>
{summary_html(summary) if metrics or summary.adapted_from or summary.demo else ""}
{f"<h2>Adapted from</h2>{adapted}" if adapted else ""}
{f"<h2>Labels users get</h2>{labels_html}" if labels_html else ""}
<h2>Test metrics</h2>
{f'<p class="muted">On {escape(summary.test_split)}.</p>' if metrics and "rescored_from" in metrics else ""}
{_metrics_section(metrics)}
{_uncertain_html(metrics)}
{_per_source_html(metrics, seen)}
<h2>Other data and held-out generators</h2>
{_other_data_html(summary, evaluations, seen)}
{f"<h2>Out of distribution (&ldquo;I don&rsquo;t know&rdquo;)</h2>{ood}" if ood else ""}
<h2>Figures</h2>
{_figures_section(plots)}
<h2>Robustness</h2>
{_robustness_html(robustness)}
<h2>Data</h2>
{_data_section(data)}
<h2>Run</h2>
{run_html}
<h2>Config</h2>
{config_html}
<p class="note">{note}</p>
</body>
</html>
"""
    return rd.write_text(RunDir.REPORT, page)


def build_report(run_dir: Path) -> Path:
    """Draw every figure the run folder allows, then write report.html; returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RealfakeError(f"run folder not found: {run_dir}")
    return write_report(run_dir, draw_all(run_dir))
