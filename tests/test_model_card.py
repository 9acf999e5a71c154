"""MODEL_CARD.md: written with every run, true to the run's files, and plain about the limits."""

from __future__ import annotations

import json
import shutil

import pytest

from realfake.errors import RealfakeError
from realfake.report import build
from realfake.report.model_card import write_model_card


@pytest.fixture
def run_copy(trained_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    (dst / "MODEL_CARD.md").unlink(missing_ok=True)
    return dst


def test_training_writes_a_model_card(trained_run):
    assert (trained_run / "MODEL_CARD.md").is_file()  # run.report() at the end of training writes it


def test_card_states_the_runs_facts(run_copy):
    path = write_model_card(run_copy)
    assert path == run_copy / "MODEL_CARD.md"
    assert not [p.name for p in run_copy.iterdir() if p.name.endswith(".tmp")]
    text = path.read_text()
    metrics = json.loads((run_copy / "metrics.json").read_text())
    data = json.loads((run_copy / "data_report.json").read_text())
    test = data["split"]["test"]
    assert "standin-cifake-mini.zip" in text
    assert f"| test | {test['REAL']:,} | {test['FAKE']:,} | {test['n']:,} |" in text
    assert f"| Accuracy | {metrics['accuracy']:.4f} |" in text
    assert "a stratified subset of 200 images" in text and "`seed`" in text  # --limit and the protocol
    assert "seed-resnet50" in text and "none (random initialisation)" in text
    assert f"p_fake ≥ {metrics['threshold']:.4g}" in text
    assert "32x32 input" in text and "Intended use" in text
    assert "Accuracy on images from other generators is unknown unless measured" in text
    assert "accuracy on the stand-in is not CIFAKE accuracy" in text  # the mini zip is the stand-in


def test_no_standin_warning_for_other_data_and_measured_data_listed(run_copy):
    data = json.loads((run_copy / "data_report.json").read_text())
    data["data"] = "archive.zip"
    (run_copy / "data_report.json").write_text(json.dumps(data))
    cfg = (run_copy / "config.yaml").read_text().replace("standin-cifake-mini.zip", "archive.zip")
    (run_copy / "config.yaml").write_text(cfg)
    other = run_copy / "evaluations" / "other-gen"
    other.mkdir(parents=True)
    (other / "metrics.json").write_text(json.dumps({"accuracy": 0.61234, "roc_auc": 0.7, "n": 300}))
    (other / "data_report.json").write_text(json.dumps({"data": "midjourney|set.zip"}))
    info = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps({**info, "uncertain_band": [0.4, 0.6], "tta": "flip"}))
    text = write_model_card(run_copy).read_text()
    assert "p_fake from 0.4000 to 0.6000 is labelled `uncertain`" in text and "`flip`" in text
    assert "stand-in" not in text
    # a pipe in a name cannot break the table; the name is shown without its archive ending
    assert "| midjourney\\|set | other data set | 300 | 61.2% | n/a | n/a | 0.7000 | n/a |" in text
    assert "None yet" not in text
    # the card opens with it; an evaluation made before label shares has its threshold accuracy
    assert "On midjourney|set (never trained on): threshold accuracy 61.2%." in text.splitlines()[2]
    assert text.index("## Measured on other data") < text.index("## Model")


def test_card_opens_with_the_summary_and_counts_ood_flags(run_copy):
    metrics = json.loads((run_copy / "metrics.json").read_text())
    text = write_model_card(run_copy).read_text()
    fakes = metrics["labels"]["FAKE"]["shares"]  # what users get leads, the threshold accuracy beside it
    assert text.splitlines()[2].startswith(f"**On its test split (images like its training data): of fakes "
                                           f"{fakes['FAKE']:.1%} labelled FAKE, {fakes['uncertain']:.1%} uncertain")
    assert f"(threshold accuracy {metrics['accuracy']:.1%})" in text.splitlines()[2]
    assert "Performance on generators it was not trained on is unknown" in text
    ood = metrics["ood"]  # a run trained now stores the OOD score
    assert "## I don't know (out of distribution)" in text
    assert f"| test split | {metrics['n']:,} | {ood['n_flagged']:,} (" in text
    assert "is labelled `uncertain`" in text


def test_card_of_an_old_run_without_ood(run_copy):
    metrics = json.loads((run_copy / "metrics.json").read_text())
    metrics.pop("ood")
    (run_copy / "metrics.json").write_text(json.dumps(metrics))
    info = json.loads((run_copy / "run.json").read_text())
    info.pop("ood", None)
    (run_copy / "run.json").write_text(json.dumps(info))
    text = write_model_card(run_copy).read_text()
    assert "out of distribution" not in text and "I don't know" not in text
    assert "threshold accuracy" in text
    metrics.pop("labels")  # and from before label shares: the sentence it had
    (run_copy / "metrics.json").write_text(json.dumps(metrics))
    text = write_model_card(run_copy).read_text()
    assert text.splitlines()[2].startswith(f"**Test accuracy {metrics['accuracy']:.1%} on images like its training")
    assert "## Labels users get" not in text


def test_report_command_rewrites_the_card(run_copy):
    build(run_copy)
    assert (run_copy / "MODEL_CARD.md").is_file()


def test_missing_run_is_a_user_error(tmp_path):
    with pytest.raises(RealfakeError, match="not found"):
        write_model_card(tmp_path / "nope")
