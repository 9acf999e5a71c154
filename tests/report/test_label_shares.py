"""What users get: the FAKE / uncertain / REAL shares per true class in metrics.json, in every summary beside the
threshold figures, and calibration measured in equal-mass bins too (issue 27)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from realfake.calibration import Calibration
from realfake.evaluation import metrics_line, split_metrics
from realfake.metrics import (
    METRIC_LABELS,
    ece,
    ece_equal_mass,
    equal_mass_bins,
    label_shares,
    per_source_metrics,
)
from realfake.report.html import build_report
from realfake.report.model_card import model_card
from realfake.report.summary import (
    ADAPTED_ON,
    DEMO_NOTE,
    HELD_OUT,
    OTHER_DATA,
    TRAINING_DATA,
    Adaptation,
    is_demo,
    label_shares_of,
    run_summary,
    summarize,
)

# p_fake = sigmoid(logit) at T = 1; the band 0.4..0.6 (logits -0.405..0.405) is uncertain, FAKE from 0.5.
BAND = Calibration(temperature=1.0, threshold=0.5, threshold_policy="fixed:0.5", uncertain_band=(0.4, 0.6))
# 4 REAL: right, right, uncertain, called FAKE; 4 FAKE: right, right, uncertain, called REAL.
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
Z = np.array([-4.0, -3.0, 0.1, 3.0, 4.0, 5.0, 0.2, -3.0])


def _metrics(labels: np.ndarray, logits: np.ndarray, sources: list[str | None] | None = None) -> dict:
    return split_metrics(labels, logits, BAND, sources or [None] * len(labels))[0]


def _counts(n_fake: tuple[int, int, int], n_real: tuple[int, int, int]) -> dict:
    """A metrics.json `labels` block from counts (right label, uncertain, wrong label): of the fakes (FAKE,
    uncertain, REAL) and of the real photos (REAL, uncertain, FAKE)."""
    def block(c: tuple[int, int, int], order: tuple[str, str, str]) -> dict:
        n = sum(c)
        counts = dict(zip(order, c, strict=True))
        return {"n": n, "counts": counts, "shares": {k: v / n if n else None for k, v in counts.items()}}
    return {"FAKE": block(n_fake, ("FAKE", "uncertain", "REAL")), "REAL": block(n_real, ("REAL", "uncertain", "FAKE"))}


# --- metrics.json -------------------------------------------------------------------------------------------


def test_label_shares_count_the_verdicts_predict_gives():
    m = _metrics(Y, Z)
    assert m["labels"]["REAL"] == {"n": 4, "counts": {"FAKE": 1, "uncertain": 1, "REAL": 2},
                                   "shares": {"FAKE": 0.25, "uncertain": 0.25, "REAL": 0.5}}
    assert m["labels"]["FAKE"]["counts"] == {"FAKE": 2, "uncertain": 1, "REAL": 1}
    # the same rule predict applies: Calibration.labels, with the OOD score when the run has one
    verdicts = BAND.labels(BAND.p_fake(Z), BAND.ood_scores(Z))
    for cls, i in (("REAL", 0), ("FAKE", 1)):
        assert m["labels"][cls]["counts"] == {k: Counter(v for v, y in zip(verdicts, Y, strict=True) if y == i)[k]
                                              for k in ("FAKE", "uncertain", "REAL")}
    # accuracy at the threshold decides the uncertain two by p_fake (the REAL one wrong, the FAKE one right): 5 of 8
    assert m["accuracy"] == 0.625


def test_one_class_source_and_empty_class():
    m = _metrics(np.array([1, 1, 1, 1, 0]), np.array([4.0, 0.1, 0.1, 0.1, -4.0]), ["ganC"] * 4 + ["photos"])
    gan = m["per_source"]["ganC"]["labels"]
    assert gan["FAKE"]["counts"] == {"FAKE": 1, "uncertain": 3, "REAL": 0}
    assert gan["REAL"] == {"n": 0, "counts": {"FAKE": 0, "uncertain": 0, "REAL": 0},
                           "shares": {"FAKE": None, "uncertain": None, "REAL": None}}
    assert m["per_source"]["photos"]["labels"]["REAL"]["counts"]["REAL"] == 1
    assert per_source_metrics(Y, BAND.p_fake(Z), 0.5, [None] * 8)["(none)"].get("labels") is None  # not asked


def test_label_shares_need_a_verdict_per_label():
    from realfake.errors import RealfakeError

    with pytest.raises(RealfakeError, match="3 labels but 2 verdicts"):
        label_shares(np.array([0, 1, 1]), ["REAL", "FAKE"])


def test_ood_verdicts_count_as_uncertain():
    """A run with an OOD score: an atypical logit is 'uncertain' whatever p_fake says, in the shares too."""
    from realfake.calibration import Typicality

    rng = np.random.default_rng(0)
    val = np.r_[rng.normal(-5, 1, 200), rng.normal(5, 1, 200)]
    cal = Calibration(temperature=1.0, threshold=0.5, ood=Typicality.fit(val, np.r_[np.zeros(200), np.ones(200)]))
    y = np.array([1, 1, 0])
    z = np.array([5.0, -0.2, -5.0])  # -0.2: REAL by the threshold, far out for a REAL: uncertain
    m = split_metrics(y, z, cal, [None] * 3)[0]
    assert m["labels"]["FAKE"]["counts"] == {"FAKE": 1, "uncertain": 1, "REAL": 0}
    assert m["labels"]["REAL"]["counts"] == {"FAKE": 0, "uncertain": 0, "REAL": 1}


def test_trained_run_metrics_carry_the_labels_its_predictions_got(trained_run):
    """The real evaluate path: metrics.json's label counts are the `predicted` column of predictions.csv."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    with open(trained_run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for cls, i in (("REAL", 0), ("FAKE", 1)):
        got = Counter(r["predicted"] for r in rows if int(r["label"]) == i)
        assert metrics["labels"][cls]["counts"] == {k: got.get(k, 0) for k in ("FAKE", "uncertain", "REAL")}
        assert metrics["labels"][cls]["n"] == sum(1 for r in rows if int(r["label"]) == i)
    assert 0 <= metrics["ece_equal_mass"] <= 1
    card = (trained_run / "MODEL_CARD.md").read_text()
    assert f"| {METRIC_LABELS['ece_equal_mass']} | {metrics['ece_equal_mass']:.4f} |" in card
    assert "## Labels users get" in card


# --- equal-mass ECE -----------------------------------------------------------------------------------------


def test_equal_mass_ece_sees_what_one_wide_bin_hides():
    """100 scores in [0.50, 0.52): the lower half all REAL, the upper half all FAKE. One equal-width bin averages
    them into a near-perfect 0.51 vs 0.5; two equal-mass bins show each half is off by about 0.5."""
    p = 0.5 + 0.0002 * np.arange(100)
    y = (np.arange(100) >= 50).astype(int)
    assert ece(y, p) == pytest.approx(abs(p.mean() - 0.5))  # 0.0099
    low, high = p[:50].mean(), p[50:].mean()
    assert ece_equal_mass(y, p, n_bins=2) == pytest.approx((low + (1 - high)) / 2)  # 0.495
    shuffled = np.random.default_rng(1).permutation(100)
    assert ece_equal_mass(y[shuffled], p[shuffled], n_bins=2) == pytest.approx(ece_equal_mass(y, p, n_bins=2))


def test_equal_mass_bins_hold_equal_counts_and_never_split_ties():
    p = np.linspace(0.01, 0.99, 30)
    b = equal_mass_bins(np.zeros(30, int), p, n_bins=15)
    assert b["count"] == [2.0] * 15
    # ten images at 0.1 (3 FAKE) and ten at 0.9 (9 FAKE): 4 bins asked, ties keep two bins of ten
    p = np.r_[np.full(10, 0.1), np.full(10, 0.9)]
    y = np.r_[np.ones(3), np.zeros(7), np.ones(9), np.zeros(1)].astype(int)
    b = equal_mass_bins(y, p, n_bins=4)
    assert b["count"] == [10.0, 10.0] and b["frac_fake"] == [pytest.approx(0.3), pytest.approx(0.9)]
    assert ece_equal_mass(y, p, n_bins=4) == pytest.approx((10 * 0.2 + 10 * 0.0) / 20)
    assert np.isnan(ece_equal_mass(np.array([], int), np.array([])))


def test_metrics_json_has_both_eces_named_for_people():
    m = _metrics(Y, Z)
    assert m["ece_equal_mass"] == pytest.approx(ece_equal_mass(Y, BAND.p_fake(Z)), abs=1e-6)
    assert m["ece"] == pytest.approx(ece(Y, BAND.p_fake(Z)), abs=1e-6)
    assert "equal-mass" in METRIC_LABELS["ece_equal_mass"] and "equal-width" in METRIC_LABELS["ece"]


# --- the summary -------------------------------------------------------------------------------------------


HOME = {"accuracy": 0.996, "n": 500, "labels": _counts((243, 6, 1), (242, 8, 0))}
GANC = {"accuracy": 0.989, "n": 400, "confusion_matrix": [[0, 0], [4, 396]], "labels": _counts((50, 350, 0), (0, 0, 0))}


def test_summary_gives_the_label_shares_beside_threshold_accuracy():
    s = summarize(HOME, [("/data/ganC-fake.zip", GANC)])
    assert s.text == (
        "On its test split (images like its training data): of fakes 97.2% labelled FAKE, 2.4% uncertain, 0.4% REAL; "
        "of real photos 96.8% REAL, 3.2% uncertain, 0.0% FAKE (threshold accuracy 99.6%). "
        "On ganC-fake (never trained on): of fakes 12.5% labelled FAKE, 87.5% uncertain, 0.0% REAL "
        "(threshold accuracy 98.9%)."
    )
    assert [(x.true_class, x.n) for x in s.test_labels] == [("FAKE", 250), ("REAL", 250)]
    [m] = s.measured
    assert m.kind == OTHER_DATA and [(x.true_class, x.uncertain) for x in m.labels] == [("FAKE", 0.875)]
    d = s.to_dict()  # what /v1/model serves
    assert d["test_labels"][0] == {"true_class": "FAKE", "n": 250, "fake": 0.972, "uncertain": 0.024, "real": 0.004}
    assert d["measured"][0]["labels"][0]["uncertain"] == 0.875


def test_summary_of_label_shares_alone_says_unseen_data_is_unknown():
    s = summarize(HOME, [])
    assert s.text.endswith("Performance on generators it was not trained on is unknown: evaluate it with "
                           "`realfake evaluate RUN --data OTHER`.")
    assert "of fakes 97.2% labelled FAKE" in s.text


def test_a_few_images_are_never_rounded_away():
    s = summarize({"accuracy": 0.9996, "n": 5000, "labels": _counts((2499, 0, 1), (2500, 0, 0))}, [])
    assert "of fakes >99.9% labelled FAKE, 0.0% uncertain, <0.1% REAL" in s.text


def test_old_metrics_without_labels_keep_their_sentence():
    old = {"accuracy": 0.999, "n": 40}
    assert summarize(old, []).text.startswith("Test accuracy 99.9% on images like its training data.")
    assert summarize(old, []).test_labels is None and label_shares_of(old) is None
    # an old run evaluated since: its home figure as before, the new evaluation with its label shares
    mixed = summarize(old, [("ganC-fake", GANC)]).text
    assert mixed.startswith("Test accuracy 99.9% on images like its training data. On ganC-fake (never trained on): "
                            "of fakes 12.5% labelled FAKE")


def test_held_out_source_labels_are_kept_out_of_the_home_shares():
    metrics = {"accuracy": 0.9, "n": 300, "labels": _counts((100, 90, 10), (100, 0, 0)), "per_source": {
        "a": {"accuracy": 1.0, "n": 100, "labels": _counts((0, 0, 0), (100, 0, 0))},
        "b": {"accuracy": 1.0, "n": 100, "labels": _counts((100, 0, 0), (0, 0, 0))},
        "ganC": {"accuracy": 0.9, "n": 100, "confusion_matrix": [[0, 0], [10, 90]],
                 "labels": _counts((0, 90, 10), (0, 0, 0))},
    }}
    s = summarize(metrics, [], seen={"a", "b"})
    assert [(x.true_class, x.fake, x.uncertain) for x in s.test_labels] == [("FAKE", 1.0, 0.0), ("REAL", 0.0, 0.0)]
    [m] = s.measured
    assert m.kind == HELD_OUT and m.labels[0].uncertain == 0.9
    assert "On ganC (held out of training): of fakes 0.0% labelled FAKE, 90.0% uncertain, 10.0% REAL" in s.text


def test_metrics_line_leads_with_the_labels():
    line = metrics_line(_metrics(Y, Z))
    assert line.startswith("test: of fakes 50.0% labelled FAKE, 25.0% uncertain, 25.0% REAL; of real photos 50.0% "
                           "REAL, 25.0% uncertain, 25.0% FAKE  |  at the threshold: accuracy 0.6250")
    assert "ece_equal_mass" in line
    assert metrics_line({"accuracy": 0.5, "f1": 0.5, "roc_auc": None, "n": 2}, "ganC").startswith("ganC: accuracy")


# --- data the run was fitted on, and the demo ----------------------------------------------------------------


ADAPTED_INFO = {
    "model": "fast",
    "parent": {"path": "/runs/base", "name": "base", "threshold": 0.4},
    "adapted_on": {"data": "/sets/newgen", "n_images": 60, "per_class": {"REAL": 30, "FAKE": 30},
                   "refit": ["temperature", "threshold", "ood"], "calibration_images": {"REAL": 30, "FAKE": 30},
                   "finetuned": None},
}


def test_evaluation_on_the_adaptation_set_is_marked_adapted_not_unseen():
    adapted = Adaptation.from_info(ADAPTED_INFO)
    s = summarize(HOME, [("/elsewhere/newgen", GANC)], adapted_from=adapted)
    assert s.measured == [] and [(m.name, m.kind) for m in s.fitted_on] == [("newgen", ADAPTED_ON)]
    assert s.text.startswith("Adapted from run base on newgen (60 labelled images): temperature, decision threshold "
                             "and 'I don't know' (OOD) quantiles re-fitted on them; the weights are the parent's, "
                             "unchanged. On its test split")
    assert "On newgen (adapted on these images, so not a test): of fakes 12.5%" in s.text
    assert "Performance on generators it was not trained on is unknown" in s.text  # no unseen data measured
    # an unseen set beside it is still evidence
    s2 = summarize(HOME, [("/elsewhere/newgen", GANC), ("ganC-fake.zip", GANC)], adapted_from=adapted)
    assert [m.name for m in s2.measured] == ["ganC-fake"] and "unknown" not in s2.text


def test_evaluation_on_its_own_training_data_is_no_test():
    s = summarize(HOME, [("/data/standin-cifake-mini.zip", GANC)], trained_on="../standin-cifake-mini.zip")
    assert s.measured == [] and s.fitted_on[0].kind == TRAINING_DATA
    assert "On standin-cifake-mini (its training data, so not a test)" in s.text


def test_demo_is_told_from_config_and_data_report():
    assert is_demo({"data": None}, {})
    assert is_demo({}, {"data": "the bundled demo sample"})
    assert is_demo({"data": "/x/demo-sample.zip"}, {})
    assert not is_demo({}, {"data": "cifake-mini.zip"}) and not is_demo({"data": "archive.zip"}, {})
    assert summarize(HOME, [], demo=True).text.startswith(DEMO_NOTE)


def _run_folder(root: Path, config: dict, info: dict, metrics: dict) -> Path:
    """A run folder with the files the summary, card and report read; predictions with logits for the plots."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "run.json").write_text(json.dumps(info))
    (root / "metrics.json").write_text(json.dumps(metrics))
    (root / "data_report.json").write_text(json.dumps({"data": config.get("data") or "the bundled demo sample"}))
    rows = ["path,label,p_fake,logit,predicted,source"] + [
        f"i{i}.png,{y},{p:.6f},{z:.6f},x," for i, (y, z, p) in enumerate(zip(Y, Z, BAND.p_fake(Z), strict=True))
    ]
    (root / "predictions.csv").write_text("\n".join(rows) + "\n")
    return root


def test_demo_run_says_so_in_summary_card_and_report(tmp_path):
    run = _run_folder(tmp_path / "demo", {"model": "fast", "data": None}, {"model": "fast"}, _metrics(Y, Z))
    assert run_summary(run).demo
    card = model_card(run)
    assert card.splitlines()[2].startswith(f"**{DEMO_NOTE}")
    assert "not a detector's skill" in card.split("## Limits")[1]
    page = build_report(run).read_text()
    assert page.count("show the pipeline working, not a detector&#x27;s skill") >= 2  # summary and its own note


def test_report_and_card_show_label_shares_side_by_side_and_the_reliability_counts(tmp_path):
    run = _run_folder(tmp_path / "run", {"model": "fast", "data": "/d/standin-cifake-mini.zip"}, {"model": "fast"},
                      _metrics(Y, Z))
    ev = run / "evaluations" / "ganC-fake.zip"
    ev.mkdir(parents=True)
    (ev / "metrics.json").write_text(json.dumps(GANC))
    (ev / "data_report.json").write_text(json.dumps({"data": "/d/ganC-fake.zip"}))
    card = model_card(run)
    assert "## Labels users get" in card
    assert ("| test split | images like its training data | 50.0% | 25.0% | 25.0% | 50.0% | 25.0% | 25.0% | 62.5% |"
            in card)
    assert "| ganC-fake | never trained on | 12.5% | 87.5% | 0.0% | n/a | n/a | n/a | 98.9% |" in card
    assert f"| {METRIC_LABELS['ece_equal_mass']} |" in card
    page = build_report(run).read_text()
    labels = page[page.index("<h2>Labels users get</h2>"):page.index("<h2>Test metrics</h2>")]
    assert "<th>test split</th>" in labels and "<th>ganC-fake</th>" in labels and "87.5%" in labels
    assert "equal-mass" in page and (run / "plots" / "reliability_diagram.png").is_file()
    opened: list[str] = []

    class Tags(HTMLParser):  # the two-row header and every cell closed in order
        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag not in ("meta", "img", "br"):
                opened.append(tag)

        def handle_endtag(self, tag: str) -> None:
            assert opened.pop() == tag

    Tags().feed(page)
    assert opened == []


def test_every_evaluated_data_set_gets_its_reliability_diagram(trained_run, tmp_path):
    """p_fake is meant as a probability wherever it is measured: each evaluation on other data gets the diagram
    the test split gets, with its counts, and it leaves with the evaluation."""
    import shutil

    from realfake import report
    from realfake.report.plots import draw_all, evaluation_plot
    from realfake.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ev = run / RunDir.EVALUATIONS / "other-set"
    ev.mkdir(parents=True)
    for name in (RunDir.METRICS, RunDir.PREDICTIONS):
        shutil.copy(run / name, ev / name)
    drawn = draw_all(run)
    assert drawn[evaluation_plot("other-set")] == run / RunDir.PLOTS / "reliability_diagram-other-set.png"
    html = (report.build(run)).read_text()
    assert "Reliability diagram on other-set" in html
    shutil.rmtree(ev)
    assert evaluation_plot("other-set") not in draw_all(run)
    assert not (run / RunDir.PLOTS / "reliability_diagram-other-set.png").exists()
