"""The summary sentence: the home test figure beside every figure measured on other data, or 'unknown'."""

from __future__ import annotations

import json
from pathlib import Path

from realfake.report.summary import HELD_OUT, OTHER_DATA, data_label, run_summary, summarize

HOME = {"accuracy": 0.99925, "n": 4000}
GANC = {  # the README's measurement: 2,000 ganC fakes + 2,000 stand-in test/REAL
    "accuracy": 0.792, "n": 4000, "roc_auc": 0.998, "ece": 0.24, "confusion_matrix": [[1998, 2], [830, 1170]],
    "ood": {"level": 0.95, "n_flagged": 1800, "fraction_flagged": 0.45, "fraction_flagged_real": 0.05,
            "fraction_flagged_fake": 0.85, "fraction_uncertain": 0.46, "confidently_wrong": 0.031,
            "accuracy_decided": 0.95},
}


def test_nothing_measured_says_unknown_and_how_to_measure() -> None:
    s = summarize(HOME, [])
    assert s.text.startswith("Test accuracy 99.9% on images like its training data.")
    assert "Performance on generators it was not trained on is unknown" in s.text
    assert "`realfake evaluate RUN --data OTHER`" in s.text
    assert s.measured == [] and s.test_ood is None  # metrics without an ood block: an old run


def test_an_evaluation_is_named_with_its_figures() -> None:
    s = summarize(HOME, [("/data/ganC-fake.zip", GANC)])
    assert s.text == (
        "Test accuracy 99.9% on images like its training data; on other data it was measured on: ganC-fake 79.2% "
        "(41.5% of fakes called REAL, 0.1% of real photos called FAKE, 3.1% confidently wrong after 'I don't know')."
    )
    [m] = s.measured
    assert (m.name, m.kind, m.n, m.fakes_called_real) == ("ganC-fake", OTHER_DATA, 4000, 0.415)
    assert m.ood is not None and m.ood.n_flagged == 1800
    assert s.to_dict()["measured"][0]["ood"]["confidently_wrong"] == 0.031


def test_old_evaluation_without_ood_or_confusion_matrix() -> None:
    s = summarize(HOME, [("other", {"accuracy": 0.6, "n": 10})])
    assert "other 60.0%." in s.text and "confidently wrong" not in s.text and "called" not in s.text


def test_held_out_source_is_measured_and_kept_out_of_the_home_figure() -> None:
    metrics = {"accuracy": 0.9, "n": 300, "per_source": {
        "a": {"accuracy": 1.0, "n": 100, "confusion_matrix": [[100, 0], [0, 0]]},
        "b": {"accuracy": 0.99, "n": 100, "confusion_matrix": [[0, 0], [1, 99]]},
        "ganC": {"accuracy": 0.7, "n": 100, "confusion_matrix": [[0, 0], [30, 70]]},
    }}
    s = summarize(metrics, [], seen={"a", "b"})
    assert s.test_accuracy == 0.995 and s.test_n == 200
    assert [(m.name, m.kind) for m in s.measured] == [("ganC", HELD_OUT)]
    assert "ganC (held out of training) 70.0% (30.0% of fakes called REAL)" in s.text
    assert summarize(metrics, [], seen=None).measured == []  # cannot tell what was held out: says nothing


def test_data_label() -> None:
    assert data_label("/x/y/ganC-fake.zip") == "ganC-fake"
    assert data_label("folder/") == "folder" and data_label("list.CSV") == "list" and data_label(".zip") == ".zip"


def test_run_summary_reads_the_evaluations(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(HOME))
    ev = tmp_path / "evaluations" / "ganC-fake.zip"
    ev.mkdir(parents=True)
    (ev / "metrics.json").write_text(json.dumps(GANC))
    assert "ganC-fake 79.2%" in run_summary(tmp_path).text  # no data_report.json: the folder's name
